"""Argument checks at the boundary of the tracing API: one-line ValueErrors that name the argument and say
what was expected, raised before any model work (so a bad call never leaves anything half done)."""

from __future__ import annotations

import math
import numbers
from typing import Any


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def is_whole(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole(name: str, value: Any, minimum: int = 1, maximum: int | None = None, what: str | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``; a float, bool, string or out-of-range number is refused."""
    if maximum is not None:
        bound = f"between {minimum} and {what or maximum}"
    else:
        bound = f">= {minimum}"
    if not is_whole(value) or value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be a whole number {bound}, got {_shown(value)}")
    return int(value)


def integer(name: str, value: Any) -> int:
    """Any whole number (a seed)."""
    if not is_whole(value):
        raise ValueError(f"{name} must be a whole number, got {_shown(value)}")
    return int(value)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive(name: str, value: Any, when_given: bool = False) -> float:
    """A finite number > 0."""
    if not _real(value) or not math.isfinite(float(value)) or float(value) <= 0:
        given = " when given" if when_given else ""
        raise ValueError(f"{name} must be a finite number > 0{given}, got {_shown(value)}")
    return float(value)


def finite(name: str, value: Any) -> float:
    """A finite number (any sign)."""
    if not _real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
    return float(value)


def text(name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__} {_shown(value)}")
    if not value.strip():
        raise ValueError(f"empty {name}: nothing to trace" if name == "prompt" else f"{name} must not be empty")
    return value


def common(*, prompt: Any, subject: Any, samples: Any, noise: Any, std: Any, seed: Any, draws: Any, steps: Any,
           guidance: Any, batch_size: Any) -> None:
    """The checks every trace shares."""
    text("prompt", prompt)
    text("subject", subject)
    whole("samples", samples)
    positive("noise", noise)
    if std is not None:
        positive("std", std, when_given=True)
    integer("seed", seed)
    whole("draws", draws)
    if steps is not None:
        whole("steps", steps)
    if guidance is not None:
        finite("guidance", guidance)
    if batch_size is not None:
        whole("batch_size", batch_size)
