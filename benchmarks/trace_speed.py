"""Batched tracing vs a per-restoration loop with plain forward hooks: same map, same run.

1. Text-encoder map (hidden states, text metric) of one prompt: ``trace_text_encoder`` (all restorations as
   batch rows) vs one hooked forward per (layer, token, noise sample). Checks the maps agree, prints the
   speed-up (target >= 5x).
2. The full text-encoder map of a 16-token prompt on the sd15-shaped text encoder (time).

    python benchmarks/trace_speed.py [--arch tiny] [--samples 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from tracing import TraceSettings, trace_text_encoder
from tracing.corrupt import embedding_std
from tracing.metrics import restoration
from workbench import Workbench

PROMPT16 = "an oil painting of a red house by van gogh at night with stars"  # 16 tokens in CLIP's BPE


def naive_text_map(wb: Workbench, prompt: str, subject: str, samples: int, std: float, seed: int = 0):
    """The straightforward way: plain torch hooks, one forward per restoration and noise sample."""
    ids = wb.token_ids([prompt])
    pos = wb.subject_positions(prompt, subject)
    n_tok = len(wb.tokens(prompt))
    rows = ["text.embeddings"] + wb.layers("hidden")
    mods = [wb.module(r) for r in rows]
    emb = wb.module("text.embeddings.token_embedding")
    table = torch.randn(samples, len(pos), emb.weight.shape[1], generator=torch.Generator().manual_seed(seed)) * 3 * std
    clean_states = {}
    hs = [m.register_forward_hook(lambda m, i, o, r=r: clean_states.__setitem__(r, o.clone())) for r, m in
          zip(rows, mods, strict=True)]
    with torch.no_grad():
        clean = wb.text_encoder(ids).last_hidden_state
    for h in hs:
        h.remove()

    def run(s: int, restore: tuple[int, int] | None):
        def corrupt(_m, _i, out):
            out = out.clone()
            out[0, pos] += table[s]
            return out

        handles = [emb.register_forward_hook(corrupt)]
        if restore is not None:
            i, t = restore

            def put(_m, _i, out):
                out = out.clone()
                out[0, t] = clean_states[rows[i]][0, t]
                return out

            handles.append(mods[i].register_forward_hook(put))
        try:
            with torch.no_grad():
                return wb.text_encoder(ids).last_hidden_state
        finally:
            for h in handles:
                h.remove()

    base = [run(s, None) for s in range(samples)]
    scores = torch.zeros(len(rows), n_tok)
    for i in range(len(rows)):
        for t in range(n_tok):
            scores[i, t] = torch.stack([restoration(run(s, (i, t)), clean, base[s]) for s in range(samples)]).mean()
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--skip-sd15", action="store_true")
    args = ap.parse_args()
    wb = Workbench.random(args.arch, seed=0, vae=False)
    prompt, subject = "a photo of a cat by van gogh", "van gogh"
    std = embedding_std(wb)
    trace_text_encoder(wb, prompt, subject, settings=TraceSettings(metric="text", samples=2, progress=False))  # warm-up
    t = time.perf_counter()
    batched = trace_text_encoder(wb, prompt, subject,
                                 settings=TraceSettings(metric="text", samples=args.samples, std=std, progress=False))
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_text_map(wb, prompt, subject, args.samples, std)
    t_naive = time.perf_counter() - t
    err = (naive - batched.scores).abs().max().item()
    print(f"text-encoder map, {args.arch}, {batched.scores.numel()} cells × {args.samples} samples")
    print(f"  per-restoration loop, plain hooks : {t_naive:7.2f} s")
    print(f"  batched (Workbench / nnsight)     : {t_batched:7.2f} s")
    print(f"  speed-up                          : {t_naive / t_batched:7.1f}x  (target >= 5x); max |diff| {err:.1e}")
    if not args.skip_sd15:
        del wb
        sd = Workbench.random("sd15", seed=0, sample_size=8, vae=False)
        n = len(sd.tokens(PROMPT16)) - 2
        t = time.perf_counter()
        result = trace_text_encoder(sd, PROMPT16, "van gogh",
                                    settings=TraceSettings(metric="text", samples=args.samples))
        print(f"sd15-shaped text encoder, {n}-token prompt, full map {tuple(result.scores.shape)} × {args.samples} "
              f"samples: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
