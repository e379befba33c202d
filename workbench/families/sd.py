"""SD-1.x/2.x: one CLIP text encoder whose last hidden states are the cross-attention context of a
``UNet2DConditionModel``. The base adapter: other UNet families override what differs."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..conditioning import Conditioning


@dataclass(frozen=True)
class TextPart:
    """One text encoder: its layer-name prefix, its diffusers subfolders and its transformers class."""

    part: str  # "text", "text2": layer names start with it
    encoder: str  # pipeline component / subfolder, e.g. "text_encoder_2"
    tokenizer: str  # e.g. "tokenizer_2"
    model_class: str  # e.g. "CLIPTextModelWithProjection"


class StableDiffusion:
    name = "sd"
    pipelines: tuple[str, ...] = ("StableDiffusionPipeline",)
    text: tuple[TextPart, ...] = (TextPart("text", "text_encoder", "tokenizer", "CLIPTextModel"),)
    # Projections that read the prompt (UCE's targets): layer kind -> what they read from a Conditioning
    text_projections: Mapping[str, str] = {"to_k": "states", "to_v": "states"}

    # ------------------------------------------------------------------ recognising and configuring
    @classmethod
    def looks_like(cls, folder: Path) -> bool:
        return all((folder / p.encoder).is_dir() for p in cls.text)

    @classmethod
    def from_index(cls, index: Mapping[str, Any]) -> StableDiffusion:
        """The adapter for a folder whose ``model_index.json`` holds ``index`` (pipeline settings)."""
        return cls()

    def index_settings(self) -> dict[str, Any]:
        """The pipeline settings this adapter was built with (written back on export)."""
        return {}

    @property
    def required(self) -> tuple[str, ...]:
        return ("unet", *(s for p in self.text for s in (p.encoder, p.tokenizer)), "scheduler")

    def single_file_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the pipeline's ``from_single_file``."""
        return {"safety_checker": None}

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipelines[0])

    # ------------------------------------------------------------------ prompts -> conditioning
    def part_ids(self, wb, part: str, ids: torch.Tensor) -> torch.Tensor:
        """The token ids encoder ``part`` reads, from the primary tokenizer's ``ids``."""
        return ids

    def text_kwargs(self, part: str) -> dict[str, Any]:
        """Keyword arguments of encoder ``part``'s forward."""
        return {}

    def conditioning(self, wb, outputs: Mapping[str, Any]) -> Conditioning:
        """What the denoiser reads, from each text part's forward output."""
        return Conditioning(outputs["text"].last_hidden_state)

    def unconditional(self, wb, negative_prompt: str, n: int, patches) -> Conditioning:
        """The classifier-free-guidance rows: the encoded negative prompt."""
        return wb.conditioning([negative_prompt] * n, patches=patches)

    def unet_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        return {"encoder_hidden_states": cond.states}

    def dummy_conditioning(self, wb, tokens: int = 2) -> Conditioning:
        """An all-zero one-row conditioning of ``tokens`` tokens (for probing the UNet's shapes)."""
        c = wb.unet.config
        return Conditioning(torch.zeros(1, tokens, c.cross_attention_dim, device=wb.device, dtype=wb.dtype))

    # ------------------------------------------------------------------ export
    def pipeline(self, wb):
        """A diffusers pipeline around the wrapper's modules (for ``save_pretrained``)."""
        from diffusers import StableDiffusionPipeline

        # The pipeline "fixes" clip_sample/steps_offset on the scheduler it is given: give it a copy.
        with warnings.catch_warnings():  # its deprecation notes concern that copy, not the export
            warnings.simplefilter("ignore", FutureWarning)
            return StableDiffusionPipeline(vae=wb.vae, text_encoder=wb.text_encoder, tokenizer=wb.tokenizer,
                                           unet=wb.unet, scheduler=copy.deepcopy(wb.scheduler),
                                           safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
