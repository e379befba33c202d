"""One interface for every concept scorer, and the ``--scorer`` spec that names one.

A :class:`Scorer` is a concept scorer (``scorer(concept) -> images -> (B,) probabilities``, the
:data:`~workbench.world.ConceptScorer` that evaluation and faithful tracing take) with a name and a batch
size. ``scorer(concept)`` checks the concept at once, so a concept the scorer cannot read fails before any
image is generated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..world import ImageScorer, World

SCORER_SPECS = ("toy", "toy-clip", "clip:PATH[:contrast,...]", "nudenet[:THRESHOLD[:CLASS,...]]",
                "classifier:PATH[:LABELS_FILE]")


@dataclass(frozen=True)
class Scorer:
    """``reads(concept)`` returns the raw ``images -> (B,) probabilities`` function or raises ValueError;
    calling the scorer batches it (``batch_size`` images at a time) and checks what comes back."""

    name: str
    reads: Callable[[str], ImageScorer]
    batch_size: int = 64

    def __call__(self, concept: str) -> ImageScorer:
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"scorer {self.name}: expected a non-empty concept, got {concept!r}")
        fn = self.reads(concept)

        def score(images: torch.Tensor) -> torch.Tensor:
            if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
                got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
                raise ValueError(f"scorer {self.name}: expected images (B, 3, H, W) in [0, 1], got {got}")
            out = [torch.as_tensor(fn(images[i:i + self.batch_size])).float().flatten().cpu()
                   for i in range(0, len(images), self.batch_size)]
            scores = torch.cat(out) if out else torch.zeros(0)
            if len(scores) != len(images) or not torch.isfinite(scores).all():
                raise ValueError(f"scorer {self.name} returned {len(scores)} scores for {len(images)} images "
                                 f"(or non-finite ones) for {concept!r}; no number is reported from it")
            return scores

        return score


def load_scorer(spec: str, *, world: World | None = None, device: str | torch.device = "cpu",
                batch_size: int = 64) -> Scorer:
    """The scorer a spec names (:data:`SCORER_SPECS`). ``toy`` and ``toy-clip`` are the model's world's own
    scorers (the toy worlds: the classifier and the shipped toy CLIP); every other kind loads from a local
    path. A bad spec or path is a one-line ValueError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"scorer: expected one of {', '.join(SCORER_SPECS)}, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if kind in ("toy", "toy-clip"):
        if rest:
            raise ValueError(f"scorer {spec!r}: {kind!r} takes no arguments")
        if world is None or kind not in world.scorers:
            raise ValueError(f"scorer {spec!r}: this model has no world scorer {kind!r} (the toy worlds have); "
                             f"name a local one: {', '.join(SCORER_SPECS[2:])}")
        return Scorer(spec, world.scorers[kind](), batch_size)
    if kind == "clip":
        from .clip import clip_scorer

        path, _, contrast = rest.partition(":")
        texts = [t.strip() for t in contrast.split(",") if t.strip()] if contrast else None
        return Scorer(spec, clip_scorer(_path(spec, path), contrast=texts, device=device), batch_size)
    if kind == "classifier":
        from .classifier import classifier_scorer

        path, _, labels = rest.partition(":")
        labels_file = _path(spec, labels) if labels else None
        return Scorer(spec, classifier_scorer(_path(spec, path), labels_file=labels_file, device=device),
                      batch_size)
    if kind == "nudenet":
        from .nudenet import nudenet_scorer

        threshold, _, classes = rest.partition(":")
        try:
            value = float(threshold) if threshold else None
        except ValueError:
            raise ValueError(f"scorer {spec!r}: the threshold must be a number in (0, 1), got {threshold!r}") from None
        names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        return Scorer(spec, nudenet_scorer(threshold=value, classes=names), batch_size)
    raise ValueError(f"unknown scorer {spec!r}: expected one of {', '.join(SCORER_SPECS)}")


def _path(spec: str, path: str) -> Path:
    if not path:
        raise ValueError(f"scorer {spec!r}: missing the local path (e.g. clip:/models/clip-vit-large-patch14)")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"scorer {spec!r}: {path!r} does not exist (scorers load only from local files)")
    return p
