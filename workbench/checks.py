"""Argument checks at the API boundary: a wrong number is a one-line error that names it, never noise."""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from typing import Any


def shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def is_whole(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole(name: str, value: Any, minimum: int = 1, maximum: int | None = None, what: str | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``; a float, bool, string or out-of-range number is refused."""
    bound = f"between {minimum} and {what or maximum}" if maximum is not None else f">= {minimum}"
    if not is_whole(value) or value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be a whole number {bound}, got {shown(value)}")
    return int(value)


def finite(name: str, value: Any, *, above: float | None = None, at_least: float | None = None) -> float:
    """``value`` as a finite float, optionally ``> above`` or ``>= at_least``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
        bound = f" > {above:g}" if above is not None else f" >= {at_least:g}" if at_least is not None else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {shown(value)}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be a finite number > {above:g}, got {shown(value)}")
    if at_least is not None and not value >= at_least:
        raise ValueError(f"{name} must be a finite number >= {at_least:g}, got {shown(value)}")
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
