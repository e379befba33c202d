"""The SDXL-shaped toy world: the base world's data, grammar and scorer, with SDXL's conditioning topology.

Two text encoders read the same word-level tokens: ``text`` (a ``CLIPTextModel``, 5 layers) and ``text2`` (a
``CLIPTextModelWithProjection``, 4 layers). As in SDXL their penultimate hidden states, side by side, are the
256-wide cross-attention context, and ``text2``'s projected end-of-text state is the pooled embedding, which
enters the UNet with the size/crop time ids through the added time embedding (``addition_embed_type=
"text_time"``), bypassing cross-attention. Grown from the base world (:func:`grow`) and fine-tuned with
``workbench toy train --family xl``; the recipe and measurements are in ``workbench/toy/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import world

LAYERS = {"text": 5, "text2": 4}
TIME_DIM = 8  # features per time id (SDXL: 256)
POOLED = 128


def time_ids(n: int) -> torch.Tensor:
    """SDXL's (original size, crop top-left, target size) at the toy's 32×32."""
    side = float(world.IMAGE_SIZE)
    return torch.tensor([[side, side, 0.0, 0.0, side, side]]).expand(n, 6)


def build_text_encoders(tokenizer, hidden: int = 128) -> nn.ModuleDict:
    def cfg(layers: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                              num_hidden_layers=layers, num_attention_heads=4,
                              max_position_embeddings=tokenizer.model_max_length, projection_dim=POOLED,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)

    return nn.ModuleDict({"text": CLIPTextModel(cfg(LAYERS["text"])),
                          "text2": CLIPTextModelWithProjection(cfg(LAYERS["text2"]))})


def unet_config(base: dict) -> dict:
    """The base world's UNet config with SDXL's conditioning: a 2 × 128 context and the added embedding."""
    keep = {k: v for k, v in base.items() if not k.startswith("_")}
    return {**keep, "cross_attention_dim": 256, "addition_embed_type": "text_time",
            "addition_time_embed_dim": TIME_DIM, "projection_class_embeddings_input_dim": POOLED + 6 * TIME_DIM}


def condition(encoders: nn.ModuleDict, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(cross-attention states, added_cond_kwargs) for token ids, as the SDXL pipeline builds them."""
    first = encoders["text"](ids, output_hidden_states=True)
    second = encoders["text2"](ids, output_hidden_states=True)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    return states, {"text_embeds": second.text_embeds, "time_ids": time_ids(len(ids)).to(states)}


@torch.no_grad()
def grow(base_folder: Path, tokenizer, prompts: list[str]) -> tuple[nn.ModuleDict, UNet2DConditionModel]:
    """SDXL-topology models that start from the base world's weights.

    Both encoders copy the base encoder's layers (``text``'s extra last layer copies its layer 3; SDXL never
    reads ``text``'s last layer). The UNet reads ``text``'s half of the context with the base key/value
    weights, scaled by the final layer norm's gain over the states' mean spread (SDXL reads states before the
    final layer norm), and ``text2``'s half with zeros; the added embedding's output layer starts at zero, so
    the pooled path adds nothing until training moves it. ``prompts`` measure that spread."""
    from safetensors.torch import load_file

    base_te = CLIPTextModel.from_pretrained(base_folder / "text_encoder", local_files_only=True)
    base_unet_cfg = json.loads((base_folder / "unet" / "config.json").read_text())
    base_unet = load_file(str(base_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    encoders = build_text_encoders(tokenizer, base_te.config.hidden_size)
    source = base_te.state_dict()
    for part, encoder in encoders.items():
        prefix = "text_model." if part == "text2" else ""
        state = encoder.state_dict()
        for key in state:
            bare = key.removeprefix(prefix)
            if bare.startswith("encoder.layers."):
                i = int(bare.split(".")[2])
                bare = bare.replace(f"encoder.layers.{i}.", f"encoder.layers.{min(i, 3)}.", 1)
            if bare in source:
                state[key] = source[bare].clone()
            elif key == "text_projection.weight":
                state[key] = torch.eye(*state[key].shape)
        encoder.load_state_dict(state)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    pre_norm = base_te(ids, output_hidden_states=True).hidden_states[-1]
    spread = pre_norm.float().std(-1, unbiased=False).mean()
    gain = base_te.final_layer_norm.weight / spread
    unet = UNet2DConditionModel.from_config(unet_config(base_unet_cfg))
    state = unet.state_dict()
    for key, value in base_unet.items():
        if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            value = torch.cat([value * gain, torch.zeros_like(value)], dim=1)
        state[key] = value
    state["add_embedding.linear_2.weight"].zero_()
    state["add_embedding.linear_2.bias"].zero_()
    unet.load_state_dict(state)
    return encoders, unet
