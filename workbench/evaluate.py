"""Measure an edit, before and after, on the same prompts and seeds.

- efficacy / generality / specificity: scorer rates of the edited concepts, their aliases and held-out
  concepts; paraphrases: the edited concepts in phrasings the edit never saw;
- robustness: a greedy adversarial prompt search against the edited model (after UnlearnDiffAtk), and the
  attack success rate of the prompt it finds on the original and the edited model;
- fidelity: pixel distance between the unedited and the edited model's images of held-out and unrelated
  prompts;
- output: JSON, a markdown table and a before/after image grid.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checks import finite, whole
from .delta import WeightDelta
from .files import write_text
from .images import grid, save_image
from .measure.diff import DiffResult, as_descriptions, check_readable, diff_images
from .model import Workbench
from .progress import bar
from .world import ConceptScorer, Description, PromptFn, WorldScan

ATTACK_SEED_OFFSET = 500_000  # search seeds are disjoint from the evaluation seeds, so the found prompt's
# rate on the evaluation seeds is a held-out number, not the one the search maximised


@dataclass
class ConceptRate:
    group: str  # "edited", "alias", "paraphrase", "holdout", "unrelated", "attack"
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
class Fidelity:
    """How far the edited model's images of one concept's prompts moved (images in [0, 1], same seeds)."""

    group: str
    concept: str
    mean_abs: float  # mean |after - before| over images, channels and pixels
    psnr: float  # dB against the unedited images; inf when they are identical


@dataclass
class AttackResult:
    """A greedy prompt search for one erased concept on the edited model (rates over the search seeds)."""

    concept: str
    start_prompt: str
    prompt: str  # the best prompt found
    start_rate: float
    rate: float  # >= start_rate: a candidate replaces the current prompt only if it scores higher
    tried: int  # prompts sampled, the start prompt included
    history: list[tuple[str, float]] = field(default_factory=list)  # accepted prompts in order, with rates


@dataclass
class EvalReport:
    rates: list[ConceptRate]
    samples: int
    settings: dict = field(default_factory=dict)
    fidelity: list[Fidelity] = field(default_factory=list)
    attacks: list[AttackResult] = field(default_factory=list)
    # what makes the numbers untrustworthy (blank or collapsed images): efficacy is then not reported
    flags: list[str] = field(default_factory=list)
    scan: WorldScan | None = None  # every concept of the world, before and after (``evaluate(scan=True)``)
    # what else changed on the held-out and unrelated prompts: every description ranked (``workbench diff``)
    leak: DiffResult | None = None
    # "group: concept" -> (before, after) uint8 (n, 3, H, W), the first few evaluation seeds; not saved to JSON
    images: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def group(self, name: str) -> list[ConceptRate]:
        return [r for r in self.rates if r.group == name]

    @property
    def summary(self) -> dict[str, float]:
        """Headline numbers; paraphrase, attack and fidelity keys only when those parts were run."""
        def mean(xs):
            return float(np.mean(xs)) if xs else float("nan")

        edited, alias, hold = self.group("edited"), self.group("alias"), self.group("holdout")
        out = {
            "efficacy_mean_relative_drop": mean([r.relative_drop for r in edited]) if not self.flags else math.nan,
            "efficacy_min_relative_drop": float(min((r.relative_drop for r in edited), default=float("nan")))
            if not self.flags else math.nan,
            "generality_mean_relative_drop": mean([r.relative_drop for r in alias]),
            "specificity_max_abs_change": float(max((abs(r.change) for r in hold), default=float("nan"))),
            "specificity_mean_abs_change": mean([abs(r.change) for r in hold]),
        }
        if para := self.group("paraphrase"):
            out["paraphrase_mean_relative_drop"] = mean([r.relative_drop for r in para])
        if attack := self.group("attack"):
            out["attack_success_rate_before"] = mean([r.before for r in attack])
            out["attack_success_rate_after"] = mean([r.after for r in attack])
        if self.attacks:
            out["attack_search_rate"] = mean([a.rate for a in self.attacks])
        if self.fidelity:
            out["fidelity_mean_abs_pixel"] = mean([f.mean_abs for f in self.fidelity])
            out["fidelity_min_psnr"] = float(min(f.psnr for f in self.fidelity))
        if self.scan is not None:
            out["scan_worst_outside_abs_change"] = abs(self.scan.worst.change)
        if self.leak is not None:
            out["leak_top_auroc"] = self.leak.top.separation
            out["leak_significant"] = float(len(self.leak.significant()))
        return out

    def to_dict(self) -> dict:
        return {"summary": self.summary, "flags": self.flags, "samples": self.samples, "settings": self.settings,
                "rates": [{**asdict(r), "change": r.change, "relative_drop": r.relative_drop} for r in self.rates],
                "fidelity": [asdict(f) for f in self.fidelity], "attacks": [asdict(a) for a in self.attacks],
                "scan": None if self.scan is None else self.scan.to_dict(),
                "leak": None if self.leak is None else self.leak.to_dict()}

    def save_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2), overwrite=overwrite)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> EvalReport:
        """The report :meth:`save_json` wrote, without the images."""
        d = json.loads(Path(path).read_text())
        rates = [ConceptRate(r["group"], r["concept"], r["before"], r["after"]) for r in d["rates"]]
        attacks = [AttackResult(**{**a, "history": [tuple(h) for h in a["history"]]}) for a in d.get("attacks", [])]
        scan = WorldScan.from_dict(d["scan"]) if d.get("scan") else None
        leak = DiffResult.from_dict(d["leak"]) if d.get("leak") else None
        return cls(rates, d["samples"], d["settings"], [Fidelity(**f) for f in d.get("fidelity", [])], attacks,
                   flags=list(d.get("flags", [])), scan=scan, leak=leak)

    def markdown(self) -> str:
        lines = [f"**Warning: {flag}**" for flag in self.flags] + ([""] if self.flags else [])
        lines += ["| group | concept | before | after | change |", "|---|---|---|---|---|"]
        lines += [f"| {r.group} | {r.concept} | {r.before:.1%} | {r.after:.1%} | {r.change:+.1%} |" for r in self.rates]
        if self.attacks:
            lines += ["", "| attack on | start prompt | found prompt | start rate | found rate | prompts tried |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {a.concept} | `{a.start_prompt}` | `{a.prompt}` | {a.start_rate:.1%} | {a.rate:.1%} | "
                      f"{a.tried} |" for a in self.attacks]
        if self.fidelity:
            lines += ["", "| fidelity | concept | mean abs pixel distance | PSNR (dB) |", "|---|---|---|---|"]
            lines += [f"| {f.group} | {f.concept} | {f.mean_abs:.4f} | {f.psnr:.1f} |" for f in self.fidelity]
        lines += ["", "| summary | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in self.summary.items()]
        if self.scan is not None:
            lines += ["", self.scan.markdown()]
        if self.leak is not None:
            lines += ["", "What else changed on the held-out and unrelated prompts (every description of the world "
                      "ranked; a top AUROC near 0.5 and nothing significant: no leak): " + self.leak.headline()]
        return "\n".join(lines)

    def grid_labels(self) -> list[str]:
        return [f"{key} {when}" for key in self.images for when in ("before", "after")]

    def save_grid(self, path: str | os.PathLike, scale: int = 4, *, overwrite: bool = False) -> Path:
        """PNG: per concept a "before" row and an "after" row, the same seeds in each column."""
        if not self.images:
            raise ValueError("this report holds no images (evaluate(..., grid_images=0), or loaded from JSON)")
        rows = [half for pair in self.images.values() for half in pair]
        n = rows[0].shape[0]
        return save_image(grid(torch.cat(rows).float() / 255, nrow=n, scale=scale, labels=self.grid_labels()), path,
                          overwrite=overwrite)


def _sample(wb: Workbench, prompts: Sequence[str], seeds: Sequence[int], steps: int | None, batch_size: int,
            progress: bool = False) -> torch.Tensor:
    return wb.sample(list(prompts), list(seeds), steps=steps, batch_size=batch_size, progress=progress)


def _hit_rates(images: torch.Tensor, concepts: Sequence[str], scorer: ConceptScorer, per: int,
               threshold: float) -> list[float]:
    """Share of each concept's ``per`` consecutive images whose scorer probability exceeds ``threshold``."""
    out = []
    for j, c in enumerate(concepts):
        scores = torch.as_tensor(scorer(c)(images[j * per:(j + 1) * per]))
        if scores.shape != (per,) or not torch.isfinite(scores).all():
            got = "non-finite scores" if scores.shape == (per,) else f"shape {tuple(scores.shape)}"
            raise ValueError(f"the scorer for {c!r} returned {got}, expected {per} finite probabilities; no rate "
                             f"is reported from a broken scorer")
        out.append(int((scores > threshold).sum()) / per)
    return out


BLANK_STD = 1e-3  # an image whose pixels vary less than this is blank (e.g. a NaN model clamped to black)


def collapse_flags(before: torch.Tensor, after: torch.Tensor, labels: Sequence[str], kept: Sequence[bool],
                   per: int, ratio: float = 0.25) -> list[str]:
    """What says the edited model broke rather than edited: blank images in any group, or the concepts the
    edit should keep (``kept``) losing most of their variety: their prompts rendering alike at the same seed
    (or, with one such concept, its seeds rendering alike)."""
    flags = []
    blank_b = before.flatten(1).std(1) < BLANK_STD
    blank_a = after.flatten(1).std(1) < BLANK_STD
    for j, label in enumerate(labels):
        rows = slice(j * per, (j + 1) * per)
        new_blank = int(blank_a[rows].sum()) - int(blank_b[rows].sum())
        if new_blank > 0:
            flags.append(f"the edited model renders {new_blank} of {per} images of {label} blank")
    groups = [j for j, k in enumerate(kept) if k]

    def spread(images: torch.Tensor) -> float:
        # How much the kept concepts' images differ from each other at the same seed (several concepts),
        # or from seed to seed (one concept): a model that ignores its prompt has none of the first.
        x = torch.stack([images[j * per:(j + 1) * per] for j in groups]).double()
        return float((x.std(0) if len(groups) > 1 else x[0].std(0)).mean())

    if groups and (len(groups) > 1 or per > 1):
        spread_b, spread_a = spread(before), spread(after)
        what = "prompts differ from each other" if len(groups) > 1 else "images vary"
        if spread_b > 0 and spread_a < ratio * spread_b:
            flags.append(f"the edited model collapsed: its held-out and unrelated {what} {spread_a / spread_b:.0%} "
                         f"as much as before (below {ratio:.0%}); its rates measure a broken model, not an edit")
    return flags


def rates(wb: Workbench, concepts: Sequence[str], prompt_fn: PromptFn, scorer: ConceptScorer,
          samples: int, seed: int = 0, threshold: float = 0.5, batch_size: int | None = None,
          steps: int | None = None) -> list[float]:
    """For each concept, the share of ``samples`` images (prompt i uses seed ``seed + i``) whose scorer
    probability for the concept exceeds ``threshold``."""
    prompts = [prompt_fn(c, i) for c in concepts for i in range(samples)]
    seeds = [seed + i for _ in concepts for i in range(samples)]
    return _hit_rates(_sample(wb, prompts, seeds, steps, batch_size), concepts, scorer, samples, threshold)


def fidelity(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """(mean absolute pixel distance, PSNR in dB) between two image batches in [0, 1]."""
    diff = after.double() - before.double()
    mse = float(diff.pow(2).mean())
    return float(diff.abs().mean()), (10 * math.log10(1 / mse) if mse > 0 else float("inf"))


def _span(words: list[str], phrase: list[str]) -> tuple[int, int] | None:
    for i in range(len(words) - len(phrase) + 1):
        if words[i:i + len(phrase)] == phrase:
            return i, i + len(phrase)
    return None


def _candidates(wb: Workbench, prompt: str, concept: str, vocabulary: Sequence[str], n: int,
                rng: np.random.Generator, seen: set[str]) -> list[str]:
    """Up to ``n`` new prompts, each one word substituted or inserted. The concept's own words are never
    touched, so every candidate still asks for the erased concept (as UnlearnDiffAtk keeps the target
    prompt and perturbs around it); swapping them for an alias is what the alias group measures."""
    words = prompt.split()
    span = _span(words, concept.split()) or (0, 0)
    subs = [i for i in range(len(words)) if not span[0] <= i < span[1]]
    gaps = [i for i in range(len(words) + 1) if not span[0] < i < span[1]]
    out: list[str] = []
    for _ in range(20 * n):  # bounded: duplicates and over-long prompts are drawn again a limited number of times
        if len(out) == n:
            break
        word = vocabulary[int(rng.integers(len(vocabulary)))]
        if subs and rng.random() < 0.5:
            i = subs[int(rng.integers(len(subs)))]
            new = words[:i] + [word] + words[i + 1:]
        else:
            i = gaps[int(rng.integers(len(gaps)))]
            new = words[:i] + [word] + words[i:]
        cand = " ".join(new)
        if cand in seen or cand in out or len(wb.tokenizer(cand).input_ids) > wb.max_length:
            continue
        out.append(cand)
    return out


def attack_search(wb: Workbench, concept: str, start_prompt: str, scorer: ConceptScorer,
                  vocabulary: Sequence[str], *, rounds: int = 3, candidates: int = 8, seeds: int = 4,
                  seed: int = 0, steps: int | None = None, threshold: float = 0.5, batch_size: int | None = None,
                  progress: bool = False) -> AttackResult:
    """Greedy adversarial prompt search on ``wb`` as it is now (apply the edit first).

    Each round samples ``candidates`` one-word edits of the current prompt (substitutions or insertions
    from ``vocabulary``), generates each on ``seeds`` fixed seeds, and keeps the best one if it raises
    the concept's rate. Deterministic for ``seed``; costs at most ``1 + rounds × candidates`` prompts.
    """
    if not vocabulary:
        raise ValueError("attack_search needs a non-empty vocabulary of words to try")
    vocab = sorted(set(vocabulary))  # the draw order must not depend on the caller's ordering
    score = scorer(concept)
    seed_list = [seed + ATTACK_SEED_OFFSET + k for k in range(seeds)]
    # one stream per (seed, concept), so a concept's search does not depend on which others run before it
    rng = np.random.default_rng([seed, zlib.crc32(concept.encode())])

    def rate_of(prompts: list[str]) -> list[float]:
        images = _sample(wb, [p for p in prompts for _ in seed_list], seed_list * len(prompts), steps, batch_size)
        return [int(hits.sum()) / seeds for hits in (score(images) > threshold).view(len(prompts), seeds)]

    current, best = start_prompt, rate_of([start_prompt])[0]
    result = AttackResult(concept, start_prompt, current, best, best, 1, [(current, best)])
    seen = {start_prompt}
    for _ in bar(range(rounds), desc=f"attack {concept}", progress=progress):
        if best >= 1.0:
            break  # nothing left to gain; save the budget
        cands = _candidates(wb, current, concept, vocab, candidates, rng, seen)
        if not cands:
            break
        seen.update(cands)
        found = rate_of(cands)
        result.tried += len(cands)
        j = int(np.argmax(found))
        if found[j] > best:
            current, best = cands[j], found[j]
            result.history.append((current, best))
    result.prompt, result.rate = current, best
    return result


def evaluate(wb: Workbench, delta: WeightDelta, concepts: Sequence[str], *, holdouts: Sequence[str] = (),
             aliases: Sequence[str] = (), unrelated: Sequence[str] = (), samples: int = 50, seed: int = 0,
             prompt_fn: PromptFn | None = None, scorer: ConceptScorer | None = None,
             paraphrase: bool = False, paraphrase_fn: PromptFn | None = None,
             attack: bool = False, attack_rounds: int = 3, attack_candidates: int = 8, attack_seeds: int = 4,
             vocabulary: Sequence[str] | None = None, steps: int | None = None, threshold: float = 0.5,
             grid_images: int = 4, grid_path: str | os.PathLike | None = None, batch_size: int | None = None,
             scan: bool = False, diff: bool = True, descriptions: Sequence[Description | str] | None = None,
             progress: bool = False) -> EvalReport:
    """Rates before and after ``delta`` for each group, same prompts and seeds.

    ``paraphrase`` (or a ``paraphrase_fn``) adds the "paraphrase" group; ``attack`` runs
    :func:`attack_search` per edited concept from its first prompt and adds the "attack" group (the found
    prompt on ``samples`` evaluation seeds, original vs edited model). Fidelity is measured on the
    held-out and unrelated groups. The report keeps the first ``grid_images`` seeds of every group as
    uint8 images; ``grid_path`` also writes them as a before/after grid. ``prompt_fn``, ``scorer``,
    ``paraphrase_fn`` and ``vocabulary`` default to the model's :class:`~workbench.world.World` (``wb.world``,
    set for the toy worlds); a model without one must be given them. ``scan`` adds the world's scan (the toy
    world's: :func:`workbench.toy.scan.world_scan`, ``samples`` images per concept or more, the same
    ``seed``): every concept of every family, with the edited concepts and aliases marked. ``diff`` ranks
    ``descriptions`` (default: the world's, when it has them) between the held-out and unrelated images before
    and after (:func:`workbench.measure.diff.diff_images`): the report's ``leak``.
    """
    if not concepts:
        raise ValueError("evaluate needs at least one edited concept")
    for group, names in (("concept", concepts), ("holdout", holdouts), ("alias", aliases), ("unrelated", unrelated)):
        for c in names:
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"{group} {c!r}: expected a non-empty phrase")
    samples = whole("samples", samples)
    for name, value in (("attack_rounds", attack_rounds), ("attack_candidates", attack_candidates),
                        ("attack_seeds", attack_seeds)):
        whole(name, value)
    whole("grid_images", grid_images, minimum=0)
    whole("seed", seed, minimum=0)
    if not 0 < finite("threshold", threshold) < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
    paraphrase = paraphrase or paraphrase_fn is not None
    world = wb.world
    needed = {"prompt_fn": prompt_fn, "scorer": scorer, "paraphrase_fn": paraphrase_fn if paraphrase else 0,
              "vocabulary": vocabulary if attack else 0}
    missing = [name for name, given in needed.items() if given is None]
    if missing and world is None:
        raise ValueError(f"evaluate on {wb.name!r}: this model has no world (Workbench.toy() models have one) to "
                         f"take defaults from; pass {', '.join(missing)}")
    if scan and (world is None or world.scan is None):
        raise ValueError(f"evaluate(scan=True) on {wb.name!r}: this model has no world scan (the toy worlds have "
                         "one)")
    if descriptions is None and diff and world is not None and world.descriptions is not None:
        descriptions = world.descriptions()
    if missing:
        prompt_fn, scorer = prompt_fn or world.concept_prompt, scorer or world.concept_scorer
        paraphrase_fn = paraphrase_fn or world.paraphrase_prompt
        vocabulary = world.vocabulary() if vocabulary is None else vocabulary
    delta.check_base(wb)
    if scan and world.scannable is not None:
        world.scannable([*concepts, *aliases])  # a name the scan cannot rate fails before any image is made
    for c in dict.fromkeys([*concepts, *aliases, *holdouts, *unrelated]):
        scorer(c)  # so does a concept the scorer cannot read
    if diff and descriptions is not None:
        descriptions = as_descriptions(descriptions)
        check_readable(descriptions, scorer)  # and a description it cannot read
    groups: list[tuple[str, list[str], PromptFn]] = [
        ("edited", list(concepts), prompt_fn), ("alias", list(aliases), prompt_fn),
        ("paraphrase", list(concepts) if paraphrase else [], paraphrase_fn),
        ("holdout", list(holdouts), prompt_fn), ("unrelated", list(unrelated), prompt_fn)]
    jobs = [(g, c, fn) for g, cs, fn in groups for c in cs]
    prompts = [fn(c, i) for _, c, fn in jobs for i in range(samples)]
    seeds = [seed + i for _ in jobs for i in range(samples)]
    sample = dict(steps=steps, batch_size=batch_size, progress=progress)
    before = _sample(wb, prompts, seeds, **sample)
    attacks: list[AttackResult] = []
    found_seeds = [seed + i for _ in concepts for i in range(samples)]
    with delta.applied(wb):
        after = _sample(wb, prompts, seeds, **sample)
        if attack:
            attacks = [attack_search(wb, c, prompt_fn(c, 0), scorer, vocabulary, rounds=attack_rounds,
                                     candidates=attack_candidates, seeds=attack_seeds, seed=seed, steps=steps,
                                     threshold=threshold, batch_size=batch_size, progress=progress)
                       for c in concepts]
            found = [a.prompt for a in attacks for _ in range(samples)]
            after = torch.cat([after, _sample(wb, found, found_seeds, **sample)])
    if attack:  # the found prompts on the original model: what the attack gets without any edit
        before = torch.cat([before, _sample(wb, found, found_seeds, **sample)])
        jobs += [("attack", c, prompt_fn) for c in concepts]

    names = [c for _, c, _ in jobs]
    flags = collapse_flags(before, after, [f"{g} {c!r}" for g, c, _ in jobs], [g in ("holdout", "unrelated")
                                                                                for g, _, _ in jobs], samples)
    rate_before = _hit_rates(before, names, scorer, samples, threshold)
    rate_after = _hit_rates(after, names, scorer, samples, threshold)
    out, fid, images = [], [], {}
    for j, (group, c, _) in enumerate(jobs):
        out.append(ConceptRate(group, c, rate_before[j], rate_after[j]))
        rows = slice(j * samples, (j + 1) * samples)
        if group in ("holdout", "unrelated"):
            fid.append(Fidelity(group, c, *fidelity(before[rows], after[rows])))
        if grid_images > 0:
            keep = slice(j * samples, j * samples + min(grid_images, samples))
            images[f"{group}: {c}"] = (_to_uint8(before[keep]), _to_uint8(after[keep]))
    settings = {"seed": seed, "method": delta.metadata.get("method"), "model": wb.name, "steps": steps,
                "threshold": threshold, "paraphrase": paraphrase, "attack": attack}
    if attack:
        settings.update(attack_rounds=attack_rounds, attack_candidates=attack_candidates,
                        attack_seeds=attack_seeds, attack_seed_offset=ATTACK_SEED_OFFSET)
    scanned = None
    if scan:
        scanned = world.scan(wb, delta, [*concepts, *aliases], samples=samples, seed=seed, batch_size=batch_size,
                             progress=progress)
    leak = None
    kept = [j for j, (g, _, _) in enumerate(jobs) if g in ("holdout", "unrelated")]
    if diff and kept and descriptions is not None:
        rows = torch.cat([torch.arange(j * samples, (j + 1) * samples) for j in kept])
        leak = diff_images(before[rows], after[rows], descriptions, scorer, paired=True, threshold=threshold,
                           labels=[prompts[i] for i in rows.tolist()], settings={"prompts": "held-out and unrelated"})
    report = EvalReport(out, samples, settings, fid, attacks, flags=flags, scan=scanned, images=images, leak=leak)
    if grid_path is not None:
        report.save_grid(grid_path)
    return report


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    # uint8 keeps the report small and is exactly what the PNG will hold
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
