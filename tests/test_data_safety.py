"""A user's files and models are never lost: exports and every other writer refuse to replace what the
workbench did not write, never write into what a model was read from, and leave a complete file or none."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from workbench import Workbench
from workbench.app.cli import main
from workbench.files import MANIFEST, PACKAGE_DATA, atomic_dir, atomic_write
from workbench.model import TOY_DIR


def tree_hash(*roots: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
            for root in roots for f in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from editors import UCERequest, uce

    root = tmp_path_factory.mktemp("safety")
    wb = Workbench.random("tiny", seed=0)
    wb.save_pretrained(root / "models" / "m")
    (root / "models" / "beside.txt").write_text("a file beside the model")
    uce.edit(wb, UCERequest(erase=["a cat"])).save(root / "d.safetensors")
    return root


@pytest.mark.parametrize("target", ["models/m", "models/m/unet", "models/m/unet/new", "models", "."])
def test_apply_never_writes_into_or_over_its_source(exported, target, capsys):
    before = tree_hash(exported)
    out = exported / target
    rc = main(["apply", "--model", str(exported / "models" / "m"), "--delta", str(exported / "d.safetensors"),
               "--out", str(out), "--overwrite"])
    assert rc == 2 and "refusing to write" in capsys.readouterr().err
    assert tree_hash(exported) == before


@pytest.fixture(scope="module")
def toy_edits():
    from editors import UCERequest, uce

    out = {}
    for model in ("toy", "toy-entities"):
        wb = Workbench.load(model)
        out[model] = (wb, uce.edit(wb, UCERequest(erase=["circle"])))
    return out


@pytest.mark.parametrize("model", ["toy", "toy-entities"])
@pytest.mark.parametrize("target", [TOY_DIR, TOY_DIR / "entities", TOY_DIR / "unet", TOY_DIR.parent,
                                    TOY_DIR.parent.parent])
def test_apply_never_touches_the_packages_own_weights(model, target, toy_edits):
    wb, delta = toy_edits[model]
    before = tree_hash(*PACKAGE_DATA)
    with pytest.raises(ValueError, match="refusing to write"):
        delta.export(wb, target, overwrite=True)
    assert tree_hash(*PACKAGE_DATA) == before


def test_export_replaces_only_an_earlier_export(exported, tmp_path):
    wb = Workbench.random("tiny", seed=0)
    out = tmp_path / "export"
    wb.save_pretrained(out)
    assert (out / MANIFEST).is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        wb.save_pretrained(out)
    wb.save_pretrained(out, overwrite=True)  # an earlier export: replaced
    (out / "unet" / "my-notes.txt").write_text("keep me")
    before = tree_hash(out)
    with pytest.raises(FileExistsError, match="my-notes.txt"):
        wb.save_pretrained(out, overwrite=True)
    assert tree_hash(out) == before


def test_export_keeps_the_live_scheduler_and_the_checkpoints_settings(tmp_path):
    wb = Workbench.toy()
    config = dict(wb.scheduler.config)
    images = wb.sample(["a red circle"], seed=0, steps=4, batch_size=1)
    wb.save_pretrained(tmp_path / "toy")
    assert dict(wb.scheduler.config) == config  # the pipeline's "fixes" went to a copy
    assert wb.sample(["a red circle"], seed=0, steps=4, batch_size=1).equal(images)
    saved = json.loads((tmp_path / "toy" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] == config["clip_sample"] and saved["steps_offset"] == config["steps_offset"]
    assert json.loads((tmp_path / "toy" / "workbench.json").read_text())["image_size"] == 32
    again = Workbench.from_pretrained(tmp_path / "toy")
    assert again.fingerprint() == wb.fingerprint()
    assert again.sample(["a red circle"], seed=0, steps=4, batch_size=1).equal(images)


def test_export_writes_the_checkpoints_own_scheduler(tmp_path):
    wb = Workbench.random("tiny", seed=0)
    wb.save_pretrained(tmp_path / "a")
    cfg_path = tmp_path / "a" / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(_class_name="PNDMScheduler", skip_prk_steps=True)
    cfg_path.write_text(json.dumps(cfg))
    loaded = Workbench.from_pretrained(tmp_path / "a")
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"  # sampling stays deterministic DDIM
    loaded.save_pretrained(tmp_path / "b")
    out = json.loads((tmp_path / "b" / "scheduler" / "scheduler_config.json").read_text())
    assert out["_class_name"] == "PNDMScheduler" and out["skip_prk_steps"] is True


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = atomic_write(tmp_path / "f.txt", lambda p: Path(p).write_text("x"), overwrite=False)
        d = atomic_dir(tmp_path / "d", lambda p: (p / "x.txt").write_text("x"))
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644
    assert d.stat().st_mode & 0o777 == 0o755 and (d / "x.txt").stat().st_mode & 0o777 == 0o644


def test_a_failing_writer_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def boom(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom, overwrite=True)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]

    folder = tmp_path / "out"
    atomic_dir(folder, lambda p: (p / "a.txt").write_text("first"))

    def half(tmp: Path) -> None:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_dir(folder, half, overwrite=True)
    assert (folder / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "report.json"]


def test_cli_writers_refuse_existing_outputs_and_replace_with_overwrite(tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"mine")
    args = ["generate", "--model", "tiny", "--prompt", "a cat", "--steps", "1", "--out", str(out), "--quiet"]
    assert main(args) == 2 and out.read_bytes() == b"mine"
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0 and out.read_bytes()[:4] == b"\x89PNG"
