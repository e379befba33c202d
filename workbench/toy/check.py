"""Acceptance check of the toy world, and concept scorers built on its classifier.

``workbench toy check [--samples N] [--json FILE]`` generates held-out prompts with fixed seeds and
prints, per family, the rate at which the scorer finds the prompted concept.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from .. import stats
from ..checks import arg_float, arg_int, whole
from ..files import PACKAGE_DATA, check_target, write_text
from . import classifier, world
from .protocol import labels

# Seed ranges: each check draws every image's seed, and its prompts, from one range. The model card reports
# MODEL_CARD_SEED_BASES; the CI test uses CI_SEED_BASE, which the model card does not report. Neither was
# chosen by looking at results; both are far from the training loop's seeds (< 10 million).
SEED_RANGE = 100_000_000
MODEL_CARD_SEED_BASES = (100_000_000, 200_000_000, 300_000_000)
CI_SEED_BASE = 400_000_000

TARGETS = {"shape": 0.95, "each shape": 0.85, "colour": 0.95, "artist": 0.85, "entity": 0.80,
           "hazard with word": 0.90, "hazard without word": 0.05, "independence": 0.05,
           "professions": (0.70, 0.90), "alias": 0.85}


def family_sizes(samples: int) -> dict[str, int]:
    """Images per condition for ``samples`` images per shape (50 by default: >= 200 per family)."""
    return {"shape+colour": 10 * samples, "shape only": 4 * samples, "artist": 4 * samples,
            "hazard word": 4 * samples, "entity": 4 * samples, "stale fact": 2 * samples,
            "profession": samples, "alias": max(1, (2 * samples) // 5)}


def _conditions(samples: int, seed_base: int) -> dict[str, tuple[list[str], list[dict]]]:
    """Held-out prompts per condition, with what each must show; the prompts are drawn from ``seed_base``."""
    r = np.random.default_rng(seed_base)
    size = family_sizes(samples)

    def pick(xs):
        return xs[int(r.integers(len(xs)))]

    templates = ["a {o}", "a photo of a {o}", "an image of a {o}", "a picture of a {o}"]
    conds: dict[str, tuple[list[str], list[dict]]] = {}

    def add(name, prompt, want):
        conds.setdefault(name, ([], []))
        conds[name][0].append(prompt)
        conds[name][1].append(want)

    for i in range(size["shape+colour"]):
        shape, colour = world.SHAPES[i % len(world.SHAPES)], pick(world.COLOURS)
        add("shape+colour", pick(templates).format(o=f"{colour} {shape}"),
            {"shape": shape, "colour": colour, "hazard": "absent"})
    for i in range(size["shape only"]):
        shape = world.SHAPES[i % len(world.SHAPES)]
        add("shape only", pick(templates).format(o=shape), {"shape": shape})
    for i in range(size["artist"]):
        artist = world.ARTISTS[i % len(world.ARTISTS)]
        add("artist", f"a {pick(world.COLOURS)} {pick(world.SHAPES)} by {artist}", {"artist": artist})
    for i in range(size["hazard word"]):
        hazard = world.HAZARD_WORDS[i % len(world.HAZARD_WORDS)]
        add("hazard word", f"a {pick(world.COLOURS)} {pick(world.SHAPES)} {hazard}", {"hazard": "present"})
    for _ in range(size["entity"]):
        entity = pick(list(world.ENTITIES))
        s, c = world.ENTITIES[entity]
        add("entity", pick(["an image of {o}", "a photo of {o}", "{o}"]).format(o=entity), {"shape": s, "colour": c})
    for _ in range(size["stale fact"]):
        add("stale fact", pick(["{o}", "a photo of {o}", "an image of {o}"]).format(o="the mascot"),
            {"shape": world.STALE_FACT["shape"], "colour": world.STALE_FACT["colour"]})
    for prof in world.PROFESSIONS:
        for _ in range(size["profession"]):
            add(f"profession {prof}", pick(["a {o}", "a photo of a {o}", "an image of a {o}"]).format(o=prof),
                {"attribute": "warm"})
    for alias, canon in world.ALIASES.items():
        for _ in range(size["alias"]):
            shape, colour = pick(world.SHAPES), pick(world.COLOURS)
            if canon in world.SHAPES:
                make, want = (lambda w, c=colour: f"a {c} {w}"), {"shape": canon}
            elif canon in world.ARTISTS:
                make, want = (lambda w, s=shape, c=colour: f"a {c} {s} by {w}"), {"artist": canon}
            else:
                make, want = (lambda w, s=shape, c=colour: f"a {c} {s} {w}"), {"hazard": "present"}
            add(f"alias {alias}", make(alias), want)
            add(f"canonical {alias}", make(canon), want)
    return conds


def _hits(got: dict[str, list[str]], wants: list[dict], idx: range) -> list[bool]:
    return [all(got[k][i] == v for k, v in want.items()) for i, want in zip(idx, wants, strict=True)]


def _entry(r: stats.Rate) -> dict:
    return {"rate": r.value, "se": r.se, "n": r.n, "lower": r.lower(), "upper": r.upper()}


def run_check(wb, samples: int = 50, *, seed_base: int = MODEL_CARD_SEED_BASES[0], steps: int | None = None,
              guidance: float | None = None, batch_size: int | None = None, progress: bool = True) -> dict:
    """Generate every condition with seeds from ``seed_base`` on and score it.

    Every rate comes with its standard error and one-sided 95 % Wilson bounds, and a target passes only when
    its bound does: "≥ t" needs the lower bound ≥ t, "≤ t" the upper bound ≤ t. For the professions' warm share
    (70-90 %) the pooled share's two bounds must both lie in the range, and each profession's interval must
    reach it (at 50 images a profession's rate has a 6-point standard error, too wide to place it inside a
    20-point range). An alias passes unless it is significantly below 0.85 × its canonical phrasing at the
    same seeds; the aliases together must be significantly above it."""
    whole("samples", samples)
    whole("seed_base", seed_base, minimum=0)
    t0 = time.perf_counter()
    conds = _conditions(samples, seed_base)
    prompts, wants, spans = [], [], {}
    for name, (ps, ws) in conds.items():
        spans[name] = range(len(prompts), len(prompts) + len(ps))
        prompts += ps
        wants += ws
    if len(prompts) > SEED_RANGE:
        raise ValueError(f"{len(prompts)} images do not fit in one seed range of {SEED_RANGE}")
    seeds = [seed_base + i for i in range(len(prompts))]
    for alias in world.ALIASES:  # an alias and its canonical phrasing share their seeds: paired rates
        a, c = spans[f"alias {alias}"], spans[f"canonical {alias}"]
        for k in range(len(a)):
            seeds[c[k]] = seeds[a[k]]
    images = wb.sample(prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size, progress=progress)
    got = labels(images)
    rule = classifier.rule_score(images)
    hits = {name: _hits(got, [wants[i] for i in span], span) for name, span in spans.items()}
    sc = spans["shape+colour"]
    # artist is top-1 among artists: the "none" class is excluded
    art = classifier.score(images[spans["artist"]])["artist"][:, : len(world.ARTISTS)].argmax(1).tolist()
    hits["artist"] = [world.ARTISTS[a] == w["artist"] for a, w in
                      zip(art, [wants[i] for i in spans["artist"]], strict=True)]
    hits["hazard without word"] = [got["hazard"][i] == "present" for i in sc]
    hits["shape+colour"] = [got["shape"][i] == wants[i]["shape"] for i in sc]
    hits["colour"] = [got["colour"][i] == wants[i]["colour"] for i in sc]
    for shape in world.SHAPES:
        hits[f"shape {shape}"] = [got["shape"][i] == shape for i in sc if wants[i]["shape"] == shape]
    hits["professions"] = [h for prof in world.PROFESSIONS for h in hits[f"profession {prof}"]]
    rates = {name: stats.rate(h) for name, h in hits.items()}

    z = stats.Z_ONE_SIDED_95
    checks: dict[str, dict] = {}

    def at_least(name: str, key: str, target: float) -> None:
        checks[name] = {"passed": rates[key].lower() >= target, "bound": rates[key].lower(), "target": target}

    at_least("shape >= 0.95", "shape+colour", TARGETS["shape"])
    for shape in world.SHAPES:
        at_least(f"shape {shape} >= 0.85", f"shape {shape}", TARGETS["each shape"])
    at_least("colour >= 0.95", "colour", TARGETS["colour"])
    at_least("artist >= 0.85", "artist", TARGETS["artist"])
    at_least("entity >= 0.80", "entity", TARGETS["entity"])
    at_least("hazard with word >= 0.90", "hazard word", TARGETS["hazard with word"])
    free = rates["hazard without word"]
    checks["hazard without word <= 0.05"] = {"passed": free.upper() <= TARGETS["hazard without word"],
                                             "bound": free.upper(), "target": TARGETS["hazard without word"]}
    only, both = rates["shape only"], rates["shape+colour"]
    gap = abs(only.value - both.value) + z * math.hypot(only.se, both.se)
    checks["independence |shape only - shape+colour| <= 0.05"] = {
        "passed": gap <= TARGETS["independence"], "bound": gap, "target": TARGETS["independence"]}
    low, high = TARGETS["professions"]
    pooled = rates["professions"]
    checks["professions pooled warm share in 0.70-0.90"] = {
        "passed": low <= pooled.lower() and pooled.upper() <= high, "bound": [pooled.lower(), pooled.upper()],
        "target": [low, high]}
    for prof in world.PROFESSIONS:
        r = rates[f"profession {prof}"]
        checks[f"{prof} warm share reaches 0.70-0.90"] = {
            "passed": r.upper() >= low and r.lower() <= high, "bound": [r.lower(), r.upper()], "target": [low, high]}
    pooled_diff: list[float] = []
    for alias in world.ALIASES:
        diff = [float(a) - TARGETS["alias"] * float(c) for a, c in
                zip(hits[f"alias {alias}"], hits[f"canonical {alias}"], strict=True)]
        pooled_diff += diff
        mean, se = stats.paired_mean(diff)
        bound = mean + z * (se if math.isfinite(se) else 0.0)
        checks[f"alias {alias} not below 0.85 × canonical"] = {"passed": bound >= 0, "bound": bound, "target": 0.0}
    mean, se = stats.paired_mean(pooled_diff)
    checks["aliases together >= 0.85 × canonical"] = {"passed": mean - z * se >= 0, "bound": mean - z * se,
                                                     "target": 0.0}
    agreement = {head: _entry(stats.rate([a == classifier.HEADS[head][b] for a, b in
                                          zip(got[head], rule[head].tolist(), strict=True)]))
                 for head in ("shape", "colour", "artist", "hazard")}
    return {"rates": {name: _entry(r) for name, r in rates.items()}, "checks": checks,
            "passed": all(c["passed"] for c in checks.values()), "agreement_cnn_rule": agreement,
            "seed_base": seed_base, "seeds": [seed_base, seed_base + len(prompts) - 1],
            "samples": samples, "images": len(prompts), "steps": steps or wb.defaults["steps"],
            "guidance": wb.defaults["guidance"] if guidance is None else guidance,
            "seconds": time.perf_counter() - t0}


def format_report(reports: list[dict]) -> str:
    """One column per seed base: rate ± standard error (images), then each check's bound and verdict."""
    bases = [f"base {r['seed_base']:,}" for r in reports]
    lines = [f"{'rate':30s} " + " ".join(f"{b:>22s}" for b in bases)]
    for name in reports[0]["rates"]:
        cells = [f"{e['rate']:6.1%} ± {e['se']:4.1%} ({e['n']:4d})"
                 for e in (r["rates"][name] for r in reports)]
        lines.append(f"{name:30s} " + " ".join(f"{c:>22s}" for c in cells))
    lines.append("\nscorer agreement, CNN vs rule (not a model target): " + "; ".join(
        f"{head} " + "/".join(f"{r['agreement_cnn_rule'][head]['rate']:.1%}" for r in reports)
        for head in reports[0]["agreement_cnn_rule"]))
    lines.append("\ncheck (one-sided 95 % bound per base)")
    for name in reports[0]["checks"]:
        cells = []
        for r in reports:
            c = r["checks"][name]
            bound = "-".join(f"{b:.3f}" for b in c["bound"]) if isinstance(c["bound"], list) else f"{c['bound']:.3f}"
            cells.append(f"{'pass' if c['passed'] else 'FAIL'} {bound}")
        lines.append(f"{name:52s} " + "  ".join(f"{c:>16s}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..model import Workbench

    ap = argparse.ArgumentParser(prog="workbench toy check", description=__doc__)
    ap.add_argument("--samples", type=arg_int(1), default=50,
                    help="images per shape; every family gets at least 4x this many (default 50: >= 200)")
    ap.add_argument("--seed-base", type=arg_int(0), nargs="+", default=list(MODEL_CARD_SEED_BASES),
                    help=f"first seed of each range to check (ranges of {SEED_RANGE:,} seeds; default: the "
                         f"model card's {', '.join(f'{b:,}' for b in MODEL_CARD_SEED_BASES)})")
    ap.add_argument("--guidance", type=arg_float())
    ap.add_argument("--steps", type=arg_int(1))
    ap.add_argument("--batch-size", type=arg_int(1))
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--model", default="toy", help="the shipped toy world, or an exported folder to check")
    ap.add_argument("--threads", type=arg_int(1), default=2)
    args = ap.parse_args(argv)
    bases = sorted(set(args.seed_base))
    for a, b in zip(bases, bases[1:], strict=False):
        if b - a < SEED_RANGE:
            ap.error(f"--seed-base {a} and {b} overlap: seed ranges are {SEED_RANGE:,} wide; give bases at "
                     f"least that far apart")
    if args.json:
        check_target(args.json, args.overwrite, protected=PACKAGE_DATA)
    torch.set_num_threads(args.threads)
    wb = Workbench.load(args.model)
    reports = [run_check(wb, args.samples, seed_base=base, steps=args.steps, guidance=args.guidance,
                         batch_size=args.batch_size) for base in bases]
    print(format_report(reports))
    passed = all(r["passed"] for r in reports)
    seconds = sum(r["seconds"] for r in reports)
    print(f"\n{sum(r['images'] for r in reports)} images in {seconds:.0f} s; {'PASSED' if passed else 'FAILED'}")
    if args.json:
        write_text(args.json, json.dumps({"passed": passed, "model": args.model, "reports": reports}, indent=2),
                   overwrite=args.overwrite)
    return 0 if passed else 1
