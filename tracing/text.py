"""Causal tracing in the text encoder: corrupt the subject, restore one (layer, token) state from the clean
run, measure how much of the clean behaviour comes back. All restorations are batch rows of a few
forwards; the clean states are computed once.

Batches are sized by :mod:`workbench.memory` unless ``settings.batch_size`` is given. Before the UNet (proxy and
faithful metrics) restored runs whose final text states are bit-identical to another row's (restoring a
position before the subject in a causal encoder leaves the corrupted run unchanged) are run once and
scattered back: exact equality only, so no number changes.
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
    unique_rows,
)
from .result import TraceResult
from .settings import TraceSettings, resolve

TEXT_KINDS = ("hidden", "self_attn", "mlp")


def trace_text_encoder(wb: Workbench, prompt: str, subject: str, *, kind: str = "hidden", window: int = 1,
                       tokens: Sequence[int] | str = "real", settings: TraceSettings | None = None,
                       scorer: Scorer | None = None, part: str = "text") -> TraceResult:
    """Restore effect of every (text-encoder layer, token) state of ``kind`` for ``subject`` in ``prompt``.

    ``kind``: ``hidden`` (the residual state after each layer; the embeddings are row 0), ``self_attn`` or
    ``mlp`` (that module's output, restored over ``window`` consecutive layers centred on the row, as ROME).
    ``tokens``: the restored positions, a list of indices, ``"real"`` (start token to end-of-text) or
    ``"all"`` (every position the UNet reads, padding included: an encoder may carry a concept in its
    padding states, as the toy one does for artists; such a trace ranks by ``max``).
    ``settings.metric``: ``proxy`` (noise-prediction restoration over ``draws`` (noise, timestep) pairs),
    ``text`` (restoration of the final text states) or ``faithful`` (generate from the restored text, score
    with ``scorer``). ``settings.batch_size`` counts text-encoder rows, UNet rows and prompts per generation.
    ``part``: the text encoder whose states are restored (``text``; SDXL also ``text2``). The subject is
    corrupted in every encoder, so a restore effect says how much of the concept that encoder's state alone
    brings back (the pooled path alone: ``trace_unet(layers="add_embedding")``).
    """
    t0 = time.perf_counter()
    checks.text("prompt", prompt)
    checks.text("subject", subject)
    checks.whole("window", window)
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text-encoder kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")
    if part not in wb.text_parts:
        raise ValueError(f"unknown text encoder {part!r}; {wb.name} has {', '.join(wb.text_parts)}")
    s = resolve(settings, wb, "text")
    check_scorer(s.metric, scorer)
    pos = wb.subject_positions(prompt, subject)
    cols = token_positions(wb, prompt, tokens)
    layers = wb.layers(kind, part=part)
    rows = (wb.layers("embeddings", part=part) if kind == "hidden" else []) + layers
    batches: dict[str, int] = {}  # rows per forward of each loop, and how many rows ran
    clean, finals = _restored_runs(wb, prompt, pos, rows, _window_groups(rows, layers, window), cols, s, kind,
                                   batches)
    per, clean_value, corrupted_value = _measure(wb, prompt, clean, finals, s, scorer, batches)
    n_real, labels = len(wb.tokens(prompt)), token_labels(wb, prompt)
    return TraceResult(
        scores=per[1:].mean(1).view(len(rows), len(cols)),
        spread=per[1:].std(1).view(len(rows), len(cols)) if s.samples > 1 else None,
        rows=rows, row_kinds=[wb.layer(r).kind for r in rows], cols=[labels[t] for t in cols], part=part,
        kind=kind, prompt=prompt, subject=subject, subject_cols=[cols.index(p) for p in pos if p in cols],
        clean=clean_value, corrupted=corrupted_value, settings=s, window=window, positions=cols,
        subject_positions=pos, real_tokens=n_real,
        # A concept the encoder moved into padding is not at the last subject token.
        rank_by="max" if any(t >= n_real for t in cols) else "last_subject",
        rows_per_forward=batches, model=wb.name, model_fingerprint=wb.fingerprint(),
        seconds=time.perf_counter() - t0)


def token_positions(wb: Workbench, prompt: str, tokens: Sequence[int] | str) -> list[int]:
    """The positions ``tokens`` names (``"real"``, ``"all"`` or a list), checked against the prompt."""
    n_real, n_all = len(wb.tokens(prompt)), wb.max_length
    expected = f"tokens must be 'real', 'all' or a list of positions, got {tokens!r}"
    if isinstance(tokens, str):
        if tokens not in ("real", "all"):
            raise ValueError(expected)
        return list(range(n_real if tokens == "real" else n_all))
    try:
        cols = list(tokens)
    except TypeError:
        raise ValueError(expected) from None
    if not cols:
        raise ValueError(f"no token positions to restore for prompt {prompt!r}")
    for t in cols:
        if not checks.is_whole(t):
            raise ValueError(f"tokens must be whole-number positions, got {t!r}")
        if not 0 <= t < n_all:
            raise ValueError(f"token position {t} is outside prompt {prompt!r} ({n_real} tokens, "
                             f"{n_all} positions with padding)")
    return [int(t) for t in cols]


def _window_groups(rows: list[str], layers: list[str], window: int) -> list[list[str]]:
    """The layers restored for each row: the row itself, or ``window`` consecutive layers centred on it."""
    groups = []
    for row in rows:
        if row not in layers or window == 1:
            groups.append([row])
            continue
        j = layers.index(row)
        groups.append(layers[max(0, j - window // 2): min(len(layers), j - (-window // 2))])
    return groups


def _restored_runs(wb: Workbench, prompt: str, pos: list[int], rows: list[str], groups: list[list[str]],
                   cols: list[int], s: TraceSettings, kind: str,
                   batches: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean conditioning (one row) and the corrupted ones (conds × samples rows, row c·samples + n is
    condition c on noise sample n): condition 0 is the corrupted run, then one per (row, column), row-major,
    with ``groups[row]`` restored at the column."""
    ids = wb.token_ids([prompt])
    clean, states = wb.run_text(ids, read=rows)
    per_text = batches["text"] = batch_rows(wb, "text", s.batch_size)
    conds: list[tuple[int, int] | None] = [None] + [(i, t) for i in range(len(groups)) for t in cols]
    n_rows = len(conds) * s.samples  # row r: condition r // samples, noise sample r % samples
    finals = []
    with bar(desc=f"trace text/{kind}: text encoder", total=n_rows, unit="row", progress=s.progress) as pbar:
        for chunk in chunks(n_rows, per_text):
            patches = corruption(wb, pos, range(len(chunk)), draws=[r % s.samples for r in chunk], k=s.noise,
                                 std=s.std, seed=s.seed)
            patches += _restorations([conds[r // s.samples] for r in chunk], groups, states, ids.shape[1])
            out, _ = wb.run_text(ids.expand(len(chunk), -1), patches=patches)
            finals.append(out)
            pbar.update(len(chunk))
    return clean, Conditioning.cat(finals)


def _restorations(conds: list[tuple[int, int] | None], groups: list[list[str]], states: dict[str, torch.Tensor],
                  length: int) -> list[Patch]:
    """One masked write per layer for a chunk whose row j restores ``conds[j]`` (a patch per restoration
    would cost an intervention each)."""
    masks: dict[str, torch.Tensor] = {}
    for j, c in enumerate(conds):
        if c is None:
            continue
        i, t = c
        for name in groups[i]:
            masks.setdefault(name, torch.zeros(len(conds), length, 1, dtype=torch.bool))[j, t] = True
    return [_masked_restore(name, mask, states[name]) for name, mask in masks.items()]


def _measure(wb: Workbench, prompt: str, clean: Conditioning, finals: Conditioning, s: TraceSettings,
             scorer: Scorer | None, batches: dict[str, int]) -> tuple[torch.Tensor, float, float]:
    """(conds, samples) restore effects under ``s.metric``, with the clean and corrupted metric values."""
    if s.metric == "text":
        flat = finals.flat()
        n = len(finals) // s.samples
        per = restoration(flat, clean.flat().expand(len(flat), -1), flat[:s.samples].repeat(n, 1))
        return per.view(n, s.samples), 1.0, 0.0
    if s.metric == "proxy":
        return _proxy(wb, prompt, clean, finals, s, batches), 1.0, 0.0
    return _faithful(wb, clean, finals, scorer, s, batches)


def token_labels(wb: Workbench, prompt: str) -> list[str]:
    """A label per position the UNet reads: the prompt's tokens, then ``<pad>@i`` for padding (SD-1.x pads
    with end-of-text, so the raw token would repeat and hide which position it is)."""
    real = wb.tokens(prompt)
    return real + [f"<pad>@{i}" for i in range(len(real), wb.max_length)]


def _masked_restore(layer: str, mask: torch.Tensor, clean_state: torch.Tensor) -> Patch:
    """Copy the clean run's state into the (row, token) cells ``mask`` marks."""
    def put(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(x.device), clean_state.to(x), x)

    return Patch(layer, put)


def _proxy(wb: Workbench, prompt: str, clean: Conditioning, finals: Conditioning, s: TraceSettings,
           batches: dict[str, int]) -> torch.Tensor:
    """(conds, samples) noise-prediction restoration, averaged over the (noise, timestep) draws."""
    draws = s.draws
    timesteps = spread_timesteps(wb, 1, draws)[0]
    x_t, t = noised_latents(wb, prompt, [s.seed + 100 + d for d in range(draws)], timesteps, steps=s.steps,
                            guidance=s.guidance, batch_size=s.batch_size, progress=s.progress)
    per_unet = batch_rows(wb, "unet", s.batch_size)
    e_clean = torch.cat([wb.run_unet(x_t[c.start:c.stop], t[c.start:c.stop], clean.expand(len(c)))[0]
                         for c in chunks(draws, per_unet)])
    ctx = finals
    first, inverse = unique_rows(ctx.flat())  # bit-identical text states need one UNet pass
    batches.update(unet=per_unet, unet_rows=len(first) * draws, unet_rows_without_dedupe=len(ctx) * draws)
    # UNet row r: context first[r // draws] on draw r % draws
    n_rows = len(first) * draws
    contexts = ctx[first]
    preds = []
    with bar(desc="trace text: proxy UNet", total=n_rows, unit="row", progress=s.progress) as pbar:
        for chunk in chunks(n_rows, per_unet):
            r = torch.arange(chunk.start, chunk.stop)
            e, _ = wb.run_unet(x_t[r % draws], t[r % draws], contexts[r // draws])
            preds.append(e)
            pbar.update(len(chunk))
    preds = torch.cat(preds)
    preds = preds.view(len(first), draws, *preds.shape[1:])[inverse]
    n_conds = len(finals) // s.samples
    preds = preds.view(n_conds, s.samples, draws, *e_clean.shape[1:])
    base = preds[0:1].expand_as(preds)
    per = restoration(preds.flatten(0, 2), e_clean.repeat(n_conds * s.samples, 1, 1, 1), base.flatten(0, 2))
    return per.view(n_conds, s.samples, draws).mean(2)


def _faithful(wb: Workbench, clean: Conditioning, finals: Conditioning, scorer: Scorer, s: TraceSettings,
              batches: dict[str, int]) -> tuple[torch.Tensor, float, float]:
    """(conds, samples) normalised concept-score restoration; sample i is generated with seed + i."""
    samples = s.samples
    n_conds = len(finals) // samples
    seeds = [s.seed + i for i in range(samples)]
    per_gen = batch_rows(wb, "generate", s.batch_size)
    gen = dict(steps=s.steps, guidance=s.guidance, progress=s.progress)
    clean_scores = torch.cat([_scores(scorer, wb.generate([""] * len(c), seeds[c.start:c.stop],
                                                          context=clean.expand(len(c)), **gen).images, len(c))
                              for c in chunks(samples, per_gen)])
    ctx = finals
    all_seeds = seeds * n_conds
    first, inverse = unique_rows(ctx.flat(), keys=all_seeds)  # same text and seed: the same image
    batches.update(generate=per_gen, generations=len(first), generations_without_dedupe=len(ctx))
    scores = []
    with bar(desc="trace text: faithful generations", total=len(first), unit="image", progress=s.progress) as pbar:
        for chunk in chunks(len(first), per_gen):
            rows = first[chunk.start:chunk.stop]
            images = wb.generate([""] * len(rows), [all_seeds[i] for i in rows], context=ctx[rows], **gen).images
            scores.append(_scores(scorer, images, len(rows)))
            pbar.update(len(rows))
    scores = torch.cat(scores)[inverse].view(n_conds, samples)
    clean_value, corrupted_value = float(clean_scores.mean()), float(scores[0].mean())
    return normalized_effect(scores, clean_value, corrupted_value), clean_value, corrupted_value


def _scores(scorer, images: torch.Tensor, n: int) -> torch.Tensor:
    """The scorer's output as (n,) floats; a clear error when it returns something else."""
    out = torch.as_tensor(scorer(images)).float().flatten()
    if out.shape[0] != n:
        raise ValueError(f"the scorer returned {out.shape[0]} scores for {n} images; it must return one per image")
    return out
