"""Rates with standard errors and Wilson bounds, against an independent computation (score-test inversion)."""

import math

import pytest

from workbench import stats


def _score_bound(hits: int, n: int, z: float, upper: bool) -> float:
    # The Wilson bound is the p at which the score statistic (p_hat - p) / sqrt(p (1 - p) / n) equals ±z;
    # found here by bisection instead of the closed form.
    p_hat = hits / n
    lo, hi = (p_hat, 1.0) if upper else (0.0, p_hat)
    for _ in range(200):
        mid = (lo + hi) / 2
        stat = (p_hat - mid) / math.sqrt(mid * (1 - mid) / n) if 0 < mid < 1 else math.copysign(math.inf, p_hat - mid)
        if upper:
            lo, hi = (mid, hi) if stat > -z else (lo, mid)
        else:
            lo, hi = (lo, mid) if stat < z else (mid, hi)
    return (lo + hi) / 2


@pytest.mark.parametrize(("hits", "n"), [(0, 10), (3, 10), (19, 20), (20, 20), (97, 100), (480, 500)])
def test_wilson_bounds_invert_the_score_test(hits, n):
    low, high = stats.wilson(hits, n)
    assert low == pytest.approx(_score_bound(hits, n, stats.Z_ONE_SIDED_95, upper=False), abs=1e-9)
    assert high == pytest.approx(_score_bound(hits, n, stats.Z_ONE_SIDED_95, upper=True), abs=1e-9)
    assert 0 <= low <= hits / n <= high <= 1


def test_rate_reports_its_standard_error_and_bounds():
    r = stats.rate([True] * 47 + [False] * 3)
    assert (r.hits, r.n, r.value) == (47, 50, 0.94)
    assert r.se == pytest.approx(math.sqrt(0.94 * 0.06 / 50))
    assert r.lower() < 0.94 < r.upper()
    assert str(r) == "94.0% ± 3.4%"
    # all hits is not certainty: 20 of 20 bounds the rate at 0.88, not 1.0
    assert stats.rate([True] * 20).lower() == pytest.approx(20 / (20 + stats.Z_ONE_SIDED_95 ** 2))
    assert math.isnan(stats.rate([]).value) and math.isnan(stats.rate([]).lower())


def test_paired_mean_and_its_standard_error():
    mean, se = stats.paired_mean([0.0, -1.0, 0.0, 0.0, 1.0, -1.0])
    assert mean == pytest.approx(-1 / 6)
    sd = math.sqrt(sum((v + 1 / 6) ** 2 for v in [0, -1, 0, 0, 1, -1]) / 5)
    assert se == pytest.approx(sd / math.sqrt(6))
    assert math.isnan(stats.paired_mean([1.0])[1]) and math.isnan(stats.paired_mean([])[0])
