"""Cross-attention maps per prompt word (DAAM-style): a cheap first look at where each word acts.

The default attention processor is fused and exposes no probabilities, so for the duration of one
generation every ``attn2`` gets an eager processor that records the conditional half's probabilities
(mean over heads, summed over steps). Maps of all layers are upsampled to the image and averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench import Workbench


class _RecordingProcessor:
    """Eager cross-attention that adds the conditional rows' probabilities into ``store[name]``.

    Adapted from diffusers' ``AttnProcessor`` (``diffusers.models.attention_processor``), the eager
    default: same projections, ``get_attention_scores``, output projection, residual and rescale. We need
    our own because neither it nor the fused ``AttnProcessor2_0`` hands the probabilities out. What differs:
    the probabilities of the last ``n_cond`` batch rows (the conditional half under guidance) are recorded;
    and it keeps only the path an ``attn2`` of a ``UNet2DConditionModel`` transformer block takes (3-D hidden
    states, no ``spatial_norm``/``group_norm``), with ``attention_mask`` passed to ``get_attention_scores``
    without ``prepare_attention_mask`` (that block passes ``encoder_attention_mask``, which the workbench
    never sets)."""

    def __init__(self, store: dict[str, torch.Tensor], name: str, n_cond: int):
        self.store, self.name, self.n_cond = store, name, n_cond

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)  # (batch·heads, HW, T)
        heads = probs.shape[0] // batch
        cond = probs.view(batch, heads, *probs.shape[1:])[-self.n_cond:].mean(1).detach()
        self.store[self.name] = self.store.get(self.name, 0) + cond.float().cpu()
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class AttentionMaps:
    """Per-token cross-attention heat maps, (B, T, H, W) at image resolution, with their images."""

    maps: torch.Tensor
    images: torch.Tensor
    prompts: list[str]
    tokens: list[list[str]]
    layers: list[str]
    locate: Callable[[str, str], list[int]]  # (prompt, words) -> token positions

    def word(self, i: int, word: str) -> torch.Tensor:
        """The heat map of ``word`` (one or more words) in prompt ``i``, summed over its tokens."""
        return self.maps[i, self.locate(self.prompts[i], word)].sum(0)

    def plot(self, i: int = 0, words: Sequence[str] | None = None, axes=None):
        """The image, then one overlay per word (default: every word of the prompt)."""
        import matplotlib.pyplot as plt

        words = list(words) if words is not None else self.prompts[i].split()
        if axes is None:
            _, axes = plt.subplots(1, len(words) + 1, figsize=(1.6 * (len(words) + 1), 1.9))
        img = self.images[i].permute(1, 2, 0).numpy()
        axes[0].imshow(img)
        axes[0].set_title("image", fontsize=8)
        for ax, w in zip(axes[1:], words, strict=False):
            heat = self.word(i, w)
            ax.imshow(img)
            ax.imshow((heat / heat.max().clamp_min(1e-12)).numpy(), cmap="jet", alpha=0.5)
            ax.set_title(w, fontsize=8)
        for ax in axes:
            ax.axis("off")
        return axes


def cross_attention_maps(wb: Workbench, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, *,
                         steps: int | None = None, guidance: float | None = None,
                         layers: Sequence[str] | None = None, progress: bool = True) -> AttentionMaps:
    """Generate ``prompts`` and record where every token's cross-attention lands (one generation, with its
    per-step bar unless ``progress=False``)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    layers = list(layers) if layers is not None else wb.layers("attn2")
    store: dict[str, torch.Tensor] = {}
    original = wb.unet.attn_processors
    recording = {f"{name.removeprefix('unet.')}.processor": _RecordingProcessor(store, name, len(prompts))
                 for name in layers}
    wb.unet.set_attn_processor({k: recording.get(k, v) for k, v in original.items()})
    try:
        gen = wb.generate(prompts, seed, steps=steps, guidance=guidance, progress=progress)
    finally:
        wb.unet.set_attn_processor(original)
    size = gen.images.shape[-1]
    maps = []
    for name in layers:
        probs = store[name]  # (B, HW, T)
        side = int(round(probs.shape[1] ** 0.5))
        grid = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], side, side)
        maps.append(F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp_min(0))
    tokens = [wb.tokens(p) for p in prompts]
    return AttentionMaps(maps=torch.stack(maps).mean(0), images=gen.images, prompts=prompts, tokens=tokens,
                         layers=layers, locate=wb.subject_positions)
