"""UCE at full SDXL-base shapes (random weights): erase ``--erase`` concepts with ``--preserve`` preserved over
all 70 cross-attention layers (140 to_k/to_v of 2048-wide keys from both text encoders), against a
straightforward per-concept implementation and against one ridge solve per projection, in the same run.

Only what UCE touches is allocated: both full-size text encoders (CLIP-L and OpenCLIP-bigG shapes, 817 M
parameters) and the 140 projections (315 M); the rest of the 2.6 B-parameter UNet stays on the meta device.

    python benchmarks/uce_sdxl.py [--erase 100] [--preserve 1000] [--baseline-layers 10] [--threads 2]

The baselines run on the first ``--baseline-layers`` projections and are scaled to all 140 (each projection
is solved independently, so their cost is linear in the number of projections); their results are checked
equal to UCE's on those projections.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from editors import UCERequest, uce
from editors.solve import ridge_solve
from editors.uce import concept_keys
from workbench import Workbench


def concepts(wb: Workbench, n: int, offset: int) -> list[str]:
    """``n`` distinct two-word concepts made of plain vocabulary words, from pair number ``offset`` on (the
    repo's tokenizer has ~1,000 such words, so pairs, not single words, reach 1,000 concepts)."""
    words = sorted({w.removesuffix("</w>").lower() for w in wb.tokenizer.get_vocab()
                    if w.endswith("</w>") and w[:-4].isalpha()})
    k = len(words)
    pairs = ((offset + i) % (k * k) for i in range(n))
    return [f"{words[p // k]} {words[(p * 7 + 3) % k]}" for p in pairs]


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def materialise(module: torch.nn.Module, seed: int) -> None:
    """Real CPU storage for a meta-device module, randomly initialised (std 0.02 weights, unit norms)."""
    module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for name, b in module.named_buffers():  # CLIP's position ids
        if "position_ids" in name:
            b.copy_(torch.arange(b.shape[-1]).expand_as(b))


def per_concept(w: torch.Tensor, keys, targets, preserve, lam: float) -> torch.Tensor:
    """The textbook loop (as UCE's reference code): accumulate one outer product per concept, then invert."""
    w = w.double()
    mat1 = lam * w
    mat2 = lam * torch.eye(w.shape[1], dtype=torch.float64)
    for k, c in zip(keys.double(), targets.double(), strict=True):
        mat1 += torch.outer(w @ c, k)
        mat2 += torch.outer(k, k)
    for k in preserve.double():
        mat1 += torch.outer(w @ k, k)
        mat2 += torch.outer(k, k)
    return mat1 @ torch.linalg.inv(mat2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--erase", type=int, default=100)
    ap.add_argument("--preserve", type=int, default=1000)
    ap.add_argument("--baseline-layers", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    wb = Workbench.random("sdxl", device="meta")
    params = uce.kv_parameters(wb, None)  # the layer table is built while every weight is on the meta device
    for i, encoder in enumerate(wb.text_encoders.values()):
        materialise(encoder, i)
    materialise(wb.unet.conv_in, 9)  # the wrapper's device is the UNet's first weight's
    for i, name in enumerate(params):
        materialise(wb.module(name.removesuffix(".weight")), 100 + i)
    wb._fingerprint = "uce-sdxl-benchmark"  # the meta-device rest of the UNet has no bytes to hash
    n_text = sum(p.numel() for m in wb.text_encoders.values() for p in m.parameters())
    print(f"built: {len(params)} projections, {sum(wb.parameter(n).numel() for n in params) / 1e6:.0f} M "
          f"weights + text encoders {n_text / 1e6:.0f} M ({time.perf_counter() - t0:.0f} s, peak RSS "
          f"{rss_gb():.1f} GB)", flush=True)

    erase, keep = concepts(wb, args.erase, 0), concepts(wb, args.preserve, 500_000)
    req = UCERequest(erase=erase, preserve=keep)
    t = time.perf_counter()
    keys = torch.cat([s[0] for s in concept_keys(wb, erase)])
    guide = torch.cat([s[0] for s in concept_keys(wb, [""])]).expand_as(keys)
    preserve = torch.cat([s[0] for s in concept_keys(wb, keep)])
    t_keys = time.perf_counter() - t
    t = time.perf_counter()
    delta = uce.edit(wb, req, progress=False)
    t_edit = time.perf_counter() - t
    print(f"UCE erase {args.erase} / preserve {args.preserve}: {t_edit:.1f} s for the whole edit (keys of "
          f"{args.erase + args.preserve + 1} prompts through both encoders: {t_keys:.1f} s of it measured alone); "
          f"peak RSS {rss_gb():.1f} GB", flush=True)
    t_solve = t_edit - t_keys

    n = min(args.baseline_layers, len(params))
    scale = len(params) / n
    t = time.perf_counter()
    loop = {name: per_concept(wb.parameter(name).detach(), keys, guide, preserve, req.lam) for name in params[:n]}
    t_loop = (time.perf_counter() - t) * scale
    t = time.perf_counter()
    each = {}
    for name in params[:n]:
        w = wb.parameter(name).detach()
        each[name] = ridge_solve(w, keys, guide @ w.T, preserve, lam=req.lam)
    t_each = (time.perf_counter() - t) * scale
    worst = max(float((delta.tensors[name].double() - ref.double()).abs().max() / ref.double().abs().max())
                for refs in (loop, each) for name, ref in refs.items())
    print(f"solves for all {len(params)} projections (UCE's edit minus its keys): {t_solve:.1f} s; per-concept "
          f"loop {t_loop:.0f} s ({t_loop / t_solve:.0f}x), one ridge solve per projection {t_each:.0f} s "
          f"({t_each / t_solve:.1f}x) [baselines timed on {n} projections, scaled x{scale:.0f}]; largest relative "
          f"difference from both {worst:.1e}; peak RSS {rss_gb():.1f} GB")


if __name__ == "__main__":
    main()
