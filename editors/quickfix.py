"""Diff-QuickFix (Basu et al. 2023): a closed-form edit of one text-encoder self-attention output
projection, the causal state tracing finds (layer 0 in SD's CLIP).

Keys are ``out_proj``'s inputs at the last subject token of source captions; values are its outputs at
the last token of the matching target captions. With ``eos=True`` the positions after the subject pair up
one to one and the longer span is cut to the shorter: give a target with the source's token count (e.g.
"the mascot" -> "blue heart", not "a blue heart") so that no position is left out.

The bias is left alone: targets have it subtracted, so the edited map W k + b hits them exactly where the
solve does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workbench import WeightDelta, Workbench
from workbench.layers import edit_targets

from . import _checks
from ._checks import about, no_duplicates, norm, number, record, strings
from .solve import ridge_solve

TEMPLATES = ["{}", "a picture of {}", "a photo of {}", "an image of {}"]


@dataclass
class QuickFixRequest:
    """Make each ``source`` concept behave like its ``target`` (e.g. an artist -> "a painting")."""

    sources: list[str] = field(metadata=about("source concept to change; repeatable", flag="--erase"))
    targets: list[str] = field(metadata=about("what each source becomes, in order; repeatable", flag="--target"))
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES), metadata=about(
        "caption the keys are read in, with {} for the concept; repeatable", flag="--template"))
    lam: float = field(default=0.01, metadata=about("weight of the identity term (keeps W near the original)"))
    eos: bool = field(default=False, metadata=about(
        "also map the positions after the subject through end-of-text / padding"))
    # Not in the paper: whole prompts whose every position must keep its output (as UCE's preserve set).
    # With ``eos`` the edit touches end-of-text/padding positions every prompt has; these protect them.
    preserve_prompts: list[str] = field(default_factory=list, metadata=about(
        "a file of prompts (one per line) whose every token's output must stay", file=True))
    preserve_scale: float = field(default=1.0, metadata=about("weight of the preserve rows"))

    def __post_init__(self) -> None:
        owner = "QuickFix"
        self.sources = strings(owner, "sources", self.sources)
        self.targets = strings(owner, "targets", self.targets)
        if not self.sources:
            raise ValueError("empty QuickFix request: give at least one source concept")
        if len(self.sources) != len(self.targets):
            raise ValueError(f"{len(self.sources)} sources but {len(self.targets)} targets; give one target per "
                             f"source")
        no_duplicates(owner, "sources", self.sources)
        for i, (source, target) in enumerate(zip(self.sources, self.targets, strict=True)):
            if norm(source) == norm(target):
                raise ValueError(f"QuickFix pair {i}: source {source!r} and target {target!r} are the same concept "
                                 f"(case and spacing are ignored); the edit would change nothing")
        self.templates = _checks.templates(owner, self.templates)
        self.preserve_prompts = strings(owner, "preserve_prompts", self.preserve_prompts)
        number(owner, "lam", self.lam, low=0, low_open=True)
        number(owner, "preserve_scale", self.preserve_scale, low=0)
        if not isinstance(self.eos, bool):
            raise TypeError(f"QuickFix eos must be True or False, got {type(self.eos).__name__} {self.eos!r}")


def out_proj_layer(wb: Workbench, layer: str | None) -> str:
    """The ``self_attn.out_proj`` to edit, from a text layer name (``text.encoder.layers.i``, its
    ``self_attn`` or its ``out_proj``) or None (layer 0)."""
    if layer is None:
        return wb.layers("out_proj")[0]
    if not isinstance(layer, str):
        raise TypeError(f"Diff-QuickFix layer must be a layer name (a string), got {type(layer).__name__} {layer!r}")
    takes = ("one text-encoder layer: a block text.encoder.layers.i, its self_attn or its self_attn.out_proj, "
             "e.g. wb.layers('out_proj')")
    return edit_targets([_checks.layer(wb, "Diff-QuickFix", layer, takes)],
                        {"out_proj": [""], "self_attn": ["out_proj"], "hidden": ["self_attn.out_proj"]},
                        "Diff-QuickFix", "a text-encoder self-attention output projection")[0]


def _check_vocabulary(wb: Workbench, req: QuickFixRequest) -> None:
    """Every source and target must tokenize and be found in every template (tokenizer only)."""
    for what, concepts in (("source", req.sources), ("target", req.targets)):
        for concept in concepts:
            for template in req.templates:
                try:
                    wb.subject_positions(template.format(concept), concept)
                except ValueError as err:
                    raise ValueError(f"QuickFix {what} {concept!r}: {err}") from None
    for i, prompt in enumerate(req.preserve_prompts):
        try:
            wb.tokens(prompt)
        except ValueError as err:
            raise ValueError(f"QuickFix preserve_prompts[{i}]: {err}") from None


def _states(wb: Workbench, layer: str, prompts: list[str], subjects: list[str], eos: bool):
    ids = wb.token_ids(prompts)
    _, reads = wb.run_text(ids, read=[f"{layer}:input", layer])
    keys, outs = [], []
    for i, (p, s) in enumerate(zip(prompts, subjects, strict=True)):
        last = wb.subject_positions(p, s)[-1]
        span = slice(last, None) if eos else slice(last, last + 1)
        keys.append(reads[f"{layer}:input"][i, span])
        outs.append(reads[layer][i, span])
    return keys, outs


REQUEST = QuickFixRequest
LAYER_KINDS = ("out_proj", "self_attn", "hidden")  # what ``layers`` may name (a block: its self_attn.out_proj)


def edit(wb: Workbench, request: QuickFixRequest, layers: Sequence[str] | None = None, *,
         progress: bool = True) -> WeightDelta:
    """Edit one text-encoder ``out_proj`` (the one of ``layers``; layer 0 by default). A closed form: no
    loop long enough for a progress bar, so ``progress`` is accepted for the common interface only."""
    req = request
    if not isinstance(req, QuickFixRequest):
        raise TypeError(f"quickfix needs a QuickFixRequest, got {type(req).__name__}")
    layers = _checks.layer_names("Diff-QuickFix", layers)
    if layers is not None and len(layers) != 1:
        raise ValueError(f"Diff-QuickFix edits a single layer; got {len(layers)}: {list(layers)}")
    layer = out_proj_layer(wb, layers[0] if layers else None)
    _check_vocabulary(wb, req)
    src_prompts = [t.format(s) for s in req.sources for t in req.templates]
    tgt_prompts = [t.format(d) for d in req.targets for t in req.templates]
    src_subjects = [s for s in req.sources for _ in req.templates]
    tgt_subjects = [d for d in req.targets for _ in req.templates]
    keys, _ = _states(wb, layer, src_prompts, src_subjects, req.eos)
    _, values = _states(wb, layer, tgt_prompts, tgt_subjects, req.eos)
    k, v = [], []
    for a, b in zip(keys, values, strict=True):  # spans trimmed to equal length when eos=True
        n = min(len(a), len(b))
        k.append(a[:n])
        v.append(b[:n])
    k, v = torch.cat(k), torch.cat(v)
    module = wb.module(layer)
    bias = module.bias.detach() if module.bias is not None else torch.zeros(module.out_features)
    w_name = f"{layer}.weight"
    w = wb.parameter(w_name).detach()
    preserve = None
    if req.preserve_prompts:
        _, reads = wb.run_text(wb.token_ids(list(req.preserve_prompts)), read=[f"{layer}:input"])
        preserve = reads[f"{layer}:input"].flatten(0, 1).to(w)
    new = ridge_solve(w, k.to(w), (v - bias).to(w), preserve, lam=req.lam, preserve_scale=req.preserve_scale)
    return WeightDelta.capture(wb, {w_name: new}, method="quickfix", request=record(req), layer=layer,
                               pairs=int(k.shape[0]))
