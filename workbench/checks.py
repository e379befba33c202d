"""Argument checks at the API boundary: a wrong number is a one-line error that names it, never noise."""

from __future__ import annotations

import math
from typing import Any


def whole(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, refusing bools, fractions, strings and anything below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def finite(name: str, value: Any, *, above: float | None = None, at_least: float | None = None) -> float:
    """``value`` as a finite float, optionally ``> above`` or ``>= at_least``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above:g}, got {value!r}")
    if at_least is not None and not value >= at_least:
        raise ValueError(f"{name} must be >= {at_least:g}, got {value!r}")
    return float(value)
