"""Closed-form editors at SD-1.5 size (random weights, same shapes): UCE erasing 100 concepts with 1,000
preserved over all 16 cross-attention layers (aim < 10 s on 2 cores), Diff-QuickFix on one text-encoder layer
(aim < 1 s), and the memory they add (no model copies: only the edited tensors).

    python benchmarks/closed_form_editors.py [--erase 100] [--preserve 1000]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from editors import QuickFixRequest, UCERequest, quickfix, uce
from editors.uce import concept_keys
from workbench import Workbench


def concepts(wb: Workbench, n: int, offset: int) -> list[str]:
    """``n`` distinct two-word concepts made of plain vocabulary words."""
    words = sorted(w.removesuffix("</w>") for w in wb.tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha())
    return [f"{words[(offset + i) % len(words)]} {words[(offset + 7 * i + 3) % len(words)]}" for i in range(n)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--erase", type=int, default=100)
    ap.add_argument("--preserve", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(2)
    wb = Workbench.random("sd15", seed=0, sample_size=8, vae=False, device=args.device)

    def done() -> float:  # CUDA kernels run asynchronously: wait for them before reading the clock
        if wb.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    erase, preserve = concepts(wb, args.erase, 0), concepts(wb, args.preserve, 5000)
    uce.edit(wb, UCERequest(erase=erase[:2], preserve=preserve[:2]), progress=False)  # warm-up
    t = time.perf_counter()
    concept_keys(wb, erase + preserve + [""], "last")
    t_encode = done() - t
    base = rss_mb()
    t = time.perf_counter()
    delta = uce.edit(wb, UCERequest(erase=erase, preserve=preserve), progress=False)
    t_uce = done() - t
    print(f"UCE, sd15 shapes, {len(erase)} erased + {len(preserve)} preserved concepts, {len(delta.names)} "
          f"matrices: {t_uce:.1f} s (target < 10 s), of which text encoding ~{t_encode:.1f} s; {wb.device}")
    t = time.perf_counter()
    qf = quickfix.edit(wb, QuickFixRequest(["van gogh"], ["a painting"]))
    print(f"Diff-QuickFix, sd15 text encoder layer 0: {done() - t:.2f} s (target < 1 s), "
          f"{qf.num_parameters():,} parameters")
    added = rss_mb() - base
    print(f"peak memory added by the edits: {added:.0f} MB; the edited tensors hold "
          f"{(delta.num_parameters() + qf.num_parameters()) * 4 / 2**20:.0f} MB; the UNet alone is "
          f"{sum(p.numel() for p in wb.unet.parameters()) * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
