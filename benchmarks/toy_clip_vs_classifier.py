"""Does `evaluate` with the toy CLIP scorer give the classifier's numbers? (issue 20)

For the README's UCE and Diff-QuickFix erasure rows, ``evaluate`` runs with one scorer per process (the same
prompts and seeds either way, so the images are the same) and writes every rate; ``--compare`` prints the two
side by side with the largest per-concept difference in points. Without arguments: both scorers in one
process, then the comparison (about 30 minutes on one core). On two cores:

    python benchmarks/toy_clip_vs_classifier.py --scorer toy --json cnn.json &
    python benchmarks/toy_clip_vs_classifier.py --scorer toy-clip --json clip.json; wait
    python benchmarks/toy_clip_vs_classifier.py --compare cnn.json clip.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from workbench import Workbench
from workbench.evaluate import evaluate
from workbench.files import write_text
from workbench.measure import load_scorer
from workbench.toy import recipes, world

ROWS = {  # recipe -> held-out concepts (the edited ones and their aliases come from the recipe)
    "UCE erase circle": [s for s in world.SHAPES if s != "circle"],
    "UCE erase 10 artists": world.HELD_OUT_ARTISTS,
    "UCE moderate 4 hazard words": ["circle", "square", "red", "blue", "lukas merro", "anouk tersel"],
    "Diff-QuickFix erase jonas flet": world.HELD_OUT_ARTISTS,
}


def run(scorer_spec: str, samples: int, seed: int) -> dict:
    wb = Workbench.toy()
    scorer = load_scorer(scorer_spec, world=wb.world)
    out = {"scorer": scorer_spec, "samples": samples, "seed": seed, "rows": {}}
    for name, holdouts in ROWS.items():
        t0 = time.perf_counter()
        delta, edited = recipes.RECIPES[name](wb)
        concepts = [c for c in edited if c not in world.ALIASES]
        aliases = [c for c in edited if c in world.ALIASES]
        report = evaluate(wb, delta, concepts, aliases=aliases, holdouts=holdouts, samples=samples, seed=seed,
                          scorer=scorer, grid_images=0)
        out["rows"][name] = [dict(group=r.group, concept=r.concept, before=r.before, after=r.after)
                             for r in report.rates]
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def compare(a: dict, b: dict) -> str:
    n = a["samples"]
    lines = [f"{a['scorer']} vs {b['scorer']}, {n} seeds per concept from {a['seed']} (same images)", "",
             "| row | group | n concepts | before A | before B | after A | after B | max abs diff (points) |",
             "|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for name, rows_a in a["rows"].items():
        rows_b = {(r["group"], r["concept"]): r for r in b["rows"][name]}
        for group in ("edited", "alias", "holdout"):
            ra = [r for r in rows_a if r["group"] == group]
            if not ra:
                continue
            rb = [rows_b[(r["group"], r["concept"])] for r in ra]

            def mean(rows, key):
                return sum(r[key] for r in rows) / len(rows)

            diff = max(abs(x[k] - y[k]) for x, y in zip(ra, rb, strict=True) for k in ("before", "after"))
            worst = max(worst, diff)
            lines.append(f"| {name} | {group} | {len(ra)} | {mean(ra, 'before'):.1%} | {mean(rb, 'before'):.1%} | "
                         f"{mean(ra, 'after'):.1%} | {mean(rb, 'after'):.1%} | {100 * diff:.1f} |")
    se = 100 * math.sqrt(0.5 * 0.5 / n)
    lines += ["", f"largest per-concept difference: {100 * worst:.1f} points (a single concept's rate has an SE of "
              f"at most {se:.1f} points at {n} seeds; both scorers read the same images)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scorer", help="one scorer (toy or toy-clip) for --json; default: both, compared")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(open(p).read()) for p in args.compare)
        print(compare(a, b))
        return
    torch.set_num_threads(args.threads)
    if args.scorer is None:  # both, one after the other, and the comparison
        print(compare(run("toy", args.samples, args.seed), run("toy-clip", args.samples, args.seed)))
        return
    result = run(args.scorer, args.samples, args.seed)
    if args.json:
        write_text(args.json, json.dumps(result, indent=1), overwrite=True)


if __name__ == "__main__":
    main()
