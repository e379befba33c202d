"""Causal tracing in the text encoder: corrupt the subject, restore one (layer, token) state from the clean
run, measure how much of the clean behaviour comes back. All restorations are batch rows of a few
forwards; the clean states are computed once."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from workbench import Patch, Workbench

from .corrupt import corruption, embedding_std
from .metrics import Scorer, check_metric, chunks, noised_latents, normalized_effect, restoration, spread_timesteps
from .result import TraceResult

TEXT_KINDS = ("hidden", "self_attn", "mlp")


def trace_text_encoder(wb: Workbench, prompt: str, subject: str, *, kind: str = "hidden", window: int = 1,
                       metric: str = "proxy", scorer: Scorer | None = None, samples: int = 10, noise: float = 3.0,
                       std: float | None = None, seed: int = 0, draws: int = 3,
                       tokens: Sequence[int] | str | None = None,
                       steps: int | None = None, guidance: float | None = None, batch_size: int = 512,
                       progress: bool = True) -> TraceResult:
    """Restore effect of every (text-encoder layer, token) state of ``kind`` for ``subject`` in ``prompt``.

    ``kind``: ``hidden`` (the residual state after each layer; the embeddings are row 0), ``self_attn`` or
    ``mlp`` (that module's output, restored over ``window`` consecutive layers centred on the row, as ROME).
    ``metric``: ``proxy`` (noise-prediction restoration over ``draws`` (noise, timestep) pairs), ``text``
    (restoration of the final text states) or ``faithful`` (generate from the restored text, score with
    ``scorer``). ``tokens``: the restored positions, a list of indices, ``"real"`` (default: start token to
    end-of-text) or ``"all"`` (every position the UNet reads, padding included: an encoder may carry a
    concept in its padding states, as the toy one does for artists; rank such maps with ``by="max"``).
    """
    check_metric(metric, scorer)
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text-encoder kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: nothing to trace")
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
        cols = list(tokens)
    if not cols:
        raise ValueError(f"no token positions to restore for prompt {prompt!r}")
    for t in cols:
        if not 0 <= t < len(toks):
            raise ValueError(f"token position {t} is outside prompt {prompt!r} ({n_real} tokens, "
                             f"{len(toks)} positions with padding)")
    layers = wb.layers(kind, part="text")
    rows = (["text.embeddings"] if kind == "hidden" else []) + layers

    def restored(i: int) -> list[str]:
        if rows[i] not in layers or window == 1:
            return [rows[i]]
        j = layers.index(rows[i])
        return layers[max(0, j - window // 2): min(len(layers), j - (-window // 2))]

    ids = wb.token_ids([prompt])
    clean, states = wb.run_text(ids, read=rows)
    std = embedding_std(wb) if std is None else std
    conds: list[tuple[int, int] | None] = [None] + [(i, t) for i in range(len(rows)) for t in cols]
    finals = []
    per_chunk = max(1, batch_size // samples)
    for chunk in tqdm(chunks(len(conds), per_chunk), desc=f"trace text/{kind}", disable=not progress, leave=False):
        n = len(chunk) * samples
        patches = [corruption(wb, pos, range(n), draws=[r % samples for r in range(n)], k=noise, std=std, seed=seed)]
        # One masked write per layer and chunk: a patch per restoration costs an intervention each.
        masks: dict[str, torch.Tensor] = {}
        for j, c in enumerate(chunk):
            if conds[c] is None:
                continue
            i, t = conds[c]
            for name in restored(i):
                masks.setdefault(name, torch.zeros(n, clean.shape[1], 1, dtype=torch.bool))[
                    j * samples:(j + 1) * samples, t] = True
        patches += [_masked_restore(name, mask, states[name]) for name, mask in masks.items()]
        out, _ = wb.run_text(ids.expand(n, -1), patches=patches)
        finals.append(out)
    finals = torch.cat(finals).view(len(conds), samples, *clean.shape[1:])

    clean_value, corrupted_value = 1.0, 0.0
    if metric == "text":
        per = restoration(finals.flatten(0, 1), clean.expand(finals.shape[0] * samples, -1, -1),
                          finals[0].repeat(len(conds), 1, 1)).view(len(conds), samples)
    elif metric == "proxy":
        per = _proxy(wb, prompt, clean, finals, seed, draws, steps, guidance, batch_size, progress)
    else:
        per, clean_value, corrupted_value = _faithful(wb, clean, finals, scorer, seed, steps, guidance, batch_size,
                                                      progress)
    scores = per[1:].mean(1).view(len(rows), len(cols))
    spread = per[1:].std(1).view(len(rows), len(cols)) if samples > 1 else None
    return TraceResult(
        scores=scores, spread=spread, rows=rows, cols=[toks[t] for t in cols], part="text", kind=kind,
        metric=metric, prompt=prompt, subject=subject, subject_cols=[cols.index(p) for p in pos if p in cols],
        clean=clean_value, corrupted=corrupted_value,
        settings={"window": window, "samples": samples, "noise": noise, "std": std, "seed": seed, "draws": draws,
                  "positions": cols, "subject_positions": pos, "real_tokens": n_real,
                  # A concept the encoder moved into padding is not at the last subject token.
                  "rank_by": "max" if any(t >= n_real for t in cols) else "last_subject"},
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


def _proxy(wb, prompt, clean, finals, seed, draws, steps, guidance, batch_size, progress) -> torch.Tensor:
    """(conds, samples) noise-prediction restoration, averaged over the (noise, timestep) draws."""
    timesteps = spread_timesteps(wb, 1, draws)[0]
    x_t, t = noised_latents(wb, prompt, [seed + 100 + d for d in range(draws)], timesteps, steps=steps,
                            guidance=guidance)
    e_clean, _ = wb.run_unet(x_t, t, clean.expand(draws, -1, -1))
    ctx = finals.flatten(0, 1)
    preds = []
    per_chunk = max(1, batch_size // draws)
    for chunk in tqdm(chunks(ctx.shape[0], per_chunk), desc="proxy", disable=not progress, leave=False):
        c = ctx[chunk.start:chunk.stop].repeat_interleave(draws, 0)
        k = len(chunk)
        e, _ = wb.run_unet(x_t.repeat(k, 1, 1, 1), t.repeat(k), c)
        preds.append(e.view(k, draws, *e.shape[1:]))
    preds = torch.cat(preds).view(finals.shape[0], finals.shape[1], draws, *e_clean.shape[1:])
    base = preds[0:1].expand_as(preds)
    per = restoration(preds.flatten(0, 2), e_clean.repeat(finals.shape[0] * finals.shape[1], 1, 1, 1),
                      base.flatten(0, 2))
    return per.view(finals.shape[0], finals.shape[1], draws).mean(2)


def _faithful(wb, clean, finals, scorer, seed, steps, guidance, batch_size, progress):
    """(conds, samples) normalised concept-score restoration; sample s is generated with seed + s."""
    n_conds, samples = finals.shape[:2]
    seeds = [seed + s for s in range(samples)]
    clean_scores = scorer(wb.generate([""] * samples, seeds, steps=steps, guidance=guidance,
                                      context=clean.expand(samples, -1, -1)).images).float()
    ctx = finals.flatten(0, 1)
    all_seeds = seeds * n_conds
    scores = []
    for chunk in tqdm(chunks(ctx.shape[0], batch_size), desc="faithful", disable=not progress, leave=False):
        gen = wb.generate([""] * len(chunk), all_seeds[chunk.start:chunk.stop], steps=steps, guidance=guidance,
                          context=ctx[chunk.start:chunk.stop])
        scores.append(scorer(gen.images).float())
    scores = torch.cat(scores).view(n_conds, samples)
    clean_value, corrupted_value = float(clean_scores.mean()), float(scores[0].mean())
    return normalized_effect(scores, clean_value, corrupted_value), clean_value, corrupted_value
