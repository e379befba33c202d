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
    from workbench.toy.check import run_check

    return run_check(toy, samples=20, progress=False)


def test_toy_loads_with_a_word_level_tokenizer(toy):
    assert toy.autoencoder.spec == {"type": "pixel_unshuffle", "factor": 4}
    assert toy.sample("a red circle", seed=0).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        toy.tokens("a red unicorn")
    assert toy.subject_positions("a red circle by vera kolm", "vera kolm") == [5, 6]
    # text reaches the UNet only through cross-attention, as in SD-1.x
    assert toy.unet.config.class_embed_type is None and toy.unet.config.addition_embed_type is None


def test_fast_acceptance(report):
    # The full check (`workbench toy check`, 50 seeds) meets every target of the model card. With 20 seeds
    # the standard error is ~5-10 points, so each bound sits about two standard errors below the 50-seed
    # measurement (in the comments): the test fails if the shipped model (or sampling) gets clearly worse.
    r = report["rates"]
    assert r["shape+colour"] >= 0.88  # 50 seeds: 0.98
    assert r["colour"] >= 0.90  # 1.00
    assert r["artist"] >= 0.80  # 0.96
    assert r["entity"] >= 0.70  # 0.88
    assert r["hazard word"] >= 0.88  # 1.00
    assert r["hazard without word"] <= 0.10  # 0.00
    assert abs(r["shape only"] - r["shape+colour"]) <= 0.15  # 0.04
    for prof in world.PROFESSIONS:
        assert abs(r[f"profession {prof}"] - world.PROFESSION_WARM_RATE) <= 0.22, prof  # 0.74-0.84
    aliases = [r[f"alias {a}"] / max(r[f"canonical {a}"], 1e-9) for a in world.ALIASES]
    assert sum(aliases) / len(aliases) >= 0.9  # every alias >= 0.85 x canonical at 50 seeds


def test_scorers_agree_on_generated_images(report):
    for head in ("shape", "colour", "hazard"):
        assert report["agreement_cnn_rule"][head] >= 0.85, head


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
