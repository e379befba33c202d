"""Argument checks at the API boundary: a wrong number is a one-line error that names it, never noise."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
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


def arg_int(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def arg_float(above: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number, optionally > ``above``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (above is not None and value <= above):
            bound = f" > {above:g}" if above is not None else ""
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {text!r}")
        return value

    return parse
