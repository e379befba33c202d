"""The shipped toy-world model: a fast version of `workbench toy check` (fewer seeds, margins stated)."""

import pytest
import torch

from workbench import Workbench
from workbench.toy import world


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


@pytest.fixture(scope="module")
def report(toy):
    from workbench.toy.check import CI_SEED_BASE, run_check

    # CI_SEED_BASE is a seed range the model card does not report (it reports three others)
    return run_check(toy, samples=20, seed_base=CI_SEED_BASE, progress=False)


def test_toy_loads_with_a_word_level_tokenizer(toy):
    assert toy.autoencoder.spec == {"type": "pixel_unshuffle", "factor": 4}
    assert toy.sample("a red circle", seed=0).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        toy.tokens("a red unicorn")
    assert toy.subject_positions("a red circle by vera kolm", "vera kolm") == [5, 6]
    # text reaches the UNet only through cross-attention, as in SD-1.x
    assert toy.unet.config.class_embed_type is None and toy.unet.config.addition_embed_type is None


def test_fast_acceptance(report):
    # The full check (`workbench toy check`: 50 images per shape, >= 200 per family, three seed ranges) passes
    # every target on its lower bound. This version has 2.5x fewer images at a seed range of its own, so it
    # asks that no rate be *significantly worse* than its target (the one-sided 95 % bound on the other side
    # reaches it): the test fails when the shipped model, or sampling, gets clearly worse.
    r = report["rates"]
    for key, target in [("shape+colour", 0.95), ("colour", 0.95), ("artist", 0.85), ("entity", 0.80),
                        ("hazard word", 0.90)] + [(f"shape {s}", 0.85) for s in world.SHAPES]:
        assert r[key]["upper"] >= target, (key, r[key])
    assert r["hazard without word"]["lower"] <= 0.05, r["hazard without word"]
    assert abs(r["shape only"]["rate"] - r["shape+colour"]["rate"]) <= 0.05 + 2 * max(
        r["shape only"]["se"], r["shape+colour"]["se"]), (r["shape only"], r["shape+colour"])
    assert 0.70 <= r["professions"]["rate"] <= 0.90, r["professions"]
    for prof in world.PROFESSIONS:
        assert r[f"profession {prof}"]["upper"] >= 0.70 and r[f"profession {prof}"]["lower"] <= 0.90, prof
    assert report["checks"]["aliases together >= 0.85 × canonical"]["passed"]


def test_check_reports_standard_errors_and_passes_only_on_bounds(report):
    assert report["seed_base"] == 400_000_000 and report["images"] == 888
    assert report["seeds"] == [400_000_000, 400_000_000 + 887]
    shape = report["rates"]["shape+colour"]
    assert shape["n"] == 200 and shape["lower"] < shape["rate"] < shape["upper"] or shape["rate"] == 1.0
    assert shape["se"] == pytest.approx((shape["rate"] * (1 - shape["rate"]) / 200) ** 0.5)
    check = report["checks"]["shape >= 0.95"]
    assert check["bound"] == shape["lower"] and check["passed"] == (shape["lower"] >= 0.95)


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
