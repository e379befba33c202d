"""What the workbench knows about a model's world, and the world scan's result type.

A :class:`World` says how to prompt and score a model's concepts; :func:`Workbench.toy` attaches the toy
world's, and a real model has none until the user names scorers (so an evaluation never falls back to the
toy world's vocabulary on a model that does not know it). The CLI and :func:`workbench.evaluate.evaluate`
read it; editors only take defaults from it (UCE's attribute scorer, EMCID's caption corpus), tracing never.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .files import write_text

ImageScorer = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> (B,) probabilities
ConceptScorer = Callable[[str], ImageScorer]  # concept -> its image scorer
PromptFn = Callable[[str, int], str]  # (concept, i) -> the i-th prompt for it
AttributeScorer = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]  # images -> {attribute: (B,) probs}


@dataclass(frozen=True)
class Description:
    """A candidate description of what changed between two image sets (``workbench diff``): ``text`` is what
    the scorer reads, ``name`` what the report shows, ``aliases`` other words for it, merged into this one."""

    text: str
    name: str = ""
    family: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"a description needs a non-empty text to score, got {self.text!r}")
        if not self.name:
            object.__setattr__(self, "name", self.text)


@dataclass(frozen=True)
class World:
    """How to prompt, score and scan the concepts of one model's world.

    ``scan(wb, delta, edited, samples=, seed=, batch_size=, progress=)`` rates every concept before and after
    an edit; ``scannable(names)`` refuses a name the scan cannot rate, before any image is made."""

    name: str
    concept_scorer: ConceptScorer
    concept_prompt: PromptFn
    paraphrase_prompt: PromptFn
    vocabulary: Callable[[], list[str]]
    preserve_captions: Callable[[], list[str]] | None = None  # a caption corpus (EMCID's preserve covariance)
    attribute_scorer: AttributeScorer | None = None
    scan: Callable[..., WorldScan] | None = None
    scannable: Callable[[Sequence[str]], object] | None = None
    # named concept scorers (``--scorer toy``, ``--scorer toy-clip``), each built on first use
    scorers: Mapping[str, Callable[[], ConceptScorer]] = field(default_factory=dict)
    clip_folder: Path | None = None  # the world's own CLIP (image features, the toy-clip scorer)
    # what ``workbench diff`` proposes: everything the world can draw, one description per concept
    descriptions: Callable[[], list[Description]] | None = None


@dataclass
class ScanRow:
    family: str
    concept: str
    n: int
    before: float
    after: float
    change_se: float  # paired over the same seeds
    edited: bool

    @property
    def change(self) -> float:
        return self.after - self.before

    @property
    def before_se(self) -> float:
        return math.sqrt(self.before * (1 - self.before) / self.n)

    @property
    def after_se(self) -> float:
        return math.sqrt(self.after * (1 - self.after) / self.n)


@dataclass
class WorldScan:
    rows: list[ScanRow]
    samples: int
    seed: int
    edited: list[str] = field(default_factory=list)

    def outside(self) -> list[ScanRow]:
        """Rows outside the edited set, largest absolute change first."""
        return sorted((r for r in self.rows if not r.edited), key=lambda r: -abs(r.change))

    @property
    def worst(self) -> ScanRow:
        return self.outside()[0]

    def row(self, concept: str) -> ScanRow:
        for r in self.rows:
            if r.concept == concept:
                return r
        raise KeyError(f"the scan has no row {concept!r}")

    def family_mean_abs_change(self) -> dict[str, float]:
        """Mean absolute change per family, outside the edited set."""
        changes: dict[str, list[float]] = {}
        for r in self.rows:  # families in the order the scan lists them
            if not r.edited:
                changes.setdefault(r.family, []).append(abs(r.change))
        return {fam: sum(c) / len(c) for fam, c in changes.items()}

    def to_dict(self) -> dict:
        worst = self.worst
        return {"samples": self.samples, "seed": self.seed, "edited": self.edited,
                "worst_outside": {"concept": worst.concept, "change": worst.change, "change_se": worst.change_se},
                "family_mean_abs_change": self.family_mean_abs_change(),
                "rows": [{**asdict(r), "change": r.change} for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> WorldScan:
        rows = [ScanRow(r["family"], r["concept"], r["n"], r["before"], r["after"], r["change_se"], r["edited"])
                for r in d["rows"]]
        return cls(rows, d["samples"], d["seed"], list(d["edited"]))

    def save_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2), overwrite=overwrite)

    def markdown(self, top: int = 10) -> str:
        """The edited rows, then the ``top`` largest changes outside the edited set, then per-family means."""
        def line(r: ScanRow) -> str:
            return (f"| {r.family} | {r.concept} | {r.n} | {r.before:.1%} ± {r.before_se:.1%} | "
                    f"{r.after:.1%} ± {r.after_se:.1%} | {100 * r.change:+.1f} ± {100 * r.change_se:.1f} |")

        head = ["| family | concept | images | before | after | change (points) |", "|---|---|---|---|---|---|"]
        edited = [r for r in self.rows if r.edited]
        lines = [f"World scan: {len(self.rows)} concepts, {self.samples}+ images each, seeds from {self.seed}; "
                 f"worst outside the edited set: {self.worst.concept} {100 * self.worst.change:+.1f} ± "
                 f"{100 * self.worst.change_se:.1f} points", ""]
        if edited:
            lines += ["Edited:", "", *head, *map(line, edited), ""]
        lines += [f"Largest {top} changes outside the edited set:", "", *head, *map(line, self.outside()[:top]), "",
                  "| family | mean abs change outside (points) |", "|---|---|"]
        lines += [f"| {fam} | {100 * v:.1f} |" for fam, v in self.family_mean_abs_change().items()]
        return "\n".join(lines)
