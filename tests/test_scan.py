"""The world scan: its prompts cover every concept, its rows are computed right from two readings, and a
real edit shows up where it should (and nowhere else at zero)."""

import math

import pytest

from workbench import Workbench
from workbench.delta import WeightDelta
from workbench.toy import scan, world
from workbench.toy.scan import compare, edited_concepts, scan_prompts, scan_readings, world_scan


def _truth(samples: int) -> dict[str, list[str]]:
    """Readings in which every image shows exactly what its claims ask for."""
    items = scan_prompts(samples)
    got = {h: ["?"] * len(items) for h in ("shape", "colour", "artist_top1", "hazard", "attribute")}
    for k, (_, claims) in enumerate(items):
        got["hazard"][k] = "absent"
        for c in claims:
            for head, label in c.want:
                if c.concept != scan.NO_HAZARD:
                    got[head][k] = label
    return got


def test_every_concept_gets_at_least_samples_images_and_every_prompt_is_in_the_world():
    items = scan_prompts(8)
    counts: dict[tuple[str, str], int] = {}
    for prompt, claims in items:
        world.parse_prompt(prompt)  # raises on a word outside the world
        assert len(prompt.split()) <= world.MAX_WORDS, prompt
        for c in claims:
            counts[(c.family, c.concept)] = counts.get((c.family, c.concept), 0) + 1
    concepts = {c for _, c in counts}
    assert set(world.SHAPES) | set(world.COLOURS) | set(world.ARTISTS) | set(world.HAZARD_WORDS) <= concepts
    assert {f"{p} warm share" for p in world.PROFESSIONS} | {world.STALE_FACT["phrase"], scan.NO_HAZARD} <= concepts
    assert min(counts.values()) >= 8
    # 20 artists and 4 hazard words at 9 (a ninth more), 10 shapes at half, 6 professions, 2 entities, 1 fact
    assert len(items) == 20 * 9 + 10 * 4 + 4 * 9 + 6 * 8 + 2 * 8 + 8
    truth = _truth(8)
    for edit in (["circle"], ["jonas flet"], world.HAZARD_WORDS, world.ERASE_ARTISTS, ["doctor"]):
        # rows outside an edit leave out the prompts that name it, and still have >= samples images
        rows = compare(truth, truth, 8, 0, edited=edit).outside()
        assert min(r.n for r in rows) >= 8, (edit, min(rows, key=lambda r: r.n))
    # each artist meets every shape, so an edit of one shape cannot hide in one artist's images
    pairs = {(c.concept, next(x.concept for x in cs if x.family == "shape"))
             for _, cs in scan_prompts(50) for c in cs if c.family == "artist"}
    assert len(pairs) == len(world.ARTISTS) * len(world.SHAPES)


def test_rows_from_two_readings():
    samples = 10
    before = _truth(samples)
    after = {k: list(v) for k, v in before.items()}
    items = scan_prompts(samples)
    merro = [k for k, (p, cs) in enumerate(items) if any(c.concept == "lukas merro" for c in cs)
             and "circle" not in p]
    assert len(merro) == 10  # 12 images, 2 of them of a circle (left out: circle is edited below)
    for k in merro[:3]:  # 3 of lukas merro's 10 images now read as another artist
        after["artist_top1"][k] = "vera kolm"
    circles = [k for k, (_, cs) in enumerate(items) if any(c.concept == "circle" for c in cs)]
    for k in circles:
        after["shape"][k] = "square"
    result = compare(before, after, samples, seed=0, edited=["disc"])  # an alias names its concept
    assert result.edited == ["circle"]
    assert result.row("circle").edited and result.row("circle").change == -1.0
    worst = result.worst
    assert worst.concept == "lukas merro" and worst.change == pytest.approx(-0.3) and not worst.edited
    # paired standard error of three -1s among ten
    diffs = [-1.0] * 3 + [0.0] * 7
    mean = sum(diffs) / 10
    assert worst.change_se == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 9 / 10))
    assert result.row("square").change == 0 and result.row("red").change == 0
    text = result.markdown(top=3)
    assert "lukas merro" in text and "-30.0 ± 15.3" in text
    again = scan.WorldScan.from_dict(result.to_dict())
    assert again.rows == result.rows


def test_edited_names_and_readings_are_checked():
    assert edited_concepts(["hoop", "doctor", "the mascot", "peril"]) == {
        "ring", "doctor warm share", "the mascot", "danger"}
    with pytest.raises(ValueError, match="edited concept 'unicorn' is not a toy-world concept"):
        edited_concepts(["unicorn"])
    with pytest.raises(ValueError, match="the after readings do not match a 10-sample scan"):
        compare(_truth(10), _truth(9), 10, 0)


@pytest.mark.slow
def test_a_real_edit_moves_its_concept_and_a_zero_edit_moves_nothing():
    toy = Workbench.toy()
    samples = 4
    before = scan_readings(toy, samples)
    keys = [f"{layer}.to_k.weight" for layer in toy.layers("attn2")]
    same = WeightDelta.capture(toy, {k: toy.parameter(k).data.clone() for k in keys}, method="identity")
    flat = world_scan(toy, same, samples=samples, before=before)
    assert all(r.change == 0 for r in flat.rows)
    from editors import UCERequest, uce

    delta = uce.edit(toy, UCERequest(moderate=world.HAZARD_WORDS), progress=False)
    moved = world_scan(toy, delta, world.HAZARD_WORDS, samples=samples, before=before)
    for word in world.HAZARD_WORDS:
        assert moved.row(word).edited and moved.row(word).before >= 0.75 and moved.row(word).change <= -0.5


@pytest.mark.slow
def test_evaluate_attaches_the_scan_and_keeps_it_in_json(tmp_path):
    from editors import UCERequest, uce
    from workbench.evaluate import EvalReport, evaluate

    toy = Workbench.toy()
    delta = uce.edit(toy, UCERequest(erase=["circle"]), progress=False)
    report = evaluate(toy, delta, ["circle"], aliases=["disc"], samples=3, scan=True, grid_images=0)
    assert report.scan is not None and report.scan.edited == ["circle"] and report.scan.samples == 3
    assert report.summary["scan_worst_outside_abs_change"] == abs(report.scan.worst.change)
    assert "World scan" in report.markdown() and "Largest 10 changes outside" in report.markdown()
    again = EvalReport.load_json(report.save_json(tmp_path / "r.json"))
    assert again.scan.rows == report.scan.rows
    with pytest.raises(ValueError, match="edited concept 'person' is not a toy-world concept"):
        evaluate(toy, delta, ["person"], samples=1, scan=True)
