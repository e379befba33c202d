"""The demo job end to end on the toy world, small: its report quotes the evaluation JSON's numbers."""

import json

import pytest

from workbench.app.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_report_matches_the_evaluation_json(tmp_path):
    report = run_demo(tmp_path, trace_samples=2, eval_samples=6, attack=False, progress=False)
    text = report.read_text()
    for name in ("uce", "quickfix"):
        data = json.loads((tmp_path / f"evaluate_{name}.json").read_text())
        edited = [r for r in data["rates"] if r["group"] == "edited"]
        assert len(edited) == 1 and edited[0]["concept"] == "jonas flet"
        row = f"| edited | jonas flet | {edited[0]['before']:.1%} | {edited[0]['after']:.1%} |"
        assert row in text, (row, text)
        for key, value in data["summary"].items():
            if value == value:  # NaN summaries are printed as nan
                assert f"| {key} | {value:.3f} |" in text
        assert (tmp_path / f"grid_{name}.png").stat().st_size > 1000
        scan = data["scan"]  # the world scan of every concept, with the erased artist marked
        assert scan["edited"] == ["jonas flet"] and len(scan["rows"]) == 52
        worst = scan["worst_outside"]["concept"]
        assert f"worst outside the edited set: {worst}" in text
        assert (tmp_path / f"{name}.safetensors").exists()
    for png in ("samples.png", "trace_text.png", "trace_unet.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "text.encoder.layers." in text and "attn2" in text
    assert "No state restores" not in text  # with padding positions traced, the toy artist is located


def test_demo_refuses_a_non_artist(tmp_path):
    with pytest.raises(ValueError, match="is not one of"):
        run_demo(tmp_path, subject="circle", progress=False)
