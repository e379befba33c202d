"""Bad arguments to the tracing API are refused at the boundary with a one-line error naming the argument,
before any model work; trace folders are read and written safely."""

import json
import math
import os
import stat
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from tracing import TraceResult, TraceSettings, trace_text_encoder, trace_unet
from workbench import Workbench

PROMPT, SUBJECT = "a photo of van gogh by the river", "van gogh"
NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def wb():
    return Workbench.random("tiny", seed=0)


def _weights(wb):
    return {f"{part}.{k}": v.clone() for part, m in wb.parts.items() for k, v in m.state_dict().items()}


SETTINGS_CASES = [
    ({"samples": 0}, "samples must be a whole number >= 1, got 0"),
    ({"samples": -2}, "samples must be a whole number >= 1, got -2"),
    ({"samples": 2.0}, "samples must be a whole number >= 1, got 2.0"),
    ({"samples": True}, "samples must be a whole number >= 1, got True"),
    ({"samples": "3"}, "samples must be a whole number >= 1, got '3'"),
    ({"draws": 0}, "draws must be a whole number >= 1, got 0"),
    ({"draws": 1.5}, "draws must be a whole number >= 1, got 1.5"),
    ({"draws": True}, "draws must be a whole number >= 1, got True"),
    ({"noise": 0}, "noise must be a finite number > 0, got 0"),
    ({"noise": -1.0}, "noise must be a finite number > 0, got -1.0"),
    ({"noise": NAN}, "noise must be a finite number > 0, got nan"),
    ({"noise": INF}, "noise must be a finite number > 0, got inf"),
    ({"noise": False}, "noise must be a finite number > 0, got False"),
    ({"std": 0.0}, "std must be a finite number > 0 when given, got 0.0"),
    ({"std": -0.5}, "std must be a finite number > 0 when given, got -0.5"),
    ({"std": NAN}, "std must be a finite number > 0 when given, got nan"),
    ({"std": INF}, "std must be a finite number > 0 when given, got inf"),
    ({"guidance": NAN}, "guidance must be a finite number, got nan"),
    ({"guidance": -INF}, "guidance must be a finite number, got -inf"),
    ({"guidance": "7.5"}, "guidance must be a finite number, got '7.5'"),
    ({"steps": 0}, "steps must be a whole number >= 1, got 0"),
    ({"steps": -1}, "steps must be a whole number >= 1, got -1"),
    ({"steps": 2.5}, "steps must be a whole number >= 1, got 2.5"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": -3}, "batch_size must be a whole number >= 1, got -3"),
    ({"batch_size": True}, "batch_size must be a whole number >= 1, got True"),
    ({"batch_size": 8.0}, "batch_size must be a whole number >= 1, got 8.0"),
    ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ({"metric": "clip"}, "unknown metric 'clip'; expected one of proxy, text, faithful"),
    ({"progress": "no"}, "progress must be True or False, got 'no'"),
]

TEXT_CASES = [
    ({"window": 0}, "window must be a whole number >= 1, got 0"),
    ({"window": 3.0}, "window must be a whole number >= 1, got 3.0"),
    ({"tokens": [1.0, 2]}, "tokens must be whole-number positions, got 1.0"),
    ({"tokens": 3}, "tokens must be 'real', 'all' or a list of positions, got 3"),
    ({"tokens": None}, "tokens must be 'real', 'all' or a list of positions, got None"),
    ({"prompt": None}, "prompt must be a string, got NoneType"),
    ({"prompt": "   "}, "empty prompt"),
    ({"subject": 7}, "subject must be a string, got int"),
    ({"settings": {"samples": 2}}, "settings must be a TraceSettings, got dict"),
    ({"scorer": "clip"}, "scorer must be a callable images -> scores, got str"),
]

UNET_CASES = [
    ({"windows": 0}, "windows must be a whole number between 1 and steps (4), got 0"),
    ({"windows": 5}, "windows must be a whole number between 1 and steps (4), got 5"),
    ({"windows": 2.0}, "windows must be a whole number between 1 and steps (4), got 2.0"),
    ({"settings": TraceSettings(metric="text")}, "metric 'text' is for text-encoder traces"),
    ({"settings": {"samples": 2}}, "settings must be a TraceSettings, got dict"),
]


@pytest.mark.parametrize("bad,message", SETTINGS_CASES, ids=[str(c[0]) for c in SETTINGS_CASES])
def test_settings_refuse(bad, message):
    with pytest.raises(ValueError) as err:
        TraceSettings(**bad)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad,message", TEXT_CASES, ids=[str(c[0]) for c in TEXT_CASES])
def test_text_trace_refuses(wb, bad, message):
    before = _weights(wb)
    kw = {"prompt": PROMPT, "subject": SUBJECT, "settings": TraceSettings(samples=2, steps=2, progress=False), **bad}
    with pytest.raises(ValueError) as err:
        trace_text_encoder(wb, kw.pop("prompt"), kw.pop("subject"), **kw)
    assert message in str(err.value) and "\n" not in str(err.value)
    after = _weights(wb)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bad,message", UNET_CASES, ids=[str(c[0]) for c in UNET_CASES])
def test_unet_trace_refuses(wb, bad, message):
    before = _weights(wb)
    kw = {"settings": TraceSettings(samples=2, steps=4, progress=False), **bad}
    with pytest.raises(ValueError) as err:
        trace_unet(wb, PROMPT, SUBJECT, **kw)
    assert message in str(err.value) and "\n" not in str(err.value)
    after = _weights(wb)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _result(rows=3, cols=2, kinds=None) -> TraceResult:
    return TraceResult(scores=torch.arange(rows * cols, dtype=torch.float32).view(rows, cols),
                       spread=torch.ones(rows, cols), rows=[f"unet.l{i}" for i in range(rows)],
                       row_kinds=kinds or ["attn2"] * rows, cols=[f"t {j}" for j in range(cols)], part="unet",
                       kind="attn2" if kinds is None else "mixed", prompt="p", subject="s",
                       settings=TraceSettings(samples=2))


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_pick_layers_refuses(k):
    with pytest.raises(ValueError, match=r"k \(the number of layers to pick\) must be a whole number >= 1"):
        _result().pick_layers(k)
    assert _result().pick_layers(2) == ["unet.l2", "unet.l1"]
    assert len(_result().pick_layers(10)) == 3  # more than there are: all of them


def test_pick_layers_only_hands_over_kinds_the_editor_accepts():
    mixed = _result(4, kinds=["resnet", "attn2", "ff", "attn2"])  # rank: l3, l2, l1, l0
    assert mixed.pick_layers(2) == ["unet.l3", "unet.l2"]
    assert mixed.pick_layers(2, kinds={"attn2"}) == ["unet.l3", "unet.l1"]
    assert mixed.pick_layers(5, kinds=("attn2", "resnet")) == ["unet.l3", "unet.l1", "unet.l0"]
    assert mixed.pick_layers(1, kinds=None) == ["unet.l3"]
    with pytest.raises(ValueError) as err:
        mixed.pick_layers(1, kinds={"self_attn", "hidden"})
    assert str(err.value) == ("no layer of this trace is of a kind in hidden, self_attn; its layers are attn2, ff, "
                              "resnet")
    with pytest.raises(ValueError, match=r"kinds must be a collection of layer kinds, e.g. \('attn2',\), not a string"):
        mixed.pick_layers(1, kinds="attn2")


def test_result_refuses_bad_provenance():
    with pytest.raises(ValueError, match="2 row kinds for 3 rows"):
        _result(kinds=["attn2", "ff"])
    with pytest.raises(ValueError, match="settings must be a TraceSettings, got dict"):
        TraceResult(scores=torch.zeros(1, 1), rows=["a"], row_kinds=["attn2"], cols=["t"], part="unet",
                    kind="attn2", prompt="p", subject="s", settings={"samples": 2})
    with pytest.raises(ValueError, match="unknown ranking 'top'"):
        TraceResult(scores=torch.zeros(1, 1), rows=["a"], row_kinds=["attn2"], cols=["t"], part="unet",
                    kind="attn2", prompt="p", subject="s", rank_by="top")


# ---------------------------------------------------------------------- loading
def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TraceResult.load(tmp_path / "nope")
    good = _result().save(tmp_path / "good")
    assert torch.equal(TraceResult.load(good).scores, _result().scores)

    def broken(name):
        folder = tmp_path / name
        _result().save(folder)
        return folder

    f = broken("no_json")
    (f / "result.json").unlink()
    with pytest.raises(FileNotFoundError, match="result.json is missing"):
        TraceResult.load(f)
    f = broken("no_scores")
    (f / "scores.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="scores.safetensors is missing"):
        TraceResult.load(f)
    f = broken("bad_json")
    (f / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="result.json' is not valid JSON"):
        TraceResult.load(f)
    f = broken("list_json")
    (f / "result.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="result.json' must hold a JSON object"):
        TraceResult.load(f)
    f = broken("keys")
    meta = json.loads((f / "result.json").read_text())
    del meta["rows"]
    meta["colour"] = "red"
    (f / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a trace result: missing rows; unknown colour"):
        TraceResult.load(f)
    f = broken("shape")
    save_file({"scores": torch.zeros(2, 2)}, str(f / "scores.safetensors"))
    with pytest.raises(ValueError, match=r"scores.safetensors': scores has shape \(2, 2\), but result.json names "
                                         r"3 rows and 2 columns"):
        TraceResult.load(f)
    f = broken("spread_shape")
    save_file({"scores": torch.zeros(3, 2), "spread": torch.zeros(3)}, str(f / "scores.safetensors"))
    with pytest.raises(ValueError, match="spread has shape"):
        TraceResult.load(f)
    f = broken("garbage")
    (f / "scores.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="scores.safetensors' is not a readable safetensors file"):
        TraceResult.load(f)
    f = broken("no_tensor")
    save_file({"other": torch.zeros(3, 2)}, str(f / "scores.safetensors"))
    with pytest.raises(ValueError, match="holds no 'scores' tensor"):
        TraceResult.load(f)
    for name, settings, message in [("settings_type", [1], "settings must be a JSON object, got list"),
                                    ("settings_key", {"colour": "red"}, "unknown settings colour"),
                                    ("settings_value", {"samples": 0}, "samples must be a whole number >= 1")]:
        f = broken(name)
        meta = json.loads((f / "result.json").read_text())
        (f / "result.json").write_text(json.dumps({**meta, "settings": settings}))
        with pytest.raises(ValueError, match=f"result.json': {message}"):
            TraceResult.load(f)
    f = broken("row_kinds")
    meta = json.loads((f / "result.json").read_text())
    (f / "result.json").write_text(json.dumps({**meta, "row_kinds": ["attn2"]}))
    with pytest.raises(ValueError, match="result.json': 1 row_kinds for 3 rows"):
        TraceResult.load(f)


def test_loads_a_result_json_from_before_trace_settings(tmp_path):
    """Old result.json: metric at the top, a free-form settings dict holding provenance too, no row kinds."""
    text = {"rows": ["text.embeddings", "text.encoder.layers.0"], "cols": ["<start>", "cat", "<end>"],
            "part": "text", "kind": "hidden", "metric": "text", "prompt": "cat", "subject": "cat",
            "subject_cols": [1], "clean": 1.0, "corrupted": 0.0, "model": "tiny", "model_fingerprint": "f",
            "seconds": 0.5,
            "settings": {"window": 1, "samples": 2, "noise": 3.0, "std": 0.02, "seed": 0, "draws": 3,
                         "positions": [0, 1, 2], "subject_positions": [1], "real_tokens": 3, "rank_by": "max",
                         "rows_per_forward": {"text": 8}}}
    unet = {"rows": ["unet.a.attn2", "unet.b.attn2"], "cols": ["t 1", "t 2"], "part": "unet", "kind": "attn2",
            "metric": "proxy", "prompt": ["a", "b"], "subject": ["a", "b"],
            "settings": {"windows": 2, "samples": 3, "noise": 3.0, "std": 0.02, "seed": 1, "draws": 2, "steps": 4,
                         "guidance": None, "subject_positions": [1], "rows_per_forward": {}, "n_prompts": 2}}
    for name, meta, scores in (("text", text, torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.5, 0.2]])),
                               ("unet", unet, torch.tensor([[0.1, 0.2], [0.3, 0.4]]))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(meta))
        save_file({"scores": scores}, str(tmp_path / name / "scores.safetensors"))
    old = TraceResult.load(tmp_path / "text")
    assert old.settings == TraceSettings(metric="text", samples=2, std=0.02, draws=3) and old.metric == "text"
    assert (old.rank_by, old.positions, old.real_tokens, old.subject_positions) == ("max", [0, 1, 2], 3, [1])
    assert old.row_kinds == ["embeddings", "hidden"] and old.rows_per_forward == {"text": 8}
    assert old.pick_layers(1) == ["text.embeddings"]  # the strongest row, which no editor takes
    assert old.pick_layers(1, kinds=("hidden", "mlp")) == ["text.encoder.layers.0"]
    old = TraceResult.load(tmp_path / "unet")
    assert old.settings == TraceSettings(samples=3, std=0.02, seed=1, draws=2, steps=4) and old.metric == "proxy"
    assert old.row_kinds == ["attn2", "attn2"] and old.pick_layers(1, kinds={"attn2"}) == ["unet.b.attn2"]
    # saved again, it is in today's shape
    folder = old.save(tmp_path / "unet-new")
    assert TraceResult.load(folder).settings == old.settings
    assert json.loads((folder / "result.json").read_text())["settings"]["metric"] == "proxy"


# ---------------------------------------------------------------------- saving
def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_save_refuses_an_existing_folder_without_overwrite(tmp_path):
    out = _result().save(tmp_path / "t")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --overwrite"):
        _result(4, 2).save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # an empty folder is fine; overwrite replaces a folder of trace files
    (tmp_path / "empty").mkdir()
    _result().save(tmp_path / "empty")
    (out / "heatmap.png").write_bytes(b"png")
    _result(4, 2).save(out, overwrite=True)
    assert TraceResult.load(out).scores.shape == (4, 2)
    assert sorted(p.name for p in out.iterdir()) == [".workbench-files.json", "result.json", "scores.safetensors"]
    assert _siblings(out) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        _result().save(tmp_path / "file", overwrite=True)


def test_save_never_deletes_a_foreign_file(tmp_path):
    out = _result().save(tmp_path / "t")
    (out / "notes.txt").write_bytes(b"my notes \x00\xff")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="holds 'notes.txt'"):
        _result(4, 2).save(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "notes.txt").unlink()
    (out / "sub").mkdir()
    with pytest.raises(FileExistsError, match="holds 'sub'"):
        _result(4, 2).save(out, overwrite=True)
    assert (out / "sub").is_dir() and _siblings(out) == []


def test_save_is_all_or_nothing(tmp_path, monkeypatch):
    import tracing.result as result

    out = _result().save(tmp_path / "t")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(result, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        _result(4, 2).save(out, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        _result().save(tmp_path / "new")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "new").exists() and _siblings(out) == [] and _siblings(tmp_path / "new") == []


def test_save_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = _result().save(tmp_path / "t", heatmap=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert sorted(p.name for p in out.iterdir()) == [".workbench-files.json", "heatmap.png", "result.json",
                                                    "scores.safetensors"]
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p.name


# ---------------------------------------------------------------------- progress
def test_progress_false_silences_every_bar(wb, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    quiet = TraceSettings(samples=1, draws=1, steps=2, progress=False)
    trace_text_encoder(wb, PROMPT, SUBJECT, settings=quiet)
    trace_unet(wb, PROMPT, SUBJECT, settings=quiet)
    assert capsys.readouterr().err == ""
    trace_text_encoder(wb, PROMPT, SUBJECT, settings=replace(quiet, progress=True))
    err = capsys.readouterr().err
    assert "trace text/hidden: text encoder" in err and "trace text: proxy UNet" in err
