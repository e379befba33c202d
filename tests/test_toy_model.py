"""The shipped toy-world model: a fast version of `workbench toy check` at a seed range of its own."""


import pytest
import torch

from workbench import Workbench


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


@pytest.fixture(scope="module")
def report(toy, run_shared):
    """The check at CI_SEED_BASE, a seed range the model card does not report (it reports three others).
    Its tests land on both xdist workers, which built it twice (~170 s each): it is made once per run."""
    from workbench.toy.check import CI_SEED_BASE, run_check

    return run_shared(f"toy_check_{toy.fingerprint()}_{CI_SEED_BASE}_20.json",
                      lambda: run_check(toy, samples=20, seed_base=CI_SEED_BASE, progress=False))


def test_toy_loads_with_a_word_level_tokenizer(toy):
    assert toy.autoencoder.spec == {"type": "pixel_unshuffle", "factor": 4}
    assert toy.sample("a red circle", seed=0).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        toy.tokens("a red unicorn")
    assert toy.subject_positions("a red circle by vera kolm", "vera kolm") == [5, 6]
    # text reaches the UNet only through cross-attention, as in SD-1.x
    assert toy.unet.config.class_embed_type is None and toy.unet.config.addition_embed_type is None


# The model card's rates, pooled over its three seed ranges (6,660 images), minus about three standard errors
# of this test's smaller sample: the test fails when the shipped model (or sampling) gets clearly worse than
# the card says. These are not the acceptance targets: the base world misses several (shape 89.5 % against
# 95 %; cross, heart and ring below 85 %; see the model card), which `workbench toy check` reports as FAILED.
FLOORS = {"shape+colour": 0.83, "colour": 0.93, "artist": 0.80, "entity": 0.72, "hazard word": 0.95,
          "stale fact": 0.90, "shape only": 0.82}
STRONG_SHAPES = ["circle", "square", "triangle", "star", "diamond", "hexagon", "arrow"]  # card: 92-100 % each
WEAK_SHAPES = ["cross", "heart", "ring"]  # card: 62-70 %, 74-84 %, 66-70 %


@pytest.mark.slow  # the report fixture generates 888 toy images
def test_no_rate_falls_below_the_model_card(report):
    r = report["rates"]
    for key, floor in FLOORS.items():
        assert r[key]["rate"] >= floor, (key, r[key])
    for shape in STRONG_SHAPES:
        assert r[f"shape {shape}"]["rate"] >= 0.80, (shape, r[f"shape {shape}"])
    for shape in WEAK_SHAPES:
        assert r[f"shape {shape}"]["rate"] >= 0.35, (shape, r[f"shape {shape}"])
    assert r["hazard without word"]["rate"] <= 0.02, r["hazard without word"]
    assert 0.60 <= r["professions"]["rate"] <= 0.86, r["professions"]  # card 73.0 %, trained 80 %
    assert report["checks"]["aliases together >= 0.85 × canonical"]["passed"]


@pytest.mark.slow  # the report fixture generates 888 toy images
def test_check_reports_standard_errors_and_passes_only_on_bounds(report):
    assert report["seed_base"] == 400_000_000 and report["images"] == 888
    assert report["seeds"] == [400_000_000, 400_000_000 + 887]
    shape = report["rates"]["shape+colour"]
    assert shape["n"] == 200 and shape["lower"] < shape["rate"] < shape["upper"] or shape["rate"] == 1.0
    assert shape["se"] == pytest.approx((shape["rate"] * (1 - shape["rate"]) / 200) ** 0.5)
    check = report["checks"]["shape >= 0.95"]
    assert check["bound"] == shape["lower"] and check["passed"] == (shape["lower"] >= 0.95)


@pytest.mark.slow  # the report fixture generates 888 toy images
def test_scorers_agree_on_generated_images(report):
    for head in ("shape", "colour", "hazard"):
        assert report["agreement_cnn_rule"][head]["rate"] >= 0.85, head


def test_entity_world_shares_everything_but_its_retrained_weights(toy):
    entities = Workbench.load("toy-entities")
    assert (toy.name, entities.name) == ("toy", "toy-entities")
    assert entities.tokenizer.get_vocab() == toy.tokenizer.get_vocab()
    assert entities.scheduler.config == toy.scheduler.config and entities.defaults == toy.defaults
    for part in ("unet", "text_encoder"):
        ours, base = getattr(entities, part).state_dict(), getattr(toy, part).state_dict()
        assert ours.keys() == base.keys()
        assert any(not torch.equal(ours[k], base[k]) for k in ours), part
    assert entities.fingerprint() != toy.fingerprint()
    with pytest.raises(ValueError, match="unknown toy world 'entity'; expected one of base, entities"):
        Workbench.toy("entity")
