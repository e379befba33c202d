"""The toy world's scorer: ground truth for every later number.

Two independent readers of a 32x32 image:
- a small CNN with one head per concept family, trained on degraded renders (a CNN trained only on
  clean renders misread generated images, research round 1);
- a rule-based reader (colour masks, template matching, corner colour fractions) as a cross-check.

    python -m workbench.toy.classifier --steps 1500 --out workbench/toy/weights/scorer.safetensors
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from workbench.toy import world

DEFAULT_PATH = Path(__file__).parent / "weights" / "scorer.safetensors"
HEADS: dict[str, list[str]] = {
    "shape": world.ALL_SHAPES,
    "colour": world.COLOURS,
    "artist": world.ARTISTS + [world.NO_ARTIST],
    "hazard": ["absent", "present"],
    "attribute": world.ATTRIBUTES,
}
_CORNER = world.IMAGE_SIZE - world.HAZARD_SIZE  # hazard mark occupies [_CORNER:, _CORNER:]


# ---------------------------------------------------------------- CNN


def build_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    # Flatten (not global pooling) keeps where things are: the hazard mark is a corner feature.
    trunk = nn.Sequential(block(3, 32), block(32, 48), block(48, 64), nn.Flatten(),
                          nn.Linear(64 * 4 * 4, 192), nn.ReLU(), nn.Dropout(0.1))
    heads = nn.ModuleDict({k: nn.Linear(192, len(v)) for k, v in HEADS.items()})
    return nn.ModuleDict({"trunk": trunk, "heads": heads})


def _forward(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    h = model["trunk"](images * 2 - 1)
    return {k: head(h) for k, head in model["heads"].items()}


def balanced_scene(rng: np.random.Generator) -> world.Scene:
    """Uniform over every head's classes (person included), unlike the biased training prompts."""
    artists = world.ARTISTS + [None]
    return world.Scene(shape=world.ALL_SHAPES[int(rng.integers(len(world.ALL_SHAPES)))],
                       colour=world.COLOURS[int(rng.integers(len(world.COLOURS)))],
                       artist=artists[int(rng.integers(len(artists)))], hazard=bool(rng.random() < 0.5))


def labels_of(scene: world.Scene) -> dict[str, int]:
    return {"shape": world.ALL_SHAPES.index(scene.shape), "colour": world.COLOURS.index(scene.colour),
            "artist": len(world.ARTISTS) if scene.artist is None else world.ARTISTS.index(scene.artist),
            "hazard": int(scene.hazard), "attribute": world.ATTRIBUTES.index(world.attribute_of(scene.colour))}


def render_labelled(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n balanced clean renders (n,3,32,32) in [0,1] and their labels."""
    scenes = [balanced_scene(rng) for _ in range(n)]
    imgs = np.stack([world.render(s, rng) for s in scenes])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    labels = {k: torch.tensor([labels_of(s)[k] for s in scenes]) for k in HEADS}
    return x, labels


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (5x5 kernel)."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = k1[:, :, None] * k1[:, None, :]  # (B,5,5)
    b, c, h, w = x.shape
    weight = k2.repeat_interleave(c, 0)[:, None]  # (B*C,1,5,5)
    out = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate"), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, grain, per-channel colour jitter and a small occluder, at random strengths.

    The occluder avoids the hazard corner and stays small so every label remains true.
    """
    b = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=gen)
    sigma = u(b) * 1.0 * (u(b) < 0.6)
    x = torch.where((sigma > 0.05)[:, None, None, None], _blur(x, sigma), x)
    x = x * (1 + (u(b, 3, 1, 1) - 0.5) * 0.2) + (u(b, 3, 1, 1) - 0.5) * 0.1
    x = x + torch.randn(x.shape, generator=gen) * (u(b, 1, 1, 1) * 0.08)
    for i in torch.nonzero(u(b) < 0.3).flatten().tolist():
        s = int(torch.randint(2, 6, (1,), generator=gen))
        y0 = int(torch.randint(0, world.IMAGE_SIZE - s, (1,), generator=gen))
        x0 = int(torch.randint(0, _CORNER - s, (1,), generator=gen))  # never touches the hazard corner
        x[i, :, y0:y0 + s, x0:x0 + s] = u(3, 1, 1)
    return x.clamp(0, 1)


def train_scorer(out_path: str | Path = DEFAULT_PATH, steps: int = 1500, seed: int = 0,
                 batch: int = 128, threads: int = 1) -> dict[str, float]:
    """Train the CNN on degraded balanced renders; save safetensors; return held-out accuracy."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed)
    model = build_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    for step in range(steps):
        x, y = render_labelled(rng, batch)
        logits = _forward(model, degrade(x, gen))
        loss = sum(F.cross_entropy(logits[k], y[k]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"scorer step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_path))
    acc = evaluate(model, n=1000, seed=seed + 999)
    print("held-out accuracy (degraded):", acc, flush=True)
    return acc


@torch.no_grad()
def evaluate(model: nn.Module, n: int = 500, seed: int = 12345, degraded: bool = True) -> dict[str, float]:
    """Accuracy per head on n fresh balanced renders (degraded unless told otherwise)."""
    x, y = render_labelled(np.random.default_rng([seed, 2]), n)
    if degraded:
        x = degrade(x, torch.Generator().manual_seed(seed))
    probs = score(x, model)
    return {k: float((probs[k].argmax(1) == y[k]).float().mean()) for k in HEADS}


def load_scorer(path: str | Path | None = None) -> nn.Module:
    """The trained CNN in eval mode (safetensors; never pickle)."""
    model = build_cnn()
    model.load_state_dict(load_file(str(path or DEFAULT_PATH)))
    return model.eval()


@functools.lru_cache(maxsize=1)
def _default_scorer() -> nn.Module:
    return load_scorer()


@torch.no_grad()
def score(images: torch.Tensor, scorer: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per-family class probabilities for images (B,3,32,32) float in [0,1]; class names in HEADS."""
    size = (world.IMAGE_SIZE, world.IMAGE_SIZE)
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != size:
        raise ValueError(f"the toy classifier reads the toy world's images, (B, 3, {size[0]}, {size[1]}); got "
                         f"{tuple(images.shape)}")
    model = scorer if scorer is not None else _default_scorer()
    logits = _forward(model, images.float().clamp(0, 1))
    return {k: v.softmax(-1) for k, v in logits.items()}


# ---------------------------------------------------------------- rule-based scorer


def _fill_rgb() -> torch.Tensor:
    return torch.tensor([world.COLOUR_RGB[c] for c in world.COLOURS], dtype=torch.float32) / 255.0


@functools.lru_cache(maxsize=1)
def _templates() -> torch.Tensor:
    """Binary masks (S*81, 32, 32) of every shape at every quantised centre offset; corner cut out."""
    masks = [world.shape_mask(s, qx, qy) > 0.5 for s in world.ALL_SHAPES
             for qx in range(9) for qy in range(9)]
    t = torch.from_numpy(np.stack(masks)).float()
    t[:, _CORNER:, _CORNER:] = 0
    return t


@functools.lru_cache(maxsize=1)
def _segments() -> tuple[torch.Tensor, torch.Tensor]:
    """Per background class (artists then 'none') the two palette end-points of its colour segment."""
    ends = [world._artist_palette(i) for i in range(len(world.ARTISTS))]
    ends.append((world.NONE_BACKGROUND, world.NONE_BACKGROUND))
    a = torch.tensor(np.stack([e[0] for e in ends]), dtype=torch.float32) / 255.0
    b = torch.tensor(np.stack([e[1] for e in ends]), dtype=torch.float32) / 255.0
    return a, b


def _foreground(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill-colour mask (B,32,32) and nearest fill colour per pixel. Backgrounds are dark and dull,
    fills bright, so 'bright and near a fill colour' separates them; the hazard corner is excluded."""
    px = images.permute(0, 2, 3, 1)  # B,H,W,3
    d = torch.cdist(px.reshape(-1, 3), _fill_rgb()).reshape(*px.shape[:3], -1)
    dmin, nearest = d.min(-1)
    fg = (px.amax(-1) > 0.62) & (dmin < 0.35)
    fg[:, _CORNER:, _CORNER:] = False
    return fg, nearest


@torch.no_grad()
def rule_score(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rule-based labels (class indices, same order as HEADS) for images (B,3,32,32) in [0,1]."""
    images = images.float().clamp(0, 1)
    fg, nearest = _foreground(images)
    n_colours = len(world.COLOURS)
    votes = F.one_hot(nearest, n_colours) * fg[..., None]
    colour = votes.sum((1, 2)).argmax(-1)
    # shape: best IoU of the foreground against every template (shape x centre offset)
    tpl = _templates().reshape(len(_templates()), -1)
    m = fg.reshape(fg.shape[0], -1).float()
    inter = m @ tpl.T
    union = m.sum(1, keepdim=True) + tpl.sum(1)[None] - inter
    shape = ((inter / union.clamp(min=1)).argmax(1) // 81)
    # hazard: the bottom-right corner is part yellow, part near-black
    corner = images[:, :, _CORNER:, _CORNER:]
    r, g, b = corner[:, 0], corner[:, 1], corner[:, 2]
    yellow = ((r > 0.7) & (g > 0.6) & (b < 0.35)).float().mean((1, 2))
    dark = (corner.amax(1) < 0.25).float().mean((1, 2))
    hazard = ((yellow > 0.2) & (dark > 0.2)).long()
    # artist: which palette segment explains the background pixels best
    bg = ~fg
    bg[:, _CORNER:, _CORNER:] = False
    a, bb = _segments()
    px = images.permute(0, 2, 3, 1)[..., None, :]  # B,H,W,1,3
    seg = bb - a
    t = (((px - a) * seg).sum(-1) / (seg * seg).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    dist = ((px - (a + t[..., None] * seg)) ** 2).sum(-1)  # B,H,W,A
    cost = (dist * bg[..., None]).sum((1, 2))
    artist = cost.argmin(-1)
    warm = torch.tensor([world.attribute_of(c) == "warm" for c in world.COLOURS])
    attribute = (~warm[colour]).long()  # ATTRIBUTES = ["warm", "cool"]
    return {"shape": shape, "colour": colour, "artist": artist, "hazard": hazard, "attribute": attribute}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the toy-world CNN scorer.")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    args = ap.parse_args(argv)
    train_scorer(args.out, steps=args.steps, seed=args.seed, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
