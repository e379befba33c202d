"""Closed-form editors on the toy world: scorer rates before vs after, same prompts and seeds."""

import pytest
import torch

from editors import QuickFixRequest, UCERequest, quickfix, uce
from workbench import Workbench
from workbench.evaluate import evaluate, rates
from workbench.toy import world
from workbench.toy.check import concept_prompt, concept_scorer

SAMPLES = 50


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


@pytest.mark.slow
def test_uce_erases_one_shape_and_leaves_the_others(toy):
    shape = "circle"
    delta = uce(toy, UCERequest(erase=[shape], preserve=[s for s in world.SHAPES if s != shape]), progress=False)
    report = evaluate(toy, delta, [shape], holdouts=[s for s in world.SHAPES if s != shape], samples=SAMPLES)
    edited = report.group("edited")[0]
    assert edited.before >= 0.9 and edited.relative_drop >= 0.9, report.markdown()
    assert report.summary["specificity_max_abs_change"] <= 0.05 + 1e-9, report.markdown()


@pytest.mark.slow
def test_uce_erases_ten_artists_and_keeps_the_held_out_ten(toy):
    erase, hold = world.ERASE_ARTISTS, world.HELD_OUT_ARTISTS
    delta = uce(toy, UCERequest(erase=erase, preserve=hold), progress=False)
    report = evaluate(toy, delta, erase, holdouts=hold, samples=SAMPLES)
    assert report.summary["efficacy_min_relative_drop"] >= 0.8, report.markdown()
    assert report.summary["specificity_max_abs_change"] <= 0.05 + 1e-9, report.markdown()


@pytest.mark.slow
def test_uce_moderates_every_hazard_word(toy):
    delta = uce(toy, UCERequest(moderate=world.HAZARD_WORDS), progress=False)
    aliases = [a for a, c in world.ALIASES.items() if c in world.HAZARD_WORDS]
    report = evaluate(toy, delta, world.HAZARD_WORDS, aliases=aliases, unrelated=["red", "square", "vera kolm"],
                      samples=SAMPLES)
    assert all(r.after <= 0.05 for r in report.group("edited")), report.markdown()
    assert all(abs(r.change) <= 0.05 for r in report.group("unrelated")), report.markdown()


@pytest.mark.slow
def test_uce_debiases_a_profession(toy):
    def attributes(images):
        from workbench.toy import classifier

        p = classifier.score(images)["attribute"]
        return p[:, [classifier.HEADS["attribute"].index("warm"), classifier.HEADS["attribute"].index("cool")]]

    delta = uce(toy, UCERequest(debias={"doctor": {"warm": 0.5, "cool": 0.5}}), attribute_scorer=attributes,
                debias_samples=48, progress=False)
    with delta.applied(toy):
        images = toy.sample(["a doctor"] * 100, seed=5000)
    warm_rate = float((attributes(images)[:, 0] > 0.5).float().mean())
    assert abs(warm_rate - 0.5) <= 0.10, (warm_rate, delta.metadata["debias_history"])


@pytest.mark.slow
def test_quickfix_erases_an_artist_on_the_layer_tracing_picks(toy):
    from tracing import trace_text_encoder

    artist = world.ERASE_ARTISTS[0]
    trace = trace_text_encoder(toy, f"a red circle by {artist}", artist, kind="self_attn", metric="proxy",
                               samples=5, progress=False)
    layer = trace.pick_layers(1)[0]
    delta = quickfix(toy, QuickFixRequest([artist], ["circle"]), [layer])
    report = evaluate(toy, delta, [artist], holdouts=world.HELD_OUT_ARTISTS[:5], samples=SAMPLES)
    assert report.group("edited")[0].relative_drop >= 0.8, (layer, report.markdown())
    assert report.summary["specificity_max_abs_change"] <= 0.05 + 1e-9, report.markdown()


@pytest.mark.slow
def test_quickfix_updates_the_stale_fact(toy):
    new = "blue square"
    delta = quickfix(toy, QuickFixRequest([world.STALE_FACT["phrase"]], [new]))
    with delta.applied(toy):
        after = rates(toy, ["the mascot"], concept_prompt, lambda c: concept_scorer(new), SAMPLES)[0]
    before = rates(toy, ["the mascot"], concept_prompt, lambda c: concept_scorer(new), SAMPLES)[0]
    assert before <= 0.1 and after >= 0.8, (before, after)


def test_editor_bad_input(toy):
    with pytest.raises(ValueError, match="empty UCE request"):
        UCERequest()
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        uce(toy, UCERequest(erase=["unicorn"]), progress=False)
    with pytest.raises(ValueError, match="is a 'resnet' layer"):
        uce(toy, UCERequest(erase=["circle"]), [toy.layers("resnet")[0]], progress=False)
    with pytest.raises(ValueError, match="is a 'attn2' layer"):
        quickfix(toy, QuickFixRequest(["circle"], ["square"]), [toy.layers("attn2")[0]])
    before = {n: toy.parameter(n).clone() for n in (toy.layers("to_k")[0] + ".weight",)}
    with pytest.raises(ValueError, match="NaN or inf"):
        uce(toy, UCERequest(erase=["circle"], lam=float("nan")), progress=False)
    for n, w in before.items():
        assert torch.equal(toy.parameter(n), w)
