"""The shared wrapper on tiny random models: names, prompts, interventions, sampling."""

import pytest
import torch

from workbench import Patch, Workbench

PROMPT = "a photo of a cat by monet"


def test_layer_table_is_in_execution_order(tiny):
    attn2 = tiny.layers("attn2")
    assert len(attn2) == 4
    assert attn2[0].startswith("unet.down_blocks") and "mid_block" in attn2[1]
    assert all(name.startswith("unet.up_blocks") for name in attn2[2:])
    names = tiny.layers()
    assert names.index("text.encoder.layers.2") < names.index("unet.conv_in")
    # to_k finishes before the attn2 that holds it, which finishes before its block
    k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    assert names.index(k) < names.index(k.rsplit(".", 1)[0]) < names.index("unet.down_blocks.0")
    assert tiny.layers(pattern="unet.*.attn2") == attn2
    assert tiny.layers("hidden") == [f"text.encoder.layers.{i}" for i in range(3)]


def test_every_layer_can_be_read_in_one_trace(tiny):
    x = torch.randn(1, *tiny.latent_shape)
    ctx = tiny.encode("a cat")
    names = tiny.layers(part="unet")
    out, reads = tiny.run_unet(x, 10, ctx, read=names)
    plain = tiny.unet(x, 10, encoder_hidden_states=ctx).sample
    assert set(reads) == set(names)
    assert torch.equal(out, plain)


def test_unknown_layer_and_kind_are_clear_errors(tiny):
    with pytest.raises(KeyError, match="did you mean .*attn2"):
        tiny.layer("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn3")
    with pytest.raises(ValueError, match="unknown layer kind 'attention'"):
        tiny.layers("attention")
    with pytest.raises(ValueError, match="is in the unet part, not in a text encoder"):
        tiny.run_text(tiny.token_ids("a cat"), read=["unet.conv_in"])


def test_prompt_tokens_and_subject_positions(tiny):
    tokens = tiny.tokens("a photo of van gogh")
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert tiny.subject_positions("a photo of van gogh", "van gogh") == [4, 5]
    # a subject split into several BPE pieces: positions cover all of them, the last is the last piece
    pos = tiny.subject_positions("a photo of zorblat", "zorblat")
    assert len(pos) > 1 and pos[0] == 4 and "".join(tiny.tokens("a photo of zorblat")[4:pos[-1] + 1]) == "zorblat</w>"
    ids = tiny.token_ids(["a cat", PROMPT])
    assert ids.shape == (2, tiny.max_length)
    assert (ids[0, 3:] == tiny.tokenizer.eos_token_id).all()  # SD-1.x pads with end-of-text


def test_prompt_errors(tiny, word_level_tokenizer):
    with pytest.raises(ValueError, match="subject 'dog' not found in prompt 'a photo of a cat'"):
        tiny.subject_positions("a photo of a cat", "dog")
    with pytest.raises(ValueError, match="empty subject"):
        tiny.subject_positions("a photo of a cat", " ")
    long = " ".join(["cat"] * 100)
    with pytest.raises(ValueError, match="is 102 tokens long .* at most 77"):
        tiny.token_ids(long)
    words = Workbench(tiny.unet, tiny.text_encoder, word_level_tokenizer, tiny.scheduler)
    assert words.tokens("a red circle") == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['blue'\]"):
        words.tokens("a blue circle")
    assert words.subject_positions("a red circle by vera kolm", "vera kolm") == [5, 6]


def test_restoring_every_position_reproduces_clean_text_states(tiny):
    ids = tiny.token_ids([PROMPT, PROMPT])
    pos = tiny.subject_positions(PROMPT, "cat")
    clean, states = tiny.run_text(ids[:1], read=tiny.layers("hidden"))
    clean = clean.states
    noise = torch.randn(1, len(pos), clean.shape[-1], generator=torch.Generator().manual_seed(0))
    corrupt = Patch("text.embeddings.token_embedding", lambda e: e + 3 * noise, rows=[1], positions=pos)
    corrupted, _ = tiny.run_text(ids, patches=[corrupt])
    corrupted = corrupted.states
    assert (corrupted[1] - clean[0]).abs().max() > 1e-2  # the corruption does something
    assert torch.equal(corrupted[0], clean[0])  # and only to its row
    for layer in tiny.layers("hidden"):
        restore = Patch(layer, states[layer], rows=[1])
        restored, _ = tiny.run_text(ids, patches=[corrupt, restore])
        restored = restored.states
        assert (restored[1] - clean[0]).abs().max() <= 1e-6, layer
    # restoring one token fixes that position and everything before it (causal attention), not after
    last = pos[-1]
    restored, _ = tiny.run_text(ids, patches=[corrupt, Patch("text.encoder.layers.0", states["text.encoder.layers.0"]
                                                             [:, [last]], rows=[1], positions=[last])])
    restored = restored.states
    assert (restored[1, : last + 1] - clean[0, : last + 1]).abs().max() <= 1e-6
    assert (restored[1, last + 1:] - clean[0, last + 1:]).abs().max() > 1e-3


def test_restoring_every_cross_attention_key_and_value_reproduces_clean_unet(tiny):
    x = torch.randn(2, *tiny.latent_shape, generator=torch.Generator().manual_seed(1))
    clean_ctx, corrupt_ctx = tiny.encode("a cat"), tiny.encode("a dog")
    kv = tiny.layers(["to_k", "to_v"])
    clean, reads = tiny.run_unet(x[:1], 500, clean_ctx, read=kv)
    corrupt, _ = tiny.run_unet(x[:1], 500, corrupt_ctx)
    assert (corrupt - clean).abs().max() > 1e-3
    patches = [Patch(name, reads[name]) for name in kv]
    restored, _ = tiny.run_unet(x[:1], 500, corrupt_ctx, patches=patches)
    assert (restored - clean).abs().max() <= 1e-6


def test_sample_is_deterministic_and_batch_independent(tiny):
    a = tiny.sample(["a cat", "a dog"], seed=7, steps=4)
    b = tiny.sample(["a cat", "a dog"], seed=7, steps=4)
    c = tiny.sample(["a dog"], seed=[8], steps=4)
    d = tiny.sample(["a cat", "a dog"], seed=9, steps=4)
    assert a.shape == (2, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert (a[1] - c[0]).abs().max() < 1e-5
    assert (a - d).abs().max() > 1e-2


def test_generate_patches_never_touch_the_unconditional_pass_unless_asked(tiny):
    seen = []

    def record(slice_):
        seen.append(slice_.shape[0])
        return slice_

    layer = "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    tiny.generate(["a cat", "a dog", "a cow"], steps=3, guidance=3.0, patches=[Patch(layer, record)])
    assert seen == [3, 3, 3]
    seen.clear()
    tiny.generate(["a cat", "a dog", "a cow"], steps=3, guidance=3.0, patches=[Patch(layer, record, uncond=True,
                                                                                    steps=[1])])
    assert seen == [6]
    gen = tiny.generate(["a cat"], steps=3, guidance=3.0, read=[layer])
    assert len(gen.reads[layer]) == 3 and gen.reads[layer][0].shape[0] == 1


def test_patch_acts_at_the_chosen_steps_only(tiny):
    calls = []
    layer = "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn2"

    def zero(slice_):
        calls.append(1)
        return torch.zeros_like(slice_)

    base = tiny.sample("a cat", seed=1, steps=4, guidance=1.0)
    zeroed = tiny.sample("a cat", seed=1, steps=4, guidance=1.0, patches=[Patch(layer, zero, steps=[0, 2])])
    assert len(calls) == 2
    assert (base - zeroed).abs().max() > 0


def test_random_models_are_seeded(tiny):
    again = Workbench.random("tiny", seed=0, vae=False)
    other = Workbench.random("tiny", seed=1, vae=False)
    w = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(again.parameter(w), tiny.parameter(w))
    assert not torch.equal(other.parameter(w), tiny.parameter(w))
    with pytest.raises(ValueError, match="unknown arch 'sd3'"):
        Workbench.random("sd3")


def test_reading_module_inputs(tiny):
    ids = tiny.token_ids(["a cat", "a dog"])
    out_proj = "text.encoder.layers.1.self_attn.out_proj"
    _, reads = tiny.run_text(ids, read=[out_proj, f"{out_proj}:input", "text.encoder.layers.0"])
    module = tiny.module(out_proj)
    assert torch.allclose(module(reads[f"{out_proj}:input"]), reads[out_proj], atol=1e-6)
    with pytest.raises(ValueError, match="patches overwrite outputs"):
        tiny.run_text(ids, patches=[Patch(f"{out_proj}:input", 0.0)])
