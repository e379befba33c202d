"""Bad arguments to the tracing API are refused at the boundary with a one-line error naming the argument,
before any model work; trace folders are read and written safely."""

import json
import math
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from tracing import TraceResult, trace_text_encoder, trace_unet
from workbench import Workbench

PROMPT, SUBJECT = "a photo of van gogh by the river", "van gogh"
NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def wb():
    return Workbench.random("tiny", seed=0)


def _weights(wb):
    return {f"{part}.{k}": v.clone() for part, m in wb.parts.items() for k, v in m.state_dict().items()}


TEXT_CASES = [
    ({"samples": 0}, "samples must be a whole number >= 1, got 0"),
    ({"samples": -2}, "samples must be a whole number >= 1, got -2"),
    ({"samples": 2.0}, "samples must be a whole number >= 1, got 2.0"),
    ({"samples": True}, "samples must be a whole number >= 1, got True"),
    ({"samples": "3"}, "samples must be a whole number >= 1, got '3'"),
    ({"draws": 0}, "draws must be a whole number >= 1, got 0"),
    ({"draws": 1.5}, "draws must be a whole number >= 1, got 1.5"),
    ({"window": 0}, "window must be a whole number >= 1, got 0"),
    ({"window": 3.0}, "window must be a whole number >= 1, got 3.0"),
    ({"noise": 0}, "noise must be a finite number > 0, got 0"),
    ({"noise": -1.0}, "noise must be a finite number > 0, got -1.0"),
    ({"noise": NAN}, "noise must be a finite number > 0, got nan"),
    ({"noise": INF}, "noise must be a finite number > 0, got inf"),
    ({"noise": False}, "noise must be a finite number > 0, got False"),
    ({"std": 0.0}, "std must be a finite number > 0 when given, got 0.0"),
    ({"std": -0.5}, "std must be a finite number > 0 when given, got -0.5"),
    ({"std": NAN}, "std must be a finite number > 0 when given, got nan"),
    ({"guidance": NAN}, "guidance must be a finite number, got nan"),
    ({"guidance": -INF}, "guidance must be a finite number, got -inf"),
    ({"guidance": "7.5"}, "guidance must be a finite number, got '7.5'"),
    ({"steps": 0}, "steps must be a whole number >= 1, got 0"),
    ({"steps": 2.5}, "steps must be a whole number >= 1, got 2.5"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": True}, "batch_size must be a whole number >= 1, got True"),
    ({"batch_size": 8.0}, "batch_size must be a whole number >= 1, got 8.0"),
    ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ({"tokens": [1.0, 2]}, "tokens must be whole-number positions, got 1.0"),
    ({"tokens": 3}, "tokens must be 'real', 'all' or a list of positions, got 3"),
    ({"prompt": None}, "prompt must be a string, got NoneType"),
    ({"prompt": "   "}, "empty prompt"),
    ({"subject": 7}, "subject must be a string, got int"),
]

UNET_CASES = [
    ({"windows": 0}, "windows must be a whole number between 1 and steps (4), got 0"),
    ({"windows": 5}, "windows must be a whole number between 1 and steps (4), got 5"),
    ({"windows": 2.0}, "windows must be a whole number between 1 and steps (4), got 2.0"),
    ({"samples": -1}, "samples must be a whole number >= 1, got -1"),
    ({"draws": 0}, "draws must be a whole number >= 1, got 0"),
    ({"draws": True}, "draws must be a whole number >= 1, got True"),
    ({"batch_size": -3}, "batch_size must be a whole number >= 1, got -3"),
    ({"noise": INF}, "noise must be a finite number > 0, got inf"),
    ({"std": INF}, "std must be a finite number > 0 when given, got inf"),
    ({"guidance": INF}, "guidance must be a finite number, got inf"),
    ({"steps": -1}, "steps must be a whole number >= 1, got -1"),
]


@pytest.mark.parametrize("bad,message", TEXT_CASES, ids=[str(c[0]) for c in TEXT_CASES])
def test_text_trace_refuses(wb, bad, message):
    before = _weights(wb)
    kw = {"prompt": PROMPT, "subject": SUBJECT, "samples": 2, "steps": 2, "progress": False, **bad}
    with pytest.raises(ValueError) as err:
        trace_text_encoder(wb, kw.pop("prompt"), kw.pop("subject"), **kw)
    assert message in str(err.value) and "\n" not in str(err.value)
    after = _weights(wb)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bad,message", UNET_CASES, ids=[str(c[0]) for c in UNET_CASES])
def test_unet_trace_refuses(wb, bad, message):
    before = _weights(wb)
    kw = {"samples": 2, "steps": 4, "progress": False, **bad}
    with pytest.raises(ValueError) as err:
        trace_unet(wb, PROMPT, SUBJECT, **kw)
    assert message in str(err.value) and "\n" not in str(err.value)
    after = _weights(wb)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _result(rows=3, cols=2) -> TraceResult:
    return TraceResult(scores=torch.arange(rows * cols, dtype=torch.float32).view(rows, cols),
                       spread=torch.ones(rows, cols), rows=[f"unet.l{i}" for i in range(rows)],
                       cols=[f"t {j}" for j in range(cols)], part="unet", kind="attn2", metric="proxy",
                       prompt="p", subject="s", settings={"samples": 2})


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_pick_layers_refuses(k):
    with pytest.raises(ValueError, match=r"k \(the number of layers to pick\) must be a whole number >= 1"):
        _result().pick_layers(k)
    assert _result().pick_layers(2) == ["unet.l2", "unet.l1"]
    assert len(_result().pick_layers(10)) == 3  # more than there are: all of them


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
    trace_text_encoder(wb, PROMPT, SUBJECT, samples=1, draws=1, steps=2, progress=False)
    trace_unet(wb, PROMPT, SUBJECT, samples=1, draws=1, steps=2, progress=False)
    assert capsys.readouterr().err == ""
    trace_text_encoder(wb, PROMPT, SUBJECT, samples=1, draws=1, steps=2, progress=True)
    err = capsys.readouterr().err
    assert "trace text/hidden: text encoder" in err and "trace text: proxy UNet" in err
