"""Causal tracing in the UNet: corrupt the subject in the text, restore one UNet layer's output from the
clean run (at every denoising step, or in a window of steps), measure what comes back."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from workbench import Patch, Workbench

from .corrupt import corruption, embedding_std
from .metrics import Scorer, check_metric, chunks, noised_latents, normalized_effect, restoration, spread_timesteps
from .result import TraceResult


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
    if not 1 <= windows <= steps:
        raise ValueError(f"windows must be between 1 and the number of steps ({steps}), got {windows}")
    bounds = torch.linspace(0, steps, windows + 1).round().long().tolist()
    return [list(range(bounds[w], bounds[w + 1])) for w in range(windows)]


def trace_unet(wb: Workbench, prompt: str, subject: str, *, layers: str | Sequence[str] = "attn2",
               windows: int = 1, metric: str = "proxy", scorer: Scorer | None = None, samples: int = 10,
               noise: float = 3.0, std: float | None = None, seed: int = 0, draws: int = 2,
               steps: int | None = None, guidance: float | None = None, batch_size: int = 256,
               progress: bool = True) -> TraceResult:
    """Restore effect of each UNet layer (rows) in each window of denoising steps (columns).

    proxy: ``draws`` (noise, timestep) pairs per window, timesteps inside the window's range; the restored
    layer output is the clean run's on the same x_t. faithful: a corrupted generation per noise sample,
    with the layer's output copied from the clean generation (same seed) at every step of the window.
    """
    check_metric(metric, scorer)
    if metric == "text":
        raise ValueError("metric 'text' is for text-encoder traces; use 'proxy' or 'faithful'")
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: nothing to trace")
    t0 = time.perf_counter()
    names, kind = unet_layers(wb, layers)
    pos = wb.subject_positions(prompt, subject)
    ids = wb.token_ids([prompt])
    std = embedding_std(wb) if std is None else std
    clean_ctx, _ = wb.run_text(ids)
    corrupt_ctx, _ = wb.run_text(ids.expand(samples, -1), patches=[
        corruption(wb, pos, range(samples), k=noise, std=std, seed=seed)])
    steps = int(steps or wb.defaults["steps"])
    run = _proxy if metric == "proxy" else _faithful
    per, clean_value, corrupted_value, cols = run(wb, prompt, names, clean_ctx, corrupt_ctx, windows, draws, seed,
                                                  steps, guidance, scorer, batch_size, progress)
    scores = per.flatten(2).mean(2)
    spread = per.flatten(2).std(2) if per.flatten(2).shape[2] > 1 else None
    return TraceResult(
        scores=scores, spread=spread, rows=names, cols=cols, part="unet", kind=kind, metric=metric, prompt=prompt,
        subject=subject, clean=clean_value, corrupted=corrupted_value,
        settings={"windows": windows, "samples": samples, "noise": noise, "std": std, "seed": seed, "draws": draws,
                  "steps": steps, "guidance": guidance, "subject_positions": pos},
        model=wb.name, model_fingerprint=wb.fingerprint(), seconds=time.perf_counter() - t0)


def _proxy(wb, prompt, names, clean_ctx, corrupt_ctx, windows, draws, seed, steps, guidance, scorer, batch_size,
           progress):
    """per[layer, window, draw, sample] noise-prediction restoration."""
    samples = corrupt_ctx.shape[0]
    ts = spread_timesteps(wb, windows, draws)
    flat_t = [t for w in ts for t in w]
    d_total = len(flat_t)
    x_t, t = noised_latents(wb, prompt, [seed + 100 + d for d in range(d_total)], flat_t, steps=steps,
                            guidance=guidance)
    e_clean, reads = wb.run_unet(x_t, t, clean_ctx.expand(d_total, -1, -1), read=names)
    # condition 0 is the corrupted baseline, 1.. one per layer; each holds d_total × samples rows
    conds = [None, *names]
    draw_of = torch.arange(d_total).repeat_interleave(samples)
    sample_of = torch.arange(samples).repeat(d_total)
    per_cond = d_total * samples
    outs = []
    for chunk in tqdm(chunks(len(conds), max(1, batch_size // per_cond)), desc="trace unet", disable=not progress,
                      leave=False):
        k = len(chunk)
        patches = []
        for j, c in enumerate(chunk):
            if conds[c] is not None:
                rows = list(range(j * per_cond, (j + 1) * per_cond))
                patches.append(Patch(conds[c], reads[conds[c]][draw_of], rows=rows))
        e, _ = wb.run_unet(x_t[draw_of].repeat(k, 1, 1, 1), t[draw_of].repeat(k),
                           corrupt_ctx[sample_of].repeat(k, 1, 1), patches=patches)
        outs.append(e.view(k, per_cond, *e.shape[1:]))
    outs = torch.cat(outs)
    per = restoration(outs.flatten(0, 1), e_clean[draw_of].repeat(len(conds), 1, 1, 1),
                      outs[0].repeat(len(conds), 1, 1, 1)).view(len(conds), windows, draws, samples)
    cols = [f"t {w[0]}–{w[-1]}" if len(w) > 1 else f"t {w[0]}" for w in ts]
    return per[1:], 1.0, 0.0, cols


def _faithful(wb, prompt, names, clean_ctx, corrupt_ctx, windows, draws, seed, steps, guidance, scorer, batch_size,
              progress):
    """per[layer, window, sample] normalised concept-score restoration."""
    samples = corrupt_ctx.shape[0]
    seeds = [seed + s for s in range(samples)]
    wins = step_windows(steps, windows)
    clean = wb.generate([prompt] * samples, seeds, steps=steps, guidance=guidance,
                        context=clean_ctx.expand(samples, -1, -1), read=names)
    clean_scores = scorer(clean.images).float()
    conds = [None] + [(name, w) for name in names for w in range(windows)]
    sample_of = torch.arange(samples)
    scores = []
    for chunk in tqdm(chunks(len(conds), max(1, batch_size // samples)), desc="trace unet (faithful)",
                      disable=not progress, leave=False):
        patches = []
        for j, c in enumerate(chunk):
            if conds[c] is not None:
                name, w = conds[c]
                rows = list(range(j * samples, (j + 1) * samples))
                value = {s: clean.reads[name][s][sample_of] for s in wins[w]}
                patches.append(Patch(name, value, rows=rows, steps=wins[w]))
        k = len(chunk)
        gen = wb.generate([prompt] * (k * samples), seeds * k, steps=steps, guidance=guidance,
                          context=corrupt_ctx.repeat(k, 1, 1), patches=patches)
        scores.append(scorer(gen.images).float())
    scores = torch.cat(scores).view(len(conds), samples)
    clean_value, corrupted_value = float(clean_scores.mean()), float(scores[0].mean())
    per = normalized_effect(scores[1:], clean_value, corrupted_value).view(len(names), windows, samples)
    cols = [f"steps {w[0]}–{w[-1]}" if len(w) > 1 else f"step {w[0]}" for w in wins]
    return per, clean_value, corrupted_value, cols
