"""WeightDelta apply/revert/save/load, export to a plain diffusers pipeline, checkpoint layouts."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from workbench import WeightDelta, Workbench

K = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
OUT = "text.encoder.layers.0.self_attn.out_proj.weight"


def _delta(wb, scale=2.0):
    return WeightDelta.capture(wb, {K: wb.parameter(K) * scale, OUT: wb.parameter(OUT) + 1.0}, method="test",
                               concepts=["cat"])


def test_apply_revert_is_bit_exact(tiny):
    before = {n: tiny.parameter(n).detach().clone() for n in (K, OUT)}
    fp = tiny.fingerprint()
    delta = _delta(tiny)
    delta.apply(tiny)
    assert torch.equal(tiny.parameter(K), before[K] * 2.0)
    assert tiny.fingerprint() != fp
    delta.revert(tiny)
    for n in (K, OUT):
        assert torch.equal(tiny.parameter(n), before[n])
    assert tiny.fingerprint() == fp
    with delta.applied(tiny):
        assert torch.equal(tiny.parameter(OUT), before[OUT] + 1.0)
    assert torch.equal(tiny.parameter(OUT), before[OUT])


def test_mismatched_base_is_refused_and_model_untouched(tiny):
    delta = _delta(tiny)
    other = Workbench.random("tiny", seed=5, vae=False)
    before = other.parameter(K).detach().clone()
    with pytest.raises(ValueError, match="was made for other weights: .*attn2.to_k.weight.*refusing"):
        delta.apply(other)
    assert torch.equal(other.parameter(K), before)
    # applying twice is refused too: the base no longer matches
    with delta.applied(tiny), pytest.raises(ValueError, match="other weights"):
        delta.apply(tiny)


def test_bad_values_are_refused(tiny):
    with pytest.raises(ValueError, match="NaN or inf"):
        WeightDelta.capture(tiny, {K: tiny.parameter(K) * float("nan")})
    with pytest.raises(ValueError, match="shape"):
        WeightDelta.capture(tiny, {K: torch.zeros(3, 3)})
    with pytest.raises(KeyError, match="no parameter named 'unet.nope.weight'"):
        WeightDelta.capture(tiny, {"unet.nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="at least one parameter"):
        WeightDelta.capture(tiny, {})


def test_save_load_round_trip(tiny, tmp_path):
    delta = _delta(tiny)
    path = delta.save(tmp_path / "d" / "delta.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["delta.safetensors"]  # no temp files left
    loaded = WeightDelta.load(path)
    assert loaded.base == delta.base and loaded.metadata["concepts"] == ["cat"]
    assert loaded.metadata["model_fingerprint"] == tiny.fingerprint()
    for n in delta.tensors:
        assert torch.equal(loaded.tensors[n], delta.tensors[n])
    loaded.apply(tiny)
    loaded.revert(tiny)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a workbench delta"):
        WeightDelta.load(tmp_path / "plain.safetensors")


def test_export_loads_in_a_plain_diffusers_pipeline(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    delta = _delta(tiny)
    folder = delta.export(tiny, tmp_path / "edited")
    assert torch.equal(tiny.parameter(K), delta.tensors[K] / 2.0)  # reverted after export
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    path = K.removeprefix("unet.")
    assert torch.equal(pipe.unet.get_parameter(path), delta.tensors[K])
    images = pipe("a cat", num_inference_steps=2, height=16, width=16, output_type="pt").images
    assert images.shape == (1, 3, 16, 16)
    reloaded = Workbench.from_pretrained(folder)
    assert torch.equal(reloaded.parameter(OUT), delta.tensors[OUT])
    a = reloaded.sample("a cat", seed=3, steps=3)
    with delta.applied(tiny):
        b = tiny.sample("a cat", seed=3, steps=3)
    assert (a - b).abs().max() < 1e-5
    with pytest.raises(FileExistsError, match="not empty"):
        delta.export(tiny, folder)


def test_save_load_round_trip_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny.save_pretrained(tmp_path / "m")
    back = Workbench.from_pretrained(folder)
    assert back.fingerprint() == tiny.fingerprint()
    assert back.layers() == tiny.layers()
    with pytest.raises(ValueError, match="refusing to write .* it is .* which this run reads from"):
        back.save_pretrained(folder, overwrite=True)


def test_transformers4_text_encoder_layout_is_read_and_kept(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "m")
    te = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(str(te))
    assert not any(k.startswith("text_model.") for k in tensors)  # transformers 5 saves without the level
    save_file({"text_model." + k: v for k, v in tensors.items()}, str(te), metadata={"format": "pt"})
    old = Workbench.from_pretrained(folder)
    assert old.text_key_prefix == "text_model."
    assert old.fingerprint() == tiny.fingerprint()
    delta = _delta(old)
    out = delta.export(old, tmp_path / "edited")
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and all(k.startswith("text_model.") for k in keys)
        assert torch.equal(f.get_tensor("text_model." + OUT.removeprefix("text.")), delta.tensors[OUT])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Workbench.from_pretrained(tmp_path / "nothing")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing subfolder\\(s\\) text_encoder, tokenizer, scheduler"):
        Workbench.from_pretrained(tmp_path / "half")
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="only .safetensors"):
        Workbench.from_pretrained(tmp_path / "x.ckpt")
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="needs a config"):
        Workbench.from_pretrained(tmp_path / "x.safetensors")


def test_workbench_json_defaults_survive_export(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "m")
    extra = json.loads((folder / "workbench.json").read_text())
    assert extra["autoencoder"] == {"type": "autoencoder_kl"} and extra["steps"] == 20
