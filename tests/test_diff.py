"""workbench diff: descriptions ranked by how well they tell base from edited images apart (VisDiff).

The statistics are checked against scipy and scikit-learn; the ranking on planted score sets and image
folders; the toy world's must-shows (an erased artist tops "removed", nothing else moves on unrelated
prompts, a debiased profession's attribute tops "added", both rankers agree) on generated images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from workbench import stats
from workbench.app.cli import main
from workbench.measure import diff
from workbench.world import Description

# ---------------------------------------------------------------- statistics against independent code


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 5, (4, 30)) / 4, rng.integers(0, 5, (4, 23)) / 4  # many ties
    got = stats.auroc(a, b)
    for i in range(4):
        want = roc_auc_score(np.r_[np.ones(30), np.zeros(23)], np.r_[a[i], b[i]])
        assert got[i] == pytest.approx(want, abs=1e-12)
        u = sps.mannwhitneyu(a[i], b[i]).statistic
        assert got[i] == pytest.approx(u / (30 * 23), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_t_tests_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    before = rng.random((5, 40))
    after = before + rng.normal(0, 0.1, (5, 40)) + np.linspace(-0.1, 0.1, 5)[:, None]
    paired = stats.paired_t(before, after)
    want = sps.ttest_rel(after, before, axis=1)
    np.testing.assert_allclose(paired.t, want.statistic, rtol=1e-10)
    np.testing.assert_allclose(paired.p, want.pvalue, rtol=1e-8)
    other = rng.random((5, 25)) * 1.5
    welch = stats.welch_t(before, other)
    want = sps.ttest_ind(other, before, axis=1, equal_var=False)
    np.testing.assert_allclose(welch.t, want.statistic, rtol=1e-10)
    np.testing.assert_allclose(welch.p, want.pvalue, rtol=1e-8)


def test_t_test_without_spread():
    same = np.array([[0.2, 0.2, 0.2]])
    assert stats.paired_t(same, same).p[0] == 1.0  # nothing changed
    assert stats.paired_t(same, same + 0.5).p[0] == 0.0  # the same change on every pair


def _holm_by_hand(p):
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrections_equal_independent_code(seed):
    p = np.random.default_rng(seed).random(17) ** 3
    np.testing.assert_allclose(stats.adjust(p, "holm"), _holm_by_hand(list(p)), rtol=1e-12)
    np.testing.assert_allclose(stats.adjust(p, "bh"), sps.false_discovery_control(p, method="bh"), rtol=1e-10)
    np.testing.assert_allclose(stats.adjust(p, "bonferroni"), np.minimum(1, p * 17))
    with pytest.raises(ValueError, match="unknown correction 'sidak'"):
        stats.adjust(p, "sidak")
    with pytest.raises(ValueError, match="p-values in"):
        stats.adjust([0.1, 1.5])


# ---------------------------------------------------------------- ranking planted scores

DESCS = [Description("gone", family="f"), Description("new", family="f"), Description("same", family="f"),
         Description("faint", family="f")]


def planted(n=60, seed=0):
    rng = np.random.default_rng(seed)
    before = np.stack([rng.uniform(0.8, 1.0, n), rng.uniform(0, 0.1, n), rng.uniform(0.3, 0.7, n),
                       rng.uniform(1e-5, 2e-5, n)])
    after = before.copy()
    after[0], after[1] = rng.uniform(0, 0.2, n), rng.uniform(0.6, 1.0, n)
    after[2] += rng.normal(0, 0.01, n)
    after[3] /= 100  # a change of 1e-5 on every image: no picture shows it
    return before, after


def test_directions_significance_and_resolution():
    before, after = planted()
    rows = diff.compare(before, after, DESCS, paired=True)
    result = diff.DiffResult(rows, 60, 60, True)
    assert result.removed()[0].name == "gone" and result.removed()[0].auroc == 1.0
    assert result.added()[0].name == "new" and result.added()[0].separation == 1.0
    assert {r.name for r in result.significant()} == {"gone", "new"}
    faint = result.row("faint")
    assert faint.auroc == 0.5 and faint.mean_diff == 0 and not faint.significant
    # read at full resolution, the invisible change separates the sets perfectly
    raw = diff.compare(before, after, DESCS, paired=True, resolution=0.0)
    assert raw[3].auroc == 1.0
    assert result.top.name in ("gone", "new")
    gone = result.row("gone")
    i, j = gone.examples[0]
    assert i == j and before[0, i] - after[0, i] == (before[0] - after[0]).max()


def test_unpaired_rows_and_examples():
    before, after = planted()
    rows = diff.compare(before, after[:, :45], DESCS, paired=False)
    assert rows[0].auroc == 1.0 and rows[0].auroc_shown is None and rows[0].significant
    a, b = rows[0].examples[0]
    assert before[0, a] == before[0].max() and after[0, b] == after[0, :45].min()


@pytest.mark.parametrize("kw, match", [
    (dict(correction="fdr"), "unknown correction 'fdr'"), (dict(alpha=1.5), "alpha must be in"),
    (dict(threshold=0.0), "threshold must be in"), (dict(resolution=0.5), "resolution must be in")])
def test_bad_settings_are_one_line_errors(kw, match):
    before, after = planted()
    with pytest.raises(ValueError, match=match):
        diff.compare(before, after, DESCS, paired=True, **kw)


def test_broken_scores_never_yield_a_number():
    before, after = planted()
    after[2, 3] = np.nan
    with pytest.raises(ValueError, match="probabilities in"):
        diff.compare(before, after, DESCS, paired=True)
    with pytest.raises(ValueError, match="at least 2 images"):
        diff.compare(before[:, :1], after[:, :1], DESCS, paired=True)
    with pytest.raises(ValueError, match="as many images after as before"):
        diff.compare(before, after[:, :5], DESCS, paired=True)


# ---------------------------------------------------------------- proposers


def test_description_files_aliases_and_duplicates(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text("# my list\ncat | kitten | kitty\n\ndog  # a comment\n")
    got = diff.read_descriptions(f)
    assert [(d.text, d.aliases) for d in got] == [("cat", ("kitten", "kitty")), ("dog", ())]
    f.write_text("cat\nkitten | cat\n")
    with pytest.raises(ValueError, match="'cat' is given twice"):
        diff.load_descriptions([str(f)])
    f.write_text("cat | | kitty\n")
    with pytest.raises(ValueError, match="line 1: an empty alternative"):
        diff.read_descriptions(f)
    with pytest.raises(ValueError, match="does not exist"):
        diff.load_descriptions([str(tmp_path / "none.txt")])
    with pytest.raises(ValueError, match="unknown vocabulary 'vocab:nope': expected one of vocab:artists"):
        diff.load_descriptions(["vocab:nope"])
    with pytest.raises(ValueError, match="no world vocabulary"):
        diff.load_descriptions(["world"], None)


def test_shipped_vocabularies_parse():
    known = diff.vocabularies()
    assert {"artists", "imagenette", "i2p", "cifar10"} <= set(known)
    sizes = {name: len(diff.load_descriptions([f"vocab:{name}"])) for name in known}
    assert sizes["imagenette"] == 10 and sizes["i2p"] == 7 and sizes["cifar10"] == 10 and sizes["artists"] >= 40


def test_toy_world_descriptions_merge_aliases(toy_world):
    descs = toy_world.descriptions()
    names = [d.name for d in descs]
    assert len(names) == len(set(names)) == 43
    assert "disc" not in names and diff.as_descriptions(descs)  # aliases are merged, none twice
    hazard = next(d for d in descs if d.name == "hazard mark")
    assert {"danger", "toxic", "poison", "hazard", "peril"} <= {hazard.text, *hazard.aliases}
    for d in descs:  # both toy rankers read every description
        toy_world.scorers["toy"]()(d.text)
        toy_world.scorers["toy-clip"]()(d.text)


@pytest.fixture(scope="module")
def toy_world():
    from workbench.toy.protocol import toy_world

    return toy_world()


# ---------------------------------------------------------------- folders


def _red_scorer(concept):
    if concept not in ("red", "blue"):
        raise ValueError(f"red scorer: cannot read {concept!r}")
    c = 0 if concept == "red" else 2
    return lambda x: x[:, c].mean((1, 2))


def _write(folder, names, colours):
    folder.mkdir()
    for name, colour in zip(names, colours, strict=True):
        Image.new("RGB", (8, 8), colour).save(folder / name)


def test_folders_pair_by_name_and_refuse_bad_ones(tmp_path):
    names = [f"{i:03d}.png" for i in range(12)]
    _write(tmp_path / "a", names, [(200 + i, 10, 10) for i in range(12)])
    _write(tmp_path / "b", names, [(10, 10, 200 + i) for i in range(12)])
    r = diff.diff_folders(tmp_path / "a", tmp_path / "b", descriptions=["red", "blue"], scorer=_red_scorer)
    assert r.paired and r.row("red").direction == "removed" and r.row("blue").direction == "added"
    assert r.row("red").significant and r.labels == names
    _write(tmp_path / "c", [f"x{n}" for n in names], [(10, 10, 200)] * 12)
    r = diff.diff_folders(tmp_path / "a", tmp_path / "c", descriptions=["red"], scorer=_red_scorer)
    assert not r.paired and r.row("red").auroc == 1.0
    with pytest.raises(ValueError, match="paired folders need the same file names"):
        diff.diff_folders(tmp_path / "a", tmp_path / "c", descriptions=["red"], scorer=_red_scorer, paired=True)
    with pytest.raises(ValueError, match="red scorer: cannot read 'green'"):
        diff.diff_folders(tmp_path / "a", tmp_path / "b", descriptions=["green"], scorer=_red_scorer)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png' is not an image PIL can read"):
        diff.read_image_folder(tmp_path / "d")
    _write(tmp_path / "e", ["1.png"], [(0, 0, 0)])
    Image.new("RGB", (9, 8)).save(tmp_path / "e" / "2.png")
    with pytest.raises(ValueError, match="differ in size"):
        diff.read_image_folder(tmp_path / "e")
    (tmp_path / "f").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        diff.read_image_folder(tmp_path / "f")
    with pytest.raises(ValueError, match="does not exist"):
        diff.read_image_folder(tmp_path / "missing")


def test_outputs_are_written_once_and_plot_has_pairs(tmp_path):
    names = [f"{i:03d}.png" for i in range(6)]
    _write(tmp_path / "a", names, [(220, 10, 10)] * 6)
    _write(tmp_path / "b", names, [(10, 10, 220)] * 6)
    r = diff.diff_folders(tmp_path / "a", tmp_path / "b", descriptions=["red", "blue"], scorer=_red_scorer)
    paths = r.save(tmp_path / "out")
    assert [p.name for p in paths] == list(diff.OUTPUTS)
    saved = diff.DiffResult.load_json(tmp_path / "out" / "diff.json")
    assert saved.rows == r.rows and saved.summary() == r.summary()
    assert "| red |" in (tmp_path / "out" / "diff.md").read_text()
    assert Image.open(tmp_path / "out" / "diff.png").size[0] > 400
    with pytest.raises(FileExistsError):
        r.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "diff.json").read_text())["summary"]["top"] in ("red", "blue")


# ---------------------------------------------------------------- the toy world


@pytest.fixture(scope="module")
def toy():
    from workbench import Workbench

    return Workbench.toy()


@pytest.fixture(scope="module")
def artist_erased(toy):
    from workbench.toy import recipes

    return recipes.quickfix_erase_artist(toy)[0]


@pytest.mark.slow
@pytest.mark.parametrize("ranker", ["toy", "toy-clip"])
def test_an_erased_artist_tops_removed_and_nothing_else_moves(toy, artist_erased, ranker):
    from workbench.measure import load_scorer
    from workbench.toy import world
    from workbench.toy.protocol import concept_prompt

    scorer = load_scorer(ranker, world=toy.world)
    own = [concept_prompt("jonas flet", i) for i in range(16)]
    r = diff.diff_edit(toy, artist_erased, own, seed=7_000_000, scorer=scorer)
    top = r.removed(1)[0]
    assert top.name == "jonas flet" and top.auroc >= 0.9 and top.significant
    # prompts naming neither the artist nor its alias: every other artist and shape
    others = [a for a in world.ARTISTS if a != "jonas flet"]
    unrelated = [concept_prompt(a, i) for i, a in enumerate(others * 2)] + [concept_prompt(s, i) for i, s in
                                                                             enumerate(world.SHAPES)]
    r = diff.diff_edit(toy, artist_erased, unrelated, seed=7_100_000, scorer=scorer)
    assert r.significant() == [], r.markdown(3)
    assert r.top.separation < 0.6


@pytest.mark.slow
def test_debiasing_a_profession_adds_its_attribute(toy, doctor_debiased):
    prompts = ["a doctor", "a photo of a doctor", "an image of a doctor", "doctor"]
    r = diff.diff_edit(toy, doctor_debiased, prompts, samples=24, seed=7_200_000)
    added = r.added(1)[0]
    assert added.name == "cool" and added.significant, r.markdown(3)
    assert r.removed(1)[0].name == "warm"


def test_cli_diff_and_its_bad_inputs(toy, artist_erased, tmp_path, capsys):
    d = artist_erased.save(tmp_path / "d.safetensors")
    out = tmp_path / "out"
    assert main(["diff", "--delta", str(d), "--prompt", "a red circle by jonas flet", "--prompt",
                 "a blue star by jonas flet", "-n", "3", "--out", str(out), "--quiet"]) == 0
    got = json.loads((out / "diff.json").read_text())
    assert got["summary"]["top"] == "jonas flet" and got["n_before"] == 6 and got["paired"]
    assert main(["diff", "--delta", str(d), "--prompt", "a red circle", "--out", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    for argv, message in [
        (["--prompt", "a red circle"], "diff needs --delta"),
        (["--delta", str(d), "--prompt", "a red circle"], "at least 2"),
        (["--delta", str(d), "--prompt", "a zorp circle", "-n", "2"], "zorp"),
        (["--delta", str(d), "--prompt", "a red circle", "-n", "2", "--description", "purple elephant"], "purple"),
        (["--delta", str(d), "--prompt", "a red circle", "-n", "2", "--descriptions", "vocab:nope"],
         "unknown vocabulary"),
        (["--before", str(tmp_path)], "needs both --before DIR and --after DIR"),
        (["--before", str(tmp_path), "--after", str(tmp_path), "--delta", str(d)], "--delta is not read"),
        (["--delta", str(d), "--prompt", "a red circle", "-n", "2", "--unpaired"], "--unpaired is for"),
        (["--delta", str(d), "--prompt", "a red circle", "-n", "2", "--alpha", "2"], "alpha must be in"),
    ]:
        assert main(["diff", *argv, "--out", str(tmp_path / "never"), "--quiet"]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def test_evaluate_reports_the_leak_on_unrelated_prompts(toy, artist_erased, tmp_path):
    from workbench.evaluate import EvalReport, evaluate

    report = evaluate(toy, artist_erased, ["jonas flet"], holdouts=["lukas merro"], unrelated=["square"], samples=8,
                      seed=7_300_000)
    assert report.leak is not None and report.leak.n_before == 16
    assert report.summary["leak_top_auroc"] == report.leak.top.separation < 0.7
    assert "What else changed" in report.markdown()
    report.save_json(tmp_path / "e.json")
    back = EvalReport.load_json(tmp_path / "e.json")
    assert back.leak.rows == report.leak.rows
    assert evaluate(toy, artist_erased, ["jonas flet"], unrelated=["square"], samples=2, diff=False).leak is None
    with pytest.raises(ValueError, match="purple elephant"):
        evaluate(toy, artist_erased, ["jonas flet"], unrelated=["square"], samples=2, descriptions=["purple elephant"])


def test_toy_rankers_score_images_alike(toy):
    """On the same images, the toy classifier and the toy CLIP rank the world's descriptions alike."""
    prompts = ["a red circle by vera kolm", "a blue square danger", "a doctor", "a green star by lukas merro"]
    x = toy.sample(prompts * 4, list(range(16)))
    world = toy.world
    descs = world.descriptions()
    a = diff.score_images(x, descs, world.scorers["toy"]())
    b = diff.score_images(x, descs, world.scorers["toy-clip"]())
    agree = ((a > 0.5) == (b > 0.5)).mean()
    assert agree > 0.9


def test_cli_diff_on_folders_with_a_local_clip_and_a_shipped_vocabulary(clip_folder, tmp_path, capsys):
    names = [f"{i:02d}.png" for i in range(8)]
    _write(tmp_path / "a", names, [(200, 20 * i, 10) for i in range(8)])
    _write(tmp_path / "b", names, [(10, 20 * i, 200) for i in range(8)])
    out = tmp_path / "out"
    assert main(["diff", "--before", str(tmp_path / "a"), "--after", str(tmp_path / "b"), "--scorer",
                 f"clip:{clip_folder}", "--descriptions", "vocab:cifar10", "--out", str(out), "--quiet"]) == 0
    got = json.loads((out / "diff.json").read_text())
    assert got["paired"] and len(got["rows"]) == 10 and got["settings"]["scorer"].startswith("clip:")
    assert {r["name"] for r in got["rows"]} >= {"airplane", "truck"}
    capsys.readouterr()
    assert main(["diff", "--before", str(tmp_path / "a"), "--after", str(tmp_path / "b"), "--scorer",
                 f"clip:{clip_folder}", "--out", str(tmp_path / "o2"), "--quiet", "--unpaired",
                 "--description", "a cat"]) == 0
    assert json.loads((tmp_path / "o2" / "diff.json").read_text())["paired"] is False
    # the toy classifier on pictures that are not the toy world's: one line, no number
    assert main(["diff", "--before", str(tmp_path / "a"), "--after", str(tmp_path / "b"), "--out",
                 str(tmp_path / "o3"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the toy classifier reads the toy world's images, (B, 3, 32, 32); got (8, 3, 8, 8)" in err, err
    assert not (tmp_path / "o3").exists()


def test_clip_reuses_the_last_batch_embeddings_and_only_that(clip_folder):
    """Ranking many descriptions scores one batch once per description: CLIP keeps the last batch's image
    embeddings, and an in-place change or another batch at the same shape misses."""
    from workbench.measure.clip import Clip

    clip = Clip(clip_folder)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = clip.image_embeds(x)
    assert clip.image_embeds(x) is first
    x.mul_(0.5)  # same memory, new content
    again = clip.image_embeds(x)
    assert again is not first and torch.allclose(again, Clip(clip_folder).image_embeds(x), atol=1e-6)
    other = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(clip.image_embeds(other), again)


def test_cli_evaluate_ranks_the_descriptions_it_is_given(toy, artist_erased, tmp_path, capsys):
    d = artist_erased.save(tmp_path / "d.safetensors")
    (tmp_path / "mine.txt").write_text("circle | disc\nlukas merro\n")
    out = tmp_path / "e.json"
    assert main(["evaluate", "--delta", str(d), "--concept", "jonas flet", "--unrelated", "square", "--samples", "3",
                 "--descriptions", str(tmp_path / "mine.txt"), "--json", str(out), "--quiet"]) == 0
    leak = json.loads(out.read_text())["leak"]
    assert [r["name"] for r in leak["rows"]] == ["circle", "lukas merro"] and leak["n_before"] == 3
    (tmp_path / "bad.txt").write_text("purple elephant\n")
    for spec, message in (("vocab:nope", "unknown vocabulary"), (str(tmp_path / "bad.txt"), "purple elephant")):
        assert main(["evaluate", "--delta", str(d), "--concept", "jonas flet", "--unrelated", "square", "--samples",
                     "3", "--descriptions", spec, "--json", str(tmp_path / "never.json"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never.json").exists()
