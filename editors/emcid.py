"""EMCID, Editing Massive Concepts In Diffusion models (Xiong et al. 2024): many concept rewrites at once,
spread over several text-encoder MLP output projections (``mlp.fc2``).

Stage I, per concept (batched, each concept its own δ): find the block output z* = z₀ + δ of the last
edited layer L, at the last subject token of the source prompts, that makes the source behave like its
destination. Loss = noise-prediction self-distillation (UNet with the edited source text vs the UNet with
the destination text, on noised latents) + a text-alignment term (final end-of-text states, CLIP's pooled
output) + a norm penalty; Adam, seeded; ‖δ‖ clamped to ``clamp`` × ‖z₀‖.

Stage II (as MEMIT): for each edited layer ℓ_i in depth order, keys are fc2 inputs at the last subject
token (mean over prompts), the residual z* − z_L (with the earlier layers' edits applied) is split evenly
over the layers still to edit, and fc2 is solved in closed form (``solve.ridge_solve``) against a preserve
covariance C = E[k kᵀ] of fc2 inputs over a caption corpus:

    ΔW = α R Kᵀ (α K Kᵀ + (1 − α) λ C + ridge I)⁻¹      (α = edit_weight, λ = lam; α = ½ is MEMIT's form)

Deliberate differences from the reference code (research notes, section 1g): the residual is taken at the
block output of layer L, as MEMIT does (the reference subtracts the fc2 output of the layer being edited);
stage I draws its (x_t, t) pairs once per prompt instead of every step, so its objective is a fixed
function of δ; the norm penalty is (‖δ‖ / ‖z₀‖)².
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from workbench import Patch, WeightDelta, Workbench
from workbench.layers import edit_targets
from workbench.progress import bar as progress_bar

from . import _checks
from ._checks import about, norm, number, record
from .solve import ridge_solve

TEMPLATES = ["{}", "a photo of {}", "an image of {}", "a picture of {}"]
SAMPLES = ("source", "destination", "noise")
# The reference's "ly-7-11" setting edits layers 7-10 of SD's 12-layer CLIP; scaled to other depths.
PAPER_RANGE = (7, 10, 12)


@dataclass(frozen=True)
class EMCIDEdit:
    """Rewrite ``source`` so it behaves like ``destination``.

    ``prompts`` are templates with ``{}`` where the concept goes, or prompts containing the source (its
    first occurrence becomes ``{}``); the request's templates when None.
    """

    source: str
    destination: str
    prompts: tuple[str, ...] | None = None


EDIT_FORM = "[source, destination], [source, destination, prompts] or {source, destination[, prompts]}"


def _as_edit(item: Any, i: int) -> EMCIDEdit:
    if isinstance(item, EMCIDEdit):
        edit = item
    elif isinstance(item, Mapping):
        keys = sorted(map(str, item))
        unknown = set(keys) - {"source", "destination", "prompts"}
        if unknown or not {"source", "destination"} <= set(keys):
            raise ValueError(f"EMCID edit {i}: expected keys source, destination and optionally prompts; got "
                             f"{keys}")
        edit = EMCIDEdit(item["source"], item["destination"], item.get("prompts"))
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) in (2, 3):
        edit = EMCIDEdit(*item)
    else:
        size = f" (a list of {len(item)})" if isinstance(item, Sequence) and not isinstance(item, str) else ""
        raise ValueError(f"EMCID edit {i}: expected {EDIT_FORM}, got {item!r}{size}")
    for what in ("source", "destination"):
        value = getattr(edit, what)
        if not isinstance(value, str):
            raise TypeError(f"EMCID edit {i}: {what} must be a non-empty string, got {type(value).__name__} "
                            f"{value!r}")
        if not value.strip():
            raise ValueError(f"EMCID edit {i}: {what} must be a non-empty string, got {value!r}")
    source, destination = " ".join(edit.source.split()), " ".join(edit.destination.split())
    if source.lower() == destination.lower():
        raise ValueError(f"EMCID edit {i}: source and destination are both {source!r} (case and spacing are "
                         f"ignored)")
    prompts = None
    if edit.prompts is not None:
        if isinstance(edit.prompts, str) or not isinstance(edit.prompts, Sequence) or not edit.prompts:
            raise ValueError(f"EMCID edit {i} ({source!r}): prompts must be a non-empty list of strings, got "
                             f"{edit.prompts!r}")
        for j, p in enumerate(edit.prompts):
            if not isinstance(p, str):
                raise TypeError(f"EMCID edit {i} ({source!r}): prompts[{j}] must be a string, got "
                                f"{type(p).__name__} {p!r}")
        prompts = tuple(_template(p, source, i) for p in edit.prompts)
    return EMCIDEdit(source, destination, prompts)


def _prompt_keys(edit: EMCIDEdit) -> tuple[str, ...] | None:
    return None if edit.prompts is None else tuple(norm(p) for p in edit.prompts)


def _template(prompt: str, source: str, i: int) -> str:
    """A template with one ``{}``: kept as is, or made by replacing the source's first whole-word match."""
    prompt = " ".join(str(prompt).split())
    if prompt.count("{}") == 1:
        return prompt
    padded, needle = f" {prompt} ", f" {source} "
    at = padded.lower().find(needle.lower())  # the tokenizer lowercases: "A Red Car" names "red car"
    if "{}" in prompt or at < 0:
        raise ValueError(f"EMCID edit {i}: prompt {prompt!r} must contain {source!r} (or one '{{}}' where the "
                         f"concept goes)")
    return (padded[:at] + " {} " + padded[at + len(needle):]).strip()


@dataclass
class EMCIDRequest:
    """Many (source -> destination) rewrites, edited together, and the method's hyperparameters.

    ``edits`` items are :class:`EMCIDEdit`, ``(source, destination[, prompts])`` or dicts with those keys.
    """

    edits: list[EMCIDEdit] = field(metadata=about(
        "a JSON file: a list of {source, destination[, prompts]}, or an object with 'edits' and any other field",
        flag="--requests", request_file=True))
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES), metadata=about(
        "caption the source is read in, with {} for it; repeatable", flag="--template"))
    # stage I
    steps: int = field(default=100, metadata=about("stage I: optimisation steps"))
    lr: float = field(default=0.2, metadata=about("stage I: Adam learning rate"))
    clamp: float = field(default=1.5, metadata=about("stage I: ‖δ‖ <= clamp × ‖z₀‖"))
    align_weight: float = field(default=0.01, metadata=about("stage I: weight of the text-alignment loss"))
    # 0.05 held δ near 0 on the toy world (distillation MSE ~0.01)
    norm_weight: float = field(default=1e-3, metadata=about("stage I: weight of (‖δ‖ / ‖z₀‖)²"))
    noise_samples: int = field(default=2, metadata=about("stage I: (x_t, t) draws per prompt"))
    samples: str = field(default="source", metadata=about(
        "stage I: x_0 generated from the source prompts (the reference code), the destination, or noise",
        choices=SAMPLES))
    sample_steps: int = field(default=10, metadata=about("stage I: sampling steps of x_0"))
    seed: int = field(default=0, metadata=about("stage I: seed of every draw (per-row seeds derive from it)"))
    batch_concepts: int = field(default=16, metadata=about(
        "stage I: concepts optimised together (results do not depend on it)"))
    # stage II
    lam: float = field(default=4000.0, metadata=about(
        "stage II: weight of the preserve covariance (the reference's mom2 weight)"))
    edit_weight: float = field(default=0.5, metadata=about("stage II: weight of the edit rows"))
    ridge: float = field(default=1e-4, metadata=about(
        "stage II: keeps the solve regular when the covariance is rank-deficient or zero"))
    captions: list[str] | str | None = field(default=None, metadata=about(
        "stage II: a caption file (one per line) for the preserve covariance, best of the same kind of concept "
        "as the edits; captions naming an edited source are left out (default: the model's world's corpus)",
        file=True))
    covariance: Mapping[str, torch.Tensor] | None = field(default=None, repr=False, compare=False, metadata=about(
        "stage II: {fc2 layer: C}, e.g. from caption_covariance, reused across edits instead of captions",
        record=False, cli=False))

    def __post_init__(self) -> None:
        owner = "EMCID"
        if isinstance(self.edits, (str, Mapping)) or not isinstance(self.edits, Sequence):
            raise TypeError(f"EMCID edits must be a list of edits ({EDIT_FORM}), got {type(self.edits).__name__} "
                            f"{self.edits!r}")
        if not self.edits:
            raise ValueError("empty EMCID request: give at least one (source, destination) edit")
        self.edits = [_as_edit(item, i) for i, item in enumerate(self.edits)]
        # Compared as the tokenizer sees them (lowercased, spacing collapsed).
        seen: dict[str, EMCIDEdit] = {}
        unique = []
        for i, edit in enumerate(self.edits):
            earlier = seen.get(norm(edit.source))
            if earlier is None:
                seen[norm(edit.source)] = edit
                unique.append(edit)
            elif norm(earlier.destination) != norm(edit.destination):
                raise ValueError(f"EMCID edit {i}: source {edit.source!r} is rewritten twice, to "
                                 f"{earlier.destination!r} and to {edit.destination!r}")
            elif _prompt_keys(earlier) != _prompt_keys(edit):
                raise ValueError(f"EMCID edit {i}: source {edit.source!r} appears twice with different prompts")
        self.edits = unique  # exact repeats are dropped: they would only weight one concept twice
        self.templates = _checks.templates(owner, self.templates)
        if not isinstance(self.samples, str) or self.samples not in SAMPLES:
            raise ValueError(f"EMCID samples must be one of {', '.join(SAMPLES)}; got {self.samples!r}")
        number(owner, "steps", self.steps, low=0, integer=True)
        number(owner, "noise_samples", self.noise_samples, low=1, integer=True)
        number(owner, "sample_steps", self.sample_steps, low=1, integer=True)
        number(owner, "edit_weight", self.edit_weight, low=0, low_open=True, high=1)
        number(owner, "lr", self.lr, low=0, low_open=True)  # 0: stage I would not move
        number(owner, "clamp", self.clamp, low=0, low_open=True)  # 0: every δ clamped to nothing
        for name in ("align_weight", "norm_weight", "lam"):
            number(owner, name, getattr(self, name), low=0)
        # ridge is what keeps the stage II system regular when the covariance is rank-deficient or lam is 0
        number(owner, "ridge", self.ridge, low=0, low_open=True)
        number(owner, "seed", self.seed, low=0, integer=True)
        number(owner, "batch_concepts", self.batch_concepts, low=1, integer=True)
        if self.captions is not None and not isinstance(self.captions, str | os.PathLike):
            self.captions = [c for c in _checks.strings(owner, "captions", self.captions, blank=True) if c.strip()]
            if not self.captions:
                raise ValueError("empty caption corpus: captions holds no non-blank caption")
        if self.covariance is not None and not isinstance(self.covariance, Mapping):
            raise TypeError(f"EMCID covariance must be a mapping {{fc2 layer: (in × in) tensor}}, got "
                            f"{type(self.covariance).__name__}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> EMCIDRequest:
        """A JSON file: a list of edits, or an object with ``edits`` and any hyperparameters. Anything else,
        an unknown key or a bad value is refused with one ValueError naming the file and the key or edit."""
        path = Path(path)
        form = "a JSON list of edits, or an object with 'edits' and any of the request's hyperparameters"
        if not path.is_file():
            raise FileNotFoundError(f"no EMCID requests file at {str(path)!r} (expected {form})")
        try:
            data = json.loads(path.read_text())
        except UnicodeDecodeError:
            raise ValueError(f"{str(path)!r} is not a text file; expected {form}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno}, column "
                             f"{err.colno}); expected {form}") from None
        if isinstance(data, list):
            data = {"edits": data}
        elif isinstance(data, dict):
            known = [f.name for f in fields(cls)]
            unknown = [k for k in data if k not in known]
            if unknown:
                raise ValueError(f"{str(path)!r}: unknown key {unknown[0]!r}; expected 'edits' and any of "
                                 f"{', '.join(k for k in known if k != 'edits')}")
            if "edits" not in data:
                raise ValueError(f"{str(path)!r}: no 'edits' key; expected {form}")
        else:
            kind = {str: "a string", bool: "a boolean", int: "a number", float: "a number",
                    type(None): "null"}.get(type(data), type(data).__name__)
            raise ValueError(f"{str(path)!r} holds {kind} ({data!r:.40}); expected {form}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(path)!r}: {err}") from None

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.edits]


@dataclass
class _Plan:
    """Rows = (concept, prompt) pairs: the prompts and the token positions every stage reads."""

    concept: torch.Tensor  # (R,) concept index of each row
    src: list[str]
    dst: list[str]
    src_last: torch.Tensor  # last source-subject token
    src_eos: torch.Tensor  # first end-of-text token
    dst_eos: torch.Tensor
    n: int  # concepts


def _plan(wb: Workbench, req: EMCIDRequest) -> _Plan:
    concept, src, dst, pos = [], [], [], {k: [] for k in ("src_last", "src_eos", "dst_eos")}
    for c, edit in enumerate(req.edits):
        for what, word in (("source", edit.source), ("destination", edit.destination)):
            try:
                wb.tokens(word)
            except ValueError as err:
                raise ValueError(f"EMCID edit {c} ({edit.source!r} -> {edit.destination!r}): the {what} is not in "
                                 f"the model's vocabulary: {err}") from err
        for template in edit.prompts or req.templates:
            s, d = template.replace("{}", edit.source), template.replace("{}", edit.destination)
            concept.append(c)
            src.append(s)
            dst.append(d)
            pos["src_last"].append(wb.subject_positions(s, edit.source)[-1])
            pos["src_eos"].append(len(wb.tokens(s)) - 1)
            pos["dst_eos"].append(len(wb.tokens(d)) - 1)
    as_long = {k: torch.tensor(v, dtype=torch.long) for k, v in pos.items()}
    return _Plan(torch.tensor(concept, dtype=torch.long), src, dst, n=len(req.edits), **as_long)


def _concept_mean(values: torch.Tensor, concept: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` rows per concept (differentiable)."""
    idx = concept.to(values.device)
    sums = torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add(0, idx, values)
    counts = torch.bincount(idx, minlength=n).to(values.dtype)
    return sums / counts.view(-1, *([1] * (values.ndim - 1)))


def _gather(wb: Workbench, prompts: list[str], positions: torch.Tensor, reads: list[str],
            batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Each read layer's output (or ``:input``) at one token per prompt: {read: (R, D)}."""
    out: dict[str, list[torch.Tensor]] = {r: [] for r in reads}
    for i in range(0, len(prompts), batch_size):
        pos = positions[i:i + batch_size]
        ids = wb.token_ids(prompts[i:i + batch_size], length=int(pos.max()) + 1)  # up to the last one read
        _, saved = wb.run_text(ids, read=reads)
        rows = torch.arange(len(pos))
        for r in reads:
            out[r].append(saved[r][rows, pos.to(saved[r].device)])
    return {r: torch.cat(v) for r, v in out.items()}


# ---------------------------------------------------------------------------------------------- layers
def fc2_layers(wb: Workbench, layers: Sequence[str] | None = None) -> list[str]:
    """The ``mlp.fc2`` layers to edit, in depth order.

    Accepts text-encoder block (``text.encoder.layers.i``), ``mlp`` or ``fc2`` names. None: the paper's
    upper-middle range (layers 7-10 of 12) scaled to each text encoder's depth (SDXL: in both encoders).
    """
    if layers is None:
        out = []
        for part in wb.text_parts:
            all_fc2 = wb.layers("fc2", part=part)
            lo, hi, depth = PAPER_RANGE
            n = len(all_fc2)
            start = min(n - 1, int(lo * n / depth + 0.5))
            end = max(start, min(n - 1, int(hi * n / depth + 0.5)))
            out += all_fc2[start:end + 1]
        return out
    layers = _checks.layer_names("EMCID", layers)
    takes = "text-encoder layers: a block text.encoder.layers.i, its mlp or its mlp.fc2, e.g. wb.layers('fc2')"
    names = edit_targets([_checks.layer(wb, "EMCID", name, takes) for name in layers],
                         {"fc2": [""], "mlp": ["fc2"], "hidden": ["mlp.fc2"]}, "EMCID",
                         "text-encoder MLP output projections")
    return sorted(set(names), key=lambda name: wb.layer(name).order)


def block_of(wb: Workbench, layer: str) -> str:
    """The text-encoder block (``text.encoder.layers.i``) holding ``layer``, or ``layer`` if it is one."""
    name = layer.removesuffix(".fc2").removesuffix(".mlp")
    if wb.layer(name).kind != "hidden":
        raise ValueError(f"{layer!r} is not a text-encoder block, mlp or fc2 layer")
    return name


# ---------------------------------------------------------------------------------------------- corpus
def _captions(wb: Workbench, captions: Sequence[str] | str | os.PathLike | None) -> tuple[list[str], str]:
    if captions is None:
        corpus = wb.world.preserve_captions if wb.world is not None else None
        if corpus is None:
            raise ValueError("EMCID needs a caption corpus for its preserve covariance: give EMCIDRequest("
                             "captions=[...]) or the path of a text file with one caption per line")
        lines = corpus()
        return lines, f"{wb.world.name} world's corpus ({len(lines)} captions)"
    if isinstance(captions, (str, os.PathLike)):
        path = Path(captions)
        if not path.is_file():
            raise FileNotFoundError(f"no caption file at {str(path)!r} (one caption per line)")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"caption file {str(path)!r} is empty")
        return lines, str(path)
    return list(captions), f"{len(captions)} captions given"


def without_sources(captions: Sequence[str], sources: Sequence[str]) -> list[str]:
    """The captions that do not name any of ``sources`` (whole words, case-insensitive).

    A caption naming an edited concept puts that concept's own key into the preserve covariance, which then
    holds the very output the edit has to change: on the toy world, 100 entity rewrites kept 25 % of their
    residual with such captions in the corpus and 15 % without (same λ).
    """
    phrases = sorted({r"\s+".join(map(re.escape, s.lower().split())) for s in sources if s.strip()}, key=len,
                     reverse=True)
    if not phrases:  # an empty alternation would match everywhere
        return list(captions)
    named = re.compile(r"(?<!\w)(?:" + "|".join(phrases) + r")(?!\w)")
    return [c for c in captions if not named.search(c.lower())]


def caption_covariance(wb: Workbench, layers: Sequence[str] | None, captions: Sequence[str], *,
                       batch_size: int = 128, progress: bool = False) -> dict[str, torch.Tensor]:
    """C = E[k kᵀ] (float64, uncentred) of each fc2 layer's input over every real token of the captions.

    Padding is left out: SD pads with end-of-text tokens, and counting them would weight one near-constant
    key per caption dozens of times.
    """
    names = fc2_layers(wb, layers)
    reads = [f"{name}:input" for name in names]
    sums: dict[str, torch.Tensor] = {}
    count = 0
    chunks = range(0, len(captions), batch_size)
    for i in progress_bar(chunks, desc="emcid covariance", progress=progress):
        chunk = list(captions[i:i + batch_size])
        lengths = torch.tensor([wb.token_count(c) for c in chunk], device=wb.device)
        _, saved = wb.run_text(wb.token_ids(chunk, length=int(lengths.max())), read=reads)  # real tokens only
        mask = torch.arange(saved[reads[0]].shape[1], device=wb.device)[None, :] < lengths[:, None]
        count += int(mask.sum())
        for name, read in zip(names, reads, strict=True):
            k = saved[read][mask].double()
            sums[name] = sums.get(name, 0) + k.T @ k
    return {name: s / count for name, s in sums.items()}


# ---------------------------------------------------------------------------------------------- stage I
@dataclass
class StageOne:
    """Stage I's targets: block outputs of ``layer`` at the last subject token (mean over prompts)."""

    layer: str
    targets: torch.Tensor  # (n, D) z* = z₀ + δ
    initial: torch.Tensor  # (n, D) z₀
    losses: torch.Tensor  # (steps + 1, n) each concept's loss before each update and at the end


def _samples(wb: Workbench, req: EMCIDRequest, prompts: list[str], seeds: list[int], gens: list[torch.Generator],
             batch_size: int = 64) -> torch.Tensor:
    """x_0 latents, one per row."""
    if req.samples == "noise":
        return torch.stack([torch.randn(wb.latent_shape, generator=g) for g in gens]).to(wb.device, wb.dtype)
    out = [wb.generate(prompts[i:i + batch_size], seeds[i:i + batch_size], steps=req.sample_steps).latents
           for i in range(0, len(prompts), batch_size)]
    return torch.cat(out)


def _optimise(wb: Workbench, req: EMCIDRequest, plan: _Plan, rows: torch.Tensor, concepts: torch.Tensor,
              z0: torch.Tensor, block: str, row_seeds: torch.Tensor, bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """δ for a chunk of concepts, optimised together: each concept's loss depends on its own δ only and
    Adam is elementwise, so this is the same as optimising them one by one."""
    dev = wb.device
    local = plan.concept[rows] - int(concepts[0])  # concept index within the chunk
    k, r, s = len(concepts), len(rows), req.noise_samples
    src = [plan.src[i] for i in rows.tolist()]
    dst = [plan.dst[i] for i in rows.tolist()]
    src_ids, dst_ids = wb.token_ids(src), wb.token_ids(dst)
    src_last, src_eos = plan.src_last[rows].to(dev), plan.src_eos[rows].to(dev)
    dst_eos = plan.dst_eos[rows].to(dev)
    ar = torch.arange(r, device=dev)

    gens = [torch.Generator().manual_seed(int(row_seeds[i, 1])) for i in rows.tolist()]
    x0 = _samples(wb, req, dst if req.samples == "destination" else src,
                  [int(row_seeds[i, 0]) for i in rows.tolist()], gens)
    n_train = wb.scheduler.config.num_train_timesteps
    t = torch.stack([torch.randint(0, n_train, (s,), generator=g) for g in gens]).flatten().to(dev)
    eps = torch.stack([torch.randn((s, *wb.latent_shape), generator=g) for g in gens]).flatten(0, 1)
    x_t = wb.scheduler.add_noise(x0.repeat_interleave(s, 0), eps.to(dev, wb.dtype), t)
    with torch.no_grad():
        dst_cond = wb.run_text(dst_ids)[0]
        dst_states = dst_cond.states
        target = wb.unet(x_t, t, **wb.family.unet_kwargs(dst_cond.repeat_interleave(s))).sample

    delta = torch.zeros(k, z0.shape[1], device=dev, dtype=wb.dtype, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=req.lr)
    z0_norm = z0.norm(dim=1)
    local_dev = local.to(dev)

    # δ is added to the block's output at each row's last subject token; its gradient flows through the
    # remaining text-encoder layers and the UNet (run_text(grad=True); the weights stay frozen).
    add_delta = Patch(block, lambda h: h.index_put((ar, src_last), delta[local_dev], accumulate=True))
    losses = []
    with torch.enable_grad():
        for step in range(req.steps + 1):  # the last pass only measures the final δ's loss
            cond, _ = wb.run_text(src_ids, patches=[add_delta], grad=True)
            states = cond.states
            pred = wb.unet(x_t, t, **wb.family.unet_kwargs(cond.repeat_interleave(s))).sample
            distill = _concept_mean((pred - target).pow(2).flatten(1).mean(1), local.repeat_interleave(s), k)
            # the pooled (end-of-text) state only, as the reference: the destination's last token is no
            # target for the source's when the destination has more words (in "a green ring" the colour sits
            # at "green"; aligning the subject to "ring" at weight 1 took the toy's colour success to 6 %)
            align = (states[ar, src_eos] - dst_states[ar, dst_eos]).pow(2).mean(1)
            loss = (distill + req.align_weight * _concept_mean(align, local, k)
                    + req.norm_weight * (delta.norm(dim=1) / z0_norm).pow(2))
            losses.append(loss.detach().cpu())
            if step == req.steps:
                break
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(losses[-1].mean()):.4g}")
            with torch.no_grad():  # project back into the ball of radius clamp·‖z₀‖
                scale = (req.clamp * z0_norm / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
    return delta.detach(), torch.stack(losses)


def stage_one(wb: Workbench, request: EMCIDRequest, layer: str, *, progress: bool = False) -> StageOne:
    """Optimise each concept's target block output of ``layer`` (a block, mlp or fc2 name)."""
    req = request
    seed, batch_concepts = req.seed, req.batch_concepts
    plan = _plan(wb, req)
    block = block_of(wb, layer)
    z0 = _concept_mean(_gather(wb, plan.src, plan.src_last, [block])[block], plan.concept, plan.n)
    # Per-row seeds drawn once for the whole request, so results do not depend on batch_concepts.
    row_seeds = torch.randint(0, 2**62, (len(plan.src), 2), generator=torch.Generator().manual_seed(seed))
    deltas, losses = [], []
    chunks = range(0, plan.n, batch_concepts)
    bar = progress_bar(total=len(chunks) * req.steps, desc="emcid stage I", progress=progress)
    for start in chunks:
        concepts = torch.arange(start, min(plan.n, start + batch_concepts))
        rows = torch.nonzero((plan.concept >= start) & (plan.concept < start + batch_concepts)).flatten()
        d, history = _optimise(wb, req, plan, rows, concepts, z0[concepts], block, row_seeds, bar)
        deltas.append(d)
        losses.append(history)
    bar.close()
    return StageOne(block, z0 + torch.cat(deltas), z0, torch.cat(losses, dim=1))


# ---------------------------------------------------------------------------------------------- stage II
def subject_states(wb: Workbench, request: EMCIDRequest, layer: str) -> torch.Tensor:
    """(n, D) block outputs of ``layer`` at each concept's last source token, mean over its prompts."""
    plan = _plan(wb, request)
    block = block_of(wb, layer)
    return _concept_mean(_gather(wb, plan.src, plan.src_last, [block])[block], plan.concept, plan.n)


def stage_two(wb: Workbench, request: EMCIDRequest, layers: Sequence[str] | None, targets: torch.Tensor,
              covariance: Mapping[str, torch.Tensor], *, progress: bool = False) -> dict[str, torch.Tensor]:
    """New fc2 weights {``<layer>.weight``: tensor} that move each concept's block output of the last
    edited layer to its target. ``wb`` is edited layer by layer while this runs (later keys and residuals
    see earlier edits, as in MEMIT) and restored before returning."""
    req = request
    plan = _plan(wb, req)
    names = fc2_layers(wb, layers)
    block = block_of(wb, names[-1])
    width = wb.module(block).mlp.fc2.out_features
    if tuple(targets.shape) != (plan.n, width):
        raise ValueError(f"targets must be ({plan.n} × {width}), one per concept; got {tuple(targets.shape)}")
    for name in names:
        if name not in covariance:
            raise ValueError(f"no preserve covariance for {name!r} (have {sorted(covariance)})")
    params = {name: wb.parameter(f"{name}.weight") for name in names}
    originals = {name: p.detach().clone() for name, p in params.items()}
    alpha = req.edit_weight
    new: dict[str, torch.Tensor] = {}
    try:
        for i, name in enumerate(progress_bar(names, desc="emcid stage II", progress=progress)):
            read = _gather(wb, plan.src, plan.src_last, [f"{name}:input", block])
            keys = _concept_mean(read[f"{name}:input"], plan.concept, plan.n)
            current = _concept_mean(read[block], plan.concept, plan.n)
            residual = (targets.to(current) - current) / (len(names) - i)
            w = originals[name]
            # fc2's bias stays fixed, so it drops out: the linear part's target is
            # (old output − b) + residual = W_old k + residual. In float64, so that a zero residual gives
            # W_old back exactly instead of the float32 rounding of W_old k pulled through the solve.
            keys = keys.double()
            values = keys @ w.double().T + residual.double()
            new_w = ridge_solve(w, keys, values, lam=req.ridge, edit_scale=alpha,
                                preserve_scale=(1 - alpha) * req.lam, preserve_cov=covariance[name].to(w.device))
            new[f"{name}.weight"] = new_w
            with torch.no_grad():
                params[name].copy_(new_w)
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(originals[name])
    return new


# ---------------------------------------------------------------------------------------------- editor
REQUEST = EMCIDRequest
LAYER_KINDS = ("hidden", "mlp", "fc2")  # text-encoder blocks, their mlp or its fc2


def edit(wb: Workbench, request: EMCIDRequest, layers: Sequence[str] | None = None, *,
         progress: bool = True) -> WeightDelta:
    """Rewrite every edit of ``request`` in one WeightDelta on the fc2 weights of ``layers``.

    ``layers``: text-encoder blocks / mlp / fc2 names (the paper's upper-middle range when None); stage I
    targets the last of them. The preserve covariance comes from ``request.covariance`` ({fc2 layer: C},
    e.g. from :func:`caption_covariance`, to reuse across edits) or is estimated from ``request.captions``
    (a list or a file with one caption per line; by default the corpus of the model's world, ``wb.world``),
    leaving out the captions that name an edited source (:func:`without_sources`).
    """
    req = request
    if not isinstance(req, EMCIDRequest):
        raise TypeError(f"emcid needs an EMCIDRequest, got {type(req).__name__}")
    covariance = req.covariance
    names = fc2_layers(wb, layers)
    _plan(wb, req)  # refuse bad input before any expensive work
    if covariance is not None:
        for name in names:
            if name not in covariance:
                continue  # reported below, with the layers it has
            c, d_in = covariance[name], wb.module(name).in_features
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (d_in, d_in):
                shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
                raise ValueError(f"emcid covariance[{name!r}] must be a ({d_in} × {d_in}) tensor, got {shape}")
            if not torch.isfinite(c).all():
                raise ValueError(f"emcid covariance[{name!r}] contains NaN or inf values")
    if covariance is None:
        corpus, corpus_name = _captions(wb, req.captions)
        kept = without_sources(corpus, req.sources)
        if not kept:
            raise ValueError(f"every caption of the preserve corpus ({corpus_name}) names an edited source; "
                             "give captions of other concepts too")
        if len(kept) < len(corpus):
            corpus_name += f", {len(corpus) - len(kept)} naming an edited source left out"
        covariance = caption_covariance(wb, names, kept, progress=progress)
    else:
        missing = [name for name in names if name not in covariance]
        if missing:
            raise ValueError(f"no preserve covariance for {missing} (have {sorted(covariance)})")
        corpus_name = "given covariance"
    # Each text encoder is edited on its own (SDXL has two): stage I at its last edited block, stage II over its
    # edited layers; the other encoder keeps its weights meanwhile.
    new, ones = {}, []
    for part in wb.text_parts:
        own = [name for name in names if wb.layer(name).part == part]
        if own:
            ones.append(stage_one(wb, req, own[-1], progress=progress))
            new.update(stage_two(wb, req, own, ones[-1].targets, covariance, progress=progress))
    loss = torch.stack([one.losses.mean(1) for one in ones]).mean(0)
    shift = torch.stack([(one.targets - one.initial).norm(dim=1).mean() for one in ones]).mean()
    extra = {"stage_one_layers": [one.layer for one in ones]} if len(ones) > 1 else {}
    return WeightDelta.capture(wb, new, method="emcid", request=record(req), layers=names,
                               stage_one_layer=ones[-1].layer, seed=req.seed, corpus=corpus_name,
                               stage_one_loss={"first": loss[0].item(), "last": loss[-1].item()},
                               shift_norm=shift.item(), **extra)
