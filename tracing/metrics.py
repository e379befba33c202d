"""Restore-effect metrics.

proxy: restoration of the UNet's noise prediction, 1 − ‖ε_restored − ε_clean‖ / ‖ε_corrupt − ε_clean‖,
over a few seeded (noise, timestep) draws; cheap and batched. (For the text encoder, ``text`` does the same
on the final text states.)
faithful: generate images from the restored run and score the subject's concept with a scorer
(any callable ``images (B, 3, H, W) in [0, 1] -> scores (B,)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from workbench import Workbench

Scorer = Callable[[torch.Tensor], torch.Tensor]
METRICS = ("proxy", "text", "faithful")


def check_scorer(metric: str, scorer: Scorer | None) -> None:
    """The faithful metric needs a callable scorer (the metric's name is checked by TraceSettings)."""
    if metric == "faithful" and scorer is None:
        raise ValueError("the faithful metric needs scorer=<callable images -> concept score>, e.g. "
                         "workbench.toy.concept_scorer(...) or a local CLIP model")
    if scorer is not None and not callable(scorer):
        raise ValueError(f"scorer must be a callable images -> scores, got {type(scorer).__name__}")


def restoration(restored: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """1 − ‖restored − clean‖ / ‖corrupted − clean‖ per row (all but the first dim flattened)."""
    num = (restored - clean).flatten(1).float().norm(dim=1)
    den = (corrupted - clean).flatten(1).float().norm(dim=1).clamp_min(1e-12)
    return 1 - num / den


def normalized_effect(restored: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    """(score_restored − score_corrupted) / (score_clean − score_corrupted): 0 = none back, 1 = all back.

    NaN when the corruption did not move the score (nothing to restore)."""
    gap = clean - corrupted
    if abs(gap) < 1e-6:
        return torch.full_like(restored, float("nan"))
    return (restored - corrupted) / gap


def noised_latents(wb: Workbench, prompt: str, seeds: Sequence[int], timesteps: Sequence[int], *,
                   steps: int | None = None, guidance: float | None = None, batch_size: int | None = None,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t for each (seed, timestep): a clean generation of ``prompt`` noised to ``t`` with seeded noise.

    Noising a clean sample keeps x_t on the data the model actually meets, unlike pure noise. The
    generation runs in chunks of ``batch_size`` prompts (default: what fits in memory), each with its
    per-step bar.
    """
    seeds = list(seeds)
    per = batch_rows(wb, "generate", batch_size)
    # Only the latents are needed: a 512×512 KL decode takes tens of seconds per image on a CPU.
    x0 = torch.cat([wb.generate([prompt] * len(c), seeds[c.start:c.stop], steps=steps, guidance=guidance,
                                progress=progress, decode=False).latents for c in chunks(len(seeds), per)])
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(10_000 + s))
                         for s in seeds]).to(x0)
    t = torch.as_tensor(list(timesteps), device=x0.device)
    return wb.scheduler.add_noise(x0, noise, t), t


def spread_timesteps(wb: Workbench, windows: int, per_window: int) -> list[list[int]]:
    """Training timesteps, ``per_window`` evenly spaced inside each of ``windows`` equal ranges (high t first)."""
    total = wb.scheduler.config.num_train_timesteps
    edges = torch.linspace(total, 0, windows + 1)
    out = []
    for w in range(windows):
        hi, lo = float(edges[w]), float(edges[w + 1])
        pts = torch.linspace(lo, hi, per_window + 2)[1:-1]
        out.append([min(total - 1, int(round(float(p)))) for p in pts.flip(0)])
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-d tensors (average ranks for ties)."""
    ra, rb = _ranks(a.flatten().double()), _ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = ra.norm() * rb.norm()
    return float((ra @ rb) / den) if den > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for v in torch.unique(x):  # ties share their mean rank
        m = x == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return ranks


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


# Automatic batches are capped at the old fixed default: on small models more rows buy nothing, and a
# chunk is the unit a progress bar advances by.
MAX_AUTO_ROWS = 512


def batch_rows(wb: Workbench, part: str, batch_size: int | None, *, extra_per_row: int = 0) -> int:
    """Rows per forward: ``batch_size`` when given, else what :func:`workbench.memory.rows_per_batch` says
    fits now (at most :data:`MAX_AUTO_ROWS`)."""
    if batch_size is not None:
        return int(batch_size)
    from workbench.memory import rows_per_batch

    return max(1, min(MAX_AUTO_ROWS, rows_per_batch(wb, part, extra_per_row=extra_per_row)))


def unique_rows(x: torch.Tensor, keys: Sequence[object] | None = None) -> tuple[list[int], torch.Tensor]:
    """Rows of ``x`` that are bit-identical (and share ``keys[i]``, when given) collapse to their first one.

    Returns (the first row of each distinct group, in order; ``inverse`` with ``x[i] == x[first[inverse[i]]]``).
    Exact: rows are compared by their bytes (a hash finds candidates, ``torch.equal`` on the raw bits
    confirms), never by tolerance, so running only the first rows and scattering back changes no number.
    """
    import hashlib

    flat = x.detach().reshape(x.shape[0], -1).contiguous().cpu()
    bits = flat.view(torch.uint8) if flat.numel() else flat
    first: list[int] = []
    groups: dict[tuple, list[int]] = {}  # (key, digest) -> indices into ``first``
    inverse = torch.empty(x.shape[0], dtype=torch.long)
    for i in range(x.shape[0]):
        row = bits[i]
        key = (None if keys is None else keys[i], hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest())
        for g in groups.get(key, ()):
            if torch.equal(row, bits[first[g]]):
                inverse[i] = g
                break
        else:
            groups.setdefault(key, []).append(len(first))
            inverse[i] = len(first)
            first.append(i)
    return first, inverse
