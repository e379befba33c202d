"""Patched forward through the Workbench (nnsight) vs plain torch forward hooks, same run.

Patch: overwrite ``to_k`` and ``to_v`` of every cross-attention layer at the subject tokens (what a UNet
trace does), batch 32. Prints median times and the overhead ratio (target: <= 1.10).

    python benchmarks/wrapper.py [--arch tiny|sd15] [--batch 32] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench import Patch, Workbench


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=16, help="latent side")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    wb = Workbench.random(args.arch, seed=0, sample_size=args.size, vae=False)
    x = torch.randn(args.batch, *wb.latent_shape)
    ctx = wb.encode(["a photo of a cat by monet"] * args.batch)
    pos = wb.subject_positions("a photo of a cat by monet", "cat")
    names = wb.layers(["to_k", "to_v"])
    clean = {n: torch.randn(args.batch, len(pos), wb.module(n).out_features) for n in names}
    patches = [Patch(n, clean[n], positions=pos) for n in names]

    def hooked():
        def make(n):
            def hook(_m, _i, out):
                out[:, pos] = clean[n]
                return out
            return hook

        handles = [wb.module(n).register_forward_hook(make(n)) for n in names]
        try:
            with torch.no_grad():
                return wb.unet(x, 500, encoder_hidden_states=ctx).sample
        finally:
            for h in handles:
                h.remove()

    def workbench():
        return wb.run_unet(x, 500, ctx, patches=patches)[0]

    assert torch.allclose(hooked(), workbench(), atol=1e-6), "the two paths disagree"
    times = {"hooks": [], "workbench": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for label, fn in (("hooks", hooked), ("workbench", workbench)):
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.arch} UNet, batch {args.batch}, latent {args.size}x{args.size}, {len(names)} patched modules")
    print(f"  plain forward hooks : {med['hooks'] * 1e3:8.1f} ms")
    print(f"  Workbench (nnsight) : {med['workbench'] * 1e3:8.1f} ms")
    print(f"  overhead ratio      : {med['workbench'] / med['hooks']:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
