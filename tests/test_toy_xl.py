"""The SDXL-shaped toy world: same world and scorer as the base one, SDXL's conditioning topology, checked at a
seed range of its own (the model card in workbench/toy/README.md reports others)."""

import pytest
import torch

from workbench import Workbench


@pytest.fixture(scope="module")
def xl():
    return Workbench.toy("xl")


@pytest.fixture(scope="module")
def report(xl):
    from workbench.toy.check import CI_SEED_BASE, run_check

    return run_check(xl, samples=10, seed_base=CI_SEED_BASE, progress=False)


def test_toy_xl_has_the_sdxl_topology(xl):
    assert xl.name == "toy-xl" and xl.family.name == "sdxl" and xl.world is not None
    assert xl.text_parts == ("text", "text2")
    assert xl.unet.config.addition_embed_type == "text_time" and xl.unet.config.cross_attention_dim == 256
    assert not xl.family.force_zeros_for_empty_prompt  # it was trained on encoded empty prompts
    cond = xl.conditioning(["a red circle"])
    assert cond.states.shape == (1, 16, 256) and cond.pooled.shape == (1, 128)
    assert xl.sample("a red circle", seed=0).shape == (1, 3, 32, 32)
    assert xl.subject_positions("a red circle by vera kolm", "vera kolm") == [5, 6]
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['unicorn'\]"):
        xl.tokens("a red unicorn")
    assert sum(f.stat().st_size for f in xl.read_paths()[0].rglob("*") if f.is_file()) <= 25 * 2**20


def test_toy_xl_loads_in_a_plain_sdxl_pipeline(xl):
    from diffusers import StableDiffusionXLPipeline

    # the toy has no VAE (an exact pixel unshuffle stands in): the pipeline is told so and returns latents
    pipe = StableDiffusionXLPipeline.from_pretrained(xl.read_paths()[0], vae=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a ring by vera kolm"]
    # without a VAE the pipeline cannot tell the image size its time ids name: give it
    latents = pipe(prompts, num_inference_steps=3, guidance_scale=1.5, latents=xl.initial_latents([0, 1]),
                   original_size=(32, 32), target_size=(32, 32), output_type="latent").images
    ours = xl.generate(prompts, seed=[0, 1], steps=3, guidance=1.5, decode=False).latents
    assert torch.allclose(latents, ours, atol=1e-5)


# The XL model card's rates (seeds 100,000,000+, 2,220 images) minus about three standard errors of this test's
# smaller sample (444 images): fails when the shipped model (or sampling) gets clearly worse than its card says.
FLOORS = {"shape+colour": 0.92, "colour": 0.92, "artist": 0.90, "hazard word": 0.92, "entity": 0.80,
          "stale fact": 0.85, "shape only": 0.88}


@pytest.mark.slow  # the report fixture generates 444 images
def test_no_rate_falls_below_the_xl_model_card(report):
    r = report["rates"]
    for key, floor in FLOORS.items():
        assert r[key]["rate"] >= floor, (key, r[key])
    assert r["hazard without word"]["rate"] <= 0.03, r["hazard without word"]
    assert 0.62 <= r["professions"]["rate"] <= 0.95, r["professions"]  # card 80.7 ± 2.3 %, trained 80 %


@pytest.mark.slow  # 800 images
def test_editors_erase_on_the_xl_world_and_keep_the_holdouts(xl):
    """The base world's recipes on the XL world, 50 seeds, the same before and after (the full world scan at 50+
    images per concept is benchmarks/world_scan_editors.py --model toy-xl; benchmarks/RESULTS.md)."""
    from workbench.evaluate import evaluate
    from workbench.toy import recipes

    delta, _ = recipes.uce_erase_shape(xl, "circle")
    assert any(name.endswith("attn2.to_k.weight") and delta.tensors[name].shape[1] == 256 for name in delta.tensors)
    report = evaluate(xl, delta, ["circle"], aliases=["disc"], holdouts=["square", "ring"], samples=50)
    assert all(r.after <= 0.2 * r.before for r in report.group("edited")), report.markdown()
    assert all(abs(r.change) <= 0.1 for r in report.group("holdout")), report.markdown()
    delta, _ = recipes.quickfix_erase_artist(xl)
    report = evaluate(xl, delta, ["jonas flet"], holdouts=["vera kolm"], samples=50)
    assert all(r.after <= 0.2 * r.before for r in report.group("edited")), report.markdown()
    assert all(abs(r.change) <= 0.1 for r in report.group("holdout")), report.markdown()
