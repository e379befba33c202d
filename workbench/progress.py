"""Progress bars for every long loop: one switch to silence them, no carriage-return spam off a terminal.

Silenced by ``progress=False`` at a call, by :func:`set_quiet` (the CLI's ``--quiet``) or by the
environment variable ``TQDM_DISABLE=1``. On a terminal a bar redraws in place; elsewhere (a CI log, a
file) it prints a plain line at most every 30 s, so logs stay readable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

_QUIET = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or re-enable) every progress bar of the process."""
    global _QUIET
    _QUIET = quiet


def enabled(progress: bool = True) -> bool:
    """Whether a bar asked for with ``progress`` is shown."""
    off = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return bool(progress) and not _QUIET and not off


class _Lines:
    """A text stream that turns tqdm's in-place redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            line = line.strip().replace("\x1b[A", "")
            if line:
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable: Iterable | None = None, *, desc: str, progress: bool = True, total: int | None = None,
        leave: bool = False, **kw: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), shown only when :func:`enabled`."""
    stream = sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    options: dict[str, Any] = {"dynamic_ncols": True} if terminal else {
        "file": _Lines(stream), "mininterval": 30.0, "ncols": 100, "ascii": True}
    return tqdm(iterable, desc=desc, total=total, leave=leave or not terminal, disable=not enabled(progress),
                **{**options, **kw})
