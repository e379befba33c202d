"""The world scan after each editor recipe of the README's table (issue 18): what else moved.

Every recipe of ``workbench.toy.recipes`` is built on the shipped toy world and scanned: all shapes, colours,
artists, hazard words (and the mark without one), each profession's warm share, 25 entities and the stale
fact, ``--samples`` images per concept or more, the same seeds before and after (one shared "before" pass).
Printed per recipe: the edited rows, the largest change outside the edited set with its paired standard
error, and the mean absolute change per family.

    python benchmarks/world_scan_editors.py [--samples 50] [--only "UCE erase circle" ...] [--json FILE]
        [--readings FILE] [--threads N] [--model toy-xl] [--pooled]

``--model toy-xl`` scans the SDXL-shaped toy world; ``--pooled`` adds, for each UCE recipe, the same edit with
the pooled text path edited too (``UCERequest(pooled=True)``), so the two rows show what leaks through it.

``--readings FILE`` keeps the "before" readings: read from FILE when it exists (same samples and seed), else
written there, so two one-thread processes can split the recipes and share one "before" pass.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workbench import Workbench
from workbench.files import write_text
from workbench.toy.recipes import POOLED_RECIPES, RECIPES
from workbench.toy.scan import scan_readings, world_scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=list(RECIPES))
    ap.add_argument("--top", type=int, default=5, help="largest outside changes printed per recipe")
    ap.add_argument("--json")
    ap.add_argument("--readings", type=Path, help="the 'before' readings: reused if present, else written")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="toy", choices=["toy", "toy-xl"])
    ap.add_argument("--pooled", action="store_true", help="also each UCE recipe with the pooled path edited")
    ap.add_argument("--pooled-only", action="store_true",
                    help="with --pooled: the UCE recipes only with the pooled path edited (to split a run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wb = Workbench.load(args.model)
    t0 = time.perf_counter()
    key = {"samples": args.samples, "seed": args.seed, "model": wb.name, "fingerprint": wb.fingerprint()}
    if args.readings and args.readings.exists():
        try:
            saved = json.loads(args.readings.read_text())
            saved_key, before = saved["key"], saved["readings"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"{args.readings}: not readings written by this benchmark ({err})") from None
        if saved_key != key:
            raise SystemExit(f"{args.readings} holds readings for {saved_key}, not {key}")
    else:
        before = scan_readings(wb, args.samples, args.seed, progress=True)
        if args.readings:
            write_text(args.readings, json.dumps({"key": key, "readings": before}))
    print(f"before: {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    runs = [(name, False) for name in args.only or list(RECIPES)]
    if args.pooled:
        runs += [(name, True) for name, _ in list(runs) if name in POOLED_RECIPES]
        if args.pooled_only:
            runs = [(name, pooled) for name, pooled in runs if pooled or name not in POOLED_RECIPES]
    for name, pooled in runs:
        t0 = time.perf_counter()
        delta, edited = RECIPES[name](wb, pooled=True) if pooled else RECIPES[name](wb)
        name = f"{name} (+ pooled path)" if pooled else name
        edit_s = time.perf_counter() - t0
        scan = world_scan(wb, delta, edited, samples=args.samples, seed=args.seed, before=before, progress=True)
        worst = scan.worst
        print(f"\n## {name} (edit {edit_s:.1f} s)")
        for r in scan.rows:
            if r.edited:
                print(f"  edited  {r.concept:26s} {r.before:6.1%} -> {r.after:6.1%}  (n={r.n})")
        for r in scan.outside()[: args.top]:
            print(f"  outside {r.concept:26s} {r.before:6.1%} -> {r.after:6.1%}  {100 * r.change:+5.1f} ± "
                  f"{100 * r.change_se:.1f} points (n={r.n})")
        print("  family mean |change| outside: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in
                                                             scan.family_mean_abs_change().items()))
        print(f"  worst outside: {worst.concept} {100 * worst.change:+.1f} ± {100 * worst.change_se:.1f} points",
              flush=True)
        results[name] = {"edit_seconds": edit_s, **scan.to_dict()}
    if args.json:
        write_text(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
