"""`--scorer` and `evaluate --suite` from the command line: real runs, resumption, one-line errors."""

from __future__ import annotations

import json

import pytest

from workbench.app.cli import main


@pytest.fixture(scope="module")
def toy_delta(tmp_path_factory):
    out = tmp_path_factory.mktemp("delta") / "uce.safetensors"
    assert main(["edit", "uce", "--model", "toy", "--erase", "jonas flet", "--preserve", "lukas merro",
                 "--tokens", "to_end", "--template", "{}", "--template", "a circle by {}", "--quiet", "--out",
                 str(out)]) == 0
    return out


def _suite(tmp_path):
    path = tmp_path / "artists.txt"
    path.write_text("jonas flet\nlukas merro\n")
    return path


def test_suite_run_scores_saves_and_resumes(tmp_path, toy_delta, capsys):
    out = tmp_path / "run"
    run = ["evaluate", "--model", "toy", "--suite", str(_suite(tmp_path)), "--template", "a red circle by {}",
           "--samples", "6", "--delta", str(toy_delta), "--out", str(out), "--quiet"]
    assert main(run) == 0
    first = json.loads((out / "suite.json").read_text())
    items = first["items"]
    assert len(items) == 12 and {it["concept"] for it in items} == {"jonas flet", "lukas merro"}
    rates = first["summary"]["rates"]
    jonas = rates["concept jonas flet"]
    assert jonas["before"] >= 0.8 and jonas["after"] <= 0.2  # the erased artist goes; 6 seeds, so loose bars
    assert rates["concept lukas merro"]["after"] >= 0.6  # a held-out artist stays
    assert (out / "grid.png").is_file() and "| concept jonas flet | 6 |" in (out / "suite.md").read_text()
    # an interrupted run: drop some finished items, rerun: only those are made again, and the result is the same
    saved = sorted((out / "items").glob("*.json"))
    for path in saved[:5]:
        path.unlink()
    capsys.readouterr()
    assert main(run[:-1]) == 0
    assert "7 of 12 done before" in capsys.readouterr().err
    again = json.loads((out / "suite.json").read_text())
    assert again["summary"] == first["summary"]
    for a, b in zip(again["items"], items, strict=True):  # regenerated in other batches: float noise only
        assert {k: v for k, v in a.items() if k not in ("before", "after")} == \
            {k: v for k, v in b.items() if k not in ("before", "after")}
        assert a["before"] == pytest.approx(b["before"], abs=1e-4) and a["after"] == pytest.approx(b["after"],
                                                                                                 abs=1e-4)
    # the same folder with another scorer is refused, not mixed
    assert main(run + ["--scorer", "toy-clip"]) == 2
    assert "was made with other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_faithful_trace_on_sd15_shapes_with_a_clip_folder(tmp_path, clip_folder, capsys):
    out = tmp_path / "trace"
    args = ["trace", "--model", "sd15", "--sample-size", "8", "--prompt", "a photo of a cat", "--subject", "cat",
            "--metric", "faithful", "--scorer", f"clip:{clip_folder}:a photo of a dog", "--part", "unet",
            "--layers", "unet.mid_block.*attn2", "--steps", "1", "--samples", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["settings"]["metric"] == "faithful" and result["model"] == "random-sd15-seed0"
    assert result["rows"] == ["unet.mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert 0 < result["clean"] < 1 and 0 < result["corrupted"] < 1  # CLIP probabilities of "cat" vs the contrast
    assert "picked layers" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--scorer", "clip:/no/such/folder"], "scorer 'clip:/no/such/folder': '/no/such/folder' does not exist"),
    (["--scorer", "clip:{tmp}"], "is not a CLIP model folder"),
    (["--scorer", "nudenet"], "scorer nudenet reads 'nudity' or a NudeNet class"),
    (["--scorer", "toy", "--concept", "a zebra"], "words not in the toy vocabulary: ['zebra']"),
    (["--scorer", "magic"], "unknown scorer 'magic'"),
])
def test_bad_scorers_are_one_line_errors(tmp_path, toy_delta, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["evaluate", "--model", "toy", "--delta", str(toy_delta), "--samples", "1", "--quiet"]
    if "--concept" not in args:
        base += ["--concept", "jonas flet"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_bad_suites_are_one_line_errors(tmp_path, toy_delta, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text_prompt,seed\na red circle,1\n")
    assert main(["evaluate", "--model", "toy", "--suite", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no prompt column (expected one of prompt, text, caption; found text_prompt, seed)" in err
    nameless = tmp_path / "plain.csv"
    nameless.write_text("prompt\na red circle\n")
    assert main(["evaluate", "--model", "toy", "--suite", str(nameless), "--out", str(tmp_path / "o")]) == 2
    assert "case '0' names no concept; pass --concept" in capsys.readouterr().err
    assert main(["evaluate", "--model", "toy", "--delta", str(toy_delta)]) == 2
    assert "evaluate needs --concept (or --suite FILE" in capsys.readouterr().err
    assert not (tmp_path / "o" / "suite.json").exists()


def test_evaluate_a_model_without_a_world_with_a_clip_folder(tmp_path, clip_folder, tiny, capsys):
    from workbench.delta import WeightDelta

    name = tiny.layers(kind="attn2")[0] + ".to_v.weight"
    path = WeightDelta.capture(tiny, {name: tiny.parameter(name).data * 1.5}, method="scale").save(
        tmp_path / "d.safetensors")
    out = tmp_path / "report.json"
    args = ["evaluate", "--model", "tiny", "--delta", str(path), "--concept", "cat", "--holdout", "dog",
            "--template", "a photo of a {}", "--samples", "3", "--scorer", f"clip:{clip_folder}:a photo",
            "--json", str(out), "--quiet"]
    assert main(args) == 0
    rates = json.loads(out.read_text())["rates"]
    assert [(r["group"], r["concept"]) for r in rates] == [("edited", "cat"), ("holdout", "dog")]
    assert main(args[:-3] + ["--template", "a {} and a {}", "--quiet"]) == 2
    assert "must hold one {} where the concept goes" in capsys.readouterr().err
