"""Argument checks at the boundary of the tracing API: one-line ValueErrors that name the argument and say
what was expected, raised before any model work (so a bad call never leaves anything half done)."""

from __future__ import annotations

from typing import Any

from workbench.checks import finite, is_whole, shown, whole  # noqa: F401 (whole: re-exported for the trace modules)


def integer(name: str, value: Any) -> int:
    """Any whole number (a seed)."""
    if not is_whole(value):
        raise ValueError(f"{name} must be a whole number, got {shown(value)}")
    return int(value)


def positive(name: str, value: Any, when_given: bool = False) -> float:
    """A finite number > 0."""
    try:
        return finite(name, value, above=0)
    except ValueError:
        given = " when given" if when_given else ""
        raise ValueError(f"{name} must be a finite number > 0{given}, got {shown(value)}") from None


def text(name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__} {shown(value)}")
    if not value.strip():
        raise ValueError(f"empty {name}: nothing to trace" if name == "prompt" else f"{name} must not be empty")
    return value
