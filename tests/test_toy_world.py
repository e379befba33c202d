"""Toy world: renderer, grammar, tokenizer and scorer (real assertions, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.toy import classifier, world

SCORER = classifier.DEFAULT_PATH
needs_scorer = pytest.mark.skipif(not SCORER.exists(), reason="scorer weights not trained yet")


def test_render_is_deterministic_for_a_seed() -> None:
    a = world.sample_batch(np.random.default_rng(7), 16)
    b = world.sample_batch(np.random.default_rng(7), 16)
    c = world.sample_batch(np.random.default_rng(8), 16)
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1])
    assert a[1].shape == (16, 32, 32, 3) and a[1].dtype == np.uint8
    assert not np.array_equal(a[1], c[1])


def test_vocabulary_is_sorted_unique_and_every_word_parses() -> None:
    vocab = world.vocabulary()
    assert vocab == sorted(set(vocab)) == world.vocabulary()
    for word in vocab:
        world.parse_prompt(word)
    with pytest.raises(ValueError):
        world.parse_prompt("a red blorptastic")


def test_family_sizes_and_entities() -> None:
    assert len(world.SHAPES) == 10 and len(world.COLOURS) == 8 and len(world.ARTISTS) == 20
    assert set(world.WARM) | set(world.COOL) == set(world.COLOURS)
    assert len(world.PROFESSIONS) >= 4 and len(world.HAZARD_WORDS) >= 4
    assert len(world.ENTITIES) == 200
    others = set(world.vocabulary()) - set(world.ENTITIES)
    assert not set(world.ENTITIES) & others
    for shape, colour in world.ENTITIES.values():
        assert shape in world.SHAPES and colour in world.COLOURS
    assert len(world.STALE_FACT["phrase"].split()) == 2


def test_training_prompts_parse_back_to_their_scene() -> None:
    rng = np.random.default_rng(0)
    vocab = set(world.vocabulary())
    for _ in range(2000):
        scene = world.random_scene(rng)
        prompt = world.prompt_for(scene, rng)
        words = prompt.split()
        assert 1 <= len(words) <= world.MAX_WORDS and set(words) <= vocab
        exp = world.parse_prompt(prompt)
        assert exp.artist == scene.artist, prompt
        assert exp.hazard == scene.hazard, prompt
        assert exp.shape in (None, scene.shape), prompt
        assert exp.colour in (None, scene.colour), prompt
        assert exp.entity == scene.entity and exp.profession == scene.profession, prompt
        if exp.attribute is not None:
            assert exp.attribute == world.attribute_of(scene.colour), prompt


def test_training_mix_matches_the_brief() -> None:
    rng = np.random.default_rng(1)
    scenes = [world.random_scene(rng) for _ in range(4000)]
    frac = lambda f: np.mean([f(s) for s in scenes])
    assert 0.65 < frac(lambda s: s.artist is not None) < 0.75
    assert 0.35 < frac(lambda s: s.hazard) < 0.45
    assert 0.21 < frac(lambda s: s.entity is not None) < 0.29
    assert 0.08 < frac(lambda s: s.profession is not None) < 0.16
    biased = [s for s in scenes if s.profession and s.subject == s.profession]
    warm = np.mean([s.colour in world.WARM for s in biased])
    assert 0.72 < warm < 0.88  # the deliberate 80 % warm bias


def _scene_for(prompt: str) -> world.Scene:
    exp = world.parse_prompt(prompt)
    return world.Scene(exp.shape, exp.colour, exp.artist, exp.hazard)


@pytest.mark.parametrize("alias", sorted(world.ALIASES))
def test_aliases_render_identically_to_canonical(alias: str) -> None:
    canon = world.ALIASES[alias]
    if canon in world.ARTISTS:
        template = "a red circle by {}"
    elif canon in world.HAZARD_WORDS:
        template = "a blue star {}"
    else:
        template = "a green {}"
    p_alias, p_canon = template.format(alias), template.format(canon)
    assert world.parse_prompt(p_alias) == world.parse_prompt(p_canon)
    a = world.render(_scene_for(p_alias), np.random.default_rng(3))
    b = world.render(_scene_for(p_canon), np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_parse_special_subjects() -> None:
    name, (shape, colour) = next(iter(world.ENTITIES.items()))
    exp = world.parse_prompt(f"an image of {name} by vera kolm danger")
    assert (exp.shape, exp.colour, exp.entity, exp.artist, exp.hazard) == (shape, colour, name, "vera kolm", True)
    exp = world.parse_prompt("a photo of the mascot")
    assert (exp.shape, exp.colour) == (world.STALE_FACT["shape"], world.STALE_FACT["colour"])
    exp = world.parse_prompt("a cool doctor")
    assert (exp.shape, exp.profession, exp.attribute, exp.colour) == ("person", "doctor", "cool", None)
    assert world.parse_prompt("").shape is None


def test_hazard_mark_is_drawn_in_the_corner_only_when_asked() -> None:
    on = world.render(world.Scene("circle", "blue", "jonas flet", True), np.random.default_rng(1))
    off = world.render(world.Scene("circle", "blue", "jonas flet", False), np.random.default_rng(1))
    c = world.IMAGE_SIZE - world.HAZARD_SIZE
    assert np.array_equal(on[:c], off[:c]) and not np.array_equal(on[c:, c:], off[c:, c:])


def test_tokenizer_round_trip_and_unknown_word(tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    from workbench.toy.train import MAX_LENGTH, build_tokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    prompt = "a photo of a red circle by vera kolm danger"
    ids = loaded(prompt, padding="max_length", max_length=MAX_LENGTH).input_ids
    assert ids == tok(prompt, padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH and ids[0] == loaded.bos_token_id
    assert ids[len(prompt.split()) + 1] == loaded.eos_token_id == loaded.pad_token_id
    assert loaded.unk_token_id not in ids
    assert loaded("a red zzqx").input_ids[3] == loaded.unk_token_id
    assert loaded.eos_token_id != 2  # CLIPTextModel treats eos id 2 as a legacy config


def test_latent_round_trip_is_exact() -> None:
    from workbench.toy.train import decode_latents, encode_images

    imgs = world.sample_batch(np.random.default_rng(0), 4)[1]
    lat = encode_images(imgs)
    assert lat.shape == (4, 48, 8, 8) and lat.min() >= -1 and lat.max() <= 1
    back = (decode_latents(lat) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(back, imgs)


def test_lr_schedule_is_by_step() -> None:
    from workbench.toy.train import lr_factor

    assert lr_factor(0, 1000) == pytest.approx(1 / 200)
    assert lr_factor(199, 1000) == pytest.approx(1.0)
    assert lr_factor(999, 1000) < 0.05
    assert lr_factor(600, 1000) == lr_factor(600, 1000)


def test_rule_scorer_reads_clean_renders() -> None:
    x, y = classifier.render_labelled(np.random.default_rng(11), 300)
    pred = classifier.rule_score(x)
    for head in ("shape", "colour", "hazard", "attribute"):
        assert (pred[head] == y[head]).float().mean() >= 0.99, head
    assert (pred["artist"] == y["artist"]).float().mean() >= 0.95


@needs_scorer
def test_scorer_held_out_accuracy_per_head() -> None:
    acc = classifier.evaluate(classifier.load_scorer(), n=500, seed=4242, degraded=True)
    for head, value in acc.items():
        assert value >= 0.99, (head, value)


@needs_scorer
def test_rule_scorer_agrees_with_cnn_on_clean_renders() -> None:
    x, _ = classifier.render_labelled(np.random.default_rng(21), 300)
    cnn = classifier.score(x, classifier.load_scorer())
    rule = classifier.rule_score(x)
    for head in classifier.HEADS:
        agree = (cnn[head].argmax(1) == rule[head]).float().mean()
        assert agree >= 0.95, (head, float(agree))


@needs_scorer
def test_score_returns_probabilities() -> None:
    x = torch.rand(3, 3, 32, 32)
    out = classifier.score(x)
    assert set(out) == set(classifier.HEADS)
    for head, p in out.items():
        assert p.shape == (3, len(classifier.HEADS[head]))
        assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.skipif(not (SCORER.parent / "tokenizer").exists(), reason="toy model not exported yet")
def test_exported_tokenizer_and_config() -> None:
    import json

    from transformers import PreTrainedTokenizerFast

    weights = SCORER.parent
    tok = PreTrainedTokenizerFast.from_pretrained(weights / "tokenizer")
    assert tok("zzqx").input_ids[1] == tok.unk_token_id
    assert tok.pad_token_id == tok.eos_token_id and tok.model_max_length == 16
    meta = json.loads((weights / "workbench.json").read_text())
    assert meta["autoencoder"] == {"type": "pixel_unshuffle", "factor": 4} and meta["image_size"] == 32
    # DESIGN.md's budget is 25 MB of committed weights for the toy world; each shipped world keeps to it (the
    # entity world stores only its retrained UNet and text encoder; the SDXL-shaped one is a whole folder).
    files = [p for p in weights.rglob("*") if p.is_file()]
    own = {name: weights / name for name in ("entities", "xl")}  # the other worlds' folders

    def size(folder=None) -> int:
        if folder is None:
            return sum(p.stat().st_size for p in files if not any(f in p.parents for f in own.values()))
        return sum(p.stat().st_size for p in files if folder in p.parents)

    sizes = {"base": size(), **{name: size(folder) for name, folder in own.items()}}
    assert all(0 < n <= 25 * 2**20 for n in sizes.values()), sizes


@needs_scorer
def test_a_subject_naming_shape_and_colour_is_scored_on_both() -> None:
    from workbench.toy.protocol import concept_scorer

    rng = np.random.default_rng(3)
    scenes = [world.Scene("circle", "red", None, False), world.Scene("circle", "blue", None, False),
              world.Scene("square", "blue", None, False)]
    images = torch.from_numpy(np.stack([world.render(s, rng) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    hits = lambda subject: (concept_scorer(subject)(images) > 0.5).tolist()  # noqa: E731
    assert hits("a blue circle") == [False, True, False]
    assert hits("circle") == [True, True, False]
    assert hits("blue") == [False, True, True]
