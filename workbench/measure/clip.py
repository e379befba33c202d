"""CLIP from a local transformers folder: CLIP score against a text, zero-shot probabilities against a
contrast set (the "CLIP accuracy" of UCE and ESD), and image features for set metrics.

Images go through the folder's own image processor as uint8, exactly as a saved PNG would, so a score here
equals a plain ``CLIPModel`` call on the same pictures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ..images import to_uint8
from ..world import ImageScorer
from .folders import check_weights, load_parts

DEFAULT_CONTRAST = ("a photo",)  # concept vs a plain photo when no contrast set is given


def _check_folder(folder: Path) -> None:
    config = folder / "config.json"
    if not folder.is_dir() or not config.is_file():
        raise ValueError(f"clip scorer: {str(folder)!r} is not a CLIP model folder (expected a folder with "
                         "config.json, model.safetensors, the tokenizer and preprocessor_config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"clip scorer: {str(config)!r} is not a readable JSON config") from None
    if model_type != "clip":
        raise ValueError(f"clip scorer: {str(folder)!r} holds a {model_type!r} model, expected model_type 'clip'")
    check_weights("clip scorer", folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise ValueError(f"clip scorer: {str(folder)!r} has no preprocessor_config.json (the image processor)")


class Clip:
    """A local CLIP model with its tokenizer and image processor, in eval mode on ``device``."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.folder = Path(folder)
        _check_folder(self.folder)
        model, self.tokenizer, self.processor = load_parts(
            "clip scorer", self.folder, lambda f: CLIPModel.from_pretrained(f, use_safetensors=True),
            AutoTokenizer.from_pretrained, AutoImageProcessor.from_pretrained)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self._last: tuple | None = None  # (key, images, embeds) of the last image batch

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> the processor's pixel values (via uint8 pictures)."""
        arrays = list(to_uint8(images))
        return self.processor(images=arrays, return_tensors="pt").pixel_values.to(self.device)

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm projected image embeddings (B, D). The last batch's are kept: ranking many descriptions
        (``workbench diff``) scores the same images once per description. The key holds the tensor itself, so
        its memory cannot be reused by another batch while cached, and its version, so an in-place change
        misses."""
        key = (images.data_ptr(), tuple(images.shape), images.stride(), images.dtype, images._version)
        if self._last is not None and self._last[0] == key:
            return self._last[2]
        out = self.model.get_image_features(pixel_values=self.pixels(images))
        embeds = F.normalize(out.pooler_output.float(), dim=-1)
        self._last = (key, images, embeds)
        return embeds

    def text_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids, refusing a text the tokenizer cannot read (unknown words, too long) by name."""
        enc = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=False,
                             return_tensors=None)
        unk = self.tokenizer.unk_token_id
        for text, ids in zip(texts, enc["input_ids"], strict=True):
            if len(ids) > self.max_length:
                raise ValueError(f"clip scorer: {text!r} is {len(ids)} tokens; this CLIP reads at most "
                                 f"{self.max_length}")
            if unk is not None and unk in ids and unk not in (self.tokenizer.pad_token_id,
                                                            self.tokenizer.eos_token_id):
                raise ValueError(f"clip scorer: {text!r} has words this CLIP's tokenizer does not know "
                                 f"({str(self.folder)!r})")
        return torch.tensor(enc["input_ids"], device=self.device)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings (T, D)."""
        out = self.model.get_text_features(input_ids=self.text_ids(texts))
        return F.normalize(out.pooler_output.float(), dim=-1)

    def clip_score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """CLIPScore (Hessel et al. 2021, as torchmetrics reports it): 100 * max(cos(image, text), 0), one
        text per image."""
        if len(texts) != len(images):
            raise ValueError(f"clip_score: {len(texts)} texts for {len(images)} images; give one per image")
        cos = (self.image_embeds(images) * self.text_embeds(texts)).sum(-1)
        return 100 * cos.clamp(min=0)

    @torch.no_grad()
    def zero_shot(self, images: torch.Tensor, texts: Sequence[str],
                  text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) probabilities: softmax over the texts of the model's scaled cosine similarities."""
        t = self.text_embeds(texts) if text_embeds is None else text_embeds
        scale = self.model.logit_scale.exp().float()
        return (scale * self.image_embeds(images) @ t.T).softmax(-1).cpu()


@lru_cache(maxsize=4)
def load_clip(folder: str | Path, device: str = "cpu") -> Clip:
    """A cached :class:`Clip` (a scorer is often asked for many concepts in one run)."""
    return Clip(folder, device)


def clip_scorer(folder: str | Path, contrast: Sequence[str] | None = None,
                device: str | torch.device = "cpu"):
    """concept -> images -> zero-shot probability of the concept's text against the contrast texts
    (default :data:`DEFAULT_CONTRAST`)."""
    clip = load_clip(str(folder), str(device))
    others = list(contrast) if contrast else list(DEFAULT_CONTRAST)

    def reads(concept: str) -> ImageScorer:
        if concept in others:
            raise ValueError(f"clip scorer: the concept {concept!r} is also in the contrast set {others}")
        texts = [concept, *others]
        embeds = clip.text_embeds(texts)  # checks the texts now, before any image is made
        return lambda images: clip.zero_shot(images, texts, embeds)[:, 0]

    return reads
