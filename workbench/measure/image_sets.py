"""Image-set metrics: FID and KID on features of a local extractor, LPIPS from a local weights file.

Features (``--features``): ``clip:PATH`` (a local CLIP's image embeddings: "CLIP-FID", Kynkäänniemi et al.
2023), ``toy-clip`` (the toy world's CLIP) or ``inception:FILE`` (Inception-v3 as pytorch-fid/torch-fidelity
use it, from a local weights file; needs the torch-fidelity package, which needs torchvision). Numbers from
different extractors are not comparable: every result records its extractor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..world import World

FEATURE_SPECS = ("clip:PATH", "toy-clip", "inception:FILE")
Features = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> (B, D)


def _check(a: torch.Tensor, b: torch.Tensor, what: str, minimum: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{what}: expected two (N, D) feature sets of the same D, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if min(len(a), len(b)) < minimum:
        raise ValueError(f"{what}: needs at least {minimum} images per set, got {len(a)} and {len(b)}")
    return a.double(), b.double()


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (unbiased covariances):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), the trace from the eigenvalues of S_a S_b."""
    a, b = _check(a, b, "fid")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    root_trace = torch.linalg.eigvals(s_a @ s_b).sqrt().real.sum()
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * root_trace)


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / D + 1)^3, averaged over ``subsets`` random subsets of ``subset_size`` (capped at the
    smaller set); returns (mean, std over subsets)."""
    a, b = _check(a, b, "kid")
    m = min(subset_size, len(a), len(b))
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        values.append(_mmd2(x, y))
    v = torch.stack(values)
    return float(v.mean()), float(v.std(unbiased=False))


def _mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d, m = x.shape[1], len(x)

    def k(p, q):
        return (p @ q.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda g: (g.sum() - g.diagonal().sum()) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def feature_extractor(spec: str, *, world: World | None = None, device: str | torch.device = "cpu") -> Features:
    """The features a spec names (:data:`FEATURE_SPECS`)."""
    kind, _, rest = (spec or "").partition(":")
    if kind == "toy-clip":
        if world is None or world.clip_folder is None:
            raise ValueError("features 'toy-clip': this model has no toy CLIP (the toy worlds have); use clip:PATH")
        kind, rest = "clip", str(world.clip_folder)
    if kind == "clip":
        from .clip import load_clip

        if not rest or not Path(rest).exists():
            raise ValueError(f"features {spec!r}: the CLIP folder {rest!r} does not exist")
        return load_clip(rest, str(device)).image_embeds
    if kind == "inception":
        return _inception(rest, device)
    raise ValueError(f"unknown features {spec!r}: expected one of {', '.join(FEATURE_SPECS)}")


def _inception(path: str, device) -> Features:
    if not path or not Path(path).is_file():
        raise ValueError(f"features 'inception:{path}': give the local Inception weights file "
                         "(pt_inception-2015-12-05-6726825d.pth, as pytorch-fid and torch-fidelity use)")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ValueError("features 'inception:FILE' need the torch-fidelity package (and torchvision); install "
                         "them, or use clip:PATH features") from None
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    net = net.to(device).eval()

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        x = (images.clamp(0, 1) * 255).round().to(torch.uint8).to(device)
        return net(x)[0].float().cpu()

    return features


# ---------------------------------------------------------------- LPIPS


_ALEX = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]


class Lpips(nn.Module):
    """LPIPS (Zhang et al. 2018), AlexNet variant v0.1, built here and loaded from a local safetensors file
    whose tensor names are the ``lpips`` package's (``net.slice1.0.weight`` ... ``lin4.model.1.weight``,
    ``scaling_layer.shift/scale``). Convert once where torchvision exists:
    ``save_file(lpips.LPIPS(net="alex").state_dict(), "lpips_alex.safetensors")``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in _ALEX)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in _ALEX)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            out.append(h)
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances between images in [0, 1] (the network reads [-1, 1])."""
        total = torch.zeros(len(a))
        for lin, fa, fb in zip(self.lins, self.features(a * 2 - 1), self.features(b * 2 - 1), strict=True):
            na = fa / (fa.square().sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total += lin((na - nb).square()).mean((1, 2, 3)).cpu()
        return total


_LPIPS_NAMES = {"scaling_layer.shift": "shift", "scaling_layer.scale": "scale",
                **{f"net.slice{s}.{j}.{p}": f"convs.{i}.{p}" for i, (s, j) in
                   enumerate([(1, 0), (2, 3), (3, 6), (4, 8), (5, 10)]) for p in ("weight", "bias")},
                **{f"lin{i}.model.1.weight": f"lins.{i}.weight" for i in range(5)}}


def load_lpips(path: str | Path) -> Lpips:
    """An :class:`Lpips` from a safetensors file with the ``lpips`` package's names (refuses anything else)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"lpips: {str(path)!r} is not a file (give the LPIPS AlexNet weights as safetensors)")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"lpips: {str(path)!r} is not a safetensors file ({err})") from None
    missing = sorted(set(_LPIPS_NAMES) - set(state))
    if missing:
        raise ValueError(f"lpips: {str(path)!r} lacks {missing[0]} (and {len(missing) - 1} more); expected the "
                         "lpips package's AlexNet state dict")
    model = Lpips()
    try:
        model.load_state_dict({ours: state[theirs] for theirs, ours in _LPIPS_NAMES.items()})
    except RuntimeError as err:
        raise ValueError(f"lpips: {str(path)!r} has tensors of the wrong shape: {str(err).splitlines()[-1]}") \
            from None
    return model.eval()
