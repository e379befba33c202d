"""UCE, Unified Concept Editing (Gandikota et al. 2023): closed-form edits of cross-attention key/value
projections. Erase (v* = W c_guide), moderate (v* = W c_""), debias (v* = W (c + Σ α_a a), α found by
generating and measuring), with a preserve set whose outputs must stay.

Keys are text-encoder outputs at the concept's last token (UCE's second release; ``tokens="to_end"``
takes the last subject token through the end-of-text/padding positions, as its first release did).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from workbench import WeightDelta, Workbench
from workbench.layers import edit_targets

from .solve import ridge_solve


@dataclass
class UCERequest:
    """What to change. Concepts are prompts/phrases in the model's vocabulary."""

    erase: list[str] = field(default_factory=list)
    guides: list[str] | None = None  # one per erased concept; "" (the empty prompt) by default
    moderate: list[str] = field(default_factory=list)  # mapped to the empty prompt
    debias: dict[str, dict[str, float]] = field(default_factory=dict)  # concept -> {attribute: ratio}
    preserve: list[str] = field(default_factory=list)
    # whole prompts whose every token state must keep its output (UCE v1 preserves all positions of its
    # retain texts): protects what other prompts carry in end-of-text/padding positions, e.g. captions
    # without the moderated words
    preserve_prompts: list[str] = field(default_factory=list)
    lam: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    tokens: str = "last"  # or "to_end"
    templates: list[str] = field(default_factory=lambda: ["{}"])  # contexts the keys are read in

    def __post_init__(self) -> None:
        if not (self.erase or self.moderate or self.debias):
            raise ValueError("empty UCE request: give concepts to erase, moderate or debias")
        if self.guides is not None and len(self.guides) != len(self.erase):
            raise ValueError(f"{len(self.guides)} guide concepts for {len(self.erase)} erased concepts")
        if self.tokens not in ("last", "to_end"):
            raise ValueError(f"tokens must be 'last' or 'to_end', got {self.tokens!r}")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ValueError(f"templates must each contain '{{}}' once where the concept goes, got {self.templates}")


def kv_parameters(wb: Workbench, layers: Sequence[str] | None) -> list[str]:
    """Weight names of the cross-attention key/value projections to edit (all ``attn2`` by default)."""
    if layers is None:
        layers = wb.layers("attn2")
    return edit_targets([wb.layer(name) for name in layers],
                        {"attn2": ["to_k.weight", "to_v.weight"], "to_k": ["weight"], "to_v": ["weight"]},
                        "UCE", "cross-attention key/value projections")


def _anchor(wb: Workbench, template: str, concept: str) -> int:
    """Position of the concept's last token inside ``template.format(concept)``; for the empty concept, the
    position of the last token before where it would go (the start token when nothing precedes it)."""
    prompt = _fill(template, concept)
    if concept.strip():
        return wb.subject_positions(prompt, concept)[-1]
    prefix = template.split("{}")[0].strip()
    return len(wb.tokens(prefix)) - 2 if prefix else 0  # tokens() counts the start and end tokens


def _fill(template: str, concept: str) -> str:
    return " ".join(template.format(concept).split())


def concept_keys(wb: Workbench, concepts: Sequence[str], tokens: str = "last",
                 templates: Sequence[str] = ("{}",)) -> list[list[torch.Tensor]]:
    """Text-encoder outputs for each concept in each template: ``keys[i][j]`` is (1, D) at the concept's last
    token in template j, or (n, D) from there through end-of-text and padding (``tokens="to_end"``)."""
    if not concepts:
        return []
    prompts = [_fill(t, c) for c in concepts for t in templates]
    anchors = [_anchor(wb, t, c) for c in concepts for t in templates]
    ids = wb.token_ids(prompts)
    if tokens == "last":
        # The text encoder is causal: states up to the last anchor do not depend on later positions, so
        # the padding need not be encoded (~15x less work for short concepts in a 77-token model).
        ids = ids[:, :max(anchors) + 1]
    states, _ = wb.run_text(ids)
    out, row = [], 0
    for _ in concepts:
        spans = []
        for _ in templates:
            a = anchors[row]
            spans.append(states[row, a:] if tokens == "to_end" else states[row, a:a + 1])
            row += 1
        out.append(spans)
    return out


def _pairs(keys: list[list[torch.Tensor]], targets: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (key, target-key) rows template by template; spans are trimmed to equal length (UCE v1)."""
    ks, ts = [], []
    for k_spans, t_spans in zip(keys, targets, strict=True):
        for k, t in zip(k_spans, t_spans, strict=True):
            n = min(len(k), len(t))
            ks.append(k[:n])
            ts.append(t[:n])
    return torch.cat(ks), torch.cat(ts)


def _flat(spans: list[list[torch.Tensor]]) -> torch.Tensor | None:
    return torch.cat([k for per in spans for k in per]) if spans else None


def _solve_all(wb: Workbench, params: list[str], keys: torch.Tensor, targets: torch.Tensor,
               preserve: torch.Tensor | None, req: UCERequest) -> dict[str, torch.Tensor]:
    new = {}
    for name in params:
        w = wb.parameter(name).detach()
        values = targets.to(w) @ w.T  # v* = W_old c_target
        new[name] = ridge_solve(w, keys.to(w), values, preserve, lam=req.lam, edit_scale=req.erase_scale,
                                preserve_scale=req.preserve_scale)
    return new


def uce(wb: Workbench, request: UCERequest, layers: Sequence[str] | None = None, *,
        attribute_scorer: Callable[[torch.Tensor], torch.Tensor] | None = None, debias_samples: int = 64,
        max_rounds: int = 30, tolerance: float = 0.05, seed: int = 0, progress: bool = True) -> WeightDelta:
    """Edit ``to_k``/``to_v`` of the given ``attn2`` layers (all by default) and return the WeightDelta.

    Debiasing needs ``attribute_scorer(images) -> (B, n_attributes)`` probabilities in the order of the
    request's attribute dict; α is raised by the measured gap each round (as UCE does) until every gap is
    below ``tolerance`` or ``max_rounds`` is reached. Each round generates ``debias_samples`` images of the
    concept in the request's templates, on the same seeds; the round with the smallest gap is returned.
    """
    req = request
    params = kv_parameters(wb, layers)
    guides = req.guides if req.guides is not None else [""] * len(req.erase)
    sources = list(req.erase) + list(req.moderate)
    targets = list(guides) + [""] * len(req.moderate)
    keys_src = concept_keys(wb, sources, req.tokens, req.templates)
    keys_tgt = concept_keys(wb, targets, req.tokens, req.templates)
    preserve = _flat(concept_keys(wb, req.preserve, req.tokens, req.templates))
    if req.preserve_prompts:
        whole = wb.encode(list(req.preserve_prompts)).flatten(0, 1)
        preserve = whole if preserve is None else torch.cat([preserve, whole])
    keys, target_keys = _pairs(keys_src, keys_tgt) if sources else (None, None)
    meta = {"method": "uce", "request": asdict(req), "parameters": params}

    if not req.debias:
        return WeightDelta.capture(wb, _solve_all(wb, params, keys, target_keys, preserve, req), **meta)

    if attribute_scorer is None:
        raise ValueError("debiasing needs attribute_scorer=<callable images -> attribute probabilities>")
    concepts = list(req.debias)
    attrs = {c: list(req.debias[c]) for c in concepts}
    # Keys at the concept's last token in every template context; attributes read in the same contexts.
    c_keys = {c: torch.cat(concept_keys(wb, [c], "last", req.templates)[0]) for c in concepts}
    a_keys = {c: torch.stack([torch.cat(k) for k in concept_keys(wb, attrs[c], "last", req.templates)])
              for c in concepts}
    alpha = {c: torch.zeros(len(attrs[c])) for c in concepts}
    history = []
    best, best_gap = None, float("inf")
    bar = tqdm(range(max_rounds), desc="uce debias", disable=not progress, leave=False)
    for _ in bar:
        debias_targets = [c_keys[c] + (alpha[c][:, None, None] * a_keys[c]).sum(0) for c in concepts]
        all_keys = torch.cat([k for k in (keys, *[c_keys[c] for c in concepts]) if k is not None])
        all_targets = torch.cat([t for t in (target_keys, *debias_targets) if t is not None])
        delta = WeightDelta.capture(wb, _solve_all(wb, params, all_keys, all_targets, preserve, req), **meta)
        gaps = {}
        with delta.applied(wb):
            for c in concepts:
                # The same seeds every round (common random numbers): round-to-round changes in the measured
                # ratio then come from α, not from resampling noise.
                prompts = [_fill(req.templates[i % len(req.templates)], c) for i in range(debias_samples)]
                images = wb.sample(prompts, seed=seed, batch_size=debias_samples)
                ratios = attribute_scorer(images).float().mean(0)
                want = torch.tensor([req.debias[c][a] for a in attrs[c]])
                gaps[c] = want - ratios
        history.append({c: {"ratios": (torch.tensor([req.debias[c][a] for a in attrs[c]]) - g).tolist(),
                            "alpha": alpha[c].tolist()} for c, g in gaps.items()})
        gap = max(float(g.abs().max()) for g in gaps.values())
        if gap < best_gap:
            best, best_gap = delta, gap
        bar.set_postfix(gap=gap)
        if gap < tolerance:
            break
        for c in concepts:
            alpha[c] = alpha[c] + gaps[c]
    delta = best
    delta.metadata["debias_best_gap"] = best_gap
    delta.metadata["debias_history"] = history
    delta.metadata["debias_rounds"] = len(history)
    return delta
