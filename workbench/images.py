"""Image grids and atomic image writes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid(images: torch.Tensor, nrow: int = 8, scale: int = 1, pad: int = 1,
         labels: Sequence[str] | None = None) -> Image.Image:
    """A grid of images (row-major, ``nrow`` per row), upscaled ``scale``× with nearest neighbour.

    ``labels`` (one per row) are written in a left margin.
    """
    arr = to_uint8(images)
    b, h, w, _ = arr.shape
    rows = (b + nrow - 1) // nrow
    margin = 0 if not labels else 8 * max(len(s) for s in labels) + 6
    hs, ws = h * scale, w * scale
    canvas = Image.new("RGB", (margin + nrow * (ws + pad) + pad, rows * (hs + pad) + pad), "white")
    for i in range(b):
        tile = Image.fromarray(arr[i]).resize((ws, hs), Image.NEAREST)
        r, c = divmod(i, nrow)
        canvas.paste(tile, (margin + pad + c * (ws + pad), pad + r * (hs + pad)))
    if labels:
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(labels[:rows]):
            draw.text((3, pad + r * (hs + pad) + hs // 2 - 5), text, fill="black")
    return canvas


def save_image(image: Image.Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write atomically (see ``files.atomic_write``); an existing file is replaced only with ``overwrite``."""
    if Path(path).suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{str(path)!r}: unknown image type {Path(path).suffix!r}; use .png or .jpg")
    return atomic_write(path, lambda tmp: image.save(tmp, format=Image.registered_extensions()[
        Path(path).suffix.lower()]), overwrite=overwrite)


def save_png(image: torch.Tensor, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """One (3, H, W) image in [0, 1] as a PNG, atomically."""
    return save_image(Image.fromarray(to_uint8(image[None])[0]), path, overwrite=overwrite)


def read_png(path: str | os.PathLike) -> torch.Tensor:
    """A PNG (or any picture PIL reads) as a (3, H, W) float image in [0, 1]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
