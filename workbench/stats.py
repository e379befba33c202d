"""Rates with their uncertainty: every rate the project reports comes with a standard error and a bound.

Wilson score bounds rather than p ± z·SE: the toy world's rates sit near 0 or 1, where the normal
interval runs past [0, 1] and claims certainty from a handful of images (20 of 20 would give ±0).

Two sets of scores (before and after an edit) are compared by their AUROC, a t-test of their means (paired
when the sets share prompts and seeds) and p-values corrected for the number of comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


# ---------------------------------------------------------------- comparing two sets of scores


def auroc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, P(a > b) + P(a = b) / 2 over every (a, b) pair of values: the area under the ROC curve of
    telling ``a`` from ``b`` by the value (0.5: no separation, 1: every a above every b). ``a`` (R, Na) and
    ``b`` (R, Nb); from average ranks of the pooled row (the Mann-Whitney U of ``a`` over Na·Nb)."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    na, nb = a.shape[1], b.shape[1]
    if na == 0 or nb == 0 or len(a) != len(b):
        raise ValueError(f"auroc: expected two non-empty sets of rows of the same count, got {a.shape} and {b.shape}")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([a, b], axis=1), axis=1)
    return (ranks[:, :na].sum(1) - na * (na + 1) / 2) / (na * nb)


@dataclass(frozen=True)
class MeanTest:
    """A t-test of the difference of means (after - before), per row."""

    diff: np.ndarray  # mean difference
    se: np.ndarray  # its standard error
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray  # two-sided


def _t_p(diff: np.ndarray, se: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import t as student_t

    # no spread: a difference that is exactly the same everywhere is certain (p 0), no difference is p 1
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, diff / np.where(se > 0, se, 1), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    p = np.where(np.isfinite(t), 2 * student_t.sf(np.abs(t), np.maximum(df, 1)), np.where(t == 0, 1.0, 0.0))
    return t, np.where(df >= 1, p, 1.0)


def paired_t(before: np.ndarray, after: np.ndarray) -> MeanTest:
    """Paired t-test of after - before over columns (the same prompt and seed in each set)."""
    before, after = np.atleast_2d(np.asarray(before, np.float64)), np.atleast_2d(np.asarray(after, np.float64))
    if before.shape != after.shape or before.shape[1] < 2:
        raise ValueError(f"paired_t: expected two (R, N >= 2) arrays of one shape, got {before.shape} and "
                         f"{after.shape}")
    d = after - before
    n = d.shape[1]
    se = d.std(1, ddof=1) / math.sqrt(n)
    t, p = _t_p(d.mean(1), se, np.full(len(d), n - 1.0))
    return MeanTest(d.mean(1), se, t, np.full(len(d), n - 1.0), p)


def welch_t(before: np.ndarray, after: np.ndarray) -> MeanTest:
    """Welch's t-test of mean(after) - mean(before) for two independent sets (unequal variances)."""
    before, after = np.atleast_2d(np.asarray(before, np.float64)), np.atleast_2d(np.asarray(after, np.float64))
    na, nb = before.shape[1], after.shape[1]
    if len(before) != len(after) or min(na, nb) < 2:
        raise ValueError(f"welch_t: expected two sets of rows of at least 2 values, got {before.shape} and "
                         f"{after.shape}")
    va, vb = before.var(1, ddof=1) / na, after.var(1, ddof=1) / nb
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(se > 0, (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1)), na + nb - 2.0)
    diff = after.mean(1) - before.mean(1)
    t, p = _t_p(diff, se, df)
    return MeanTest(diff, se, t, df, p)


CORRECTIONS = ("holm", "bh", "bonferroni", "none")


def adjust(p: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """p-values corrected for testing them all: ``holm`` (Holm-Bonferroni step-down, controls the chance of any
    false finding), ``bh`` (Benjamini-Hochberg step-up, controls the share of false findings), ``bonferroni``
    or ``none``."""
    p = np.asarray(p, np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"adjust: expected a list of p-values in [0, 1], got {p!r}")
    m = len(p)
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    elif method == "bh":
        adj = np.minimum.accumulate(m / np.arange(m, 0, -1) * ranked[::-1])[::-1]
        adj = np.minimum(1.0, adj)
    else:
        raise ValueError(f"unknown correction {method!r}: expected one of {', '.join(CORRECTIONS)}")
    out = np.empty(m)
    out[order] = adj
    return out
