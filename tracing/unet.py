"""Causal tracing in the UNet: corrupt the subject in the text, restore one UNet layer's output from the
clean run (at every denoising step, or in a window of steps), measure what comes back.

Batches are sized by :mod:`workbench.memory` unless ``settings.batch_size`` is given; a faithful trace keeps the
clean generation's layer outputs for a group of noise samples at a time, so its memory stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from workbench import Conditioning, Patch, Workbench
from workbench.progress import bar

from . import checks
from .corrupt import corruption
from .metrics import (
    Scorer,
    batch_rows,
    check_scorer,
    chunks,
    noised_latents,
    normalized_effect,
    restoration,
    spread_timesteps,
)
from .result import TraceResult
from .settings import TraceSettings, resolve


def unet_layers(wb: Workbench, layers: str | Sequence[str]) -> tuple[list[str], str]:
    """Layer names from a kind (``attn2``, ``resnet``, ``attn1``, ``ff``, ``block``, ...), a glob, or a list."""
    if isinstance(layers, str):
        names = wb.layers(pattern=layers, part="unet") if "*" in layers or "." in layers else wb.layers(
            layers, part="unet")
        if not names:
            raise ValueError(f"no UNet layer matches {layers!r}")
        kinds = {wb.layer(n).kind for n in names}
        return names, kinds.pop() if len(kinds) == 1 else "mixed"
    names = list(layers)
    if not names:
        raise ValueError("no UNet layers given")
    for name in names:
        if wb.layer(name).part != "unet":
            raise ValueError(f"layer {name!r} is not a UNet layer")
    kinds = {wb.layer(n).kind for n in names}
    return names, kinds.pop() if len(kinds) == 1 else "mixed"


def step_windows(steps: int, windows: int) -> list[list[int]]:
    """Split denoising steps 0..steps-1 into ``windows`` contiguous, near-equal windows."""
    checks.whole("windows", windows, 1, steps, what=f"steps ({steps})")
    bounds = torch.linspace(0, steps, windows + 1).round().long().tolist()
    return [list(range(bounds[w], bounds[w + 1])) for w in range(windows)]


def trace_unet(wb: Workbench, prompt: str, subject: str, *, layers: str | Sequence[str] = "attn2", windows: int = 1,
               settings: TraceSettings | None = None, scorer: Scorer | None = None) -> TraceResult:
    """Restore effect of each UNet layer (rows) in each window of denoising steps (columns).

    ``layers``: a kind (``attn2``, ``resnet``, ``ff``, ``block``, ...), a glob or a list of names.
    proxy: ``settings.draws`` (noise, timestep) pairs per window, timesteps inside the window's range; the
    restored layer output is the clean run's on the same x_t. faithful: a corrupted generation per noise
    sample, with the layer's output copied from the clean generation (same seed) at every step of the window.
    ``settings.batch_size`` counts UNet rows per forward (prompts per generation for faithful).
    """
    t0 = time.perf_counter()
    checks.text("prompt", prompt)
    checks.text("subject", subject)
    s = resolve(settings, wb, "unet")
    checks.whole("windows", windows, 1, s.steps, what=f"steps ({s.steps})")
    check_scorer(s.metric, scorer)
    if s.metric == "text":
        raise ValueError("metric 'text' is for text-encoder traces; use 'proxy' or 'faithful'")
    names, kind = unet_layers(wb, layers)
    pos = wb.subject_positions(prompt, subject)
    ids = wb.token_ids([prompt])
    clean_ctx, _ = wb.run_text(ids)
    corrupt_ctx, _ = wb.run_text(ids.expand(s.samples, -1), patches=corruption(wb, pos, range(s.samples), k=s.noise,
                                                                               std=s.std, seed=s.seed))
    run = _proxy if s.metric == "proxy" else _faithful
    batches: dict[str, int] = {}
    per, clean_value, corrupted_value, cols = run(wb, prompt, names, clean_ctx, corrupt_ctx, windows, s, scorer,
                                                  batches)
    per = per.flatten(2)
    return TraceResult(
        scores=per.mean(2), spread=per.std(2) if per.shape[2] > 1 else None, rows=names,
        row_kinds=[wb.layer(n).kind for n in names], cols=cols, part="unet", kind=kind, prompt=prompt,
        subject=subject, clean=clean_value, corrupted=corrupted_value, settings=s, subject_positions=pos,
        rows_per_forward=batches, model=wb.name, model_fingerprint=wb.fingerprint(),
        seconds=time.perf_counter() - t0)


def _proxy(wb: Workbench, prompt: str, names: list[str], clean_ctx: Conditioning, corrupt_ctx: Conditioning,
           windows: int, s: TraceSettings, scorer: Scorer | None,
           batches: dict[str, int]) -> tuple[torch.Tensor, float, float, list[str]]:
    """per[layer, window, draw, sample] noise-prediction restoration."""
    from workbench.memory import layer_bytes

    samples, draws = len(corrupt_ctx), s.draws
    ts = spread_timesteps(wb, windows, draws)
    flat_t = [t for w in ts for t in w]
    d_total = len(flat_t)
    x_t, t = noised_latents(wb, prompt, [s.seed + 100 + d for d in range(d_total)], flat_t, steps=s.steps,
                            guidance=s.guidance, batch_size=s.batch_size, progress=s.progress)
    sizes = layer_bytes(wb, names)
    # the clean run on each x_t, keeping every traced layer's output
    per_clean = batch_rows(wb, "unet", s.batch_size, extra_per_row=sum(sizes.values()))
    e_clean, reads = [], {name: [] for name in names}
    for chunk in chunks(d_total, per_clean):
        e, saved = wb.run_unet(x_t[chunk.start:chunk.stop], t[chunk.start:chunk.stop],
                               clean_ctx.expand(len(chunk)), read=names)
        e_clean.append(e)
        for name in names:
            reads[name].append(saved[name])
    e_clean = torch.cat(e_clean)
    reads = {name: torch.cat(v) for name, v in reads.items()}
    # condition 0 is the corrupted baseline, 1.. one per layer; each holds d_total × samples rows:
    # row r is condition r // per_cond on draw (r % per_cond) // samples with noise sample r % samples
    conds = [None, *names]
    per_cond = d_total * samples
    n_rows = len(conds) * per_cond
    # a patched row holds a copy of its layer's clean output
    per_unet = batch_rows(wb, "unet", s.batch_size, extra_per_row=max(sizes.values()))
    batches.update(unet=per_unet, unet_rows=n_rows)
    outs = []
    with bar(desc="trace unet: proxy UNet", total=n_rows, unit="row", progress=s.progress) as pbar:
        for chunk in chunks(n_rows, per_unet):
            r = torch.arange(chunk.start, chunk.stop)
            c, q = r // per_cond, r % per_cond
            d, n = q // samples, q % samples
            patches = []
            for ci in torch.unique(c).tolist():
                if conds[ci] is not None:
                    j = (c == ci).nonzero().flatten()
                    patches.append(Patch(conds[ci], reads[conds[ci]][d[j]], rows=j.tolist()))
            e, _ = wb.run_unet(x_t[d], t[d], corrupt_ctx[n], patches=patches)
            outs.append(e)
            pbar.update(len(chunk))
    outs = torch.cat(outs).view(len(conds), per_cond, *e_clean.shape[1:])
    draw_of = torch.arange(d_total).repeat_interleave(samples)
    per = restoration(outs.flatten(0, 1), e_clean[draw_of].repeat(len(conds), 1, 1, 1),
                      outs[0].repeat(len(conds), 1, 1, 1)).view(len(conds), windows, draws, samples)
    cols = [f"t {w[0]}–{w[-1]}" if len(w) > 1 else f"t {w[0]}" for w in ts]
    return per[1:], 1.0, 0.0, cols


def _faithful(wb: Workbench, prompt: str, names: list[str], clean_ctx: Conditioning, corrupt_ctx: Conditioning,
              windows: int, s: TraceSettings, scorer: Scorer | None,
              batches: dict[str, int]) -> tuple[torch.Tensor, float, float, list[str]]:
    """per[layer, window, sample] normalised concept-score restoration.

    Noise samples are taken in groups: the clean generation of a group (with every traced layer's output at
    every step) is kept only while that group's restored generations run."""
    from workbench.memory import budget_bytes, layer_bytes

    from .text import _scores

    samples = len(corrupt_ctx)
    seeds = [s.seed + i for i in range(samples)]
    gen_settings = dict(steps=s.steps, guidance=s.guidance, progress=s.progress)
    wins = step_windows(s.steps, windows)
    conds = [None] + [(name, w) for name in names for w in range(windows)]
    per_sample = s.steps * sum(layer_bytes(wb, names).values())  # the clean reads one sample holds
    group = samples if s.batch_size is not None else max(1, min(samples, budget_bytes(wb) // 2 // per_sample))
    clean_scores = torch.empty(samples)
    scores = torch.empty(len(conds), samples)
    total = len(conds) * samples
    with bar(desc="trace unet: faithful generations", total=total, unit="image", progress=s.progress) as pbar:
        for s0 in range(0, samples, group):
            gs = min(group, samples - s0)
            clean = wb.generate([prompt] * gs, seeds[s0:s0 + gs], context=clean_ctx.expand(gs), read=names,
                                **gen_settings)
            clean_scores[s0:s0 + gs] = _scores(scorer, clean.images, gs)
            per_gen = batch_rows(wb, "generate", s.batch_size)
            batches.update(generate=per_gen, samples_per_group=gs if s0 == 0 else batches["samples_per_group"])
            # row r of this group: condition r // gs, noise sample s0 + r % gs
            for chunk in chunks(len(conds) * gs, per_gen):
                r = torch.arange(chunk.start, chunk.stop)
                c, n = r // gs, r % gs
                patches = []
                for ci in torch.unique(c).tolist():
                    if conds[ci] is not None:
                        name, w = conds[ci]
                        j = (c == ci).nonzero().flatten()
                        lo, hi = int(n[j[0]]), int(n[j[-1]]) + 1  # a condition's rows are consecutive samples
                        value = {st: clean.reads[name][st][lo:hi] for st in wins[w]}
                        patches.append(Patch(name, value, rows=j.tolist(), steps=wins[w]))
                gen = wb.generate([prompt] * len(chunk), [seeds[s0 + int(i)] for i in n],
                                  context=corrupt_ctx[s0 + n], patches=patches, **gen_settings)
                scores[c, s0 + n] = _scores(scorer, gen.images, len(chunk))
                pbar.update(len(chunk))
            del clean
    clean_value, corrupted_value = float(clean_scores.mean()), float(scores[0].mean())
    per = normalized_effect(scores[1:], clean_value, corrupted_value).view(len(names), windows, samples)
    cols = [f"steps {w[0]}–{w[-1]}" if len(w) > 1 else f"step {w[0]}" for w in wins]
    return per, clean_value, corrupted_value, cols
