"""Rates with their uncertainty: every rate the project reports comes with a standard error and a bound.

Wilson score bounds rather than p ± z·SE: the toy world's rates sit near 0 or 1, where the normal
interval runs past [0, 1] and claims certainty from a handful of images (20 of 20 would give ±0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_ONE_SIDED_95 = 1.6448536269514722  # a one-sided 95 % bound


@dataclass(frozen=True)
class Rate:
    """``hits`` of ``n`` trials: the rate, its standard error and one-sided Wilson bounds."""

    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def se(self) -> float:
        p = self.value
        return math.sqrt(p * (1 - p) / self.n) if self.n else math.nan

    def lower(self, z: float = Z_ONE_SIDED_95) -> float:
        return wilson(self.hits, self.n, z)[0]

    def upper(self, z: float = Z_ONE_SIDED_95) -> float:
        return wilson(self.hits, self.n, z)[1]

    def __str__(self) -> str:
        return f"{self.value:.1%} ± {self.se:.1%}"


def rate(outcomes: Sequence[bool]) -> Rate:
    return Rate(int(sum(bool(o) for o in outcomes)), len(outcomes))


def wilson(hits: int, n: int, z: float = Z_ONE_SIDED_95) -> tuple[float, float]:
    """(lower, upper) Wilson score bounds of a binomial rate; (nan, nan) for no trials."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_mean(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) of per-seed paired values, e.g. after − before on the same seeds."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
