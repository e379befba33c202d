"""Family-averaged restore-effect maps on the toy world, and proxy vs faithful agreement and cost.

For each concept family (shape, colour, artist, entity, hazard) and ``--prompts`` prompts: a text-encoder
trace (hidden states, every position incl. padding) and a UNet trace (cross-attention layers), with the
proxy metric and the faithful one (generate + toy scorer). Prints per family the most causal layers and
tokens, the Spearman correlation of proxy and faithful (text: over layer × position cells from the subject
on; UNet: over the 20 UNet sites), mean over prompts, and the cost ratio; writes heatmaps and a
JSON summary to ``--out``.

    python benchmarks/toy_maps.py [--prompts 10] [--samples 5] [--compare-prompts 4] [--out out/toy_maps]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tracing import TraceResult, TraceSettings, spearman, trace_text_encoder, trace_unet
from tracing.plot import save_heatmap
from workbench import Workbench
from workbench.toy import world
from workbench.toy.protocol import concept_scorer


def family_prompts(n: int, seed: int = 4242) -> dict[str, list[tuple[str, str]]]:
    """(prompt, subject) pairs per family, built from the toy grammar."""
    r = np.random.default_rng(seed)

    def pick(xs):
        return xs[int(r.integers(len(xs)))]

    out: dict[str, list[tuple[str, str]]] = {f: [] for f in ("shape", "colour", "artist", "entity", "hazard")}
    for i in range(n):
        shape, colour = world.SHAPES[i % len(world.SHAPES)], pick(world.COLOURS)
        out["shape"].append((f"a photo of a {colour} {shape}", shape))
        c = world.COLOURS[i % len(world.COLOURS)]
        out["colour"].append((f"a {c} {pick(world.SHAPES)}", c))
        artist = world.ARTISTS[i % len(world.ARTISTS)]
        out["artist"].append((f"a {pick(world.COLOURS)} {pick(world.SHAPES)} by {artist}", artist))
        entity = list(world.ENTITIES)[int(r.integers(len(world.ENTITIES)))]
        out["entity"].append((f"an image of {entity}", entity))
        hazard = world.HAZARD_WORDS[i % len(world.HAZARD_WORDS)]
        out["hazard"].append((f"a {pick(world.COLOURS)} {pick(world.SHAPES)} {hazard}", hazard))
    return out


UNET_KINDS = ["resnet", "attn1", "attn2", "ff"]


def proxy_cells(summary: dict, family: str) -> str:
    sizes = sorted({len(e) for e in summary[family]["text_proxy_effects"]})
    return "-".join(str(n) for n in (sizes[0], sizes[-1])) if len(sizes) > 1 else str(sizes[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=10, help="prompts per family for the proxy maps")
    ap.add_argument("--samples", type=int, default=5, help="noise samples of the proxy maps")
    ap.add_argument("--compare-prompts", type=int, default=4, help="prompts per family for proxy vs faithful")
    ap.add_argument("--proxy-samples", type=int, default=3, help="noise samples of the compared proxy")
    # The faithful metric is the reference, so it must be precise: with 5 images per cell its own ranking
    # is noisy enough to cap any correlation with it.
    ap.add_argument("--faithful-samples", type=int, default=16, help="noise samples (images) of faithful, UNet")
    ap.add_argument("--faithful-text-samples", type=int, default=8, help="the same for text cells (more cells)")
    ap.add_argument("--families", nargs="*", help="only these families (default all five)")
    ap.add_argument("--out", default="out/toy_maps")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wb = Workbench.toy()
    unet_rows = wb.layers(UNET_KINDS, part="unet")
    summary = {}
    for family, pairs in family_prompts(args.prompts).items():
        if args.families and family not in args.families:
            continue
        maps: dict[str, list[TraceResult]] = {k: [] for k in ("text-map", "unet-map", "text-proxy", "text-faithful",
                                                               "unet-proxy", "unet-faithful")}
        for n, (prompt, subject) in enumerate(pairs):
            common = TraceSettings(metric="proxy", samples=args.samples, progress=False)
            # full maps (proxy) for the family picture, padding positions included
            maps["text-map"].append(trace_text_encoder(wb, prompt, subject, tokens="all", settings=common))
            maps["unet-map"].append(trace_unet(wb, prompt, subject, windows=4, settings=common))
            if n >= args.compare_prompts:
                continue
            # proxy vs faithful on the same cells: every text state at the last subject token, and every UNet
            # site (resnet, attn1, attn2, ff) restored at all steps. The proxy is a continuous read-out with
            # little variance, so it needs fewer noise samples than a scorer over images.
            scorer = concept_scorer(subject)
            # Text cells: every state from the first subject token on, padding included (earlier positions
            # are never corrupted in a causal encoder: exact zeros in both metrics would inflate the rank
            # correlation).
            cells = list(range(wb.subject_positions(prompt, subject)[0], wb.max_length))
            fast = TraceSettings(metric="proxy", samples=args.proxy_samples, progress=False)
            slow = TraceSettings(metric="faithful", samples=args.faithful_samples, progress=False)
            slow_text = replace(slow, samples=args.faithful_text_samples)
            maps["text-proxy"].append(trace_text_encoder(wb, prompt, subject, tokens=cells, settings=fast))
            maps["text-faithful"].append(trace_text_encoder(wb, prompt, subject, tokens=cells, settings=slow_text,
                                                            scorer=scorer))
            maps["unet-proxy"].append(trace_unet(wb, prompt, subject, layers=unet_rows, settings=fast))
            maps["unet-faithful"].append(trace_unet(wb, prompt, subject, layers=unet_rows, settings=slow,
                                                    scorer=scorer))
        fam = {}
        for part in ("text", "unet"):
            avg = TraceResult.average(maps[f"{part}-map"])
            avg.save(out / f"{family}-{part}", overwrite=True)  # a rerun replaces its own output
            save_heatmap(avg, out / f"{family}-{part}.png", overwrite=True)
            fam[f"{part}_top"] = avg.pick_layers(2, by="max" if part == "text" else "mean")
            fam[f"{part}_map"] = [[round(float(v), 3) for v in row] for row in avg.scores]
            fam[f"{part}_cols"] = avg.cols
            proxy, faithful = maps[f"{part}-proxy"], maps[f"{part}-faithful"]
            rho = [spearman(p.scores.flatten(), f.scores.flatten()) for p, f in zip(proxy, faithful, strict=True)]
            fam[f"{part}_rows"] = proxy[0].rows
            fam[f"{part}_spearman_per_prompt"] = [round(r, 3) for r in rho]
            fam[f"{part}_spearman_layers"] = float(np.nanmean(rho))
            fam[f"{part}_proxy_seconds"] = sum(p.seconds for p in proxy)
            fam[f"{part}_faithful_seconds"] = sum(f.seconds for f in faithful)
            fam[f"{part}_proxy_cost_ratio"] = fam[f"{part}_proxy_seconds"] / fam[f"{part}_faithful_seconds"]
            fam[f"{part}_faithful_clean_corrupted"] = [float(np.mean([f.clean for f in faithful])),
                                                      float(np.mean([f.corrupted for f in faithful]))]
            # text cells differ per prompt (subject position), so those are kept per prompt
            for name, runs in (("faithful", faithful), ("proxy", proxy)):
                fam[f"{part}_{name}_effects"] = (
                    [[round(float(v), 3) for v in TraceResult.average(runs).scores.flatten()]] if part == "unet"
                    else [[round(float(v), 3) for v in r.scores.flatten()] for r in runs])
            if part == "text":  # the layer ranking itself (best cell per layer); only 5 rows, so coarse
                fam["text_spearman_layer_max"] = float(np.nanmean(
                    [spearman(p.ranking("max"), f.ranking("max")) for p, f in zip(proxy, faithful, strict=True)]))
        summary[family] = fam
        print(f"{family:7s} text top {fam['text_top']}, unet top {fam['unet_top']}", flush=True)
        for part in ("text", "unet"):
            what = (f"{proxy_cells(summary, family)} cells (layer × position)" if part == "text"
                    else f"{len(fam['unet_rows'])} layers")
            print(f"        {part}: spearman(proxy, faithful) over {what} "
                  f"{fam[f'{part}_spearman_layers']:.2f} {fam[f'{part}_spearman_per_prompt']}, proxy cost "
                  f"{fam[f'{part}_proxy_cost_ratio']:.3f} of faithful; faithful clean/corrupted "
                  f"{fam[f'{part}_faithful_clean_corrupted']}", flush=True)
        print(f"        text: spearman of the layer ranking (best cell) {fam['text_spearman_layer_max']:.2f}")
    overall = {part: float(np.mean([summary[f][f"{part}_spearman_layers"] for f in summary])) for part in
               ("text", "unet")}
    cost = {part: sum(summary[f][f"{part}_proxy_seconds"] for f in summary) /
            sum(summary[f][f"{part}_faithful_seconds"] for f in summary) for part in ("text", "unet")}
    summary["overall"] = {"spearman": overall, "proxy_cost_ratio": cost}
    print(f"overall: spearman text {overall['text']:.2f}, unet {overall['unet']:.2f} (target >= 0.8); proxy cost "
          f"text {cost['text']:.3f}, unet {cost['unet']:.3f} of faithful (target <= 0.05)")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json and heatmaps")


if __name__ == "__main__":
    main()
