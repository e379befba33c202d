"""The wrapper's gradient-carrying intervention, its causal truncation of token ids, and the applied-delta
stack it owns."""

import pytest
import torch

from workbench import Patch, WeightDelta

LAYER = "text.encoder.layers.1"


def _weights(wb):
    return {f"{p}.{k}": v.clone() for p, m in wb.parts.items() for k, v in m.state_dict().items()}


def test_gradient_through_a_patch_equals_a_hand_written_hook(tiny):
    before = _weights(tiny)
    ids = tiny.token_ids(["a red cat", "a photo of a dog"])
    shift = torch.randn(tiny.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    rows, pos = torch.arange(2), torch.tensor([3, 5])

    def loss_of(states):
        latents = torch.randn(2, *tiny.latent_shape, generator=torch.Generator().manual_seed(1))
        return tiny.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=states).sample.pow(2).mean()

    ours = shift.clone().requires_grad_(True)
    states, _ = tiny.run_text(ids, patches=[Patch(LAYER, lambda h: h.index_put((rows, pos), ours,
                                                                                accumulate=True))], grad=True)
    states = states.states
    loss_of(states).backward()

    theirs = shift.clone().requires_grad_(True)

    def add(_module, _args, out):  # a layer returns a tensor or a tuple, by transformers version
        h = out[0] if isinstance(out, tuple) else out
        h = h.index_put((rows, pos), theirs, accumulate=True)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = tiny.module(LAYER).register_forward_hook(add)
    try:
        with torch.enable_grad():
            loss_of(tiny.text_encoder(ids).last_hidden_state).backward()
    finally:
        handle.remove()
    assert ours.grad is not None and ours.grad.abs().sum() > 0
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-6, rtol=1e-5)
    after = _weights(tiny)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for m in tiny.parts.values() for p in m.parameters())  # the weights stay frozen


def test_without_grad_nothing_carries_a_gradient(tiny):
    shift = torch.zeros(tiny.text_encoder.config.hidden_size, requires_grad=True)
    states, _ = tiny.run_text(tiny.token_ids("a cat"), patches=[Patch(LAYER, lambda h: h + shift)])
    states = states.states
    assert not states.requires_grad


def test_a_bad_patch_layer_is_one_line(tiny):
    with pytest.raises(KeyError, match="no layer named 'text.encoder.layers.9'"):
        tiny.run_text(tiny.token_ids("a cat"), patches=[Patch("text.encoder.layers.9", 0.0)], grad=True)


def test_truncated_ids_give_the_full_sequence_states(tiny):
    prompts = ["a red cat", "a photo of a dog in the park"]
    full, _ = tiny.run_text(tiny.token_ids(prompts))
    full = full.states
    n = max(tiny.token_count(p) for p in prompts)
    short, _ = tiny.run_text(tiny.token_ids(prompts, length=n))
    short = short.states
    assert short.shape[1] == n and torch.allclose(short, full[:, :n], atol=1e-6)
    with pytest.raises(ValueError, match="length must be a whole number from 1 to"):
        tiny.token_ids(prompts, length=0)


def test_the_wrapper_owns_the_applied_stack(tiny):
    name = tiny.layers("to_v")[0] + ".weight"
    a = WeightDelta.capture(tiny, {name: tiny.parameter(name).detach() * 1.5}, method="test")
    fp = tiny.fingerprint()
    a.apply(tiny)
    assert tiny.applied == (a,) and tiny.fingerprint() != fp
    with pytest.raises(AttributeError):
        tiny.applied.append(a)  # a read-only view
    with pytest.raises(ValueError, match="not the last one applied"):
        tiny.take_applied(WeightDelta.capture(tiny, {name: tiny.parameter(name).detach()}, method="test"))
    a.revert(tiny)
    assert tiny.applied == () and tiny.fingerprint() == fp
