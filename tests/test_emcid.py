"""EMCID on the tiny random model (and a word-level tokenizer for vocabulary errors): stage II's algebra,
stage I's optimisation, determinism and bad input."""

import json
from dataclasses import replace

import pytest
import torch

from editors import EMCIDRequest, emcid
from editors.emcid import (
    EMCIDEdit,
    caption_covariance,
    fc2_layers,
    stage_one,
    stage_two,
    subject_states,
    without_sources,
)
from workbench import WeightDelta, Workbench

# Enough distinct captions for a full-rank covariance of the tiny model's 64-wide fc2 inputs.
CAPTIONS = [f"{frame} {colour} {thing} {place}" for frame in ("a photo of a", "a painting of a", "a")
            for colour in ("red", "blue", "old", "small") for thing in ("cat", "dog", "house", "car", "bird")
            for place in ("", "in the park", "by the river")]
EDITS = [("cat", "dog"), ("monet", "van gogh"), ("car", "tree", ["a {} in the park", "a red car"])]
FAST = dict(steps=3, sample_steps=1, noise_samples=1)


@pytest.fixture(scope="module")
def model():
    """The tiny random model with non-zero fc2 biases (CLIP initialises them to zero), so a stage II that
    mishandled the bias would show."""
    wb = Workbench.random("tiny", seed=1, vae=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in wb.layers("fc2"):
            bias = wb.module(name).bias
            bias.copy_(torch.randn(bias.shape, generator=gen))
    return wb


def _weights(wb: Workbench, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: wb.parameter(f"{n}.weight").detach().clone() for n in names}




def test_default_layers_and_names(model):
    assert fc2_layers(model) == ["text.encoder.layers.2.mlp.fc2"]  # layers 7-10 of 12, scaled to 3 layers
    assert fc2_layers(model, ["text.encoder.layers.1.mlp", "text.encoder.layers.0"]) == [
        "text.encoder.layers.0.mlp.fc2", "text.encoder.layers.1.mlp.fc2"]


def test_covariance_is_the_mean_outer_product_over_real_tokens(model):
    layer = "text.encoder.layers.1.mlp.fc2"
    caps = ["a photo of a cat", "a dog"]
    cov = caption_covariance(model, [layer], caps, batch_size=1)[layer]
    keys = []
    for c in caps:
        n = len(model.tokens(c))
        _, read = model.run_text(model.token_ids([c]), read=[f"{layer}:input"])
        keys.append(read[f"{layer}:input"][0, :n])
    k = torch.cat(keys).double()
    assert torch.allclose(cov, k.T @ k / len(k), rtol=1e-5, atol=1e-7)  # padding cut: float32 rounding only


def test_stage_two_with_zero_residuals_leaves_weights_unchanged(model):
    req = EMCIDRequest(EDITS)
    names = fc2_layers(model, model.layers("fc2"))
    before = _weights(model, names)
    cov = caption_covariance(model, names, CAPTIONS)
    targets = subject_states(model, req, names[-1])
    new = stage_two(model, req, names, targets, cov)
    assert sorted(new) == sorted(f"{n}.weight" for n in names)
    for n in names:
        assert (new[f"{n}.weight"] - before[n]).abs().max() < 1e-7
        assert torch.equal(model.parameter(f"{n}.weight"), before[n])  # the model is restored


def test_stage_two_without_preserve_maps_edited_keys_to_their_targets(model):
    req = EMCIDRequest(EDITS, lam=0.0, ridge=1e-9)
    names = fc2_layers(model, model.layers("fc2"))
    z0 = subject_states(model, req, names[-1])
    shift = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    targets = z0 + 0.5 * shift * z0.norm(dim=1, keepdim=True) / shift.norm(dim=1, keepdim=True)
    zero = {n: torch.zeros(model.module(n).in_features, model.module(n).in_features, dtype=torch.float64)
            for n in names}
    delta = WeightDelta.capture(model, stage_two(model, req, names, targets, zero))
    with delta.applied(model):
        reached = subject_states(model, req, names[-1])
    err = (reached - targets).norm(dim=1) / (targets - z0).norm(dim=1)
    assert err.max() < 1e-3, err
    # one layer: the edited fc2 maps the (mean) key of each concept to its old output plus the residual
    layer = names[0]
    one = stage_two(model, req, [layer], subject_states(model, req, layer) + 0.1, zero)
    keys = _keys(model, req, layer)
    w_old, w_new = model.parameter(f"{layer}.weight").detach(), one[f"{layer}.weight"]
    assert torch.allclose(keys @ w_new.T, keys @ w_old.T + 0.1, atol=1e-4)


def _keys(wb: Workbench, req: EMCIDRequest, layer: str) -> torch.Tensor:
    out = []
    for edit in req.edits:
        ks = []
        for t in edit.prompts or req.templates:
            p = t.replace("{}", edit.source)
            _, read = wb.run_text(wb.token_ids([p]), read=[f"{layer}:input"])
            ks.append(read[f"{layer}:input"][0, wb.subject_positions(p, edit.source)[-1]])
        out.append(torch.stack(ks).mean(0))
    return torch.stack(out)


def test_request_normalises_edits(tmp_path):
    req = EMCIDRequest([("cat", "dog"), {"source": "car", "destination": "tree", "prompts": ["a red  car"]},
                        ["cat", "dog"]])
    assert req.edits == [EMCIDEdit("cat", "dog"), EMCIDEdit("car", "tree", ("a red {}",))]  # repeat dropped
    path = tmp_path / "requests.json"
    path.write_text(json.dumps({"edits": [["cat", "dog"]], "lam": 10.0}))
    assert EMCIDRequest.load(path).lam == 10.0
    path.write_text(json.dumps([{"source": "cat", "destination": "dog"}]))
    assert EMCIDRequest.load(path).sources == ["cat"]


def test_stage_one_reduces_its_loss_and_respects_the_clamp(model):
    req = EMCIDRequest(EDITS, steps=10, lr=0.02, sample_steps=2, noise_samples=2)
    one = stage_one(model, req, "text.encoder.layers.1")
    assert one.losses.shape == (11, 3)
    assert (one.losses[-1] < one.losses[0]).all(), one.losses[[0, -1]]
    shift = (one.targets - one.initial).norm(dim=1)
    assert (shift > 0).all()
    tight = stage_one(model, EMCIDRequest(EDITS, clamp=0.01, samples="noise", **FAST), "text.encoder.layers.1")
    assert ((tight.targets - tight.initial).norm(dim=1) <= 0.01 * tight.initial.norm(dim=1) * (1 + 1e-5)).all()


def test_stage_one_does_not_depend_on_how_concepts_are_batched(model):
    req = EMCIDRequest(EDITS, samples="noise", **FAST)
    a = stage_one(model, replace(req, batch_concepts=1), "text.encoder.layers.2")
    b = stage_one(model, replace(req, batch_concepts=3), "text.encoder.layers.2")
    # Float reduction order depends on the batch and the thread count: at one thread the targets (|t| ~ 5)
    # differ by ~1e-4 after three Adam steps; concepts leaking into each other's batch would move them by ~1.
    torch.testing.assert_close(a.targets, b.targets, rtol=1e-4, atol=5e-4)


def test_emcid_is_deterministic_for_a_seed(model):
    req = EMCIDRequest(EDITS, **FAST)
    names = model.layers("fc2")[1:]
    runs = [emcid.edit(model, replace(req, captions=CAPTIONS, seed=s), names, progress=False) for s in (3, 3, 4)]
    assert runs[0].names == [f"{n}.weight" for n in names]
    for n in runs[0].names:
        assert torch.equal(runs[0].tensors[n], runs[1].tensors[n])
        assert not torch.equal(runs[0].tensors[n], model.parameter(n))
    assert any(not torch.equal(runs[0].tensors[n], runs[2].tensors[n]) for n in runs[0].names)
    assert runs[0].metadata["method"] == "emcid" and runs[0].metadata["layers"] == names


def test_preserve_corpus_leaves_out_captions_naming_an_edited_source(model):
    assert without_sources(["a photo of a cat", "a catalogue", "Van  Gogh at night", "a vans gogh", "a dog"],
                           ["cat", "van gogh"]) == ["a catalogue", "a vans gogh", "a dog"]
    assert without_sources(["a cat", "a dog"], []) == ["a cat", "a dog"]
    req = EMCIDRequest(EDITS, **FAST)
    names = model.layers("fc2")[1:]
    # captions naming "cat" or "car" (sources) go; "monet" names none of them
    kept = [c for c in CAPTIONS if not {"cat", "car"} & set(c.split())]
    assert 0 < len(kept) < len(CAPTIONS)
    auto = emcid.edit(model, replace(req, captions=CAPTIONS, seed=3), names, progress=False)
    given = emcid.edit(model, replace(req, covariance=caption_covariance(model, names, kept), seed=3), names,
                       progress=False)
    for n in auto.names:
        assert torch.equal(auto.tensors[n], given.tensors[n])
    assert auto.metadata["corpus"] == f"{len(CAPTIONS)} captions given, {len(CAPTIONS) - len(kept)} naming an " \
                                      "edited source left out"
    with pytest.raises(ValueError, match="every caption of the preserve corpus .* names an edited source"):
        emcid.edit(model, replace(req, captions=["a cat", "Monet painting"]), names, progress=False)


@pytest.fixture(scope="module")
def word_level(model, word_level_tokenizer):
    return Workbench(model.unet, model.text_encoder, word_level_tokenizer, model.scheduler, name="word-level")


def test_bad_input_is_refused_before_any_work(word_level, model):
    with pytest.raises(ValueError, match="empty EMCID request"):
        EMCIDRequest([])
    with pytest.raises(ValueError, match="'circle' is rewritten twice, to 'red' and to 'kolm'"):
        EMCIDRequest([("circle", "red"), ("vera", "kolm"), ("circle", "kolm")])
    with pytest.raises(ValueError, match="source and destination are both"):
        EMCIDRequest([("circle", "circle")])
    with pytest.raises(ValueError, match="must contain 'circle'"):
        EMCIDRequest([("circle", "red", ["a red thing"])])
    with pytest.raises(ValueError, match="edit_weight"):
        EMCIDRequest([("circle", "red")], edit_weight=0)
    before = _weights(word_level, word_level.layers("fc2"))
    with pytest.raises(ValueError, match=r"edit 1 \('unicorn' -> 'red'\): the source is not in the model's "
                                         r"vocabulary: .*unknown word\(s\) \['unicorn'\]"):
        emcid.edit(word_level, replace(EMCIDRequest([("circle", "red"), ("unicorn", "red")], templates=["a {}"]),
                                       captions=["a red circle"]), progress=False)
    with pytest.raises(ValueError, match="the destination is not in the model's vocabulary"):
        emcid.edit(word_level, replace(EMCIDRequest([("circle", "blue")], templates=["a {}"]), captions=["a"]),
                   progress=False)
    with pytest.raises(ValueError, match="is of kind 'self_attn'"):
        emcid.edit(word_level, EMCIDRequest([("circle", "red")]), [word_level.layers("self_attn")[0]], progress=False)
    with pytest.raises(ValueError, match="needs a caption corpus"):
        emcid.edit(model, EMCIDRequest([("cat", "dog")]), progress=False)
    for n, w in before.items():
        assert torch.equal(word_level.parameter(f"{n}.weight"), w)
