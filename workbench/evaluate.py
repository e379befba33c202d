"""Measure an edit: scorer rates of the edited concepts, their aliases and held-out concepts, before and
after, on the same prompts and seeds (efficacy, generality, specificity)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .delta import WeightDelta
from .files import atomic_write
from .model import Workbench

ConceptScorer = Callable[[str], Callable[[torch.Tensor], torch.Tensor]]  # concept -> images -> P(concept)


@dataclass
class ConceptRate:
    group: str  # "edited", "alias", "holdout", "unrelated"
    concept: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before

    @property
    def relative_drop(self) -> float:
        return (self.before - self.after) / self.before if self.before > 0 else float("nan")


@dataclass
class EvalReport:
    rates: list[ConceptRate]
    samples: int
    settings: dict = field(default_factory=dict)

    def group(self, name: str) -> list[ConceptRate]:
        return [r for r in self.rates if r.group == name]

    @property
    def summary(self) -> dict[str, float]:
        def mean(xs):
            return float(np.mean(xs)) if xs else float("nan")

        edited, alias, hold = self.group("edited"), self.group("alias"), self.group("holdout")
        return {
            "efficacy_mean_relative_drop": mean([r.relative_drop for r in edited]),
            "efficacy_min_relative_drop": float(min((r.relative_drop for r in edited), default=float("nan"))),
            "generality_mean_relative_drop": mean([r.relative_drop for r in alias]),
            "specificity_max_abs_change": float(max((abs(r.change) for r in hold), default=float("nan"))),
            "specificity_mean_abs_change": mean([abs(r.change) for r in hold]),
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary, "samples": self.samples, "settings": self.settings,
                "rates": [{**asdict(r), "change": r.change, "relative_drop": r.relative_drop} for r in self.rates]}

    def save_json(self, path: str | os.PathLike) -> Path:
        return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(self.to_dict(), indent=2)))

    def markdown(self) -> str:
        lines = ["| group | concept | before | after | change |", "|---|---|---|---|---|"]
        lines += [f"| {r.group} | {r.concept} | {r.before:.1%} | {r.after:.1%} | {r.change:+.1%} |" for r in self.rates]
        lines += ["", "| summary | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in self.summary.items()]
        return "\n".join(lines)


def rates(wb: Workbench, concepts: Sequence[str], prompt_fn: Callable[[str, int], str], scorer: ConceptScorer,
          samples: int, seed: int = 0, threshold: float = 0.5, batch_size: int = 128) -> list[float]:
    """For each concept, the share of ``samples`` images (prompt i uses seed ``seed + i``) whose scorer
    probability for the concept exceeds ``threshold``."""
    prompts = [prompt_fn(c, i) for c in concepts for i in range(samples)]
    seeds = [seed + i for _ in concepts for i in range(samples)]
    images = wb.sample(prompts, seeds, batch_size=batch_size)
    out = []
    for j, c in enumerate(concepts):
        p = scorer(c)(images[j * samples:(j + 1) * samples])
        out.append(float((p > threshold).float().mean()))
    return out


def evaluate(wb: Workbench, delta: WeightDelta, concepts: Sequence[str], *, holdouts: Sequence[str] = (),
             aliases: Sequence[str] = (), unrelated: Sequence[str] = (), samples: int = 50, seed: int = 0,
             prompt_fn: Callable[[str, int], str] | None = None, scorer: ConceptScorer | None = None
             ) -> EvalReport:
    """Rates before and after ``delta`` for each group, same prompts and seeds. Toy-world defaults for
    ``prompt_fn`` and ``scorer`` when the model is the toy world."""
    if not concepts:
        raise ValueError("evaluate needs at least one edited concept")
    if prompt_fn is None or scorer is None:
        from .toy.check import concept_prompt, concept_scorer

        prompt_fn, scorer = prompt_fn or concept_prompt, scorer or concept_scorer
    delta.check_base(wb)
    groups = [("edited", list(concepts)), ("alias", list(aliases)), ("holdout", list(holdouts)),
              ("unrelated", list(unrelated))]
    names = [c for _, cs in groups for c in cs]
    before = rates(wb, names, prompt_fn, scorer, samples, seed)
    with delta.applied(wb):
        after = rates(wb, names, prompt_fn, scorer, samples, seed)
    out, i = [], 0
    for group, cs in groups:
        for c in cs:
            out.append(ConceptRate(group, c, before[i], after[i]))
            i += 1
    return EvalReport(out, samples, {"seed": seed, "method": delta.metadata.get("method"), "model": wb.name})
