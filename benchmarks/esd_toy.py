"""ESD-x / ESD-u against UCE on the same toy-world requests (issue 6's acceptance and comparison table).

Requests: erase one artist, erase the hazard mark, erase one shape. Each edit is evaluated with the toy
classifier on ``--samples`` seeds per concept, the same prompts and seeds before and after. Reported per
(request, editor): efficacy (relative drop of the edited rate), the largest and mean change of the held-out
concepts, and the wall time of the edit. Peak memory is ``benchmarks/esd.py``'s: measured in one process, it
is wrong after the first edit (the allocator keeps freed memory resident), so it is not reported here.

    python benchmarks/esd_toy.py [--samples 50] [--iterations 300] [--lr-x 2e-4] [--lr-u 5e-4] [--only ...]
        [--editors esd uce] [--json out/esd_toy.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from editors import ESDRequest, UCERequest, esd, uce
from workbench import Workbench
from workbench.evaluate import evaluate
from workbench.toy import world
from workbench.toy.protocol import ARTIST_TEMPLATES, SHAPE_TEMPLATES

ARTIST = "jonas flet"
SHAPE = "circle"



def requests(wb: Workbench, args) -> dict[str, dict]:
    """Per request: the concepts evaluated, the held-out ones, and one edit per editor."""
    x_kw = dict(iterations=args.iterations, lr=args.lr_x, seed=0)
    u_kw = dict(iterations=args.iterations, lr=args.lr_u, seed=0)
    held = [a for a in world.HELD_OUT_ARTISTS]
    artist_captions = world.captions(200, seed=123, keep=lambda s: s.artist in set(held) and s.entity is None,
                                     artist_rate=1.0, hazard_rate=0.0)
    safe_captions = world.captions(200, seed=7, hazard_rate=0.0)
    other_shapes = [s for s in world.SHAPES if s != SHAPE]
    return {
        "artist": dict(
            concepts=[ARTIST], holdouts=held,
            esd=lambda: esd.edit(wb, ESDRequest(ARTIST, method="esd-x", **x_kw), progress=args.progress),
            uce=lambda: uce.edit(wb, UCERequest(erase=[ARTIST], preserve=held, preserve_prompts=artist_captions,
                                           tokens="to_end", templates=ARTIST_TEMPLATES), progress=False),
            esd_method="esd-x"),
        "hazard": dict(
            # ESD erases one prompt: trained on the first hazard word, evaluated on all four.
            concepts=list(world.HAZARD_WORDS), holdouts=[SHAPE, "star", "blue", ARTIST],
            esd=lambda: esd.edit(wb, ESDRequest(world.HAZARD_WORDS[0], method="esd-u", **u_kw), progress=args.progress),
            uce=lambda: uce.edit(wb, UCERequest(moderate=list(world.HAZARD_WORDS), preserve_prompts=safe_captions,
                                           tokens="to_end"), progress=False),
            esd_method="esd-u"),
        "shape": dict(
            concepts=[SHAPE], holdouts=other_shapes,
            esd=lambda: esd.edit(wb, ESDRequest(SHAPE, method="esd-u", **u_kw), progress=args.progress),
            uce=lambda: uce.edit(wb, UCERequest(erase=[SHAPE], preserve=other_shapes, tokens="to_end",
                                           templates=SHAPE_TEMPLATES), progress=False),
            esd_method="esd-u"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=300)
    # The paper's 1e-5 x 1000 iterations is for SD. On the toy world, 300 iterations: esd-x at 1.5e-4 left the
    # artist at 60 % (10 seeds); 2e-4 -> 8 %, other artists <= 10 points; 3e-4 -> 0 %, others up to 24
    # points (50 seeds). esd-u at 1.5e-4 left the hazard mark at 50 % (10 seeds).
    ap.add_argument("--lr-x", type=float, default=2e-4, help="learning rate of the esd-x edits")
    ap.add_argument("--lr-u", type=float, default=5e-4, help="learning rate of the esd-u edits")
    ap.add_argument("--only", nargs="*", default=["artist", "hazard", "shape"])
    ap.add_argument("--editors", nargs="*", default=["esd", "uce"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", default="out/esd_toy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wb = Workbench.toy()
    rows = []
    for name, req in requests(wb, args).items():
        if name not in args.only:
            continue
        for editor in args.editors:
            t0 = time.perf_counter()
            delta = req[editor]()
            seconds = time.perf_counter() - t0
            report = evaluate(wb, delta, req["concepts"], holdouts=req["holdouts"], samples=args.samples)
            edited = report.group("edited")
            row = {"request": name, "editor": req["esd_method"] if editor == "esd" else "uce",
                   "before": [round(r.before, 3) for r in edited], "after": [round(r.after, 3) for r in edited],
                   "efficacy_min_relative_drop": report.summary["efficacy_min_relative_drop"],
                   "after_max": max(r.after for r in edited),
                   "holdout_max_abs_change": report.summary["specificity_max_abs_change"],
                   "holdout_mean_abs_change": report.summary["specificity_mean_abs_change"],
                   "seconds": round(seconds, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| request | editor | rate before → after | efficacy (min rel. drop) | holdout max / mean change "
          "| time |\n|---|---|---|---|---|---|")
    for r in rows:
        rates = ", ".join(f"{b:.0%}→{a:.0%}" for b, a in zip(r["before"], r["after"], strict=True))
        print(f"| {r['request']} | {r['editor']} | {rates} | {r['efficacy_min_relative_drop']:.0%} | "
              f"{r['holdout_max_abs_change'] * 100:.0f} / {r['holdout_mean_abs_change'] * 100:.1f} pts | "
              f"{r['seconds']:.1f} s |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
