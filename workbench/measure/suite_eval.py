"""Run a whole prompt suite before and after an edit: per-prompt scores, rates with SEs, set metrics.

Each item (one suite row) is generated with its own seed and guidance, scored, and saved on its own
(``items/<case>.json`` and its PNGs) the moment it is done, so an interrupted run resumes where it stopped:
a rerun loads the finished items (when they were made with the same model, delta, scorer and settings) and
generates only the rest. At the end: ``suite.json``, ``suite.md`` and a before/after grid.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..delta import WeightDelta, tensor_hash
from ..files import atomic_write, write_text
from ..images import grid, read_png, save_image, save_png
from ..model import Workbench
from ..progress import bar
from ..world import ConceptScorer
from .suites import Suite, SuitePrompt


@dataclass
class SuiteReport:
    suite: str
    settings: dict
    items: list[dict]
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        s = self.summary
        lines = [f"# Suite {self.suite}", "", f"{len(self.items)} prompts; scorer `{self.settings['scorer']}`, "
                 f"threshold {self.settings['threshold']}", "", "| group | n | before | after |", "|---|---|---|---|"]
        for name, row in s.get("rates", {}).items():
            after = f"{row['after']:.1%} ± {row['after_se']:.1%}" if row.get("after") is not None else "-"
            lines.append(f"| {name} | {row['n']} | {row['before']:.1%} ± {row['before_se']:.1%} | {after} |")
        for name in ("fid", "kid", "lpips", "clip_score"):
            if name in s:
                lines += ["", f"**{name}**: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                           for k, v in s[name].items())]
        return "\n".join(lines) + "\n"


def _safe(case: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", case)[:80]
    return f"{name}-{hashlib.sha1(case.encode()).hexdigest()[:8]}"  # distinct cases never share a file


def _delta_id(delta: WeightDelta | None) -> str | None:
    if delta is None:
        return None
    h = hashlib.sha256()
    for name in sorted(delta.tensors):
        h.update(f"{name}={tensor_hash(delta.tensors[name])};".encode())
    return h.hexdigest()[:16]


def _rate(values: list[float], threshold: float) -> tuple[float, float]:
    r = stats.rate([v > threshold for v in values])
    return r.value, r.se


def evaluate_suite(wb: Workbench, suite: Suite, out: str | Path, *, scorer: ConceptScorer, scorer_name: str,
                   delta: WeightDelta | None = None, concept: str | None = None, threshold: float = 0.5,
                   steps: int | None = None, batch_size: int = 16, features=None, features_name: str | None = None,
                   lpips=None, clip=None, grid_items: int = 8, progress: bool = True) -> SuiteReport:
    """Generate, score and save every suite item (before, and after ``delta`` when given); resume from the
    items already in ``out``. ``concept`` overrides each row's concept. ``features`` (images -> (N, D))
    adds FID/KID between the before and after sets, ``lpips`` (an :class:`~.image_sets.Lpips`) the mean
    pairwise LPIPS, ``clip`` (a :class:`~.clip.Clip`) the CLIP-score mean against each prompt."""
    out = Path(out)
    concepts = {}
    for item in suite.items:
        c = concept or item.concept
        if c is None:
            raise ValueError(f"suite {suite.path!r} case {item.case!r} names no concept; pass --concept")
        concepts[item.case] = c
    reads = {c: scorer(c) for c in sorted(set(concepts.values()))}  # an unreadable concept fails now
    for item in suite.items:
        wb._check_prompt(item.prompt)  # a prompt the model cannot read fails before any image is made
    if delta is not None:
        delta.check_base(wb)
    key = {"model": wb.name, "delta": _delta_id(delta), "scorer": scorer_name, "steps": steps}
    items_dir, images_dir = out / "items", out / "images"
    items_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    for item in suite.items:
        path = items_dir / f"{_safe(item.case)}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            want = dict(key, case=item.case, prompt=item.prompt, seed=item.seed, guidance=item.guidance,
                        concept=concepts[item.case])
            if {k: saved.get(k) for k in want} != want:
                raise ValueError(f"{str(path)!r} was made with other settings or another model/delta/scorer; "
                                 "use a new --out folder (nothing there was changed)")
            done[item.case] = saved
    todo = [item for item in suite.items if item.case not in done]
    groups: dict[float | None, list[SuitePrompt]] = {}
    for item in todo:
        groups.setdefault(item.guidance, []).append(item)
    chunks = [(g, items[i:i + batch_size]) for g, items in groups.items() for i in range(0, len(items), batch_size)]
    for guidance, chunk in bar(chunks, desc=f"suite ({len(done)} of {len(suite)} done before)", progress=progress):
        prompts, seeds = [it.prompt for it in chunk], [it.seed for it in chunk]
        sets = {"before": wb.sample(prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size)}
        if delta is not None:
            with delta.applied(wb):
                sets["after"] = wb.sample(prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size)
        for j, item in enumerate(chunk):
            c = concepts[item.case]
            record = dict(key, case=item.case, prompt=item.prompt, seed=item.seed, guidance=item.guidance,
                          concept=c, meta=item.meta)
            for name, images in sets.items():
                png = images_dir / f"{_safe(item.case)}_{name}.png"
                save_png(images[j], png)
                record[name] = float(reads[c](images[j:j + 1])[0])
                record[f"{name}_image"] = str(png.relative_to(out))
            atomic_write(items_dir / f"{_safe(item.case)}.json",
                         lambda tmp, r=record: Path(tmp).write_text(json.dumps(r, indent=1)), overwrite=True)
            done[item.case] = record
    items = [done[item.case] for item in suite.items]
    settings = dict(key, suite=suite.path, format=suite.format, threshold=threshold, features=features_name)
    report = SuiteReport(suite.path, settings, items, _summary(out, items, threshold, features, lpips, clip,
                                                                delta is not None))
    write_text(out / "suite.json", json.dumps(report.to_dict(), indent=1), overwrite=True)
    write_text(out / "suite.md", report.markdown(), overwrite=True)
    if grid_items:
        _grid(out, items[:grid_items], delta is not None)
    return report


def _summary(out: Path, items: list[dict], threshold: float, features, lpips, clip, edited: bool) -> dict:
    names = ["before", "after"] if edited else ["before"]
    by: dict[str, list[dict]] = {"all": items}
    for it in items:
        by.setdefault(f"concept {it['concept']}", []).append(it)
    rates = {}
    for group, rows in by.items():
        if group != "all" and len(by) == 2:
            continue  # one concept: its row is the "all" row
        row = {"n": len(rows)}
        for name in ("before", "after"):
            if name in names:
                row[name], row[f"{name}_se"] = _rate([r[name] for r in rows], threshold)
            else:
                row[name] = None
        rates[group] = row
    summary: dict = {"rates": rates}
    if features is None and lpips is None and clip is None:
        return summary
    images = {n: torch.stack([read_png(out / it[f"{n}_image"]) for it in items]) for n in names}
    if edited and features is not None:
        from .image_sets import fid, kid

        fa, fb = features(images["before"]), features(images["after"])
        summary["fid"] = {"before_vs_after": fid(fa, fb)}
        mean, std = kid(fa, fb, subset_size=min(1000, len(items)))
        summary["kid"] = {"mean": mean, "std": std}
    if edited and lpips is not None:
        d = lpips(images["before"], images["after"]).tolist()
        summary["lpips"] = {"mean": float(np.mean(d)), "se": float(np.std(d, ddof=1) / math.sqrt(len(d)))
                            if len(d) > 1 else float("nan")}
    if clip is not None:
        prompts = [it["prompt"] for it in items]
        summary["clip_score"] = {n: float(clip.clip_score(images[n], prompts).mean()) for n in names}
    return summary


def _grid(out: Path, items: list[dict], edited: bool) -> None:
    names = ["before", "after"] if edited else ["before"]
    tiles = torch.stack([read_png(out / it[f"{n}_image"]) for it in items for n in names])
    labels = [it["case"][:16] for it in items]
    save_image(grid(tiles, nrow=len(names), scale=4, labels=labels), out / "grid.png", overwrite=True)
