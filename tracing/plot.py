"""Restore-effect heatmaps (matplotlib) and cross-attention overlays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.files import atomic_write

if TYPE_CHECKING:
    from .result import TraceResult

CMAPS = {"hidden": "Purples", "self_attn": "Reds", "mlp": "Greens"}


def short_name(name: str) -> str:
    """Readable row labels: ``unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2`` -> ``up1.a0.attn2``."""
    part, _, s = name.partition(".")
    s = s.removeprefix("text_model.")
    if part not in ("text", "unet"):  # a second text encoder: keep which one
        s = f"{part} {s}"
    for old, new in (("encoder.layers.", "layer "), ("down_blocks.", "down"), ("up_blocks.", "up"),
                     ("mid_block", "mid"), (".attentions.", ".a"), (".resnets.", ".r"),
                     (".transformer_blocks.0", ""), (".transformer_blocks.", ".t")):
        s = s.replace(old, new)
    return s


def heatmap(result: TraceResult, ax=None, title: str | None = None):
    """Layers down, tokens (subject tokens marked *) or step windows across; colour = restore effect."""
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(result.cols), 1.2 + 0.32 * len(result.rows)))
    else:
        fig = ax.figure
    scores = result.scores.float().numpy()
    vmax = max(1.0, float(torch.nan_to_num(result.scores).max()))
    im = ax.imshow(scores, cmap=CMAPS.get(result.kind, "Blues"), vmin=min(0.0, float(scores.min(initial=0))),
                   vmax=vmax, aspect="auto", interpolation="nearest")
    labels = [c.replace("</w>", "") for c in result.cols]
    labels = [f"{c}*" if i in result.subject_cols else c for i, c in enumerate(labels)]
    ax.set_xticks(range(len(labels)), labels, rotation=60 if result.part != "unet" else 30, ha="right", fontsize=8)
    ax.set_yticks(range(len(result.rows)), [short_name(r) for r in result.rows], fontsize=8)
    for i in result.subject_cols:
        ax.get_xticklabels()[i].set_fontweight("bold")
    prompt = result.prompt if isinstance(result.prompt, str) else f"{len(result.prompt)} prompts"
    ax.set_title(title or f"{result.part}/{result.kind} restore effect ({result.metric})\n{prompt}", fontsize=9)
    fig.colorbar(im, ax=ax, label="restore effect")
    fig.tight_layout()
    return ax


def save_heatmap(result: TraceResult, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """The heatmap as a PNG, written atomically; an existing file is replaced only with ``overwrite``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = heatmap(result)
    try:
        return atomic_write(path, lambda tmp: ax.figure.savefig(tmp, dpi=120, format="png"), overwrite=overwrite)
    finally:
        plt.close(ax.figure)
