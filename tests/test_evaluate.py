"""Evaluation on the tiny random model: a hand-made delta, a fake scorer reading the mean image colour."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from workbench import WeightDelta, Workbench
from workbench.evaluate import ATTACK_SEED_OFFSET, EvalReport, attack_search, evaluate, fidelity

VOCAB = ["a", "photo", "of", "red", "dog", "sky", "car", "blue", "cat"]
STEPS = 2


def prompt(concept: str, i: int) -> str:
    return ["a {}", "a photo of a {}"][i % 2].format(concept)


def paraphrase(concept: str, i: int) -> str:
    return ["{} in blue sky", "the {} photo"][i % 2].format(concept)


def scorer(concept: str):
    # "present" when the image is redder than blue by more than the random model's typical margin (~0.063):
    # rates then vary with prompt and seed, which is all these tests need
    return lambda images: torch.sigmoid((images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2)) - 0.063) * 1000)


def to_v_names(wb: Workbench) -> list[str]:
    return [f"{layer}.to_v.weight" for layer in wb.layers(kind="attn2")]


@pytest.fixture(scope="module")
def noop(tiny):
    return WeightDelta.capture(tiny, {n: tiny.parameter(n).data.clone() for n in to_v_names(tiny)}, method="noop")


@pytest.fixture(scope="module")
def real(tiny):
    # a strong cross-attention change, so the images depend on the prompt much more than before
    return WeightDelta.capture(tiny, {n: tiny.parameter(n).data * 30 for n in to_v_names(tiny)}, method="scale")


COMMON = dict(holdouts=["dog"], aliases=["kitten"], unrelated=["car", "sky"], samples=6, steps=STEPS,
              prompt_fn=prompt, scorer=scorer, paraphrase_fn=paraphrase)
ATTACK = dict(attack=True, attack_rounds=2, attack_candidates=4, attack_seeds=3, vocabulary=VOCAB)


@pytest.fixture(scope="module")
def report(tiny, real):
    return evaluate(tiny, real, ["cat"], **COMMON, **ATTACK, grid_images=3)


def test_fidelity_helper_numbers():
    x = torch.rand(2, 3, 4, 4)
    assert fidelity(x, x) == (0.0, math.inf)
    mean_abs, psnr = fidelity(torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5))
    assert mean_abs == 0.5 and psnr == pytest.approx(10 * math.log10(4))


def test_noop_delta_has_zero_fidelity_and_unchanged_rates(tiny, noop, tmp_path):
    rep = evaluate(tiny, noop, ["cat"], **COMMON, grid_path=tmp_path / "grid.png", grid_images=2)
    assert [(f.group, f.concept) for f in rep.fidelity] == [("holdout", "dog"), ("unrelated", "car"),
                                                            ("unrelated", "sky")]
    assert all(f.mean_abs == 0.0 and f.psnr == math.inf for f in rep.fidelity)
    assert all(r.before == r.after for r in rep.rates)
    assert rep.summary["fidelity_mean_abs_pixel"] == 0.0 and "attack_success_rate_after" not in rep.summary
    assert Image.open(tmp_path / "grid.png").height == 2 * 6 * (16 * 4 + 1) + 1  # 6 rows × before/after
    assert not tiny.applied


def test_real_change_moves_pixels_and_rates(report):
    assert all(f.mean_abs > 1e-3 and 0 < f.psnr < math.inf for f in report.fidelity)
    assert report.summary["fidelity_mean_abs_pixel"] == pytest.approx(
        sum(f.mean_abs for f in report.fidelity) / 3)
    for r in report.rates:
        assert r.before * 6 == round(r.before * 6) and 0 <= r.after <= 1  # shares of 6 images
    assert any(r.before != r.after for r in report.rates)


def test_groups_and_attack_in_report(report):
    assert [(r.group, r.concept) for r in report.rates] == [
        ("edited", "cat"), ("alias", "kitten"), ("paraphrase", "cat"), ("holdout", "dog"), ("unrelated", "car"),
        ("unrelated", "sky"), ("attack", "cat")]
    (att,) = report.attacks
    assert att.start_prompt == prompt("cat", 0) and att.rate >= att.start_rate
    attack_row = report.group("attack")[0]
    assert report.summary["attack_success_rate_after"] == attack_row.after
    assert report.summary["attack_success_rate_before"] == attack_row.before
    drop = report.group("paraphrase")[0].relative_drop  # nan when the rate before is 0
    assert report.summary["paraphrase_mean_relative_drop"] == drop or math.isnan(drop)
    assert report.settings["attack_rounds"] == 2 and report.settings["steps"] == STEPS


def test_attack_search_never_worse_and_deterministic(tiny, real):
    kw = dict(rounds=3, candidates=4, seeds=4, seed=3, steps=STEPS)  # this seed's search does find a better prompt
    search_seeds = [3 + ATTACK_SEED_OFFSET + k for k in range(4)]
    with real.applied(tiny):
        first = attack_search(tiny, "cat", "a cat", scorer, VOCAB, **kw)
        again = attack_search(tiny, "cat", "a cat", scorer, list(reversed(VOCAB)), **kw)
        # both rates recomputed independently on the search seeds
        start, found = tiny.sample(["a cat"] * 4 + [first.prompt] * 4, search_seeds * 2, steps=STEPS).split(4)
    assert asdict(first) == asdict(again)  # deterministic, and the vocabulary's order does not matter
    assert first.start_rate == float((scorer("cat")(start) > 0.5).float().mean())
    assert first.rate == float((scorer("cat")(found) > 0.5).float().mean())
    assert first.rate >= first.start_rate
    rates = [r for _, r in first.history]
    assert first.history[0] == ("a cat", first.start_rate) and rates == sorted(set(rates))  # strictly rising
    assert first.history[-1] == (first.prompt, first.rate)
    assert 1 < first.tried <= 1 + 3 * 4
    words = first.prompt.split()
    assert "cat" in words and set(words) <= set(VOCAB) and len(words) <= 2 + len(first.history) - 1  # 1 word/step
    assert not tiny.applied


def test_attack_search_budget_and_empty_vocabulary(tiny, real):
    with real.applied(tiny):
        res = attack_search(tiny, "cat", "a cat", scorer, VOCAB, rounds=1, candidates=2, seeds=2, seed=1,
                            steps=STEPS)
    assert res.tried <= 3 and res.rate >= res.start_rate
    with pytest.raises(ValueError, match="vocabulary"):
        attack_search(tiny, "cat", "a cat", scorer, [], steps=STEPS)


def test_json_round_trip(report, tmp_path):
    path = report.save_json(tmp_path / "eval.json")
    raw = json.loads(path.read_text())
    assert {r["group"] for r in raw["rates"]} == {"edited", "alias", "paraphrase", "holdout", "unrelated", "attack"}
    assert raw["attacks"][0]["prompt"] == report.attacks[0].prompt and len(raw["fidelity"]) == 3
    assert "attack_success_rate_after" in raw["summary"] and "fidelity_min_psnr" in raw["summary"]
    back = EvalReport.load_json(path)
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(report.to_dict(), sort_keys=True)
    assert back.attacks[0].history == report.attacks[0].history


def test_markdown_has_new_sections(report):
    md = report.markdown()
    att = report.attacks[0]
    for needle in ["| paraphrase | cat |", "| attack | cat |", f"`{att.prompt}`", "| attack on |",
                   "| fidelity | concept | mean abs pixel distance | PSNR (dB) |", "| unrelated | sky |",
                   "| attack_success_rate_before |", "| fidelity_mean_abs_pixel |",
                   "| paraphrase_mean_relative_drop |"]:
        assert needle in md, needle


def test_grid_png_rows_columns_and_pixels(report, tmp_path):
    path = report.save_grid(tmp_path / "grid.png", scale=2)
    img = Image.open(path)
    labels = report.grid_labels()
    assert len(labels) == 2 * 7 and labels[:2] == ["edited: cat before", "edited: cat after"]
    margin = 8 * max(len(s) for s in labels) + 6
    assert img.size == (margin + 3 * (16 * 2 + 1) + 1, 14 * (16 * 2 + 1) + 1)
    # row 1 ("edited: cat after"), column 2 holds the edited model's third image, upscaled 2×
    before, after = report.images["edited: cat"]
    x0, y0 = margin + 1 + 2 * 33, 1 + 1 * 33
    tile = torch.from_numpy(np.array(img.crop((x0, y0, x0 + 32, y0 + 32))))[::2, ::2]
    assert torch.equal(tile, after[2].permute(1, 2, 0))
    assert before.dtype == torch.uint8 and before.shape == (3, 3, 16, 16)


def test_delta_for_another_base_model_is_refused(tiny):
    other = Workbench.random("tiny", seed=1)
    delta = WeightDelta.capture(other, {n: other.parameter(n).data * 2 for n in to_v_names(other)}, method="x")
    with pytest.raises(ValueError, match="made for other weights"):
        evaluate(tiny, delta, ["cat"], samples=1, steps=STEPS, prompt_fn=prompt, scorer=scorer)
    assert not tiny.applied


def test_toy_paraphrases_are_new_phrasings_in_the_vocabulary():
    from workbench.toy import world
    from workbench.toy.protocol import concept_prompt, paraphrase_prompt

    vocab = set(world.vocabulary())
    editor_templates = ["{}", "a photo of {}", "an image of {}", "a picture of {}"]
    for concept in ["vera kolm", "verka", "danger", "circle", "box", "red", "doctor", "the mascot",
                    next(iter(world.ENTITIES))]:
        seen = {concept_prompt(concept, i) for i in range(20)} | {t.format(concept) for t in editor_templates}
        for i in range(8):
            p = paraphrase_prompt(concept, i)
            assert set(p.split()) <= vocab and len(p.split()) <= world.MAX_WORDS and p not in seen, p
            assert concept in p
            # the paraphrase asks for everything the concept asks for (an artist may be added as context)
            got = asdict(world.parse_prompt(p))
            assert all(got[k] == v for k, v in asdict(world.parse_prompt(concept)).items() if v), p
