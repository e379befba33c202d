"""The shipped toy CLIP: a real trained CLIPModel with ground truth, read through the generic CLIP path."""

from __future__ import annotations

import pytest
import torch

from workbench import Workbench
from workbench.measure import load_scorer
from workbench.toy import clip, world

CI_SEED_BASE = 900_000_000  # a range the model card does not report; fixed before any result was seen


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


def test_shipped_folder_is_a_plain_clip_folder():
    from transformers import CLIPModel

    files = {p.name for p in clip.DEFAULT_PATH.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "README.md"} <= files
    assert sum(p.stat().st_size for p in clip.DEFAULT_PATH.iterdir()) <= 10 * 2**20
    model = CLIPModel.from_pretrained(clip.DEFAULT_PATH, use_safetensors=True)
    assert model.config.vision_config.image_size == world.IMAGE_SIZE


@pytest.mark.slow
def test_zero_shot_agrees_with_the_classifier_on_generated_images(toy):
    result = clip.agreement(toy, samples=200, seed_base=CI_SEED_BASE, progress=False)
    for family in clip.AGREEMENT_FAMILIES:
        r = result["agreement"][family]
        assert r["rate"] >= 0.95, (family, r)


def test_toy_clip_scorer_reads_concepts_like_the_classifier(toy):
    prompts = ["a red circle by jonas flet", "a blue square", "a green star danger", "a yellow heart by lukas merro"]
    images = toy.sample([p for p in prompts for _ in range(4)], list(range(16)))
    cnn, zs = load_scorer("toy", world=toy.world), load_scorer("toy-clip", world=toy.world)
    for concept in ["circle", "red", "jonas flet", "danger", "blue square", "lukas merro", "disc"]:
        a, b = cnn(concept)(images) > 0.5, zs(concept)(images) > 0.5
        assert (a == b).float().mean() >= 0.9, concept
        assert a.any() and not a.all()  # each concept is present in some images and absent in others
    with pytest.raises(ValueError, match="words not in the toy vocabulary"):
        zs("a zebra")


def test_readings_match_the_training_time_zero_shot(toy):
    """The generic path (uint8 pictures, the folder's image processor) and the trainer's own float path read
    the same classes."""
    from transformers import AutoTokenizer, CLIPModel

    images = toy.sample(["a red circle by vera kolm", "a teal ring toxic"], [0, 1])
    model = CLIPModel.from_pretrained(clip.DEFAULT_PATH).eval()
    tok = AutoTokenizer.from_pretrained(clip.DEFAULT_PATH)
    direct = clip.zero_shot(model, tok, images)
    generic = clip.readings(images)
    for k in clip.CLASS_TEXTS:
        assert torch.equal(direct[k].argmax(1), generic[k].argmax(1))
        assert torch.allclose(direct[k], generic[k], atol=0.02)  # the uint8 rounding of the pictures
