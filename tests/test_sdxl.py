"""SDXL through the one wrapper: the full-size layer table on the meta device, the tiny SDXL topology against a
plain diffusers StableDiffusionXLPipeline, planted tracing, and the editors on two encoders + the pooled path."""

import pytest
import torch

from editors import emcid, esd, quickfix, uce
from tracing import TraceSettings, trace_text_encoder, trace_unet
from workbench import Conditioning, Workbench

FAST = TraceSettings(samples=2, draws=2, steps=2, progress=False)


@pytest.fixture(scope="module")
def xl():
    return Workbench.random("tiny-xl", seed=0)


def fresh(seed: int = 1) -> Workbench:
    return Workbench.random("tiny-xl", seed=seed)


def test_full_size_sdxl_layer_table_without_weights():
    wb = Workbench.random("sdxl", device="meta")
    assert all(p.device.type == "meta" for m in wb.parts.values() for p in m.parameters())
    assert wb.family.name == "sdxl" and wb.text_parts == ("text", "text2")
    attn2 = wb.layers("attn2")
    assert len(attn2) == 70
    assert all(wb.module(n).in_features == 2048 for n in wb.layers("to_k"))
    assert len(wb.layers("hidden", part="text")) == 12 and len(wb.layers("hidden", part="text2")) == 32
    assert wb.layers("out_proj", part="text2")[0] == "text2.text_model.encoder.layers.0.self_attn.out_proj"
    add = wb.module(wb.layers("add_proj")[0])
    assert (add.in_features, add.out_features) == (2816, 1280)  # 1280 pooled + 6 × 256 time-id features
    assert wb.layers("pooled") == ["text2.text_projection"]


def test_tiny_xl_matches_a_plain_diffusers_sdxl_pipeline(xl, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    folder = xl.save_pretrained(tmp_path / "xl")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a cat", "a red dog"]
    ours = xl.generate(prompts, seed=[3, 4], steps=3, guidance=5.0).images
    theirs = pipe(prompts, num_inference_steps=3, guidance_scale=5.0, latents=xl.initial_latents([3, 4]),
                  output_type="pt").images
    assert torch.allclose(ours, theirs, atol=1e-6)
    back = Workbench.from_pretrained(folder)
    assert back.family.name == "sdxl" and back.fingerprint() == xl.fingerprint()


def test_conditioning_has_both_encoders_pooled_text_and_time_ids(xl):
    cond = xl.conditioning(["a cat", "a dog"])
    assert cond.states.shape == (2, 77, 64)  # 32 (text) + 32 (text2), side by side
    assert cond.pooled.shape == (2, 32)
    assert cond.time_ids[0].tolist() == [16.0, 16.0, 0.0, 0.0, 16.0, 16.0]
    ids = xl.token_ids(["a cat"])
    direct = xl.tokenizers["text2"](["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(xl.family.part_ids(xl, "text2", ids), direct)  # the second tokenizer pads with "!"
    first = xl.text_encoders["text"](ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(cond.states[:1, :, :32], first)
    # the empty negative prompt is all zeros (SDXL-base's force_zeros_for_empty_prompt), a real one is encoded
    zero = xl.unconditional(2)
    assert not zero.states.any() and not zero.pooled.any() and torch.equal(zero.time_ids, cond.time_ids)
    assert xl.unconditional(1, "a dog").states.abs().sum() > 0
    with pytest.raises(ValueError, match="needs a Conditioning with pooled"):
        xl.run_unet(torch.zeros(1, *xl.latent_shape), 10, cond.states[:1])


def _zero_columns(wb: Workbench, names: list[str], cols: slice) -> None:
    with torch.no_grad():
        for name in names:
            wb.parameter(f"{name}.weight")[:, cols] = 0
    wb.weights_changed()


def test_planted_encoder_carries_the_subject_alone():
    wb = fresh()
    # the UNet reads only the second encoder: the first one's half of every key/value, and the pooled path, cut
    _zero_columns(wb, wb.layers("to_k") + wb.layers("to_v"), slice(0, 32))
    _zero_columns(wb, wb.layers("add_proj"), slice(0, 32))
    first = trace_text_encoder(wb, "a cat", "cat", part="text", settings=FAST)
    second = trace_text_encoder(wb, "a cat", "cat", part="text2", settings=FAST)
    assert first.scores.abs().max() < 1e-5
    assert second.rows[0] == "text2.text_model.embeddings"
    last = second.cols.index(second.cols[second.subject_cols[-1]])
    assert second.scores[0, last] > 0.999  # the clean subject embedding brings everything back
    with pytest.raises(ValueError, match="unknown text encoder 'text3'"):
        trace_text_encoder(wb, "a cat", "cat", part="text3", settings=FAST)


def test_planted_pooled_path_and_planted_attn2():
    wb = fresh()
    attn2 = wb.layers("attn2")
    _zero_columns(wb, wb.layers("to_v"), slice(None))  # cross-attention carries nothing: only the pooled path
    pooled = trace_unet(wb, "a cat", "cat", layers=["unet.add_embedding", attn2[0]], settings=FAST)
    assert pooled.scores[0, 0] > 0.999 and pooled.scores[1, 0].abs() < 1e-5

    wb = fresh()
    # only the last cross-attention reads text, and the pooled path is cut
    _zero_columns(wb, [n for n in wb.layers("to_v") if not n.startswith(attn2[-1])], slice(None))
    _zero_columns(wb, wb.layers("add_proj"), slice(0, 32))
    result = trace_unet(wb, "a cat", "cat", layers="attn2", settings=FAST)
    assert result.scores[-1, 0] > 0.999
    assert result.scores[:-1].abs().max() < 1e-5
    assert result.pick_layers(1) == [attn2[-1]]


def _ridge(w: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, preserve: torch.Tensor, lam: float):
    """The closed form written out independently: (V Kᵀ + W P Pᵀ + λW)(K Kᵀ + P Pᵀ + λI)⁻¹, float64."""
    w, k, v, p = (t.double() for t in (w, keys, values, preserve))
    a = k.T @ k + p.T @ p + lam * torch.eye(w.shape[1], dtype=torch.float64)
    b = v.T @ k + w @ p.T @ p + lam * w
    return torch.linalg.solve(a, b.T).T


def test_uce_on_sdxl_edits_2048_wide_keys_and_optionally_the_pooled_path(xl):
    req = uce.UCERequest(erase=["cat"], preserve=["dog"])
    delta = uce.edit(xl, req)
    assert set(delta.tensors) == {f"{n}.weight" for n in xl.layers("to_k") + xl.layers("to_v")}
    cond = xl.conditioning(["cat", "", "dog"])
    k_cat, k_empty, k_dog = cond.states[0, 1:2], cond.states[1, 0:1], cond.states[2, 1:2]
    name = f"{xl.layers('to_k')[3]}.weight"
    w = xl.parameter(name).detach()
    expect = _ridge(w, k_cat, k_empty @ w.T, k_dog, req.lam)
    assert torch.allclose(delta.tensors[name].double(), expect, atol=1e-4)

    with_pooled = uce.edit(xl, uce.UCERequest(erase=["cat"], preserve=["dog"], pooled=True))
    add = "unet.add_embedding.linear_1.weight"
    assert add in with_pooled.tensors and add not in delta.tensors
    new, old = with_pooled.tensors[add], xl.parameter(add).detach()
    assert torch.equal(new[:, 32:], old[:, 32:])  # the time ids' columns stay
    block = old[:, :32]
    expect = _ridge(block, cond.pooled[0:1], cond.pooled[1:2] @ block.T, cond.pooled[2:3], req.lam)
    assert torch.allclose(new[:, :32].double(), expect, atol=1e-4)
    with pytest.raises(ValueError, match="no pooled text path"):
        uce.edit(Workbench.random("tiny"), uce.UCERequest(erase=["cat"], pooled=True))


def test_quickfix_on_the_second_encoder(xl):
    layer = xl.layers("out_proj", part="text2")[1]
    delta = quickfix.edit(xl, quickfix.QuickFixRequest(sources=["cat"], targets=["dog"], templates=["a {}"]),
                          layers=[layer])
    assert list(delta.tensors) == [f"{layer}.weight"]
    _, before = xl.run_text(xl.token_ids(["a cat", "a dog"]), read=[f"{layer}:input", layer])
    key, dog = before[f"{layer}:input"][0, 2], before[layer][1, 2]
    with delta.applied(xl):
        moved = xl.module(layer)(key)
    assert (moved - dog).norm() < 0.1 * (before[layer][0, 2] - dog).norm()


def test_esd_x_on_sdxl_trains_only_cross_attention(xl):
    delta = esd.edit(xl, esd.ESDRequest(erase="cat", iterations=2, ddim_steps=2, lr=1e-3), progress=False)
    assert delta.tensors and all(".attn2." in n for n in delta.tensors)
    changed = [n for n, t in delta.tensors.items() if not torch.equal(t, xl.parameter(n).detach())]
    assert changed


def test_emcid_default_layers_span_both_encoders(xl):
    names = emcid.fc2_layers(xl)
    assert {xl.layer(n).part for n in names} == {"text", "text2"}
    cov = emcid.caption_covariance(xl, names, ["a cat", "a red dog", "a photo of a bird"])
    delta = emcid.edit(xl, emcid.EMCIDRequest([("cat", "dog")], steps=2, covariance=cov),
                       progress=False)
    assert {xl.layer(n.removesuffix(".weight")).part for n in delta.tensors} == {"text", "text2"}
    assert len(delta.metadata["stage_one_layers"]) == 2


def test_conditioning_rows_move_together():
    c = Conditioning(torch.arange(12.).view(3, 2, 2), torch.arange(6.).view(3, 2), torch.ones(3, 6))
    assert len(c[[0, 2]]) == 2 and torch.equal(c[1].pooled, c.pooled[1:2])
    assert torch.equal(Conditioning.cat([c[0], c[1]]).states, c.states[:2])
    assert c[0].expand(4).pooled.shape == (4, 2) and len(c.repeat(2)) == 6
    assert c.flat().shape == (3, 4 + 2 + 6)
    with pytest.raises(ValueError, match="rows"):
        Conditioning(torch.zeros(2, 1, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="with and without pooled"):
        Conditioning.cat([c, Conditioning(torch.zeros(1, 2, 2))])


def test_an_sdxl_delta_exports_to_the_xl_pipeline_and_refuses_another_base(xl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    delta = uce.edit(xl, uce.UCERequest(erase=["cat"], pooled=True), progress=False)
    folder = delta.export(xl, tmp_path / "edited")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    name = "add_embedding.linear_1.weight"
    assert torch.equal(pipe.unet.get_parameter(name), delta.tensors[f"unet.{name}"])
    assert torch.equal(xl.parameter(f"unet.{name}"), Workbench.random("tiny-xl", seed=0).parameter(f"unet.{name}"))
    with pytest.raises(ValueError):
        delta.apply(fresh(seed=5))


def test_bad_sdxl_folders_are_one_line_errors(xl, tmp_path):
    import json
    import shutil

    folder = xl.save_pretrained(tmp_path / "xl")
    broken = tmp_path / "no-second-encoder"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="StableDiffusionXLPipeline folder: missing subfolder.*text_encoder_2"):
        Workbench.from_pretrained(broken)
    flux = tmp_path / "flux"
    shutil.copytree(folder, flux)
    index = json.loads((flux / "model_index.json").read_text())
    (flux / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="pipeline 'FluxPipeline' is not a family the workbench knows"):
        Workbench.from_pretrained(flux)
    (flux / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="model_index.json.* is not readable JSON"):
        Workbench.from_pretrained(flux)
    with pytest.raises(ValueError, match="unknown arch 'sdxl-base'.*tiny-xl"):
        Workbench.random("sdxl-base")


def test_tokenizers_that_disagree_on_positions_are_refused(xl, word_level_tokenizer):
    with pytest.raises(ValueError, match="text2 tokenizer has another vocabulary"):
        Workbench(xl.unet, xl.text_encoders, {"text": xl.tokenizer, "text2": word_level_tokenizer}, xl.scheduler,
                  family=xl.family)
    with pytest.raises(ValueError, match="takes text encoders for text, text2"):
        Workbench(xl.unet, xl.text_encoder, xl.tokenizer, xl.scheduler, family=xl.family)
