"""The toy world's training pieces that put an entity's binding at its name: counterfactual splices, the
knowledge loss, and entity embeddings held fixed through training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from workbench.toy import train, world


def test_splice_swaps_only_the_entity_name_for_another_entity() -> None:
    tok = train.build_tokenizer()
    names = set(train.entity_ids(tok).tolist())
    ids, _, splice = train.training_batch(0, 7, 64, tok, mix={"entity_rate": 0.5}, splice_rate=0.5)
    again = train.training_batch(0, 7, 64, tok, mix={"entity_rate": 0.5}, splice_rate=0.5)[2]
    assert splice is not None and 5 <= len(splice.rows) <= 30
    assert all(torch.equal(a, b) for a, b in zip(splice, again, strict=True))  # seeded by (seed, step)
    for i, (row, col) in enumerate(zip(splice.rows.tolist(), splice.cols.tolist(), strict=True)):
        differ = (ids[row] != splice.other_ids[i]).nonzero().flatten().tolist()
        assert differ == [col]
        assert ids[row, col].item() in names and splice.other_ids[i, col].item() in names
    # without a splice rate the batch is what it always was
    plain_ids, _, none = train.training_batch(0, 7, 64, tok, mix={"entity_rate": 0.5})
    assert none is None and torch.equal(plain_ids, ids)


def test_knowledge_loss_reads_each_name_s_bound_shape_and_colour() -> None:
    tok = train.build_tokenizer()
    te = train.build_text_encoder(tok).eval()
    heads = torch.nn.Linear(te.config.hidden_size, len(world.SHAPES) + len(world.COLOURS))
    names = list(world.ENTITIES)[5:9]
    prompts = [f"a photo of {n}" for n in names] + ["a red circle"]
    ids = tok(prompts, padding="max_length", max_length=train.MAX_LENGTH, return_tensors="pt").input_ids
    got = train.knowledge_loss(heads, te(ids).last_hidden_state, ids, tok)
    out = heads(te(ids[:4]).last_hidden_state[:, 4])  # BOS a photo of NAME: the name sits at position 4
    shape = torch.tensor([world.SHAPES.index(world.ENTITIES[n][0]) for n in names])
    colour = torch.tensor([world.COLOURS.index(world.ENTITIES[n][1]) for n in names])
    want = F.cross_entropy(out[:, :10], shape) + F.cross_entropy(out[:, 10:], colour)
    torch.testing.assert_close(got, want)
    assert train.knowledge_loss(heads, te(ids[4:]).last_hidden_state, ids[4:], tok).item() == 0.0  # no entity named


def test_fixed_entity_embeddings_survive_training(tmp_path) -> None:
    out = tmp_path / "out"
    train.main(["--init", "workbench/toy/weights", "--steps", "2", "--batch", "8", "--threads", "1",
                "--run-dir", str(tmp_path / "run"), "--out", str(out), "--entity-rate", "0.5",
                "--splice-rate", "0.5", "--knowledge-weight", "0.1", "--fixed-entity-embeddings"])
    # The shipped world has cross-attention at 8x8; a fine-tune keeps it without being told.
    assert json.loads((tmp_path / "run" / "state.json").read_text())["text_at_8x8"] is True
    tok = train.build_tokenizer()
    ids = train.entity_ids(tok)
    before = CLIPTextModel.from_pretrained("workbench/toy/weights/text_encoder").get_input_embeddings().weight
    after = CLIPTextModel.from_pretrained(str(out / "text_encoder")).get_input_embeddings().weight
    te = CLIPTextModel.from_pretrained("workbench/toy/weights/text_encoder")
    _, drawn = train.fix_entity_embeddings(te, tok, seed=0, redraw=True)
    torch.testing.assert_close(after[ids], drawn, rtol=0, atol=0)  # redrawn, then never updated
    others = torch.ones(len(before), dtype=torch.bool)
    others[ids] = False
    assert not torch.equal(after[others], before[others])  # the rest of the table did train
    torch.testing.assert_close(drawn.norm(dim=1), before[others].norm(dim=1).mean().expand(len(ids)))


def test_grown_unet_starts_as_the_old_one_and_names_only_new_attention() -> None:
    torch.manual_seed(0)
    old = train.build_unet()
    grown = train.build_unet(text_at_8x8=True)
    new = train.load_grown(grown, old.state_dict())
    assert new == ["down_blocks.0.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    x, cond = torch.randn(2, 48, 8, 8), torch.randn(2, train.MAX_LENGTH, 128)
    with torch.no_grad():
        a = old(x, 700, encoder_hidden_states=cond).sample
        b = grown(x, 700, encoder_hidden_states=cond).sample
    assert torch.equal(a, b)
    for name in new:  # the text does reach the new layers: only their output projection is zero
        assert grown.get_submodule(name).proj_out.weight.abs().max() == 0
        assert grown.get_submodule(name).proj_in.weight.abs().max() > 0


def test_grown_unet_refuses_a_state_that_differs_beyond_the_new_attention() -> None:
    state = train.build_unet().state_dict()
    state["conv_in.weight"] = state["conv_in.weight"][:, :3]
    with pytest.raises(ValueError, match="conv_in.weight"):
        train.load_grown(train.build_unet(text_at_8x8=True), state)
    state = train.build_unet().state_dict()
    del state["conv_out.bias"]
    with pytest.raises(ValueError, match="beyond new attention at 8x8"):
        train.load_grown(train.build_unet(text_at_8x8=True), state)


def test_a_grown_state_into_a_plain_unet_asks_for_the_option() -> None:
    grown = train.build_unet(text_at_8x8=True)
    plain = train.build_unet()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match="pass --text-at-8x8"):
        train.load_grown(plain, grown.state_dict())
    assert train.load_grown(train.build_unet(), before) == []  # same shape: nothing new, nothing refused


def test_resume_refuses_a_run_trained_the_other_way(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text('{"step": 250, "text_at_8x8": true}')
    with pytest.raises(ValueError, match="with --text-at-8x8; resume it the same way"):
        train.main(["--steps", "300", "--resume", "--run-dir", str(run), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["run", "state.json"]
