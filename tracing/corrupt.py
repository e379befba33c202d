"""Corruption of the subject tokens' input embeddings (ROME / Basu et al.): Gaussian noise of scale
k × the standard deviation of token embeddings, a different seeded sample per corrupted row."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench import Patch, Workbench


def embedding_layer(wb: Workbench, part: str = "text") -> str:
    """The token-embedding layer of text encoder ``part`` (``text.embeddings.token_embedding``, ...)."""
    return wb.layers("token_embedding", part=part)[0]


def embedding_std(wb: Workbench, words: Sequence[str] | None = None, part: str | None = None) -> float:
    """Std of token embeddings of text encoder ``part`` (the primary one by default): over the whole vocabulary,
    or over the tokens of ``words``.

    ROME takes it over the subjects of its data set; passing the concept list reproduces that.
    """
    encoder = wb.text_encoders[part or wb.text_parts[0]]
    table = encoder.get_input_embeddings().weight.detach()
    if words:
        ids = sorted({i for w in words for i in wb.tokenizer(w, add_special_tokens=False).input_ids})
        table = table[ids]
    return float(table.float().std())


def corruption(wb: Workbench, positions: Sequence[int], rows: Sequence[int], *, draws: Sequence[int] | None = None,
               k: float = 3.0, std: float | None = None, seed: int = 0) -> list[Patch]:
    """Patches adding N(0, (k·std)²) noise to the token embeddings at ``positions`` of ``rows``, in every text
    encoder (SDXL's two see the same subject).

    ``draws[j]`` is the noise sample row j gets (default: its own). Rows that share a draw share the exact
    noise, so every restoration is compared against the same corrupted runs (as ROME does). All draws of an
    encoder come from one generator seeded with ``seed`` (the primary encoder) or a seed derived from it.
    ``std`` is the primary encoder's scale; another encoder's noise is scaled by its own embeddings' std
    times ``std / (the primary's measured std)``, so each is corrupted by the same multiple of its own spread.
    """
    if not positions:
        raise ValueError("nothing to corrupt: no subject positions")
    draws = list(range(len(rows))) if draws is None else list(draws)
    if len(draws) != len(rows):
        raise ValueError(f"{len(draws)} noise draws for {len(rows)} rows")
    primary = embedding_std(wb)
    std = primary if std is None else std
    patches = []
    for i, part in enumerate(wb.text_parts):
        part_std = std if i == 0 else embedding_std(wb, part=part) * std / primary
        dim = wb.text_encoders[part].get_input_embeddings().weight.shape[1]
        generator = torch.Generator().manual_seed(seed + 1_000_003 * i)
        table = torch.randn(max(draws) + 1, len(positions), dim, generator=generator)
        noise = table[torch.as_tensor(draws)] * (k * part_std)
        patches.append(Patch(embedding_layer(wb, part), lambda e, n=noise: e + n.to(e.device, e.dtype),
                             rows=list(rows), positions=list(positions)))
    return patches
