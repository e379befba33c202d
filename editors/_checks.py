"""Input checks the editors share: every refusal is one line naming the offending input and what was
expected, raised before any work and before any weight is touched.

Concept comparisons (duplicates, conflicts) ignore case and spacing: the tokenizers lowercase and split
on whitespace, so "Van  Gogh" and "van gogh" are the same key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

from workbench import Workbench
from workbench.layers import Layer


class UnknownLayerError(KeyError, ValueError):
    """A layer name the model does not have. A KeyError (as ``Workbench.layer`` raises) and a ValueError (as
    every other bad editor input), with a plain one-line message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def norm(text: str) -> str:
    """The comparison key of a concept: lowercased, spacing collapsed."""
    return " ".join(text.split()).lower()


def strings(owner: str, name: str, value: Any, *, blank: bool = False) -> list[str]:
    """``value`` as a list of strings: a list/tuple of ``str`` items, none blank unless ``blank``."""
    if isinstance(value, str):
        raise TypeError(f"{owner} {name} must be a list of strings, got the string {value!r} (wrap it in a list)")
    if not isinstance(value, Sequence):
        raise TypeError(f"{owner} {name} must be a list of strings, got {type(value).__name__}")
    out = list(value)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            raise TypeError(f"{owner} {name}[{i}] must be a string, got {type(item).__name__} {item!r}")
        if not blank and not item.strip():
            raise ValueError(f"{owner} {name}[{i}] is {'empty' if not item else 'only whitespace'}; expected a "
                             f"non-empty concept")
    return out


def text(owner: str, name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise TypeError(f"{owner} {name} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError(f"{owner} {name} is {'empty' if not value else 'only whitespace'}; expected a non-empty "
                         f"concept")
    return value


def no_duplicates(owner: str, name: str, items: Iterable[str]) -> None:
    """Refuse an item given twice (ignoring case and spacing)."""
    seen: dict[str, tuple[int, str]] = {}
    for i, item in enumerate(items):
        key = norm(item)
        if key in seen:
            j, first = seen[key]
            same = "" if first == item else f" and {item!r}"
            raise ValueError(f"{owner} {name} lists {first!r}{same} twice (items {j} and {i}; case and spacing are "
                             f"ignored); give each concept once")
        seen[key] = (i, item)


def disjoint(owner: str, groups: Mapping[str, Iterable[str]]) -> None:
    """Refuse a concept that appears in two of the named groups (ignoring case and spacing)."""
    where: dict[str, tuple[str, str]] = {}
    for group, items in groups.items():
        for item in items:
            key = norm(item)
            if key in where and where[key][0] != group:
                other, first = where[key]
                spelt = f" (as {first!r})" if first != item else ""
                raise ValueError(f"{owner}: concept {item!r} is in both {other}{spelt} and {group} (case and spacing "
                                 f"are ignored); a concept can be in one of them only")
            where.setdefault(key, (group, item))


def number(owner: str, name: str, value: Any, *, low: float | None = None, low_open: bool = False,
           high: float | None = None, integer: bool = False) -> float:
    """A finite real number (an int when ``integer``) with ``value >= low`` (``> low`` when ``low_open``)
    and ``value <= high``. Booleans are refused."""
    rng = []
    if low is not None:
        rng.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        rng.append(f"<= {high:g}")
    cond = " and ".join(rng)
    expect = (f"an integer {cond}" if integer else f"finite and {cond}") if cond else ("an integer" if integer
                                                                                      else "finite")
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        kind = expect if integer else f"a number ({expect})"
        raise TypeError(f"{owner} {name} must be {kind}, got {type(value).__name__} {value!r}")
    infinite = not integer and not math.isfinite(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if infinite or too_low or too_high:
        raise ValueError(f"{owner} {name} must be {expect}, got {value!r}"
                         f"{' (NaN or inf are refused)' if infinite else ''}")
    return value


def templates(owner: str, value: Any) -> list[str]:
    """A non-empty list of prompt templates, each with one ``{}`` where the concept goes and no other braces."""
    out = strings(owner, "templates", value)
    if not out or any(t.count("{}") != 1 for t in out):
        raise ValueError(f"{owner} templates must each contain '{{}}' once where the concept goes, got {out}")
    for t in out:
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"{owner} template {t!r} has braces other than the one '{{}}' where the concept "
                             f"goes") from None
    return out


def layer_names(owner: str, layers: Any) -> list[str] | None:
    """``layers`` as a list of names (a single name becomes a list of one; repeats are dropped); None stays."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Iterable):
        raise TypeError(f"{owner} layers must be a list of layer names, got {type(layers).__name__}")
    out: list[str] = []
    for i, name in enumerate(layers):
        if not isinstance(name, str):
            raise TypeError(f"{owner} layers[{i}] must be a layer name (a string), got {type(name).__name__} "
                            f"{name!r}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"{owner}: the list of layers is empty; give at least one layer name, or none at all for "
                         f"the default")
    return out


def layer(wb: Workbench, owner: str, name: str, takes: str) -> Layer:
    """``wb.layer(name)``, with what ``owner`` takes added to the unknown-name error."""
    try:
        return wb.layer(name)
    except KeyError as err:
        msg = err.args[0] if err.args else f"no layer named {name!r}"
        raise UnknownLayerError(f"{owner}: {msg} ({owner} takes {takes})") from None


def about(help: str, **cli: Any) -> dict[str, Any]:
    """A request field's metadata: its help text, from which the CLI builds its option (``cli`` tunes that
    option: ``flag="--guide"``, ``file=True`` for a list read from a file of lines, ``request_file=True`` for
    a JSON file the request's ``load`` reads (options given beside it win), ``parse=fn`` for one value,
    ``cli=False`` to keep it off the command line)."""
    return {"help": help, **cli}


def record(request: Any) -> dict:
    """The request as JSON-ready metadata, without the fields that are no setting (``record=False`` in their
    metadata: callables, tensors)."""
    import os
    from dataclasses import asdict, fields, replace

    skip = [f.name for f in fields(request) if not f.metadata.get("record", True)]
    out = asdict(replace(request, **dict.fromkeys(skip)) if skip else request)
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in out.items() if k not in skip}
