"""A broken model, image or score never becomes an efficacy number."""

from __future__ import annotations

import math

import pytest
import torch

from workbench import Patch, WeightDelta, Workbench
from workbench.delta import tensor_hash
from workbench.evaluate import collapse_flags, evaluate

COMMON = dict(samples=4, steps=2, prompt_fn=lambda c, i: f"a photo of a {c}",
              scorer=lambda c: lambda im: im[:, 0].mean((1, 2)))


def weights(wb: Workbench) -> dict[str, str]:
    return {f"{p}.{n}": tensor_hash(t) for p, m in wb.parts.items() for n, t in m.state_dict().items()}


def test_collapse_flags_on_made_up_images():
    gen = torch.Generator().manual_seed(0)
    before = torch.rand(8, 3, 8, 8, generator=gen)
    assert collapse_flags(before, before.clone(), ["edited 'a'", "holdout 'b'"], [False, True], 4) == []
    blank = before.clone()
    blank[:2] = 0.0
    flags = collapse_flags(before, blank, ["edited 'a'", "holdout 'b'"], [False, True], 4)
    assert len(flags) == 1 and "2 of 4 images of edited 'a' blank" in flags[0]
    alike = before.clone()
    alike[4:] = before[4] + 0.01 * torch.rand(4, 3, 8, 8, generator=gen)  # held-out images all the same
    flags = collapse_flags(before, alike, ["edited 'a'", "holdout 'b'"], [False, True], 4)
    assert len(flags) == 1 and "collapsed" in flags[0] and "images vary" in flags[0]
    # two kept concepts rendering the same image at each seed: the prompt no longer matters
    ignored = before.clone()
    ignored[4:] = before[:4]
    labels = ["holdout 'a'", "holdout 'b'"]
    assert collapse_flags(before, before, labels, [True, True], 4) == []
    flags = collapse_flags(before, ignored, labels, [True, True], 4)
    assert len(flags) == 1 and "prompts differ from each other 0%" in flags[0]


def test_a_destroyed_model_is_flagged_and_reports_no_efficacy():
    wb = Workbench.random("tiny", seed=0)
    # a UNet whose prediction ignores its input: every image the same, whatever the prompt or seed
    new = {"unet.conv_out.weight": torch.zeros_like(wb.parameter("unet.conv_out.weight")),
           "unet.conv_out.bias": torch.full_like(wb.parameter("unet.conv_out.bias"), 3.0)}
    delta = WeightDelta.capture(wb, new, method="broken")
    before = weights(wb)
    report = evaluate(wb, delta, ["cat"], holdouts=["dog"], unrelated=["car"], **COMMON)
    assert report.flags and any("collapsed" in f or "blank" in f for f in report.flags)
    assert math.isnan(report.summary["efficacy_mean_relative_drop"])
    assert "Warning" in report.markdown() and report.to_dict()["flags"] == report.flags
    assert weights(wb) == before


def test_a_healthy_edit_is_not_flagged():
    wb = Workbench.random("tiny", seed=0)
    name = f"{wb.layers(kind='attn2')[0]}.to_v.weight"
    delta = WeightDelta.capture(wb, {name: wb.parameter(name).data * 0.9}, method="small")
    report = evaluate(wb, delta, ["cat"], holdouts=["dog"], unrelated=["car"], **COMMON)
    assert report.flags == [] and not math.isnan(report.summary["efficacy_mean_relative_drop"] or 0.0)


@pytest.mark.parametrize("bad", [float("nan"), "shape"])
def test_a_broken_scorer_is_an_error_not_a_rate(bad):
    wb = Workbench.random("tiny", seed=0)
    name = f"{wb.layers(kind='attn2')[0]}.to_v.weight"
    delta = WeightDelta.capture(wb, {name: wb.parameter(name).data.clone()}, method="noop")

    def scorer(concept):
        return lambda im: torch.full((len(im),), bad) if bad != "shape" else torch.zeros(len(im), 2)

    with pytest.raises(ValueError, match="scorer for 'cat' returned"):
        evaluate(wb, delta, ["cat"], **{**COMMON, "scorer": scorer})
    assert not wb.applied


def test_nan_from_a_patch_is_an_error_not_black_images():
    wb = Workbench.random("tiny", seed=0)
    layer = wb.layers(kind="attn2")[0]
    with pytest.raises(ValueError, match="NaN or inf latents"):
        wb.generate(["a cat"], steps=2, patches=[Patch(layer, lambda x: x * float("inf"))])


@pytest.mark.parametrize("kwargs, words", [
    ({"samples": 0}, "samples"), ({"threshold": 1.5}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"attack_rounds": 0}, "attack_rounds"), ({"grid_images": -1}, "grid_images"), ({"seed": -1}, "seed"),
    ({"holdouts": [""]}, "holdout"), ({"batch_size": 0}, "batch_size"), ({"steps": 0}, "steps"),
])
def test_evaluate_arguments_are_checked(kwargs, words):
    wb = Workbench.random("tiny", seed=0)
    name = f"{wb.layers(kind='attn2')[0]}.to_v.weight"
    delta = WeightDelta.capture(wb, {name: wb.parameter(name).data.clone()}, method="noop")
    before = weights(wb)
    with pytest.raises(ValueError, match=words):
        evaluate(wb, delta, ["cat"], **{**COMMON, **kwargs})
    assert weights(wb) == before and not wb.applied


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"guidance": float("nan")}, "guidance"),
    ({"seed": -2}, "seed"), ({"seed": [0, 1]}, "2 seeds for 1 prompts"), ({"batch_size": 0}, "batch_size"),
])
def test_sample_arguments_are_checked(kwargs, words):
    wb = Workbench.random("tiny", seed=0)
    with pytest.raises(ValueError, match=words):
        wb.sample(["a cat"], **kwargs)


@pytest.mark.parametrize("patch, words", [
    (lambda layer: Patch(layer, torch.tensor([float("nan")])), "NaN"),
    (lambda layer: Patch(layer, float("inf")), "NaN or inf"),
    (lambda layer: Patch(layer, "zero"), "value must be"),
    (lambda layer: Patch(layer, 0.0, rows=[0.5]), "rows must be whole"),
    (lambda layer: Patch(layer, 0.0, positions=["a"]), "positions must be whole"),
    (lambda layer: Patch(3, 0.0), "layer name"),
])
def test_bad_patches_are_refused(patch, words):
    with pytest.raises((ValueError, TypeError), match=words):
        patch("unet.mid_block.attentions.0.transformer_blocks.0.attn2")


def test_a_model_without_a_world_needs_its_prompts_and_scorer_named(tiny):
    name = tiny.layers("to_v")[0] + ".weight"
    delta = WeightDelta.capture(tiny, {name: tiny.parameter(name).detach() * 1.01}, method="test")
    assert tiny.world is None
    for missing, given in (("prompt_fn, scorer", {}), ("scorer", {"prompt_fn": COMMON["prompt_fn"]}),
                           ("prompt_fn", {"scorer": COMMON["scorer"]})):
        with pytest.raises(ValueError, match=f"has no world .* pass {missing}$"):
            evaluate(tiny, delta, ["cat"], samples=2, **given)
    with pytest.raises(ValueError, match="has no world scan"):
        evaluate(tiny, delta, ["cat"], scan=True, **COMMON)
    with pytest.raises(ValueError, match="pass vocabulary"):
        evaluate(tiny, delta, ["cat"], attack=True, **COMMON)
