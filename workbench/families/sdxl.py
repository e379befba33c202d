"""SDXL: two CLIP text encoders (CLIP-L ``text.``, OpenCLIP-bigG ``text2.``) whose penultimate hidden states
are concatenated into the cross-attention context, plus the second encoder's pooled, projected embedding and
the size/crop time ids, which enter the UNet through the added time embedding (``unet.add_embedding``) and
bypass cross-attention."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..conditioning import Conditioning
from .sd import StableDiffusion, TextPart


class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline",)
    text = (TextPart("text", "text_encoder", "tokenizer", "CLIPTextModel"),
            TextPart("text2", "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"))
    # add_proj reads the pooled embedding (its first columns; the rest read the time ids' features)
    text_projections = {"to_k": "states", "to_v": "states", "add_proj": "pooled"}

    def __init__(self, force_zeros_for_empty_prompt: bool = True):
        # SDXL-base's pipeline setting: an empty negative prompt is all-zero conditioning, not encoded ""
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    @classmethod
    def from_index(cls, index: Mapping[str, Any]) -> StableDiffusionXL:
        value = index.get("force_zeros_for_empty_prompt", True)
        if not isinstance(value, bool):
            raise ValueError(f"model_index.json: force_zeros_for_empty_prompt must be true or false, got {value!r}")
        return cls(force_zeros_for_empty_prompt=value)

    def index_settings(self) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt}

    def single_file_kwargs(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ prompts -> conditioning
    def part_ids(self, wb, part: str, ids: torch.Tensor) -> torch.Tensor:
        """Both SDXL tokenizers share one vocabulary (checked when the model is built) and differ only in the
        padding id: the second pads with its own after the first end-of-text token."""
        if part == "text":
            return ids
        pad = wb.tokenizers[part].pad_token_id
        if pad is None or pad == wb.tokenizer.pad_token_id:
            return ids
        eos = (ids == wb.tokenizer.eos_token_id).int()
        after = (eos.cumsum(1) - eos) > 0  # strictly after the first end-of-text token
        return ids.masked_fill(after, pad)

    def text_kwargs(self, part: str) -> dict[str, Any]:
        return {"output_hidden_states": True}

    def conditioning(self, wb, outputs: Mapping[str, Any]) -> Conditioning:
        first, second = outputs["text"], outputs["text2"]
        states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return Conditioning(states, second.text_embeds, self.time_ids(wb, states.shape[0]).to(states.dtype))

    def time_ids(self, wb, n: int) -> torch.Tensor:
        """(original size, crop top-left, target size) = (H, W, 0, 0, H, W) at the sampled image size."""
        _, h, w = wb.latent_shape
        f = wb.autoencoder.factor
        return torch.tensor([[h * f, w * f, 0, 0, h * f, w * f]], device=wb.device).expand(n, 6).float()

    def unconditional(self, wb, negative_prompt: str, n: int, patches) -> Conditioning:
        if negative_prompt or not self.force_zeros_for_empty_prompt:
            return wb.conditioning([negative_prompt] * n, patches=patches)
        like = self.dummy_conditioning(wb, wb.max_length)
        return Conditioning(like.states.expand(n, -1, -1), like.pooled.expand(n, -1), self.time_ids(wb, n).to(wb.dtype))

    def unet_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        if cond.pooled is None or cond.time_ids is None:
            raise ValueError("an SDXL UNet needs a Conditioning with pooled text embeddings and time ids")
        return {"encoder_hidden_states": cond.states,
                "added_cond_kwargs": {"text_embeds": cond.pooled, "time_ids": cond.time_ids}}

    def pooled_width(self, wb) -> int:
        c = wb.unet.config
        return int(c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim)

    def dummy_conditioning(self, wb, tokens: int = 2) -> Conditioning:
        base = super().dummy_conditioning(wb, tokens)
        pooled = torch.zeros(1, self.pooled_width(wb), device=wb.device, dtype=wb.dtype)
        return Conditioning(base.states, pooled, self.time_ids(wb, 1).to(wb.dtype))

    # ------------------------------------------------------------------ export
    def pipeline(self, wb):
        from diffusers import StableDiffusionXLPipeline

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return StableDiffusionXLPipeline(
                vae=wb.vae, text_encoder=wb.text_encoder, text_encoder_2=wb.text_encoders["text2"],
                tokenizer=wb.tokenizer, tokenizer_2=wb.tokenizers["text2"], unet=wb.unet,
                scheduler=copy.deepcopy(wb.scheduler),
                force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, add_watermarker=False)
