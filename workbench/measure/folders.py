"""Loading a scorer's model from a local transformers folder: safetensors only, and a broken folder is one
line naming it (the CLIP and classifier scorers share this)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def check_weights(owner: str, folder: Path) -> None:
    """The folder holds safetensors weights (one file or shards); pickles are never read."""
    if not (folder / "model.safetensors").is_file() and not list(folder.glob("model-*.safetensors")):
        raise ValueError(f"{owner}: {str(folder)!r} has no model.safetensors (weights load only from "
                         "safetensors, never from pickles)")


def load_parts(owner: str, folder: Path, *loaders: Callable[[Path], Any], what: str = "") -> list[Any]:
    """Each loader's result for ``folder`` (model, tokenizer, processor, ...), without the libraries' bars;
    any failure becomes ``{owner}: could not load {folder}{what}: {first line}``."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        return [load(folder) for load in loaders]
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"{owner}: could not load {str(folder)!r}{what}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
