"""Stable dotted names for every hookable module, with its kind, in execution order.

A layer name is the module path exactly as the installed library names it, prefixed with the part it
lives in: ``text.encoder.layers.0.self_attn``, ``text2.text_model.encoder.layers.0.self_attn`` (SDXL's second
encoder, a ``CLIPTextModelWithProjection``, keeps transformers' ``text_model`` level) or
``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2``. One table per architecture maps module
paths to kinds; selection is by kind and by glob (``unet.*.attn2``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# CLIP text encoders (transformers 5: no ``text_model`` level inside CLIPTextModel, one inside
# CLIPTextModelWithProjection).
_TM = r"(text_model\.)?"
TEXT_SITES: dict[str, str] = {
    "token_embedding": _TM + r"embeddings\.token_embedding",
    "position_embedding": _TM + r"embeddings\.position_embedding",
    "embeddings": _TM + r"embeddings",
    "self_attn": _TM + r"encoder\.layers\.\d+\.self_attn",
    "out_proj": _TM + r"encoder\.layers\.\d+\.self_attn\.out_proj",
    "mlp": _TM + r"encoder\.layers\.\d+\.mlp",
    "fc2": _TM + r"encoder\.layers\.\d+\.mlp\.fc2",
    "hidden": _TM + r"encoder\.layers\.\d+",
    "final_layer_norm": _TM + r"final_layer_norm",
    "pooled": r"text_projection",  # the projected end-of-text state: SDXL's pooled text embedding
}

# diffusers UNet2DConditionModel.
UNET_SITES: dict[str, str] = {
    "conv_in": r"conv_in",
    "resnet": r"(down_blocks|up_blocks)\.\d+\.resnets\.\d+|mid_block\.resnets\.\d+",
    "attn1": r".*\.transformer_blocks\.\d+\.attn1",
    "attn2": r".*\.transformer_blocks\.\d+\.attn2",
    "to_k": r".*\.transformer_blocks\.\d+\.attn2\.to_k",
    "to_v": r".*\.transformer_blocks\.\d+\.attn2\.to_v",
    "ff": r".*\.transformer_blocks\.\d+\.ff",
    "transformer": r"(down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+",
    "block": r"down_blocks\.\d+|mid_block|up_blocks\.\d+",
    "conv_out": r"conv_out",
    "time_embedding": r"time_embedding",
    # SDXL's added embedding: pooled text + time ids, added to the time embedding (no cross-attention)
    "add_embedding": r"add_embedding",
    "add_proj": r"add_embedding\.linear_1",
}


def sites(part: str) -> dict[str, str]:
    """The site table of a part: the UNet's, or the text encoders' (``text``, ``text2``, ...)."""
    return UNET_SITES if part == "unet" else TEXT_SITES


@dataclass(frozen=True)
class Layer:
    """One hookable module: its stable name, its kind and where it sits in execution order."""

    name: str
    kind: str
    part: str  # "text", "text2" (a second text encoder) or "unet"
    path: str  # module path inside the part
    order: int  # rank of the moment its forward finishes (when .output is served)
    start: int = -1  # rank of the moment its forward starts (when .input is served)


def site_kind(part: str, path: str) -> str | None:
    """The kind of the module at ``path`` inside ``part``, or None if not a site."""
    for kind, pattern in sites(part).items():
        if re.fullmatch(pattern, path):
            return kind
    return None


def execution_order(module: nn.Module, run: callable) -> list[tuple[str, str]]:
    """(module path, "in" | "out") events in the order they happen during ``run()``.

    nnsight serves ``.input`` when a module starts and ``.output`` when it finishes, so this is the order
    a single invoke must touch them in. Plain hooks are used here only because this is a one-off probe
    before nnsight runs.
    """
    events: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def record(name: str, when: str):
        def _hook(*_):
            if (name, when) not in seen:
                seen.add((name, when))
                events.append((name, when))

        return _hook

    handles = []
    for n, m in module.named_modules():
        if n:
            handles.append(m.register_forward_pre_hook(record(n, "in")))
            handles.append(m.register_forward_hook(record(n, "out")))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return events


def build_table(part: str, module: nn.Module, events: Sequence[tuple[str, str]]) -> list[Layer]:
    """Every site of ``module`` with its kind, sorted by execution order (unvisited modules last)."""
    rank = {event: i for i, event in enumerate(events)}
    end = len(rank)
    layers = []
    for path, _ in module.named_modules():
        kind = site_kind(part, path) if path else None
        if kind is not None:
            layers.append(Layer(f"{part}.{path}", kind, part, path, rank.get((path, "out"), end),
                                rank.get((path, "in"), end)))
    return sorted(layers, key=lambda layer: layer.order)


def select(layers: Iterable[Layer], kind: str | Sequence[str] | None = None,
           pattern: str | None = None) -> list[Layer]:
    """Filter layers by kind(s) and/or a glob over names (``*`` matches dots too)."""
    kinds = {kind} if isinstance(kind, str) else set(kind) if kind is not None else None
    out = [layer for layer in layers
           if (kinds is None or layer.kind in kinds)
           and (pattern is None or fnmatch.fnmatchcase(layer.name, pattern))]
    return out


def edit_targets(layers: Sequence[Layer], accepts: Mapping[str, Sequence[str]], method: str,
                 what: str) -> list[str]:
    """The module or parameter names an editor changes, given the layers it was handed.

    ``accepts`` maps each layer kind the editor takes to the paths under such a layer it edits ("" for the
    layer itself), e.g. UCE: ``{"attn2": ["to_k.weight", "to_v.weight"], "to_k": ["weight"], ...}``. A
    layer of any other kind is refused, naming the kinds that would do.
    """
    names: list[str] = []
    for layer in layers:
        if layer.kind not in accepts:
            raise ValueError(f"{method} edits {what}; layer {layer.name!r} is of kind {layer.kind!r} (give "
                             f"{', '.join(accepts)} layers)")
        names += [f"{layer.name}.{path}" if path else layer.name for path in accepts[layer.kind]]
    if not names:
        raise ValueError(f"{method}: no layers to edit")
    return names
