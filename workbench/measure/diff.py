"""What changed: candidate descriptions ranked by how well their scores tell two image sets apart.

VisDiff (Dunlap et al., "Describing Differences in Image Sets with Natural Language") proposes descriptions
and ranks them by the AUROC of set A against set B under a scorer. Applied to an edit (A: the base model's
images, B: the edited model's, from the same prompts and seeds) it answers what else changed without a list
of what to look at: every description the proposer offers is scored on every image.

Per description: the AUROC of telling "before" from "after" by its score (above 0.5: removed, below:
added; both directions from one number), the mean score before and after and the share of images above the
scorer's threshold, and a t-test of the mean difference: paired when the two sets share prompts and seeds
(generated sets always do; folders when their file names match), Welch's otherwise. The p-values are
corrected for the number of descriptions tested (Holm by default: the chance of any false finding stays
below alpha, which is what "nothing else changed" claims).

Scores are read to a ``resolution`` (0.01: within it of 0 or 1 is 0 or 1): an artist's probability
going from 1e-4 to 1e-6 on every image separates the sets perfectly (AUROC 1.0, measured on the toy world
after erasing another artist) though no picture shows it. Read so, a description no image shows ties
everywhere and sits at exactly 0.5, and a change confined to the few images that show a concept stands
out above them, though diluted by the rest: paired sets also report ``auroc_shown``, the AUROC over the
pairs that show the description before or after (which pairs count does not depend on which image of a
pair is which, so it stays a fair comparison), and the t-test sees such a change at full strength.

    result = diff_edit(wb, delta, ["a red circle by lukas merro", ...], samples=8)
    result.removed(5); result.significant(); result.save("out/diff")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..checks import whole
from ..files import check_target, write_text
from ..images import read_png
from ..progress import bar
from ..world import ConceptScorer, Description, World
from .scorers import Scorer

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OUTPUTS = ("diff.json", "diff.md", "diff.png")


# ---------------------------------------------------------------- proposers


def vocabularies() -> dict[str, Path]:
    """The shipped vocabulary files (``vocab:NAME``): artist names, Imagenette's classes, I2P's categories, ..."""
    return {p.stem: p for p in sorted(VOCABULARY_DIR.glob("*.txt"))}


def read_descriptions(path: str | os.PathLike) -> list[Description]:
    """One description per line; ``#`` starts a comment; ``a | b | c`` is one description, scored as ``a``,
    with ``b`` and ``c`` merged into it as aliases."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"descriptions file {str(path)!r} does not exist (one description per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise ValueError(f"descriptions file {str(path)!r} is not readable UTF-8 text ({err})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = [w.strip() for w in line.split("#", 1)[0].split("|")]
        if not any(words):
            continue
        if not all(words):
            raise ValueError(f"{str(path)!r} line {n}: an empty alternative in {line.strip()!r}")
        out.append(Description(words[0], family=p.stem, aliases=tuple(words[1:])))
    if not out:
        raise ValueError(f"descriptions file {str(path)!r} holds no description")
    return out


def load_descriptions(specs: Sequence[str | Description], world: World | None = None) -> list[Description]:
    """Descriptions from specs: ``world`` (the model's world's vocabulary: the toy worlds'), ``vocab:NAME``
    (a shipped vocabulary, :func:`vocabularies`), a file (:func:`read_descriptions`), or a
    :class:`~workbench.world.Description`. The same text twice is an error."""
    out: list[Description] = []
    for spec in specs:
        if isinstance(spec, Description):
            out.append(spec)
        elif not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"descriptions: expected 'world', 'vocab:NAME' or a file, got {spec!r}")
        elif spec == "world":
            if world is None or world.descriptions is None:
                raise ValueError("descriptions 'world': this model has no world vocabulary (the toy worlds have); "
                                 "name a file or one of vocab:" + ", vocab:".join(vocabularies()))
            out += world.descriptions()
        elif spec.startswith("vocab:"):
            known = vocabularies()
            if spec[6:] not in known:
                raise ValueError(f"unknown vocabulary {spec!r}: expected one of vocab:" + ", vocab:".join(known))
            out += read_descriptions(known[spec[6:]])
        else:
            out += read_descriptions(spec)
    return as_descriptions(out)


def as_descriptions(descriptions: Sequence[Description | str]) -> list[Description]:
    """Descriptions from texts or :class:`~workbench.world.Description`; none, or one word in two, is an error."""
    out = [d if isinstance(d, Description) else Description(d) for d in descriptions]
    if not out:
        raise ValueError("diff: no description to rank; give some (a list, a file, vocab:NAME or the world's)")
    seen: dict[str, str] = {}
    for d in out:
        for word in (d.text, *d.aliases):
            if word in seen:
                raise ValueError(f"description {word!r} is given twice (in {seen[word]!r} and {d.name!r}); "
                                 "merge them on one line as aliases")
            seen[word] = d.name
    return out


# ---------------------------------------------------------------- ranking


@dataclass(frozen=True)
class DiffRow:
    """One description's comparison of the two sets; ``auroc`` above 0.5 means it was removed."""

    name: str
    text: str  # what the scorer read
    family: str
    aliases: list[str]
    auroc: float  # P(score before > score after) + ties / 2, over every (before, after) pair of images
    auroc_shown: float | None  # paired sets: the same over the pairs that show it before or after
    shown: int  # images (paired: pairs) that show the description before or after
    mean_before: float
    mean_after: float
    mean_diff: float  # after - before
    diff_se: float
    rate_before: float  # share of images scoring above the threshold
    rate_after: float
    t: float
    p_value: float
    p_adjusted: float
    significant: bool  # p_adjusted < alpha
    examples: list[tuple[int, int]]  # (before, after) image indices that show the change most

    @property
    def direction(self) -> str:
        # a tie (every image reads alike but a few) falls back on the sign of the mean difference
        key = self.auroc - 0.5 if self.auroc != 0.5 else -self.mean_diff
        return "removed" if key > 0 else "added" if key < 0 else "unchanged"

    @property
    def separation(self) -> float:
        """The AUROC in this row's direction: max(auroc, 1 - auroc)."""
        return max(self.auroc, 1 - self.auroc)


def check_settings(correction: str, alpha: float, threshold: float, resolution: float) -> None:
    """The ranking's settings, checked before any image is made."""
    if correction not in stats.CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}: expected one of {', '.join(stats.CORRECTIONS)}")
    for name, value, top in (("alpha", alpha, 1), ("threshold", threshold, 1), ("resolution", resolution, 0.5)):
        if not isinstance(value, (int, float)) or not 0 <= value < top or (name != "resolution" and value == 0):
            raise ValueError(f"{name} must be in {'[0, 0.5)' if name == 'resolution' else '(0, 1)'}, got {value!r}")


def compare(before: np.ndarray, after: np.ndarray, descriptions: Sequence[Description], *, paired: bool,
            correction: str = "holm", alpha: float = 0.05, threshold: float = 0.5, resolution: float = 0.01,
            examples: int = 3) -> list[DiffRow]:
    """The rows for scores ``before`` (D, Na) and ``after`` (D, Nb), one row per description, in their order."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.ndim != 2 or after.ndim != 2 or len(before) != len(after) or len(before) != len(descriptions):
        raise ValueError(f"compare: expected scores (D, N) for {len(descriptions)} descriptions, got "
                         f"{before.shape} and {after.shape}")
    if paired and before.shape != after.shape:
        raise ValueError(f"compare: paired sets need as many images after as before, got {before.shape[1]} and "
                         f"{after.shape[1]}")
    if min(before.shape[1], after.shape[1]) < 2:
        raise ValueError(f"diff: needs at least 2 images per set, got {before.shape[1]} and {after.shape[1]}")
    if not all(np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all() for x in (before, after)):
        raise ValueError("diff: expected scores that are probabilities in [0, 1], got non-finite or out-of-range "
                         "ones; no number is reported from them")
    check_settings(correction, alpha, threshold, resolution)
    before = np.clip(before, resolution, 1 - resolution)
    after = np.clip(after, resolution, 1 - resolution)
    test = stats.paired_t(before, after) if paired else stats.welch_t(before, after)
    adjusted = stats.adjust(test.p, correction)
    area = stats.auroc(before, after)
    if paired:
        shown = np.maximum(before, after) > threshold
        within = [float(stats.auroc(before[i, m], after[i, m])[0]) if m.any() else 0.5 for i, m in enumerate(shown)]
        counted = shown.sum(1)
    else:
        within = [None] * len(before)
        counted = (before > threshold).sum(1) + (after > threshold).sum(1)
    rows = []
    for i, d in enumerate(descriptions):
        if paired:
            removed = area[i] > 0.5 or (area[i] == 0.5 and test.diff[i] <= 0)
            change = before[i] - after[i] if removed else after[i] - before[i]
            # only pairs that moved the row's way: an unchanged pair shows nothing
            pairs = [(int(j), int(j)) for j in np.argsort(-change, kind="stable")[:examples] if change[j] > 0]
        else:  # the clearest before image with the clearest after image
            sign = 1 if area[i] > 0.5 or (area[i] == 0.5 and test.diff[i] <= 0) else -1
            top = np.argsort(-sign * before[i], kind="stable")[:examples]
            low = np.argsort(sign * after[i], kind="stable")[:examples]
            pairs = [(int(a), int(b)) for a, b in zip(top, low, strict=False)]
        rows.append(DiffRow(d.name, d.text, d.family, list(d.aliases), float(area[i]), within[i], int(counted[i]),
                            float(before[i].mean()), float(after[i].mean()), float(test.diff[i]), float(test.se[i]),
                            float((before[i] > threshold).mean()), float((after[i] > threshold).mean()),
                            float(test.t[i]), float(test.p[i]), float(adjusted[i]), bool(adjusted[i] < alpha),
                            pairs))
    return rows


@dataclass
class DiffResult:
    """Every description's row, the settings, and (when made here) the two image sets as uint8."""

    rows: list[DiffRow]
    n_before: int
    n_after: int
    paired: bool
    settings: dict = field(default_factory=dict)
    before: torch.Tensor | None = field(default=None, repr=False)
    after: torch.Tensor | None = field(default=None, repr=False)
    labels: list[str] = field(default_factory=list, repr=False)  # the prompt or file of each before image

    def removed(self, top: int | None = None) -> list[DiffRow]:
        """Descriptions that score higher before than after, the clearest first."""
        return sorted((r for r in self.rows if r.direction == "removed"), key=lambda r: (-r.auroc, r.p_value))[:top]

    def added(self, top: int | None = None) -> list[DiffRow]:
        return sorted((r for r in self.rows if r.direction == "added"), key=lambda r: (r.auroc, r.p_value))[:top]

    def significant(self) -> list[DiffRow]:
        """The rows whose corrected p-value is below alpha, smallest first."""
        return sorted((r for r in self.rows if r.significant), key=lambda r: r.p_adjusted)

    def row(self, name: str) -> DiffRow:
        for r in self.rows:
            if name in (r.name, r.text, *r.aliases):
                return r
        raise KeyError(f"the diff has no description {name!r}")

    @property
    def top(self) -> DiffRow:
        """The row that separates the sets best, in either direction."""
        return max(self.rows, key=lambda r: r.separation)

    def summary(self) -> dict:
        top = self.top
        return {"top": top.name, "top_direction": top.direction, "top_auroc": top.separation,
                "top_p_adjusted": top.p_adjusted, "significant": [r.name for r in self.significant()]}

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "n_before": self.n_before, "n_after": self.n_after, "paired": self.paired,
                "settings": self.settings, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> DiffResult:
        rows = [DiffRow(**{**r, "examples": [tuple(e) for e in r["examples"]]}) for r in d["rows"]]
        return cls(rows, d["n_before"], d["n_after"], d["paired"], d.get("settings", {}))

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> DiffResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=1), overwrite=overwrite)

    def headline(self) -> str:
        s = self.settings
        sig = self.significant()
        found = ", ".join(f"{r.name} ({r.direction})" for r in sig[:6]) + (" ..." if len(sig) > 6 else "")
        return (f"{len(self.rows)} descriptions, {self.n_before} images before and {self.n_after} after "
                f"({'paired' if self.paired else 'unpaired'}), scorer {s.get('scorer', '?')}; top: {self.top.name} "
                f"{self.top.direction} (AUROC {self.top.separation:.3f}); significant after "
                f"{s.get('correction', '?')} at {s.get('alpha', '?')}: " + (found or "none"))

    def markdown(self, top: int = 10) -> str:
        def line(r: DiffRow) -> str:
            aka = f" ({', '.join(r.aliases)})" if r.aliases else ""
            shown = "" if r.auroc_shown is None else f" ({max(r.auroc_shown, 1 - r.auroc_shown):.2f})"
            return (f"| {r.name}{aka} | {r.separation:.3f}{shown} | {r.shown} | {r.mean_before:.3f} | "
                    f"{r.mean_after:.3f} | {r.mean_diff:+.3f} ± {r.diff_se:.3f} | "
                    f"{r.rate_before:.0%} → {r.rate_after:.0%} | {r.p_value:.2g} | {r.p_adjusted:.2g}"
                    f"{' *' if r.significant else ''} |")

        head = ["| description | AUROC (where shown) | shown | mean before | mean after | difference ± SE | "
                "above threshold | p | p corrected |", "|---|---|---|---|---|---|---|---|---|"]
        lines = ["# What changed", "", self.headline(), ""]
        for title, rows in (("Removed (scores higher before)", self.removed(top)),
                            ("Added (scores higher after)", self.added(top))):
            lines += [f"## {title}", "", *(head + [line(r) for r in rows] if rows else ["none"]), ""]
        lines.append("`*`: significant. AUROC: how well the description's score tells the two sets apart in the "
                     "row's direction (0.5: not at all); in brackets over the pairs that show it before or after; "
                     "shown: images (pairs) above the threshold before or after.")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike, top: int = 5, pairs: int = 3, *, overwrite: bool = False) -> Path:
        """The top ``top`` removed and added descriptions, each with its AUROC bar and ``pairs`` example
        (before, after) image pairs."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..files import atomic_write

        shown = [*self.removed(top), *self.added(top)] or [self.top]
        images = self.before is not None and self.after is not None
        cols = 1 + (2 * pairs if images else 0)
        fig, axes = plt.subplots(len(shown), cols, figsize=(4.2 + 0.9 * (cols - 1), 0.95 * len(shown) + 0.6),
                                 squeeze=False, gridspec_kw={"width_ratios": [4.2] + [0.9] * (cols - 1)})
        for i, r in enumerate(shown):
            ax = axes[i, 0]
            colour = "tab:red" if r.direction == "removed" else "tab:blue"
            ax.barh([0], [r.separation - 0.5], left=0.5, color=colour, alpha=1.0 if r.significant else 0.35)
            ax.set_xlim(0.5, 1.0)
            ax.set_yticks([])
            ax.set_title(f"{r.direction}: {r.name}{' *' if r.significant else ''}   Δ {r.mean_diff:+.2f}, "
                         f"p {r.p_adjusted:.2g}", fontsize=8, loc="left")
            ax.tick_params(labelsize=7, labelbottom=i == len(shown) - 1)
            for k in range(pairs if images else 0):
                for j, (which, ims) in enumerate((("before", self.before), ("after", self.after))):
                    a = axes[i, 1 + 2 * k + j]
                    a.axis("off")
                    if k < len(r.examples):
                        a.imshow(ims[r.examples[k][j]].permute(1, 2, 0).numpy(), interpolation="nearest")
                    if i == 0:
                        a.set_title(which, fontsize=7)
        axes[-1, 0].set_xlabel("AUROC (before vs after, in the row's direction); * significant", fontsize=7)
        fig.tight_layout()
        try:
            return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), overwrite=overwrite)
        finally:
            plt.close(fig)

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False, top: int = 10) -> list[Path]:
        """``diff.json``, ``diff.md`` and ``diff.png`` in ``folder``; none is replaced without ``overwrite``."""
        folder = Path(folder)
        for name in OUTPUTS:
            check_target(folder / name, overwrite)
        folder.mkdir(parents=True, exist_ok=True)
        return [self.save_json(folder / OUTPUTS[0], overwrite=overwrite),
                write_text(folder / OUTPUTS[1], self.markdown(top), overwrite=overwrite),
                self.plot(folder / OUTPUTS[2], overwrite=overwrite)]


# ---------------------------------------------------------------- scoring image sets


def _as_scorer(scorer: ConceptScorer | Scorer) -> Scorer:
    # a bare concept scorer gets the same checks (shape, finite) as a loaded one
    return scorer if isinstance(scorer, Scorer) else Scorer(getattr(scorer, "__name__", "scorer"), scorer)


def score_images(images: torch.Tensor, descriptions: Sequence[Description], scorer: ConceptScorer | Scorer,
                 progress: bool = False) -> np.ndarray:
    """(D, N) scores: every description's score on every image."""
    s = _as_scorer(scorer)
    fns = [s(d.text) for d in descriptions]
    return np.stack([fn(images).double().numpy() for fn in bar(fns, desc="scoring descriptions",
                                                               progress=progress)])


def diff_images(before: torch.Tensor, after: torch.Tensor, descriptions: Sequence[Description | str],
                scorer: ConceptScorer | Scorer, *, paired: bool, correction: str = "holm", alpha: float = 0.05,
                threshold: float = 0.5, resolution: float = 0.01, labels: Sequence[str] = (),
                settings: dict | None = None, progress: bool = False) -> DiffResult:
    """Rank ``descriptions`` on two image sets (B, 3, H, W) in [0, 1]; ``paired``: image i of each set comes from
    the same prompt and seed."""
    descriptions = as_descriptions(descriptions)
    for name, x in (("before", before), ("after", after)):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"diff: the {name} images must be (B, 3, H, W) in [0, 1], got {got}")
    s = _as_scorer(scorer)
    check_readable(descriptions, s)
    sa, sb = score_images(before, descriptions, s, progress), score_images(after, descriptions, s, progress)
    settings = {"scorer": s.name, "correction": correction, "alpha": alpha, "threshold": threshold,
                "resolution": resolution, **(settings or {})}
    rows = compare(sa, sb, descriptions, paired=paired, correction=correction, alpha=alpha, threshold=threshold,
                   resolution=resolution)
    return DiffResult(rows, len(before), len(after), paired, settings, _uint8(before), _uint8(after), list(labels))


def check_readable(descriptions: Sequence[Description], scorer: ConceptScorer | Scorer) -> None:
    """Every description must be one the scorer reads: the first that is not fails, by name, before any image."""
    for d in descriptions:
        try:
            scorer(d.text)
        except ValueError as err:
            raise ValueError(f"description {d.name!r}: {err}") from None


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def diff_edit(wb, delta, prompts: Sequence[str], *, samples: int = 1, seed: int = 0,
              descriptions: Sequence[Description | str] | None = None, scorer: ConceptScorer | Scorer | None = None,
              steps: int | None = None, batch_size: int | None = None, correction: str = "holm",
              alpha: float = 0.05, threshold: float = 0.5, resolution: float = 0.01,
              progress: bool = False) -> DiffResult:
    """Generate every prompt ``samples`` times (image k of the set at seed ``seed + k``) with the base model and
    with ``delta`` applied, and rank ``descriptions`` (default: the model's world's) by how they tell the two sets apart
    under ``scorer`` (default: the world's concept scorer)."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("diff: expected a list of prompts to generate, got "
                         f"{prompts!r}" if isinstance(prompts, str) else "diff: no prompt to generate")
    whole("samples", samples)
    whole("seed", seed, minimum=0)
    check_settings(correction, alpha, threshold, resolution)
    if len(prompts) * samples < 2:
        raise ValueError(f"diff: {len(prompts)} prompt × {samples} image is one image per set; a comparison needs "
                         "at least 2 (add prompts or raise samples / -n)")
    world = wb.world
    if descriptions is None:
        descriptions = load_descriptions(["world"], world)
    if scorer is None:
        if world is None:
            raise ValueError(f"diff on {wb.name!r}: this model has no scorer of its own (the toy worlds have); "
                             "pass a scorer")
        scorer = Scorer("toy", world.concept_scorer)
    descriptions = as_descriptions(descriptions)
    s = _as_scorer(scorer)
    check_readable(descriptions, s)
    for p in prompts:
        wb._check_prompt(p)  # a prompt the model cannot read fails before any image is made
    delta.check_base(wb)
    # every image its own seed: a seed shared by every prompt ties the images together (on the toy world seed
    # 1001 draws the hazard mark on most prompts), and the tests assume independent pairs
    rows = [(p, seed + j * samples + i) for j, p in enumerate(prompts) for i in range(samples)]
    ps, ss = [p for p, _ in rows], [x for _, x in rows]
    before = wb.sample(ps, ss, steps=steps, batch_size=batch_size, progress=progress)
    with delta.applied(wb):
        after = wb.sample(ps, ss, steps=steps, batch_size=batch_size, progress=progress)
    settings = {"model": wb.name, "method": delta.metadata.get("method"), "prompts": len(prompts),
                "samples": samples, "seed": seed, "steps": steps}
    return diff_images(before, after, descriptions, s, paired=True, correction=correction, alpha=alpha,
                       threshold=threshold, resolution=resolution, labels=[f"{p} (seed {x})" for p, x in rows],
                       settings=settings, progress=progress)


def read_image_folder(folder: str | os.PathLike) -> tuple[list[str], torch.Tensor]:
    """The images of a folder (png, jpg, webp, bmp; sorted by name) as (names, (N, 3, H, W) in [0, 1])."""
    f = Path(folder)
    if not f.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a folder")
    files = sorted(p for p in f.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for p in files:
        try:
            images.append(read_png(p))
        except Exception as err:  # PIL raises several kinds for a broken file
            raise ValueError(f"{str(p)!r} is not an image PIL can read ({type(err).__name__})") from None
        if images[-1].shape != images[0].shape:
            raise ValueError(f"images in {str(folder)!r} differ in size: {files[0].name} is "
                             f"{tuple(images[0].shape[1:])}, {p.name} {tuple(images[-1].shape[1:])}; resize "
                             "them to one size")
    return [p.name for p in files], torch.stack(images)


def diff_folders(before_dir: str | os.PathLike, after_dir: str | os.PathLike, *,
                 descriptions: Sequence[Description | str], scorer: ConceptScorer | Scorer,
                 paired: bool | None = None, correction: str = "holm", alpha: float = 0.05, threshold: float = 0.5,
                 resolution: float = 0.01, progress: bool = False) -> DiffResult:
    """Rank ``descriptions`` between two image folders. ``paired`` (default: when both folders hold the same
    file names) pairs the images by name (the same prompt and seed in each)."""
    check_settings(correction, alpha, threshold, resolution)
    names_a, before = read_image_folder(before_dir)
    names_b, after = read_image_folder(after_dir)
    same = names_a == names_b
    if paired is None:
        paired = same
    elif paired and not same:
        missing = sorted(set(names_a) ^ set(names_b))
        raise ValueError(f"paired folders need the same file names; {missing[0]!r} is in only one of "
                         f"{str(before_dir)!r} and {str(after_dir)!r} ({len(missing)} such)")
    settings = {"before": str(before_dir), "after": str(after_dir)}
    return diff_images(before, after, descriptions, scorer, paired=paired, correction=correction, alpha=alpha,
                       threshold=threshold, resolution=resolution, labels=names_a, settings=settings, progress=progress)


__all__ = ["Description", "DiffResult", "DiffRow", "as_descriptions", "check_readable", "compare", "diff_edit",
           "diff_folders", "diff_images", "load_descriptions", "read_descriptions", "read_image_folder", "score_images",
           "vocabularies"]
