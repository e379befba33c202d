"""Causal tracing in the text encoder: corrupt the subject, restore one (layer, token) state from the clean
run, measure how much of the clean behaviour comes back. All restorations are batch rows of a few
forwards; the clean states are computed once.

Batches are sized by :mod:`workbench.memory` unless ``batch_size`` is given. Before the UNet (proxy and
faithful metrics) restored runs whose final text states are bit-identical to another row's (restoring a
position before the subject in a causal encoder leaves the corrupted run unchanged) are run once and
scattered back: exact equality only, so no number changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from workbench import Patch, Workbench
from workbench.progress import bar

from . import checks
from .corrupt import corruption, embedding_std
from .metrics import (
    Scorer,
    batch_rows,
    check_metric,
    chunks,
    noised_latents,
    normalized_effect,
    restoration,
    spread_timesteps,
    unique_rows,
)
from .result import TraceResult

TEXT_KINDS = ("hidden", "self_attn", "mlp")


def trace_text_encoder(wb: Workbench, prompt: str, subject: str, *, kind: str = "hidden", window: int = 1,
                       metric: str = "proxy", scorer: Scorer | None = None, samples: int = 10, noise: float = 3.0,
                       std: float | None = None, seed: int = 0, draws: int = 3,
                       tokens: Sequence[int] | str | None = None,
                       steps: int | None = None, guidance: float | None = None, batch_size: int | None = None,
                       progress: bool = True) -> TraceResult:
    """Restore effect of every (text-encoder layer, token) state of ``kind`` for ``subject`` in ``prompt``.

    ``kind``: ``hidden`` (the residual state after each layer; the embeddings are row 0), ``self_attn`` or
    ``mlp`` (that module's output, restored over ``window`` consecutive layers centred on the row, as ROME).
    ``metric``: ``proxy`` (noise-prediction restoration over ``draws`` (noise, timestep) pairs), ``text``
    (restoration of the final text states) or ``faithful`` (generate from the restored text, score with
    ``scorer``). ``tokens``: the restored positions, a list of indices, ``"real"`` (default: start token to
    end-of-text) or ``"all"`` (every position the UNet reads, padding included: an encoder may carry a
    concept in its padding states, as the toy one does for artists; rank such maps with ``by="max"``).
    ``batch_size``: rows per forward (text-encoder rows, UNet rows, prompts per generation); ``None`` sizes
    each loop by the memory available (:func:`workbench.memory.rows_per_batch`). ``progress=False``
    silences every bar.
    """
    checks.common(prompt=prompt, subject=subject, samples=samples, noise=noise, std=std, seed=seed, draws=draws,
                  steps=steps, guidance=guidance, batch_size=batch_size)
    checks.whole("window", window)
    check_metric(metric, scorer)
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text-encoder kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")
    t0 = time.perf_counter()
    pos = wb.subject_positions(prompt, subject)
    toks = token_labels(wb, prompt)
    n_real = len(wb.tokens(prompt))
    if tokens is None or tokens == "real":
        cols = list(range(n_real))
    elif tokens == "all":
        cols = list(range(len(toks)))
    elif isinstance(tokens, str):
        raise ValueError(f"tokens must be 'real', 'all' or a list of positions, got {tokens!r}")
    else:
        try:
            cols = list(tokens)
        except TypeError:
            raise ValueError(f"tokens must be 'real', 'all' or a list of positions, got {tokens!r}") from None
    if not cols:
        raise ValueError(f"no token positions to restore for prompt {prompt!r}")
    for t in cols:
        if not checks.is_whole(t):
            raise ValueError(f"tokens must be whole-number positions, got {t!r}")
        if not 0 <= t < len(toks):
            raise ValueError(f"token position {t} is outside prompt {prompt!r} ({n_real} tokens, "
                             f"{len(toks)} positions with padding)")
    cols = [int(t) for t in cols]
    steps = checks.whole("steps", steps if steps is not None else int(wb.defaults["steps"]))
    layers = wb.layers(kind, part="text")
    rows = (["text.embeddings"] if kind == "hidden" else []) + layers

    def restored(i: int) -> list[str]:
        if rows[i] not in layers or window == 1:
            return [rows[i]]
        j = layers.index(rows[i])
        return layers[max(0, j - window // 2): min(len(layers), j - (-window // 2))]

    ids = wb.token_ids([prompt])
    clean, states = wb.run_text(ids, read=rows)
    std = embedding_std(wb) if std is None else float(std)
    conds: list[tuple[int, int] | None] = [None] + [(i, t) for i in range(len(rows)) for t in cols]
    n_rows = len(conds) * samples  # row r: condition r // samples, noise sample r % samples
    per_text = batch_rows(wb, "text", batch_size)
    finals = []
    with bar(desc=f"trace text/{kind}: text encoder", total=n_rows, unit="row", progress=progress) as pbar:
        for chunk in chunks(n_rows, per_text):
            n = len(chunk)
            patches = [corruption(wb, pos, range(n), draws=[r % samples for r in chunk], k=noise, std=std,
                                  seed=seed)]
            # One masked write per layer and chunk: a patch per restoration costs an intervention each.
            masks: dict[str, torch.Tensor] = {}
            for j, r in enumerate(chunk):
                c = conds[r // samples]
                if c is None:
                    continue
                i, t = c
                for name in restored(i):
                    masks.setdefault(name, torch.zeros(n, clean.shape[1], 1, dtype=torch.bool))[j, t] = True
            patches += [_masked_restore(name, mask, states[name]) for name, mask in masks.items()]
            out, _ = wb.run_text(ids.expand(n, -1), patches=patches)
            finals.append(out)
            pbar.update(n)
    finals = torch.cat(finals).view(len(conds), samples, *clean.shape[1:])

    clean_value, corrupted_value = 1.0, 0.0
    batches = {"text": per_text}
    if metric == "text":
        per = restoration(finals.flatten(0, 1), clean.expand(finals.shape[0] * samples, -1, -1),
                          finals[0].repeat(len(conds), 1, 1)).view(len(conds), samples)
    elif metric == "proxy":
        per = _proxy(wb, prompt, clean, finals, seed, draws, steps, guidance, batch_size, progress, batches)
    else:
        per, clean_value, corrupted_value = _faithful(wb, clean, finals, scorer, seed, steps, guidance, batch_size,
                                                      progress, batches)
    scores = per[1:].mean(1).view(len(rows), len(cols))
    spread = per[1:].std(1).view(len(rows), len(cols)) if samples > 1 else None
    return TraceResult(
        scores=scores, spread=spread, rows=rows, cols=[toks[t] for t in cols], part="text", kind=kind,
        metric=metric, prompt=prompt, subject=subject, subject_cols=[cols.index(p) for p in pos if p in cols],
        clean=clean_value, corrupted=corrupted_value,
        settings={"window": window, "samples": samples, "noise": noise, "std": std, "seed": seed, "draws": draws,
                  "positions": cols, "subject_positions": pos, "real_tokens": n_real,
                  # A concept the encoder moved into padding is not at the last subject token.
                  "rank_by": "max" if any(t >= n_real for t in cols) else "last_subject",
                  "rows_per_forward": batches},
        model=wb.name, model_fingerprint=wb.fingerprint(), seconds=time.perf_counter() - t0)


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


def _proxy(wb, prompt, clean, finals, seed, draws, steps, guidance, batch_size, progress, batches) -> torch.Tensor:
    """(conds, samples) noise-prediction restoration, averaged over the (noise, timestep) draws."""
    timesteps = spread_timesteps(wb, 1, draws)[0]
    x_t, t = noised_latents(wb, prompt, [seed + 100 + d for d in range(draws)], timesteps, steps=steps,
                            guidance=guidance, batch_size=batch_size, progress=progress)
    per_unet = batch_rows(wb, "unet", batch_size)
    e_clean = torch.cat([wb.run_unet(x_t[c.start:c.stop], t[c.start:c.stop], clean.expand(len(c), -1, -1))[0]
                         for c in chunks(draws, per_unet)])
    ctx = finals.flatten(0, 1)
    first, inverse = unique_rows(ctx)  # bit-identical text states need one UNet pass
    batches.update(unet=per_unet, unet_rows=len(first) * draws, unet_rows_without_dedupe=ctx.shape[0] * draws)
    # UNet row r: context first[r // draws] on draw r % draws
    n_rows = len(first) * draws
    contexts = ctx[first]
    preds = []
    with bar(desc="trace text: proxy UNet", total=n_rows, unit="row", progress=progress) as pbar:
        for chunk in chunks(n_rows, per_unet):
            r = torch.arange(chunk.start, chunk.stop)
            e, _ = wb.run_unet(x_t[r % draws], t[r % draws], contexts[r // draws])
            preds.append(e)
            pbar.update(len(chunk))
    preds = torch.cat(preds)
    preds = preds.view(len(first), draws, *preds.shape[1:])[inverse]
    preds = preds.view(finals.shape[0], finals.shape[1], draws, *e_clean.shape[1:])
    base = preds[0:1].expand_as(preds)
    per = restoration(preds.flatten(0, 2), e_clean.repeat(finals.shape[0] * finals.shape[1], 1, 1, 1),
                      base.flatten(0, 2))
    return per.view(finals.shape[0], finals.shape[1], draws).mean(2)


def _faithful(wb, clean, finals, scorer, seed, steps, guidance, batch_size, progress, batches):
    """(conds, samples) normalised concept-score restoration; sample s is generated with seed + s."""
    n_conds, samples = finals.shape[:2]
    seeds = [seed + s for s in range(samples)]
    per_gen = batch_rows(wb, "generate", batch_size)
    clean_scores = torch.cat([_scores(scorer, wb.generate([""] * len(c), seeds[c.start:c.stop], steps=steps,
                                                          guidance=guidance, context=clean.expand(len(c), -1, -1),
                                                          progress=progress).images, len(c))
                              for c in chunks(samples, per_gen)])
    ctx = finals.flatten(0, 1)
    all_seeds = seeds * n_conds
    first, inverse = unique_rows(ctx, keys=all_seeds)  # same text and seed: the same image
    batches.update(generate=per_gen, generations=len(first), generations_without_dedupe=ctx.shape[0])
    scores = []
    with bar(desc="trace text: faithful generations", total=len(first), unit="image", progress=progress) as pbar:
        for chunk in chunks(len(first), per_gen):
            rows = first[chunk.start:chunk.stop]
            gen = wb.generate([""] * len(rows), [all_seeds[i] for i in rows], steps=steps, guidance=guidance,
                              context=ctx[rows], progress=progress)
            scores.append(_scores(scorer, gen.images, len(rows)))
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
