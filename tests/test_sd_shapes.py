"""Full-size SD-1.5 / SD-2.1 shapes with random weights (slow: ~1 B parameters each)."""

import gc

import pytest
import torch

from workbench import Workbench


@pytest.mark.slow
@pytest.mark.parametrize("arch,context", [("sd15", 768), ("sd21", 1024)])
def test_sd_shaped_models(arch, context):
    wb = Workbench.random(arch, seed=0, sample_size=8, vae=False)
    attn2 = wb.layers("attn2")
    assert len(attn2) == 16
    assert len(wb.layers("to_k")) == 16 and all(wb.module(n).in_features == context for n in wb.layers("to_k"))
    assert len(wb.layers("hidden")) == (12 if arch == "sd15" else 23)
    ids = wb.token_ids("a photo of van gogh")
    ctx, reads = wb.run_text(ids, read=["text.encoder.layers.0.self_attn"])
    ctx = ctx.states
    assert ctx.shape == (1, 77, context)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps, reads = wb.run_unet(x, 500, ctx, read=[attn2[0], attn2[-1]])
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert reads[attn2[0]].shape == (1, 64, 320)  # 8×8 positions at the first level
    del wb
    gc.collect()
