"""What the denoiser reads from a prompt, one row per prompt.

SD-1.x/2.x: the text encoder's states, which cross-attention reads. SDXL adds the second encoder's pooled
embedding and the size/crop time ids, which reach the UNet through the added time embedding and bypass
cross-attention. Tracing and the editors move these rows around (select, repeat, concatenate) without
knowing which family made them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Conditioning:
    """``states`` (B, T, D) for cross-attention; ``pooled`` (B, P) and ``time_ids`` (B, K) where the family
    has an added-embedding path (None elsewhere)."""

    states: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for f in fields(self)[1:]:
            t = getattr(self, f.name)
            if t is not None and t.shape[0] != self.states.shape[0]:
                raise ValueError(f"conditioning {f.name} has {t.shape[0]} rows for {self.states.shape[0]} states")

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        return Conditioning(*(None if t is None else fn(t) for t in self._tensors()))

    def _tensors(self) -> list[torch.Tensor | None]:
        return [getattr(self, f.name) for f in fields(self)]

    def __len__(self) -> int:
        return self.states.shape[0]

    def __getitem__(self, rows: int | slice | Sequence[int] | torch.Tensor) -> Conditioning:
        """The selected rows; an int keeps the batch dimension (one row)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.states.device)
        return self._map(lambda t: t[rows])

    def expand(self, n: int) -> Conditioning:
        """A one-row conditioning seen as ``n`` rows (no copy)."""
        if len(self) != 1:
            raise ValueError(f"only a one-row conditioning expands; this one has {len(self)} rows")
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def repeat(self, n: int) -> Conditioning:
        """The whole batch ``n`` times over (row i of copy j is row i)."""
        return self._map(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each row ``n`` times in a row (row i of the result is row i // n)."""
        return self._map(lambda t: t.repeat_interleave(n, 0))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        if not parts:
            raise ValueError("no conditioning to concatenate")
        columns = zip(*(p._tensors() for p in parts), strict=True)
        out = []
        for name, col in zip([f.name for f in fields(Conditioning)], columns, strict=True):
            if any(t is None for t in col) and not all(t is None for t in col):
                raise ValueError(f"cannot concatenate conditionings with and without {name}")
            out.append(None if col[0] is None else torch.cat(col))
        return Conditioning(*out)

    def flat(self) -> torch.Tensor:
        """(B, F): every value a row holds, side by side (for exact row comparisons)."""
        return torch.cat([t.reshape(len(self), -1).to(self.states.dtype) for t in self._tensors() if t is not None],
                         dim=1)

    def detach(self) -> Conditioning:
        return self._map(torch.Tensor.detach)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def isfinite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self._tensors() if t is not None)
