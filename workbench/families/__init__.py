"""Model families: what differs between SD-1.x/2.x, SDXL and (next) MM-DiT models, in one adapter each.

An adapter says which text encoders a model has and what they are called, how their outputs become the
:class:`~workbench.conditioning.Conditioning` the denoiser reads, how the denoiser is called, what the
unconditional input of classifier-free guidance is, which projections read text (UCE's targets) and which
diffusers pipeline a model exports to. The :class:`~workbench.Workbench` and every stage above it ask the
adapter and never branch on the family.
"""

from __future__ import annotations

import json
from pathlib import Path

from .sd import StableDiffusion, TextPart
from .sdxl import StableDiffusionXL

FAMILIES: dict[str, type[StableDiffusion]] = {"sd": StableDiffusion, "sdxl": StableDiffusionXL}


def detect(folder: Path) -> StableDiffusion:
    """The family of a local diffusers folder: its ``model_index.json`` pipeline class when present, else the
    subfolders it holds (a second text encoder means SDXL)."""
    index = folder / "model_index.json"
    name = ""
    settings: dict = {}
    if index.is_file():
        try:
            data = json.loads(index.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{str(index)!r} is not readable JSON ({err})") from err
        if isinstance(data, dict):
            name = str(data.get("_class_name", ""))
            settings = data
    for family in reversed(FAMILIES.values()):  # the most specific first
        if name in family.pipelines or (not name and family.looks_like(folder)):
            return family.from_index(settings)
    if name:
        known = ", ".join(p for f in FAMILIES.values() for p in f.pipelines)
        raise ValueError(f"{str(index)!r}: pipeline {name!r} is not a family the workbench knows ({known})")
    return StableDiffusion()


__all__ = ["FAMILIES", "StableDiffusion", "StableDiffusionXL", "TextPart", "detect"]
