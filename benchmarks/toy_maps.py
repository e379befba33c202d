"""Family-averaged restore-effect maps on the toy world, and proxy vs faithful agreement and cost.

For each concept family (shape, colour, artist, entity, hazard) and ``--prompts`` prompts: a text-encoder
trace (hidden states) and a UNet trace (cross-attention layers), with the proxy metric and the faithful
one (generate + toy scorer). Prints per family the most causal layers/tokens, the Spearman correlation of
the proxy's and the faithful layer ranking (mean over prompts) and the cost ratio; writes heatmaps and a
JSON summary to ``--out``.

    python benchmarks/toy_maps.py [--prompts 10] [--samples 10] [--out out/toy_maps]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tracing import TraceResult, spearman, trace_text_encoder, trace_unet
from tracing.plot import save_heatmap
from workbench import Workbench
from workbench.toy import world
from workbench.toy.check import concept_scorer


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--out", default="out/toy_maps")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wb = Workbench.toy()
    summary = {}
    for family, pairs in family_prompts(args.prompts).items():
        maps: dict[str, list[TraceResult]] = {k: [] for k in ("text-map", "unet-map", "text-proxy", "text-faithful",
                                                               "unet-proxy", "unet-faithful")}
        for prompt, subject in pairs:
            scorer = concept_scorer(subject)
            common = dict(samples=args.samples, progress=False)
            last = [wb.subject_positions(prompt, subject)[-1]]
            # full maps (proxy) for the family picture
            maps["text-map"].append(trace_text_encoder(wb, prompt, subject, metric="proxy", **common))
            maps["unet-map"].append(trace_unet(wb, prompt, subject, windows=4, metric="proxy", **common))
            # proxy vs faithful on the same cells: text states at the last subject token, UNet layers (all steps)
            maps["text-proxy"].append(trace_text_encoder(wb, prompt, subject, metric="proxy", tokens=last, **common))
            maps["text-faithful"].append(trace_text_encoder(wb, prompt, subject, metric="faithful", scorer=scorer,
                                                            tokens=last, **common))
            maps["unet-proxy"].append(trace_unet(wb, prompt, subject, metric="proxy", **common))
            maps["unet-faithful"].append(trace_unet(wb, prompt, subject, metric="faithful", scorer=scorer, **common))
        fam = {}
        for part in ("text", "unet"):
            avg = TraceResult.average(maps[f"{part}-map"])
            avg.save(out / f"{family}-{part}")
            save_heatmap(avg, out / f"{family}-{part}.png")
            fam[f"{part}_top"] = avg.pick_layers(2, by="max" if part == "text" else "mean")
            fam[f"{part}_map"] = [[round(float(v), 3) for v in row] for row in avg.scores]
            fam[f"{part}_cols"] = avg.cols
            proxy, faithful = maps[f"{part}-proxy"], maps[f"{part}-faithful"]
            rho = [spearman(p.scores.flatten(), f.scores.flatten()) for p, f in zip(proxy, faithful, strict=True)]
            fam[f"{part}_spearman_layers"] = float(np.nanmean(rho))
            fam[f"{part}_proxy_cost_ratio"] = sum(p.seconds for p in proxy) / sum(f.seconds for f in faithful)
            fam[f"{part}_faithful_clean_corrupted"] = [float(np.mean([f.clean for f in faithful])),
                                                      float(np.mean([f.corrupted for f in faithful]))]
            fam[f"{part}_faithful_layer_effects"] = [round(float(v), 3) for v in
                                                     TraceResult.average(faithful).scores.flatten()]
            fam[f"{part}_proxy_layer_effects"] = [round(float(v), 3) for v in
                                                  TraceResult.average(proxy).scores.flatten()]
        summary[family] = fam
        print(f"{family:7s} text top {fam['text_top']}, unet top {fam['unet_top']}")
        for part in ("text", "unet"):
            print(f"        {part}: spearman(proxy, faithful) over layers {fam[f'{part}_spearman_layers']:.2f}, "
                  f"proxy cost {fam[f'{part}_proxy_cost_ratio']:.3f} of faithful; faithful clean/corrupted "
                  f"{fam[f'{part}_faithful_clean_corrupted']}; proxy {fam[f'{part}_proxy_layer_effects']} "
                  f"faithful {fam[f'{part}_faithful_layer_effects']}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json and heatmaps")


if __name__ == "__main__":
    main()
