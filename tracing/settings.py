"""TraceSettings: what a text-encoder trace and a UNet trace share, checked once, with the only defaults.

The part-specific arguments (text: kind, window, tokens; UNet: layers, windows) and the scorer (a callable,
not data) stay arguments of the trace functions. A result keeps the settings it ran with, every
model-dependent default filled in, so ``settings=result.settings`` repeats a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from workbench import Workbench
from workbench.checks import finite, shown, whole

from .checks import integer, positive
from .corrupt import embedding_std
from .metrics import METRICS

# (noise, timestep) draws of the proxy metric when ``draws`` is None: a UNet trace takes them per step
# window, so it needs fewer per window for the same cost.
DEFAULT_DRAWS = {"text": 3, "unet": 2}


@dataclass(frozen=True)
class TraceSettings:
    """How a trace corrupts, samples and measures; ``None`` means the default named beside the field."""

    metric: str = "proxy"  # proxy, text (text-encoder traces only) or faithful (needs a scorer)
    samples: int = 10  # noise samples of the corruption
    noise: float = 3.0  # noise scale, × ``std``
    std: float | None = None  # the embeddings' std the noise is scaled by; None: measured on the model
    seed: int = 0
    draws: int | None = None  # proxy (noise, timestep) draws (per step window); None: DEFAULT_DRAWS of the part
    steps: int | None = None  # denoising steps; None: the model's default
    guidance: float | None = None  # classifier-free guidance; None: the model's default
    batch_size: int | None = None  # rows per forward; None: what memory allows (workbench.memory)
    progress: bool = True  # False silences every bar

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {shown(self.metric)}; expected one of {', '.join(METRICS)}")
        whole("samples", self.samples)
        positive("noise", self.noise)
        if self.std is not None:
            positive("std", self.std, when_given=True)
        integer("seed", self.seed)
        for name in ("draws", "steps", "batch_size"):
            if getattr(self, name) is not None:
                whole(name, getattr(self, name))
        if self.guidance is not None:
            finite("guidance", self.guidance)
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False, got {shown(self.progress)}")


def resolve(settings: TraceSettings | None, wb: Workbench, part: str) -> TraceSettings:
    """``settings`` (the defaults when None) with std, draws, steps and guidance filled in for ``wb``: what the
    trace of ``part`` runs with and records."""
    if settings is None:
        settings = TraceSettings()
    elif not isinstance(settings, TraceSettings):
        raise ValueError(f"settings must be a TraceSettings, got {type(settings).__name__}")
    s = settings
    return replace(s, std=embedding_std(wb) if s.std is None else float(s.std),
                   draws=DEFAULT_DRAWS[part] if s.draws is None else s.draws,
                   steps=int(wb.defaults["steps"]) if s.steps is None else s.steps,
                   guidance=float(wb.defaults["guidance"]) if s.guidance is None else s.guidance)
