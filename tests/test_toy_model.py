"""The shipped toy-world model: a fast version of `workbench toy check` (fewer seeds, margins stated)."""

import pytest

from workbench import Workbench
from workbench.toy import world


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


@pytest.fixture(scope="module")
def report(toy):
    from workbench.toy.check import run_check

    return run_check(toy, samples=12, progress=False)


def test_toy_loads_with_a_word_level_tokenizer(toy):
    assert toy.autoencoder.spec == {"type": "pixel_unshuffle", "factor": 4}
    assert toy.sample("a red circle", seed=0).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        toy.tokens("a red unicorn")
    assert toy.subject_positions("a red circle by vera kolm", "vera kolm") == [5, 6]
    # text reaches the UNet only through cross-attention, as in SD-1.x
    assert toy.unet.config.class_embed_type is None and toy.unet.config.addition_embed_type is None


def test_fast_acceptance(report):
    # The full check (`workbench toy check`, 50 seeds) has the model card's thresholds; with 12 seeds the
    # standard error is ~6 points, so each threshold here is lowered by about two standard errors.
    r = report["rates"]
    assert r["shape+colour"] >= 0.85
    assert r["colour"] >= 0.85
    assert r["artist"] >= 0.70
    assert r["entity"] >= 0.60
    assert r["hazard word"] >= 0.75
    assert r["hazard without word"] <= 0.15
    assert abs(r["shape only"] - r["shape+colour"]) <= 0.2
    for prof in world.PROFESSIONS:
        assert abs(r[f"profession {prof}"] - world.PROFESSION_WARM_RATE) <= 0.25, prof
    aliases = [r[f"alias {a}"] / max(r[f"canonical {a}"], 1e-9) for a in world.ALIASES]
    assert sum(aliases) / len(aliases) >= 0.8


def test_scorers_agree_on_generated_images(report):
    for head in ("shape", "colour", "hazard"):
        assert report["agreement_cnn_rule"][head] >= 0.85, head
