"""What changed, found without being asked (issue 22): ``workbench diff`` after four toy-world edits, with the
toy classifier and the toy CLIP as rankers on the same images.

Per edit, two prompt sets, each drawn by the base and the edited model at the same seeds (fixed before any
result was seen): the edited concept's own evaluation prompts (``--own`` images), and the world scan's
prompts (``scan_prompts(--samples)``: every concept of every family at ``--samples`` images or more) less
those that draw or name the edited concept (``unrelated_items``). A training-grammar sample is no
substitute: a change confined to one artist's images needs ~50 of them to pass a correction over 43
descriptions, and each artist is 3.5 % of the grammar's captions. Printed per edit, set and ranker: the
top "removed" and "added" descriptions with their AUROC, and every description significant after Holm at
0.05; then how the two rankers agree (Spearman correlation of the 43 AUROCs, the same top description, the
same significant set).

    python benchmarks/visdiff_toy.py [--own 48] [--samples 50] [--seed 5000000] [--json FILE] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from scipy.stats import spearmanr

from editors import UCERequest, uce
from workbench import Workbench
from workbench.files import write_text
from workbench.measure import load_scorer
from workbench.measure.diff import diff_images
from workbench.toy import recipes, world
from workbench.toy.protocol import SHAPE_TEMPLATES, concept_prompt
from workbench.toy.scan import scan_prompts, unrelated_items


def circle_before_fix(wb):
    """The circle erasure as the README's table first had it: only the other shapes preserved (the world scan
    then found "lukas merro" down 26-30 points)."""
    others = [s for s in world.SHAPES if s != "circle"]
    request = UCERequest(erase=["circle"], preserve=others, tokens="to_end", templates=SHAPE_TEMPLATES)
    return uce.edit(wb, request, progress=False), ["circle", "disc"]


EDITS = {
    "Diff-QuickFix erase jonas flet": (recipes.quickfix_erase_artist, "jonas flet"),
    "UCE debias doctor to 50/50": (recipes.uce_debias_doctor, "doctor"),
    "UCE erase circle, before its recipe was fixed": (circle_before_fix, "circle"),
    "UCE erase circle (the README's recipe)": (recipes.uce_erase_shape, "circle"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--own", type=int, default=48, help="images of the edited concept's own prompts")
    ap.add_argument("--samples", type=int, default=50, help="the world scan's images per concept")
    ap.add_argument("--seed", type=int, default=5_000_000)
    ap.add_argument("--only", nargs="+", choices=list(EDITS))
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wb = Workbench.toy()
    rankers = {name: load_scorer(name, world=wb.world) for name in ("toy", "toy-clip")}
    descriptions = wb.world.descriptions()
    out = {}
    items = scan_prompts(args.samples)
    scan_seeds = [args.seed + k for k in range(len(items))]
    t0 = time.perf_counter()
    scan_before = wb.sample([p for p, _ in items], scan_seeds)  # one base pass shared by every edit
    print(f"base pass: {len(items)} scan prompts, seeds from {args.seed} ({time.perf_counter() - t0:.0f} s)")
    for e, (label, (recipe, concept)) in enumerate(EDITS.items()):
        if args.only and label not in args.only:
            continue
        t0 = time.perf_counter()
        delta, edited = recipe(wb)
        keep = unrelated_items(edited, args.samples)
        own = [concept_prompt(concept, i) for i in range(args.own)]
        with delta.applied(wb):
            scan_after = wb.sample([p for p, _ in items], scan_seeds)
        own_seeds = [args.seed + 1_000_000 * (e + 1) + k for k in range(len(own))]
        own_before = wb.sample(own, own_seeds)
        with delta.applied(wb):
            own_after = wb.sample(own, own_seeds)
        sets = {"own prompts": (own, own_seeds, own_before, own_after),
                "unrelated prompts": ([items[k][0] for k in keep], [scan_seeds[k] for k in keep], scan_before[keep],
                                      scan_after[keep])}
        out[label] = {}
        for set_name, (prompts, seeds, before, after) in sets.items():
            results = {name: diff_images(before, after, descriptions, scorer, paired=True)
                       for name, scorer in rankers.items()}
            row = {}
            for name, r in results.items():
                rem, add = r.removed(1), r.added(1)
                row[name] = {"top_removed": [rem[0].name, rem[0].auroc] if rem else None,
                             "top_added": [add[0].name, add[0].separation] if add else None,
                             "top": [r.top.name, r.top.direction, r.top.separation],
                             "significant": [[x.name, x.direction, x.separation, x.mean_diff, x.p_adjusted]
                                             for x in r.significant()]}
            a, b = results["toy"], results["toy-clip"]
            rho = spearmanr([x.auroc for x in a.rows], [x.auroc for x in b.rows]).statistic
            row["agreement"] = {"spearman_auroc": float(rho), "same_top": a.top.name == b.top.name,
                                "same_significant": {x.name for x in a.significant()}
                                == {x.name for x in b.significant()}}
            out[label][set_name] = row
            print(f"\n{label}: {set_name} ({len(prompts)} images each, seeds from {seeds[0]})")
            for name in rankers:
                v = row[name]
                sig = ", ".join(f"{n} {d} {auc:.2f} ({100 * m:+.1f} pts, p {p:.1g})" for n, d, auc, m, p in
                                v["significant"]) or "none"
                rem = v["top_removed"] and f"{v['top_removed'][0]} {v['top_removed'][1]:.3f}"
                add = v["top_added"] and f"{v['top_added'][0]} {v['top_added'][1]:.3f}"
                print(f"  {name:8s} removed: {rem}; added: {add}; significant: {sig}")
            print(f"  rankers: Spearman of AUROCs {rho:.2f}, same top {row['agreement']['same_top']}, same "
                  f"significant set {row['agreement']['same_significant']}")
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        write_text(args.json, json.dumps(out, indent=1), overwrite=True)


if __name__ == "__main__":
    main()
