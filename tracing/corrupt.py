"""Corruption of the subject tokens' input embeddings (ROME / Basu et al.): Gaussian noise of scale
k × the standard deviation of token embeddings, a different seeded sample per corrupted row."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench import Patch, Workbench

EMBEDDING = "text.embeddings.token_embedding"


def embedding_std(wb: Workbench, words: Sequence[str] | None = None) -> float:
    """Std of token embeddings: over the whole vocabulary, or over the tokens of ``words``.

    ROME takes it over the subjects of its data set; passing the concept list reproduces that.
    """
    table = wb.text_encoder.get_input_embeddings().weight.detach()
    if words:
        ids = sorted({i for w in words for i in wb.tokenizer(w, add_special_tokens=False).input_ids})
        table = table[ids]
    return float(table.float().std())


def corruption(wb: Workbench, positions: Sequence[int], rows: Sequence[int], *, draws: Sequence[int] | None = None,
               k: float = 3.0, std: float | None = None, seed: int = 0) -> Patch:
    """A patch adding N(0, (k·std)²) noise to the token embeddings at ``positions`` of ``rows``.

    ``draws[j]`` is the noise sample row j gets (default: its own). Rows that share a draw share the exact
    noise, so every restoration is compared against the same corrupted runs (as ROME does). All draws
    come from one generator seeded with ``seed``.
    """
    if not positions:
        raise ValueError("nothing to corrupt: no subject positions")
    draws = list(range(len(rows))) if draws is None else list(draws)
    if len(draws) != len(rows):
        raise ValueError(f"{len(draws)} noise draws for {len(rows)} rows")
    std = embedding_std(wb) if std is None else std
    dim = wb.text_encoder.get_input_embeddings().weight.shape[1]
    table = torch.randn(max(draws) + 1, len(positions), dim, generator=torch.Generator().manual_seed(seed))
    noise = table[torch.as_tensor(draws)] * (k * std)
    return Patch(EMBEDDING, lambda e: e + noise.to(e.device, e.dtype), rows=list(rows), positions=list(positions))
