"""EMCID vs UCE rewriting many toy-world entities at once (issue 7's acceptance and comparison table).

Entity i (of the first ``--edits``) is rewritten to a new (colour, shape) that differs from its own in both
(``benchmarks/emcid.py``'s ``toy_request``). For n in ``--sizes`` the first n edits are made in one edit by
each editor:

- EMCID: stage I runs once for all edits (each concept's δ depends on its own prompts and seeds only, so
  the first n targets are what a run on n edits would find), stage II spreads the first n over the fc2
  layers for each n;
- UCE: the same sources mapped to their destinations (erase with the destination as the guide), keys from
  the last subject token through the padding (``tokens="to_end"``), preserving the held-out entities.

Scored with the toy classifier on ``--samples`` seeds per entity, same prompts and seeds before and after:
success = share of an edited entity's images showing its new (shape, colour); held-out entities (the
last ``--holdouts`` of the 200) keep their own; unrelated prompts (shapes, colours, artists) keep theirs.

    python benchmarks/emcid_toy.py [--sizes 1 10 50 100] [--samples 10] [--steps 30] [--lam 200]
        [--json out/emcid_toy.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from emcid import toy_request  # benchmarks/emcid.py, the same request as the timing benchmark

from editors import UCERequest, uce
from editors.emcid import caption_covariance, fc2_layers, stage_one, stage_two, toy_captions
from workbench import WeightDelta, Workbench
from workbench.evaluate import rates
from workbench.toy import world
from workbench.toy.check import concept_prompt, concept_scorer

UNRELATED = ["circle", "star", "red", "blue", "jonas flet", "vera kolm"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 10, 50, 100])
    ap.add_argument("--samples", type=int, default=10, help="seeds per entity")
    ap.add_argument("--holdouts", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30, help="EMCID stage I Adam steps")
    ap.add_argument("--lam", type=float, default=200.0, help="EMCID preserve-covariance weight")
    ap.add_argument("--editors", nargs="*", default=["emcid", "uce"])
    ap.add_argument("--uce-preserve-scale", type=float, default=0.1,
                    help="UCE's weight of the caption preserve set (at 1 it blocked every rewrite: 0 %% success)")
    ap.add_argument("--layers", type=int, nargs="*", help="EMCID text-encoder layers (default: the paper's range)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="out/emcid_toy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wb = Workbench.toy()
    n_max = max(args.sizes)
    full = toy_request(n_max, steps=args.steps, lam=args.lam)
    sources, destinations = full.sources, [e.destination for e in full.edits]
    held = list(world.ENTITIES)[-args.holdouts:]
    # UCE's keys run through the padding, which every prompt has: whole captions that do not name an edited
    # entity keep the rest of the world (without them the unrelated prompts lost up to 83 points).
    edited = set(sources)
    captions = world.captions(200, seed=5, hazard_rate=0.0, keep=lambda s: s.entity not in edited)
    if set(held) & set(sources):
        raise SystemExit("held-out entities overlap the edited ones; use fewer edits or holdouts")
    dest_of = dict(zip(sources, destinations, strict=True))

    def target_scorer(concept: str):  # an edited entity counts when its destination is drawn
        return concept_scorer(dest_of.get(concept, concept))

    def measure(concepts: list[str], scorer=concept_scorer) -> list[float]:
        return rates(wb, concepts, concept_prompt, scorer, args.samples)

    t0 = time.perf_counter()
    before = {"edited": measure(sources, target_scorer), "own": measure(sources),
              "holdout": measure(held), "unrelated": measure(UNRELATED)}
    print(f"before: {time.perf_counter() - t0:.0f} s; edited show their new target "
          f"{np.mean(before['edited']):.1%}, their own {np.mean(before['own']):.1%}", flush=True)

    layers = fc2_layers(wb, None if args.layers is None else [f"text.encoder.layers.{i}" for i in args.layers])
    timings: dict[str, float] = {}
    if "emcid" in args.editors:
        t = time.perf_counter()
        cov = caption_covariance(wb, layers, toy_captions())
        one = stage_one(wb, full, layers[-1], progress=True)
        timings["emcid_stage_one_per_concept"] = (time.perf_counter() - t) / n_max
        print(f"EMCID stage I: {timings['emcid_stage_one_per_concept']:.2f} s per concept ({args.steps} steps)",
              flush=True)

    rows = []
    for n in args.sizes:
        req = toy_request(n, steps=args.steps, lam=args.lam)
        for editor in args.editors:
            t = time.perf_counter()
            if editor == "emcid":
                new = stage_two(wb, req, layers, one.targets[:n], cov)
                delta = WeightDelta.capture(wb, new, method="emcid")
            else:
                delta = uce(wb, UCERequest(erase=sources[:n], guides=destinations[:n], preserve=held,
                                           preserve_prompts=captions, preserve_scale=args.uce_preserve_scale,
                                           tokens="to_end"), progress=False)
            seconds = time.perf_counter() - t
            with delta.applied(wb):
                after = {"edited": measure(sources[:n], target_scorer), "holdout": measure(held),
                         "unrelated": measure(UNRELATED)}
            success = after["edited"]
            row = {"editor": editor, "edits": n,
                   "success_mean": float(np.mean(success)),
                   "entities_at_least_half": float(np.mean([s >= 0.5 for s in success])),
                   "before_mean": float(np.mean(before["edited"][:n])),
                   "holdout_before": float(np.mean(before["holdout"])),
                   "holdout_after": float(np.mean(after["holdout"])),
                   "holdout_max_abs_change": float(np.max(np.abs(np.subtract(after["holdout"], before["holdout"])))),
                   "unrelated_max_abs_change": float(np.max(np.abs(np.subtract(after["unrelated"],
                                                                                 before["unrelated"])))),
                   "edit_seconds": round(seconds, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| edits | editor | new target shown (mean over entities) | entities ≥ 50 % | held-out mean "
          "before → after (max change) | unrelated max change | edit time |\n|---|---|---|---|---|---|---|")
    for r in rows:
        extra = (f" + stage I {timings['emcid_stage_one_per_concept'] * r['edits']:.0f} s"
                 if r["editor"] == "emcid" else "")
        print(f"| {r['edits']} | {r['editor']} | {r['success_mean']:.0%} | {r['entities_at_least_half']:.0%} | "
              f"{r['holdout_before']:.0%} → {r['holdout_after']:.0%} ({r['holdout_max_abs_change'] * 100:.0f} pts) | "
              f"{r['unrelated_max_abs_change'] * 100:.0f} pts | {r['edit_seconds']:.1f} s{extra} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "timings": timings, "before": before, "rows": rows},
                              indent=2))


if __name__ == "__main__":
    main()
