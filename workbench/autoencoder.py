"""Pluggable image <-> latent maps: a diffusers AutoencoderKL, an exact pixel-unshuffle, or pixel space.

Every autoencoder maps images in [-1, 1], shape (B, 3, H, W), to UNet latents and back.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Autoencoder(Protocol):
    factor: int  # image side / latent side

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class PixelSpace:
    """No autoencoder: the UNet works on pixels directly."""

    factor = 1
    spec = {"type": "pixels"}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class PixelUnshuffle:
    """A fixed, exact, invertible map: each ``factor``×``factor`` pixel patch becomes channels.

    The toy world uses it instead of a learned VAE, so latents are lossless and cost nothing to train.
    """

    def __init__(self, factor: int = 4):
        self.factor = factor
        self.spec = {"type": "pixel_unshuffle", "factor": factor}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.factor)


class KLAutoencoder:
    """A diffusers ``AutoencoderKL``, scaled by its ``scaling_factor`` as Stable Diffusion does."""

    def __init__(self, vae):
        self.vae = vae
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.spec = {"type": "autoencoder_kl"}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode(images).latent_dist.mean * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.decode(latents / self.scale).sample


def from_spec(spec: dict | None, vae=None) -> Autoencoder:
    """Build the autoencoder a model folder's ``workbench.json`` names (or wrap a loaded VAE)."""
    if vae is not None:
        return KLAutoencoder(vae)
    kind = (spec or {"type": "pixels"}).get("type")
    if kind == "pixel_unshuffle":
        return PixelUnshuffle(int(spec.get("factor", 4)))
    if kind == "pixels":
        return PixelSpace()
    raise ValueError(f"unknown autoencoder type {kind!r}; expected 'pixel_unshuffle', 'pixels' or a vae/ folder")
