"""Bad input through the CLI: exit code 2, one line `workbench <cmd>: error: ...` naming what was wrong, no
traceback, and not a byte changed in the workspace or in the package's own files.

The API side lives beside the code it guards: tests/test_delta_integrity.py (deltas),
tests/test_editor_inputs.py (editors), tests/test_tracing_inputs.py (tracing) and tests/test_data_safety.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench import Workbench
from workbench.app.cli import main
from workbench.files import PACKAGE_DATA
from workbench.model import TOY_DIR


def tree_hash(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
            elif f.is_dir():
                out[str(f)] = "dir"
    return out


def _first_weights(folder: Path) -> Path:
    return sorted(folder.glob("*.safetensors"))[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: an exported tiny model, broken copies of it, a delta, existing outputs, request files."""
    from editors import UCERequest, uce

    root = tmp_path_factory.mktemp("ws")
    wb = Workbench.random("tiny", seed=0)
    wb.save_pretrained(root / "model")
    uce.edit(wb, UCERequest(erase=["a cat"])).save(root / "delta.safetensors")
    (root / "exists.png").write_bytes(b"not really a png")
    (root / "exists.json").write_text("{}")
    (root / "exists.safetensors").write_bytes(b"mine")
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("my notes")
    (root / "text.txt").write_text("hello")

    def broken(name: str) -> Path:
        shutil.copytree(root / "model", root / name)
        return root / name

    unet = broken("pickled") / "unet"
    weights = _first_weights(unet)
    torch.save(load_file(weights), unet / "diffusion_pytorch_model.bin")
    weights.unlink()
    f = _first_weights(broken("truncated") / "unet")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    f = _first_weights(broken("missing_key") / "unet")
    t = load_file(f)
    del t[sorted(t)[0]]
    save_file(t, f)
    f = _first_weights(broken("nan_weights") / "text_encoder")
    t = load_file(f)
    key = sorted(k for k in t if t[k].is_floating_point())[0]
    t[key] = torch.full_like(t[key], float("nan"))
    save_file(t, f, metadata={"format": "pt"})
    (broken("bad_config") / "unet" / "config.json").write_text("{not json")
    shutil.rmtree(broken("no_tokenizer") / "tokenizer")
    shutil.copy(_first_weights(root / "model" / "unet"), root / "single.safetensors")
    (root / "model.ckpt").write_bytes(b"pickle")

    delta = (root / "delta.safetensors").read_bytes()
    (root / "delta_truncated.safetensors").write_bytes(delta[: len(delta) - 100])
    flipped = bytearray(delta)
    flipped[-10] ^= 0xFF
    (root / "delta_flipped.safetensors").write_bytes(bytes(flipped))
    toy = Workbench.toy()
    uce.edit(toy, UCERequest(erase=["circle"])).save(root / "toy_delta.safetensors")

    (root / "req_notjson.json").write_text("[{")
    (root / "req_string.json").write_text(json.dumps("cat -> dog"))
    (root / "req_unknown.json").write_text(json.dumps({"edits": [{"source": "cat", "destination": "dog"}],
                                                       "stepz": 3}))
    (root / "req_type.json").write_text(json.dumps({"edits": [{"source": "cat", "destination": "dog"}],
                                                    "steps": "ten"}))
    (root / "req_edits_dict.json").write_text(json.dumps({"edits": {}}))

    (root / "trace_bad").mkdir()
    (root / "trace_bad" / "result.json").write_text("{oops")
    (root / "trace_bad" / "scores.safetensors").write_bytes(b"")
    # a toy world in a folder: `toy train --out` must not replace it
    (root / "world" / "unet").mkdir(parents=True)
    (root / "world" / "unet" / "config.json").write_text("{}")
    return root


M, P = "{ws}/model", "{ws}/pickled"
CASES = [
    # ---- writers never replace what they were not told to, never write into a source
    ("generate --model tiny --prompt 'a cat' --steps 1 --out {ws}/exists.png", ["exists.png", "--overwrite"]),
    ("generate --model tiny --prompt 'a cat' --steps 1 --out {ws}/full", ["full", "folder"]),
    ("generate --model {ws}/model --prompt 'a cat' --steps 1 --out {ws}/model/x.png --overwrite",
     ["refusing", "lies inside"]),
    ("generate --model tiny --prompt 'a cat' --steps 1 --out {ws}/x.nope", ["image type", ".nope"]),
    ("generate --model tiny --prompt 'a cat' --steps 1 --out {ws}/text.txt/x.png", ["text.txt"]),
    ("evaluate --model tiny --delta {ws}/delta.safetensors --concept cat --json {ws}/exists.json",
     ["exists.json", "--overwrite"]),
    ("evaluate --model tiny --delta {ws}/delta.safetensors --concept cat --grid {ws}/exists.png",
     ["exists.png", "--overwrite"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --out {ws}/full", ["full", "not empty"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --out {ws}/full --overwrite --samples 1 --metric text",
     ["notes.txt", "did not write"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --out {ws}/text.txt", ["text.txt", "file"]),
    ("edit uce --model tiny --erase 'a cat' --out {ws}/exists.safetensors", ["exists.safetensors", "--overwrite"]),
    ("apply --model {ws}/model --delta {ws}/delta.safetensors --out {ws}/model --overwrite", ["refusing", "model"]),
    ("apply --model {ws}/model --delta {ws}/delta.safetensors --out {ws}/model/unet --overwrite",
     ["refusing", "lies inside"]),
    ("apply --model {ws}/model --delta {ws}/delta.safetensors --out {ws} --overwrite", ["refusing", "contains"]),
    ("apply --model toy --delta {ws}/toy_delta.safetensors --out {toy} --overwrite", ["refusing", "weights"]),
    ("apply --model toy --delta {ws}/toy_delta.safetensors --out {toy}/.. --overwrite", ["refusing", "contains"]),
    ("apply --model toy --delta {ws}/toy_delta.safetensors --out {toy}/entities --overwrite",
     ["refusing", "lies inside"]),
    ("apply --model toy-entities --delta {ws}/toy_delta.safetensors --out {toy}/entities --overwrite",
     ["refusing", "lies inside"]),
    ("apply --model tiny --delta {ws}/delta.safetensors --out {ws}/full --overwrite", ["notes.txt", "did not write"]),
    ("apply --model tiny --delta {ws}/delta.safetensors --out {ws}/full", ["full", "not empty"]),
    ("apply --model tiny --delta {ws}/delta.safetensors --out {ws}/text.txt --overwrite", ["text.txt", "file"]),
    ("demo --out {ws}/full", ["full", "not empty"]),
    ("demo --out {ws}/full --overwrite --samples 1 --trace-samples 1 --no-attack", ["notes.txt", "did not write"]),
    ("demo --out {ws}/x --model tiny", ["toy world"]),
    ("demo --out {ws}/x --subject circle", ["artist", "circle"]),
    ("toy check --json {ws}/exists.json --samples 1", ["exists.json", "--overwrite"]),
    ("toy check --json {toy}/x.json --samples 1 --overwrite", ["refusing", "weights"]),
    ("toy train --out {ws}/world --steps 1", ["world", "already holds", "--overwrite"]),
    ("toy train --out {ws}/text.txt --steps 1", ["text.txt", "file"]),
    ("toy train --out {ws}/new --init {ws}/nowhere --steps 1", ["--init", "nowhere"]),
    # ---- numbers are checked at the boundary
    ("generate --model tiny --prompt 'a cat' --steps 0 --out {ws}/g.png", ["--steps", "whole number >= 1", "'0'"]),
    ("generate --model tiny --prompt 'a cat' --steps -3 --out {ws}/g.png", ["--steps", "'-3'"]),
    ("generate --model tiny --prompt 'a cat' --steps 2.5 --out {ws}/g.png", ["--steps", "'2.5'"]),
    ("generate --model tiny --prompt 'a cat' --guidance nan --out {ws}/g.png", ["--guidance", "finite", "nan"]),
    ("generate --model tiny --prompt 'a cat' --guidance inf --out {ws}/g.png", ["--guidance", "finite"]),
    ("generate --model tiny --prompt 'a cat' -n 0 --out {ws}/g.png", ["-n", "whole number"]),
    ("generate --model tiny --prompt 'a cat' --seed -1 --out {ws}/g.png", ["--seed", ">= 0"]),
    ("generate --model tiny --prompt 'a cat' --scale 0 --out {ws}/g.png", ["--scale"]),
    ("generate --model tiny --prompt 'a cat' --batch-size 0 --out {ws}/g.png", ["--batch-size"]),
    ("generate --model tiny --prompt 'a cat' --sample-size 3 --out {ws}/g.png", ["sample size", "multiple"]),
    ("generate --model tiny --prompt 'a cat' --sample-size 0 --out {ws}/g.png", ["--sample-size"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --samples 0 --out {ws}/t", ["--samples", "'0'"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --windows 0 --part unet --out {ws}/t", ["--windows"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --windows 50 --part unet --steps 2 --out {ws}/t",
     ["windows", "50"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --noise nan --out {ws}/t", ["--noise", "finite"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --noise 0 --out {ws}/t", ["--noise", "> 0"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --top 0 --out {ws}/t", ["--top"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --steps 0 --out {ws}/t", ["--steps"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --window 0 --out {ws}/t", ["--window"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --batch-size -1 --out {ws}/t", ["--batch-size"]),
    ("edit uce --model tiny --erase 'a cat' --lam 0 --out {ws}/d.safetensors", ["--lam", "> 0"]),
    ("edit uce --model tiny --erase 'a cat' --lam nan --out {ws}/d.safetensors", ["--lam", "finite"]),
    ("edit uce --model tiny --erase 'a cat' --erase-scale -1 --out {ws}/d.safetensors", ["--erase-scale"]),
    ("edit uce --model tiny --erase 'a cat' --preserve-scale inf --out {ws}/d.safetensors", ["--preserve-scale"]),
    ("edit esd --model tiny --erase 'a cat' --iterations 0 --out {ws}/d.safetensors", ["--iterations"]),
    ("edit esd --model tiny --erase 'a cat' --lr -1 --out {ws}/d.safetensors", ["--lr"]),
    ("edit esd --model tiny --erase 'a cat' --negative-guidance nan --out {ws}/d.safetensors",
     ["--negative-guidance"]),
    ("edit esd --model tiny --erase 'a cat' --checkpoint-every 0 --out {ws}/d.safetensors", ["--checkpoint-every"]),
    ("evaluate --model tiny --delta {ws}/delta.safetensors --concept cat --samples 0", ["--samples"]),
    ("evaluate --model tiny --delta {ws}/delta.safetensors --concept cat --attack-rounds 0", ["--attack-rounds"]),
    ("toy check --samples 0", ["--samples"]),
    ("toy check --samples 1 --seed-base 100 5000", ["--seed-base 100 and 5000 overlap", "100,000,000"]),
    ("toy check --samples 1 --seed-base -4", ["--seed-base"]),
    ("evaluate --model toy --delta {ws}/toy_delta.safetensors --concept unicorn --scan", ["unicorn"]),
    ("toy train --steps 0 --out {ws}/new", ["--steps"]),
    ("toy train --lr nan --out {ws}/new", ["--lr"]),
    # ---- models: never a traceback, never an unpickle, never random weights in place of missing ones
    ("layers --model nosuch", ["unknown model", "nosuch"]),
    ("layers --model {ws}/nowhere", ["nowhere", "does not exist"]),
    ("layers --model {ws}/full", ["not a diffusers", "unet"]),
    ("layers --model {ws}/pickled", ["pickled", ".bin"]),
    ("layers --model {ws}/truncated", ["truncated"]),
    ("layers --model {ws}/missing_key", ["missing"]),
    ("layers --model {ws}/nan_weights", ["nan"]),
    ("layers --model {ws}/bad_config", ["config.json", "json"]),
    ("layers --model {ws}/no_tokenizer", ["missing", "tokenizer"]),
    ("layers --model {ws}/single.safetensors", ["--config"]),
    ("layers --model {ws}/single.safetensors --config {ws}/nowhere", ["nowhere"]),
    ("layers --model {ws}/model.ckpt", ["only .safetensors", "pickled"]),
    ("layers --model tiny --config {ws}/model", ["--config", "built-in"]),
    ("layers --model {ws}/model --config {ws}/model", ["--config", "folder"]),
    ("layers --model tiny --kind nope", ["unknown layer kind", "nope"]),
    ("layers --model tiny --pattern 'nothing*'", ["no layer", "nothing*"]),
    # ---- deltas
    ("apply --model tiny --delta {ws}/nowhere.safetensors --out {ws}/x", ["nowhere.safetensors"]),
    ("apply --model tiny --delta {ws}/exists.png --out {ws}/x", ["exists.png"]),
    ("apply --model tiny --delta {ws}/delta_truncated.safetensors --out {ws}/x", ["delta_truncated"]),
    ("apply --model tiny --delta {ws}/delta_flipped.safetensors --out {ws}/x", ["delta_flipped"]),
    ("apply --model tiny --delta {ws}/toy_delta.safetensors --out {ws}/x", ["toy_delta", "made for", "toy"]),
    ("evaluate --model tiny --delta {ws}/toy_delta.safetensors --concept cat", ["made for", "toy"]),
    ("evaluate --model tiny --delta {ws}/delta_flipped.safetensors --concept cat", ["delta_flipped"]),
    # ---- requests and editor arguments
    ("edit emcid --model tiny --requests {ws}/nowhere.json --out {ws}/d.safetensors", ["nowhere.json"]),
    ("edit emcid --model tiny --requests {ws}/req_notjson.json --out {ws}/d.safetensors", ["req_notjson.json"]),
    ("edit emcid --model tiny --requests {ws}/req_string.json --out {ws}/d.safetensors", ["req_string.json"]),
    ("edit emcid --model tiny --requests {ws}/req_unknown.json --out {ws}/d.safetensors", ["stepz"]),
    ("edit emcid --model tiny --requests {ws}/req_type.json --out {ws}/d.safetensors", ["steps", "ten"]),
    ("edit emcid --model tiny --requests {ws}/req_edits_dict.json --out {ws}/d.safetensors", ["edits"]),
    ("edit emcid --model tiny --out {ws}/d.safetensors", ["--requests"]),
    ("edit uce --model toy --debias doctor --out {ws}/d.safetensors", ["doctor"]),
    ("edit uce --model toy --debias doctor:warm --out {ws}/d.safetensors", ["doctor:warm"]),
    ("edit uce --model toy --debias doctor:warm=0.7,cool=0.7 --out {ws}/d.safetensors", ["sum"]),
    ("edit uce --model toy --debias doctor:warm=-0.5,cool=1.5 --out {ws}/d.safetensors", ["-0.5"]),
    ("edit uce --model toy --debias doctor:warm=x,cool=0.5 --out {ws}/d.safetensors", ["warm=x"]),
    ("edit uce --model tiny --debias cat:warm=0.5,cool=0.5 --out {ws}/d.safetensors", ["toy", "scorer"]),
    ("edit uce --model toy --erase circle --preserve circle --out {ws}/d.safetensors", ["circle", "preserve"]),
    ("edit uce --model toy --erase circle --erase circle --out {ws}/d.safetensors", ["circle", "twice"]),
    ("edit uce --model toy --erase '' --out {ws}/d.safetensors", ["empty"]),
    ("edit uce --model toy --erase zebra --out {ws}/d.safetensors", ["zebra", "unknown word"]),
    ("edit uce --model toy --out {ws}/d.safetensors", ["empty uce request"]),
    ("edit quickfix --model toy --erase circle --out {ws}/d.safetensors", ["--target"]),
    ("edit quickfix --model toy --erase circle --target circle --out {ws}/d.safetensors", ["circle"]),
    ("edit esd --model tiny --erase 'a cat' --erase 'a dog' --out {ws}/d.safetensors", ["--erase", "given twice"]),
    ("edit esd --model tiny --erase 'a cat' --method esd-q --out {ws}/d.safetensors", ["esd-q"]),
    ("edit uce --model tiny --erase 'a cat' --layer unet.nope --out {ws}/d.safetensors", ["unet.nope"]),
    ("edit uce --model tiny --erase 'a cat' --layer 'unet.*.nothing' --out {ws}/d.safetensors",
     ["unet.*.nothing", "matches no layer"]),
    ("edit uce --model tiny --erase 'a cat' --layer text.encoder.layers.0.self_attn --out {ws}/d.safetensors",
     ["text.encoder.layers.0.self_attn"]),
    ("edit uce --model tiny --erase 'a cat' --trace {ws}/nowhere --out {ws}/d.safetensors", ["nowhere"]),
    ("edit uce --model tiny --erase 'a cat' --trace {ws}/trace_bad --out {ws}/d.safetensors", ["result.json"]),
    ("edit uce --model tiny --erase 'a cat' --trace {ws}/trace_toy --out {ws}/d.safetensors",
     ["--trace", "other weights"]),
    ("edit uce --model tiny --erase 'a cat' --layer x --trace {ws}/trace_toy --out {ws}/d.safetensors",
     ["--layer", "--trace"]),
    # ---- prompts and traces
    ("trace --model tiny --prompt 'a cat' --subject dog --out {ws}/t", ["subject 'dog' not found"]),
    ("trace --model tiny --prompt '' --subject dog --out {ws}/t", ["empty prompt"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --kind nope --out {ws}/t", ["nope"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --part unet --layers nope --out {ws}/t", ["nope"]),
    ("trace --model tiny --prompt 'a cat' --subject cat --metric faithful --out {ws}/t", ["scorer"]),
    ("generate --model toy --prompt 'a zebra' --out {ws}/g.png", ["zebra", "unknown word"]),
    ("evaluate --model tiny --delta {ws}/delta.safetensors --concept ''", ["non-empty"]),
    ("toy", ["usage"]),
    ("toy nope", ["usage"]),
]


@pytest.fixture(scope="module")
def toy_trace(ws: Path) -> Path:
    """A trace made on the toy world: `edit --model tiny --trace` must refuse it."""
    out = ws / "trace_toy"
    assert main(["trace", "--model", "toy", "--prompt", "a red circle", "--subject", "circle", "--metric", "text",
                 "--samples", "1", "--out", str(out), "--quiet"]) == 0
    return out


def test_enough_bad_inputs_are_covered():
    assert len(CASES) >= 100


@pytest.mark.parametrize("command, words", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(command, words, ws, toy_trace, capsys):
    import shlex

    argv = shlex.split(command.format(ws=ws, toy=TOY_DIR))
    before = tree_hash(ws, *PACKAGE_DATA)
    capsys.readouterr()
    rc = main(argv)  # argparse's refusals too come back as an exit code, not a SystemExit
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("workbench")]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and "error:" in lines[0], err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert tree_hash(ws, *PACKAGE_DATA) == before, "a failed command changed files"


def test_debug_shows_the_traceback(ws):
    with pytest.raises(FileNotFoundError):
        main(["layers", "--model", str(ws / "nowhere"), "--debug"])
