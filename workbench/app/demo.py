"""The main job on the toy world (``make demo`` / ``workbench demo``): trace an artist in the text encoder and
the UNet, pick the causal layers, erase the artist there with UCE and with Diff-QuickFix, evaluate both edits
and write heatmaps, image grids, the evaluation JSON and ``report.md``.

Like ``cli.py`` this is the application layer (``workbench.app``): it may import every other layer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..files import PACKAGE_DATA, atomic_dir
from ..images import grid, save_image
from ..model import Workbench

MIN_EFFECT = 0.05  # below this restore effect a trace has located nothing


def _step(i: int, n: int, text: str) -> None:
    print(f"[{i}/{n}] {text}", flush=True)


def run_demo(out: str | Path = "out/demo", *, model: str = "toy", subject: str = "jonas flet",
             prompt: str | None = None, trace_samples: int = 5, eval_samples: int = 24,
             attack: bool = True, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the whole loop and return the path of ``report.md``.

    Everything is written into a temporary folder that replaces ``out`` only once complete (an existing
    ``out`` only with ``overwrite``, and only if it holds nothing but an earlier demo's files)."""
    from ..toy import world

    if model not in ("toy", "toy-entities"):
        raise ValueError("the demo runs on a toy world (--model toy or toy-entities): its scorer is the ground "
                         "truth")
    if subject not in world.ARTISTS:
        raise ValueError(f"the demo erases an artist; {subject!r} is not one of {world.ARTISTS}")
    out = Path(out)
    atomic_dir(out, lambda tmp: _run(tmp, model, subject, prompt, trace_samples, eval_samples, attack, progress),
               overwrite=overwrite, protected=PACKAGE_DATA)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"


def _run(out: Path, model: str, subject: str, prompt: str | None, trace_samples: int, eval_samples: int,
         attack: bool, progress: bool) -> None:
    from editors import UCERequest, quickfix, uce
    from tracing import TraceSettings, trace_text_encoder, trace_unet
    from tracing.plot import save_heatmap

    from ..evaluate import evaluate
    from ..toy import recipes, world
    from ..toy.protocol import ARTIST_TEMPLATES
    from ..toy.scan import scan_readings, world_scan

    t0 = time.time()
    n = 6
    wb = Workbench.load(model)
    prompt = prompt or f"a red circle by {subject}"
    holdouts = [a for a in world.HELD_OUT_ARTISTS if a != subject][:5]
    aliases = world.aliases_for(subject)
    unrelated = ["circle", "star", "blue", "danger"]

    _step(1, n, f"samples of {prompt!r}")
    save_image(grid(wb.sample([prompt] * 8, seed=0), nrow=8, scale=4), out / "samples.png")

    _step(2, n, "text-encoder trace (self-attention outputs at every position the UNet reads, proxy)")
    # Padding positions included: the toy encoder moves artists into its padding states, so a trace of the
    # real tokens alone finds nothing (SD's UNet reads the padding states too).
    settings = TraceSettings(samples=trace_samples, progress=progress)
    text = trace_text_encoder(wb, prompt, subject, kind="self_attn", tokens="all", settings=settings)
    text.save(out / "trace_text")
    save_heatmap(text, out / "trace_text.png")
    text_layer = text.pick_layers(1, kinds=quickfix.LAYER_KINDS)[0]
    if text.effect(text_layer) < MIN_EFFECT:
        # No state restores the concept: fall back to Diff-QuickFix's own default, layer 0, and say so.
        print(f"the text trace found no causal state (best {text.effect(text_layer):.3f} < {MIN_EFFECT}); "
              f"Diff-QuickFix uses its default layer 0")
        text_layer = fallback_layer = wb.layers("self_attn")[0]
    else:
        fallback_layer = None

    _step(3, n, "UNet trace (cross-attention layers × 4 step windows, proxy)")
    unet = trace_unet(wb, prompt, subject, layers="attn2", windows=4, settings=settings)
    unet.save(out / "trace_unet")
    save_heatmap(unet, out / "trace_unet.png")
    unet_layers = unet.pick_layers(2, kinds=uce.LAYER_KINDS)

    _step(4, n, f"UCE on {unet_layers}; Diff-QuickFix on {text_layer}")
    # The toy encoder carries artists in its padding positions, which both edits touch: captions of the
    # other artists, kept whole, protect them (without them every artist falls with the erased one). The
    # Diff-QuickFix recipe brings its own, from every family (workbench.toy.recipes).
    captions = world.captions(200, seed=3, keep=lambda s: s.artist not in (None, subject), artist_rate=0.9)
    templates = ARTIST_TEMPLATES[:5]  # five key contexts keep the demo's edits quick
    edits = {
        "uce": uce.edit(wb, UCERequest(erase=[subject], preserve=holdouts, preserve_prompts=captions,
                                       tokens="to_end", templates=templates), unet_layers, progress=False),
        "quickfix": recipes.quickfix_erase_artist(wb, subject, text_layer)[0],  # the README's recipe
    }
    for name, delta in edits.items():
        delta.save(out / f"{name}.safetensors")

    _step(5, n, f"evaluate both edits ({eval_samples} seeds per concept, same seeds before and after"
                f"{', with an adversarial prompt search' if attack else ''})")
    reports = {}
    # The world scan rates every concept of the toy world; the unedited readings are shared by both edits.
    before = scan_readings(wb, eval_samples, seed=0, progress=progress)
    for name, delta in edits.items():
        reports[name] = evaluate(wb, delta, [subject], aliases=aliases, holdouts=holdouts, unrelated=unrelated,
                                 samples=eval_samples, paraphrase=True, attack=attack, progress=progress)
        reports[name].scan = world_scan(wb, delta, [subject, *aliases], samples=eval_samples, seed=0, before=before,
                                        progress=progress)
        reports[name].save_json(out / f"evaluate_{name}.json")
        reports[name].save_grid(out / f"grid_{name}.png")

    _step(6, n, "report")
    report = out / "report.md"
    text_md = _report(wb, prompt, subject, text, unet, text_layer, unet_layers, reports, time.time() - t0,
                      fallback=fallback_layer is not None)
    report.write_text(text_md)
    summary = {name: r.to_dict()["summary"] for name, r in reports.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"text encoder picks {text_layer}; UNet picks {unet_layers}")
    for name, r in reports.items():
        s = r.summary
        worst = r.scan.worst
        print(f"{name:9s} efficacy (relative drop) {s['efficacy_mean_relative_drop']:.0%}, held-out artists "
              f"max change {s['specificity_max_abs_change']:.0%}; world scan: worst outside {worst.concept} "
              f"{100 * worst.change:+.0f} ± {100 * worst.change_se:.0f} points")
    print(f"done in {time.time() - t0:.0f} s")


def _report(wb, prompt, subject, text, unet, text_layer, unet_layers, reports, seconds, fallback=False) -> str:
    lines = [f"# Demo: locate and erase {subject!r} in {wb.name}", "",
             f"Prompt `{prompt}`, subject `{subject}` (tokens {wb.subject_positions(prompt, subject)}).", "",
             "![samples](samples.png)", "", "## 1. Where does it live?", "",
             "### Text encoder (self-attention outputs)", "",
             "| layer | best restore effect (position) |", "|---|---|"]
    best = text.scores.argmax(1).tolist()
    lines += [f"| `{r}` | {text.effect(r):.3f} ({text.cols[j]}) |" for r, j in zip(text.rows, best, strict=True)]
    at_last = float(text.scores[:, max(text.subject_cols)].max())
    if at_last < MIN_EFFECT <= float(text.ranking().max()):
        lines += ["", f"The last subject token itself carries little (best {at_last:.3f}): the encoder moves the "
                  "concept into later positions, padding included, which the UNet reads as well."]
    pick = (f"No state restores the concept (every effect < {MIN_EFFECT}), so Diff-QuickFix edits its default "
            f"layer: `{text_layer}`" if fallback else f"Picked for Diff-QuickFix: `{text_layer}`")
    lines += ["", pick, "", "![text trace](trace_text.png)", "",
              "### UNet (cross-attention, 4 windows of denoising steps)", "",
              "| layer | mean restore effect |", "|---|---|"]
    lines += [f"| `{r}` | {unet.effect(r):.3f} |" for r in unet.rows]
    lines += ["", f"Picked for UCE: {', '.join(f'`{x}`' for x in unet_layers)}", "", "![unet trace](trace_unet.png)",
              "", "## 2. Erase it there, and measure", "",
              "Rates are the share of images in which the toy world's classifier finds the concept, on the same "
              "prompts and seeds before and after the edit (numbers from `evaluate_<editor>.json`). Each "
              "report ends with the world scan: every concept of every family of the toy world, rated before "
              "and after, and the largest changes outside the erased artist and its aliases.", ""]
    for name, r in reports.items():
        lines += [f"### {name}", "", r.markdown(), "", f"![{name} before/after](grid_{name}.png)", ""]
    lines += [f"Total time {seconds:.0f} s."]
    return "\n".join(lines) + "\n"
