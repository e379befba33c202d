from workbench.app.cli import main


def test_layers_command(capsys):
    assert main(["layers", "--model", "tiny", "--kind", "attn2"]) == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) == 4 and all(line.endswith("attn2") for line in lines)


def test_bad_kind_is_a_clear_error(capsys):
    assert main(["layers", "--model", "tiny", "--kind", "nope"]) == 2
    assert "unknown layer kind 'nope'" in capsys.readouterr().err


def test_generate_writes_a_grid(tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["generate", "--model", "tiny", "--prompt", "a cat", "--prompt", "a dog", "-n", "2", "--steps",
                 "2", "--scale", "2", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.height == 2 * (32 + 1) + 1  # two rows of 16 px images at 2x


def test_trace_command_writes_result_and_heatmap(tmp_path, capsys):
    from tracing import TraceResult

    out = tmp_path / "trace"
    assert main(["trace", "--model", "tiny", "--prompt", "a photo of van gogh", "--subject", "van gogh",
                 "--metric", "text", "--samples", "2", "--out", str(out)]) == 0
    result = TraceResult.load(out)
    assert (out / "heatmap.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert result.pick_layers(1)[0] in printed and result.subject_cols == [4, 5]
    assert main(["trace", "--model", "tiny", "--prompt", "a cat", "--subject", "dog", "--out", str(out),
                 "--overwrite"]) == 2
    assert "subject 'dog' not found" in capsys.readouterr().err


def test_edit_esd_and_emcid_commands(tmp_path, capsys):
    import json

    import torch

    from workbench import WeightDelta, Workbench

    wb = Workbench.random("tiny", seed=0)
    out = tmp_path / "esd.safetensors"
    assert main(["edit", "esd", "--model", "tiny", "--erase", "a cat", "--method", "esd-x-strict",
                 "--iterations", "2", "--lr", "1e-3", "--out", str(out)]) == 0
    delta = WeightDelta.load(out)
    assert delta.names and all(n.endswith(("to_k.weight", "to_v.weight")) for n in delta.names)
    assert any(not torch.equal(delta.tensors[n], wb.parameter(n)) for n in delta.names)
    assert main(["edit", "esd", "--model", "tiny", "--erase", "a cat", "--method", "esd-q", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "esd-q" in capsys.readouterr().err

    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps({"edits": [{"source": "cat", "destination": "dog"}], "steps": 2}))
    out = tmp_path / "emcid.safetensors"
    assert main(["edit", "emcid", "--model", "tiny", "--requests", str(requests), "--out", str(out)]) == 2
    assert "caption" in capsys.readouterr().err  # a random model has no caption corpus: a clear error


def _tiny_to_v_delta(seed: int, scale: float):
    from workbench import WeightDelta, Workbench

    wb = Workbench.random("tiny", seed=seed)
    names = [f"{layer}.to_v.weight" for layer in wb.layers(kind="attn2")]
    return WeightDelta.capture(wb, {n: wb.parameter(n).data * scale for n in names}, method="scale")


def test_evaluate_delta_for_another_base_model_is_a_clear_error(tmp_path, capsys):
    path = _tiny_to_v_delta(seed=1, scale=2.0).save(tmp_path / "other.safetensors")
    assert main(["evaluate", "--model", "tiny", "--delta", str(path), "--concept", "cat", "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert (f"workbench evaluate: error: {path} was made for another base model, 'random-tiny-seed1', not for "
            "--model tiny ('random-tiny-seed0')") in err and "to_v.weight" in err


def test_evaluate_paraphrase_attack_grid_json(tmp_path, capsys, monkeypatch):
    import json

    from PIL import Image

    from workbench.app import cli
    from workbench.world import World

    delta = _tiny_to_v_delta(seed=0, scale=30.0).save(tmp_path / "d.safetensors")
    args = ["evaluate", "--model", "tiny", "--delta", str(delta), "--concept", "cat", "--samples", "2"]
    assert main(args) == 2  # a random model has no world to take prompts and a scorer from, and says so
    assert "has no world" in capsys.readouterr().err

    # the CLI takes prompts, scorer and vocabulary from the model's world: stand-ins that fit the tiny model
    stand_in = World("stand-in", concept_scorer=lambda c: lambda images: images[:, 0].mean((1, 2)),
                     concept_prompt=lambda c, i: f"a {c}", paraphrase_prompt=lambda c, i: f"the {c} photo",
                     vocabulary=lambda: ["red", "photo", "dog"])
    load = cli._load

    def with_world(args):
        wb = load(args)
        wb.world = stand_in
        return wb

    monkeypatch.setattr(cli, "_load", with_world)
    out_json, out_grid = tmp_path / "eval.json", tmp_path / "grid.png"
    assert main(["evaluate", "--model", "tiny", "--delta", str(delta), "--concept", "cat", "--unrelated", "car",
                 "--samples", "2", "--steps", "2", "--paraphrase", "--attack", "--attack-rounds", "1",
                 "--attack-candidates", "2", "--attack-seeds", "2", "--grid", str(out_grid), "--grid-images", "2",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert [r["group"] for r in report["rates"]] == ["edited", "paraphrase", "unrelated", "attack"]
    assert report["attacks"][0]["tried"] <= 3 and report["fidelity"][0]["mean_abs"] > 0
    assert report["settings"]["attack_candidates"] == 2 and report["settings"]["steps"] == 2
    assert "| paraphrase | cat |" in printed and "| attack on |" in printed and f"wrote {out_grid}" in printed
    assert Image.open(out_grid).height == 4 * 2 * (16 * 4 + 1) + 1  # 4 rows of concepts × before/after
    assert report["summary"]["fidelity_mean_abs_pixel"] == report["fidelity"][0]["mean_abs"]


def test_evaluate_scan_from_the_cli(tmp_path, capsys):
    import json

    from editors import UCERequest, uce
    from workbench import Workbench

    delta = uce.edit(Workbench.toy(), UCERequest(erase=["circle"]), progress=False).save(tmp_path / "d.safetensors")
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--model", "toy", "--delta", str(delta), "--concept", "circle", "--alias", "disc",
                 "--samples", "1", "--scan", "--json", str(out_json), "--quiet"]) == 0
    printed = capsys.readouterr().out
    scan = json.loads(out_json.read_text())["scan"]
    assert scan["edited"] == ["circle"] and len(scan["rows"]) == 52 and scan["samples"] == 1
    assert "World scan: 52 concepts" in printed and "Largest 10 changes outside the edited set" in printed
