"""UCE, Unified Concept Editing (Gandikota et al. 2023): closed-form edits of cross-attention key/value
projections. Erase (v* = W c_guide), moderate (v* = W c_""), debias (v* = W (c + Σ α_a a), α found by
generating and measuring), with a preserve set whose outputs must stay.

Keys are text-encoder outputs at the concept's last token (UCE's second release; ``tokens="to_end"``
takes the last subject token through the end-of-text/padding positions, as its first release did).

Debiasing measures attributes with an ``attribute_scorer(images) -> {attribute name: (B,) probabilities}``
and matches the request's attributes to the scorer's by name (ignoring case and spacing), never by
position; :func:`named_attribute_scorer` wraps a scorer that returns (B, n) columns in a known order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from workbench import WeightDelta, Workbench
from workbench.layers import edit_targets
from workbench.progress import bar as progress_bar
from workbench.world import AttributeScorer

from . import _checks
from ._checks import about, disjoint, no_duplicates, norm, number, record, strings, text
from .solve import ridge_map

RATIO_TOLERANCE = 1e-6  # how far a concept's requested ratios may sum from 1
DEBIAS_FORM = "CONCEPT:ATTRIBUTE=RATIO,ATTRIBUTE=RATIO (e.g. 'doctor:warm=0.5,cool=0.5')"


def _check_ratios(concept: str, ratios: object) -> dict[str, float]:
    """One debias entry, {attribute: ratio}: non-empty attribute names given once, ratios finite, >= 0 and
    summing to 1. A single attribute is allowed (its ratio is then 1: every image of the concept should
    carry it; the scorer's other attributes are implied 0)."""
    owner = f"UCE debias[{concept!r}]"
    if not isinstance(ratios, Mapping):
        raise TypeError(f"{owner} must be a dict {{attribute: ratio}}, got {type(ratios).__name__} {ratios!r}")
    if not ratios:
        raise ValueError(f"{owner} names no attribute; expected {{attribute: ratio, ...}} with ratios summing to 1")
    for a, r in ratios.items():
        text(owner, "attribute", a)
        number(owner, f"ratio of {a!r}", r, low=0, high=1)
    no_duplicates(owner, "attributes", list(ratios))
    total = math.fsum(float(r) for r in ratios.values())
    if abs(total - 1) > RATIO_TOLERANCE:
        shown = ", ".join(f"{a}={float(r):g}" for a, r in ratios.items())
        raise ValueError(f"{owner}: the ratios ({shown}) sum to {total:g}; they must sum to 1 (they are the "
                         f"shares of the concept's images that should carry each attribute)")
    return {a: float(r) for a, r in ratios.items()}


@dataclass
class UCERequest:
    """What to change. Concepts are prompts/phrases in the model's vocabulary.

    ``debias`` maps a concept to the share of its images that should carry each attribute, e.g.
    ``{"doctor": {"warm": 0.5, "cool": 0.5}}``: ratios >= 0 summing to 1, attributes named as the
    attribute scorer names them (see :func:`edit`). Concepts are compared ignoring case and spacing: a
    concept given twice in one list, or in two of erase / moderate / debias / preserve, is refused.
    """

    erase: list[str] = field(default_factory=list, metadata=about("concept to erase; repeatable"))
    guides: list[str] | None = field(default=None, metadata=about(
        "guide concept per erased concept, in order (default: the empty prompt)", flag="--guide"))
    moderate: list[str] = field(default_factory=list, metadata=about(
        "unsafe concept mapped to the empty prompt; repeatable"))
    debias: dict[str, dict[str, float]] = field(default_factory=dict, metadata=about(
        f"{DEBIAS_FORM}; repeatable", parse=lambda specs: parse_debias_specs(specs)))
    preserve: list[str] = field(default_factory=list, metadata=about(
        "concept whose outputs must stay; repeatable"))
    # whole prompts whose every token state must keep its output (UCE v1 preserves all positions of its
    # retain texts): protects what other prompts carry in end-of-text/padding positions, e.g. captions
    # without the moderated words
    preserve_prompts: list[str] = field(default_factory=list, metadata=about(
        "a file of prompts (one per line) whose every token's output must stay", file=True))
    lam: float = field(default=0.5, metadata=about("weight of the identity term (keeps W near the original)"))
    erase_scale: float = field(default=1.0, metadata=about("weight of the erase/moderate/debias rows"))
    preserve_scale: float = field(default=1.0, metadata=about("weight of the preserve rows"))
    tokens: str = field(default="last", metadata=about(
        "keys at the concept's last token ('last', UCE v2) or from it through the padding ('to_end', UCE v1)",
        choices=("last", "to_end")))
    templates: list[str] = field(default_factory=lambda: ["{}"], metadata=about(
        "context the keys are read in, with {} for the concept; repeatable", flag="--template"))
    # SDXL: the pooled text embedding reaches the UNet through add_embedding.linear_1, bypassing attn2
    pooled: bool = field(default=False, metadata=about(
        "also edit the projections that read the pooled text embedding (SDXL's unet.add_embedding.linear_1, "
        "its pooled columns), with the concepts' pooled embeddings as keys"))
    # debiasing: alpha is found by generating and scoring
    attribute_scorer: AttributeScorer | None = field(default=None, repr=False, compare=False, metadata=about(
        "images -> {attribute: (B,) probabilities}; default: the model's world's (wb.world)", record=False,
        cli=False))
    debias_samples: int = field(default=64, metadata=about("debias: images generated per round and concept"))
    max_rounds: int = field(default=30, metadata=about("debias: most rounds of measuring and raising alpha"))
    tolerance: float = field(default=0.05, metadata=about("debias: stop when every ratio is this close"))
    seed: int = field(default=0, metadata=about("debias: seed of every round's images (the same each round)"))

    def __post_init__(self) -> None:
        owner = "UCE"
        for name in ("erase", "moderate", "preserve", "preserve_prompts"):
            setattr(self, name, strings(owner, name, getattr(self, name)))
        if not isinstance(self.debias, Mapping):
            raise TypeError(f"UCE debias must be a dict {{concept: {{attribute: ratio}}}}, got "
                            f"{type(self.debias).__name__} {self.debias!r}")
        for concept in self.debias:
            text(owner, "debias concept", concept)
        self.debias = {c: _check_ratios(c, r) for c, r in self.debias.items()}
        if not (self.erase or self.moderate or self.debias):
            raise ValueError("empty UCE request: give concepts to erase, moderate or debias")
        if self.guides is not None:
            self.guides = strings(owner, "guides", self.guides, blank=True)  # "" is the empty prompt
            if len(self.guides) != len(self.erase):
                raise ValueError(f"{len(self.guides)} guide concepts for {len(self.erase)} erased concepts; give "
                                 f"one guide per erased concept (\"\" for the empty prompt)")
        for name in ("erase", "moderate", "debias", "preserve"):
            no_duplicates(owner, name, list(getattr(self, name)))
        disjoint(owner, {"erase": self.erase, "moderate": self.moderate, "debias": list(self.debias),
                         "preserve": self.preserve})
        number(owner, "lam", self.lam, low=0, low_open=True)
        number(owner, "erase_scale", self.erase_scale, low=0, low_open=True)  # 0 would make the edit a no-op
        number(owner, "preserve_scale", self.preserve_scale, low=0)
        if self.tokens not in ("last", "to_end"):
            raise ValueError(f"tokens must be 'last' or 'to_end', got {self.tokens!r}")
        self.templates = _checks.templates(owner, self.templates)
        if self.attribute_scorer is not None and not callable(self.attribute_scorer):
            raise TypeError(f"attribute_scorer must be callable, got {type(self.attribute_scorer).__name__}")
        number(owner, "debias_samples", self.debias_samples, low=1, integer=True)
        number(owner, "max_rounds", self.max_rounds, low=1, integer=True)
        number(owner, "tolerance", self.tolerance, low=0)
        number(owner, "seed", self.seed, low=0, integer=True)
        if not isinstance(self.pooled, bool):
            raise ValueError(f"UCE pooled must be true or false, got {self.pooled!r}")


def parse_debias(spec: str) -> tuple[str, dict[str, float]]:
    """``"doctor:warm=0.5,cool=0.5"`` -> ``("doctor", {"warm": 0.5, "cool": 0.5})``, checked as
    :class:`UCERequest` checks its ``debias`` entries (ratios >= 0 summing to 1, no attribute twice)."""
    if not isinstance(spec, str):
        raise TypeError(f"debias spec must be a string of the form {DEBIAS_FORM}, got {type(spec).__name__}")

    def bad(why: str) -> ValueError:
        return ValueError(f"debias spec {spec!r}: {why}; expected {DEBIAS_FORM}")

    if spec.count(":") != 1:
        raise bad("no ':' between the concept and its ratios" if ":" not in spec else "more than one ':'")
    concept, _, rest = (part.strip() for part in spec.partition(":"))
    concept = " ".join(concept.split())
    if not concept:
        raise bad("no concept before ':'")
    if not rest:
        raise bad(f"no ATTRIBUTE=RATIO after {concept + ':'!r}")
    ratios: dict[str, float] = {}
    for item in rest.split(","):
        item = item.strip()
        if not item:
            raise bad("an empty ATTRIBUTE=RATIO item (a stray ',')")
        if item.count("=") != 1:
            raise bad(f"{item!r} is not ATTRIBUTE=RATIO")
        attribute, _, value = (part.strip() for part in item.partition("="))
        attribute = " ".join(attribute.split())
        if not attribute:
            raise bad(f"no attribute name in {item!r}")
        try:
            ratio = float(value)
        except ValueError:
            raise bad(f"the ratio of {attribute!r} is {value!r}, not a number") from None
        if any(norm(a) == norm(attribute) for a in ratios):
            raise bad(f"attribute {attribute!r} is given twice")
        ratios[attribute] = ratio
    try:
        return concept, _check_ratios(concept, ratios)
    except (TypeError, ValueError) as err:
        raise bad(str(err)) from None


def parse_debias_specs(specs: Sequence[str]) -> dict[str, dict[str, float]]:
    """Several :func:`parse_debias` specs as a ``UCERequest.debias`` dict; a concept given twice (ignoring case
    and spacing) is refused instead of the later spec silently replacing the earlier."""
    out: dict[str, dict[str, float]] = {}
    for spec in strings("UCE", "debias specs", specs):
        concept, ratios = parse_debias(spec)
        earlier = next((c for c in out if norm(c) == norm(concept)), None)
        if earlier is not None:
            raise ValueError(f"debias spec {spec!r}: concept {concept!r} already has ratios "
                             f"({', '.join(f'{a}={r:g}' for a, r in out[earlier].items())}); give each concept once")
        out[concept] = ratios
    return out


def named_attribute_scorer(score_fn: Callable[[torch.Tensor], torch.Tensor],
                           names: Sequence[str]) -> AttributeScorer:
    """Adapt ``score_fn(images) -> (B, n)`` probabilities whose columns are ``names`` (in that order) to the
    attribute-scorer contract: ``images -> {name: (B,) probabilities}``. E.g. the toy world's
    ``named_attribute_scorer(lambda im: classifier.score(im)["attribute"], world.ATTRIBUTES)``."""
    names = strings("named_attribute_scorer", "names", names)
    if not names:
        raise ValueError("named_attribute_scorer: names is empty; give the name of each column score_fn returns")
    no_duplicates("named_attribute_scorer", "names", names)
    if not callable(score_fn):
        raise TypeError(f"named_attribute_scorer: score_fn must be callable, got {type(score_fn).__name__}")

    def scorer(images: torch.Tensor) -> dict[str, torch.Tensor]:
        p = score_fn(images)
        if not isinstance(p, torch.Tensor) or p.ndim != 2 or p.shape[1] != len(names):
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"named_attribute_scorer: score_fn returned {shape}, expected (B, {len(names)}) "
                             f"probabilities with columns {names}")
        return {name: p[:, i] for i, name in enumerate(names)}

    return scorer


def kv_parameters(wb: Workbench, layers: Sequence[str] | None, pooled: bool = False) -> list[str]:
    """Weight names of the projections that read text to edit: the cross-attention key/value projections
    (all ``attn2`` by default) and, with ``pooled``, every projection of the pooled text embedding the
    model's family has (SDXL: ``unet.add_embedding.linear_1``)."""
    accepts = {"attn2": ["to_k.weight", "to_v.weight"], "to_k": ["weight"], "to_v": ["weight"]}
    pooled_kinds = [k for k, reads in wb.family.text_projections.items() if reads == "pooled"]
    accepts.update({k: ["weight"] for k in pooled_kinds})
    layers = _checks.layer_names("UCE", layers)
    if layers is None:
        layers = wb.layers("attn2") + (wb.layers(pooled_kinds) if pooled and pooled_kinds else [])
    if pooled and not pooled_kinds:
        raise ValueError(f"UCE pooled: {wb.name} ({wb.family.name}) has no pooled text path to edit; only SDXL-"
                         f"family models do")
    takes = ("UNet cross-attention layers: attn2, or its to_k / to_v, e.g. wb.layers('attn2')"
             + (f", or the pooled path's {', '.join(pooled_kinds)}" if pooled_kinds else ""))
    names = edit_targets([_checks.layer(wb, "UCE", name, takes) for name in layers], accepts, "UCE",
                         "the projections that read text")
    return list(dict.fromkeys(names))  # an attn2 and its own to_k given together: edit it once


def _reads_pooled(wb: Workbench, name: str) -> bool:
    """Whether parameter ``name`` belongs to a projection of the pooled text embedding."""
    kind = wb.layer(name.removesuffix(".weight")).kind
    return wb.family.text_projections.get(kind) == "pooled"


def pooled_keys(wb: Workbench, concepts: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(concepts × templates, P) pooled text embeddings of each concept in each template, in that order (None
    for no concepts)."""
    if not concepts:
        return None
    return wb.conditioning([_fill(t, c) for c in concepts for t in templates]).pooled


def _cat_rows(*parts: torch.Tensor | None) -> torch.Tensor | None:
    given = [p for p in parts if p is not None]
    return torch.cat(given) if given else None


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
    # keys at the last token need nothing after the last anchor (~15x less work in a 77-token model)
    ids = wb.token_ids(prompts, length=max(anchors) + 1 if tokens == "last" else None)
    states = wb.run_text(ids)[0].states
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
               preserve: torch.Tensor | None, req: UCERequest, pooled: tuple | None = None) -> dict[str, torch.Tensor]:
    """New weights: ``keys``/``targets``/``preserve`` for the projections of text states, ``pooled`` = (keys,
    targets, preserve) of pooled embeddings for the pooled-path projections (only their first P columns read
    the pooled embedding; the rest, the time ids' features, stay)."""
    # v* = W_old c_target for every projection, so W_new = W_old S with one S per key set (ridge_map): one solve
    # for all to_k/to_v instead of one each (benchmarks/uce_sdxl.py)
    maps: dict[bool, torch.Tensor] = {}
    new = {}
    for name in params:
        w = wb.parameter(name).detach()
        reads_pooled = _reads_pooled(wb, name)
        k, tg, pr = pooled if reads_pooled else (keys, targets, preserve)
        if reads_pooled not in maps:
            s = ridge_map(k.to(w.device), tg.to(w.device), None if pr is None else pr.to(w.device), lam=req.lam,
                          edit_scale=req.erase_scale, preserve_scale=req.preserve_scale)
            # W + W (S − I) in the weights' dtype: the rounding is relative to the change, not to W (and a
            # zero change gives W back exactly), at a quarter of a float64 product's cost
            maps[reads_pooled] = (s - torch.eye(len(s), dtype=s.dtype, device=s.device)).to(w.dtype)
        block = w[:, :k.shape[1]]
        solved = block + block @ maps[reads_pooled]
        new[name] = solved if block.shape == w.shape else torch.cat([solved, w[:, k.shape[1]:]], dim=1)
    return new


def _check_vocabulary(wb: Workbench, req: UCERequest) -> None:
    """Every concept must tokenize and be found in every template, every preserve prompt must tokenize:
    checked on the tokenizer alone, before any key is computed."""
    guides = [g for g in req.guides or [] if g.strip()]
    groups = [("erase", req.erase), ("guide", guides), ("moderate", req.moderate), ("debias", list(req.debias)),
              ("preserve", req.preserve)]
    groups += [(f"debias[{c!r}] attribute", list(ratios)) for c, ratios in req.debias.items()]
    for what, concepts in groups:
        for concept in concepts:
            for template in req.templates:
                try:
                    _anchor(wb, template, concept)
                except ValueError as err:
                    raise ValueError(f"UCE {what} concept {concept!r}: {err}") from None
    for i, prompt in enumerate(req.preserve_prompts):
        try:
            wb.tokens(prompt)
        except ValueError as err:
            raise ValueError(f"UCE preserve_prompts[{i}]: {err}") from None


def _measure(scorer: AttributeScorer, images: torch.Tensor, concept: str, attributes: list[str]) -> torch.Tensor:
    """Mean probability of each of ``attributes`` (matched to the scorer's names ignoring case and spacing)
    over ``images``; refuses output that breaks the scorer contract, naming what is wrong."""
    scores = scorer(images)
    if not isinstance(scores, Mapping):
        shape = f" of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else ""
        raise TypeError(f"attribute_scorer must return a mapping {{attribute name: (B,) probabilities}}, got "
                        f"{type(scores).__name__}{shape}; wrap a scorer of (B, n) columns with "
                        f"named_attribute_scorer(fn, names)")
    by_key: dict[str, str] = {}
    for name in scores:
        if not isinstance(name, str):
            raise TypeError(f"attribute_scorer returned a non-string attribute name {name!r}")
        if norm(name) in by_key:
            raise ValueError(f"attribute_scorer reports {by_key[norm(name)]!r} and {name!r}, the same attribute "
                             f"ignoring case and spacing")
        by_key[norm(name)] = name
    missing = [a for a in attributes if norm(a) not in by_key]
    if missing:
        raise ValueError(f"UCE debias[{concept!r}] asks for attribute {missing[0]!r}, which the attribute scorer "
                         f"does not report (it reports {', '.join(map(repr, scores)) or 'nothing'}); name the "
                         f"attributes as the scorer does")
    means = []
    for a in attributes:
        name = by_key[norm(a)]
        p = torch.as_tensor(scores[name]).detach().float().cpu()
        if tuple(p.shape) != (len(images),):
            raise ValueError(f"attribute_scorer's {name!r} has shape {tuple(p.shape)}; expected ({len(images)},), "
                             f"one probability per image")
        if not (torch.isfinite(p).all() and (p >= -1e-6).all() and (p <= 1 + 1e-6).all()):
            raise ValueError(f"attribute_scorer's {name!r} holds values outside [0, 1] or NaN (min "
                             f"{float(p.min()):g}, max {float(p.max()):g}); expected probabilities")
        means.append(p.mean())
    return torch.stack(means)


REQUEST = UCERequest
LAYER_KINDS = ("attn2", "to_k", "to_v", "add_proj")  # what ``layers`` may name (add_proj: SDXL's pooled path)


def edit(wb: Workbench, request: UCERequest, layers: Sequence[str] | None = None, *,
         progress: bool = True) -> WeightDelta:
    """Edit ``to_k``/``to_v`` of the given ``attn2`` layers (all by default) and return the WeightDelta.

    Debiasing needs ``request.attribute_scorer(images) -> {attribute name: (B,) probabilities}`` (a mapping;
    wrap a scorer of (B, n) columns with :func:`named_attribute_scorer`), or a model whose world has one
    (``wb.world``, the toy worlds). Each requested attribute is looked up by name, ignoring case and spacing;
    one the scorer does not report is refused at the first scoring. α is raised by the measured gap each
    round (as UCE does) until every gap is below ``tolerance`` or ``max_rounds`` is reached. Each round
    generates ``debias_samples`` images of the concept in the request's templates, on the same seeds; the
    round with the smallest gap is returned. Rounds apply their candidate edit to ``wb`` only while sampling
    and always revert it: ``wb`` is left as it was, also when sampling or the scorer fails. Metadata
    ``debias_history`` holds, per round and concept, the measured ``ratios`` and the ``alpha`` used, each as
    {attribute: value}.
    """
    req = request
    if not isinstance(req, UCERequest):
        raise TypeError(f"uce needs a UCERequest, got {type(req).__name__}")
    params = kv_parameters(wb, layers, req.pooled)
    attribute_scorer = req.attribute_scorer
    if req.debias:
        if attribute_scorer is None and wb.world is not None:
            attribute_scorer = wb.world.attribute_scorer
        if attribute_scorer is None:
            raise ValueError(f"debiasing needs an attribute scorer: {wb.name!r} has no world that brings one (the "
                             "toy worlds do); give UCERequest(attribute_scorer=<callable images -> {attribute name: "
                             "(B,) probabilities}>)")
    _check_vocabulary(wb, req)
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
    meta = {"method": "uce", "request": record(req), "parameters": params}
    pooled = None
    if any(_reads_pooled(wb, name) for name in params):
        pooled = (pooled_keys(wb, sources, req.templates), pooled_keys(wb, targets, req.templates),
                  _cat_rows(pooled_keys(wb, req.preserve, req.templates),
                            wb.conditioning(list(req.preserve_prompts)).pooled if req.preserve_prompts else None))

    if not req.debias:
        return WeightDelta.capture(wb, _solve_all(wb, params, keys, target_keys, preserve, req, pooled), **meta)

    concepts = list(req.debias)
    attrs = {c: list(req.debias[c]) for c in concepts}
    want = {c: torch.tensor([req.debias[c][a] for a in attrs[c]]) for c in concepts}
    # Keys at the concept's last token (or through the padding, tokens="to_end") in every template context;
    # attributes read in the same contexts, each template's spans cut to the shortest.
    c_keys, a_keys = {}, {}
    for c in concepts:
        spans = concept_keys(wb, [c, *attrs[c]], req.tokens, req.templates)
        lengths = [min(len(per[j]) for per in spans) for j in range(len(req.templates))]
        cut = [torch.cat([k[:n] for k, n in zip(per, lengths, strict=True)]) for per in spans]
        c_keys[c], a_keys[c] = cut[0], torch.stack(cut[1:])
    if pooled is not None:  # the same debias targets, in pooled space: c + Σ α_a a per template
        c_pooled = {c: pooled_keys(wb, [c], req.templates) for c in concepts}
        a_pooled = {c: pooled_keys(wb, attrs[c], req.templates).view(len(attrs[c]), len(req.templates), -1)
                    for c in concepts}
    alpha = {c: torch.zeros(len(attrs[c])) for c in concepts}
    history = []
    best, best_gap = None, float("inf")
    bar = progress_bar(range(req.max_rounds), desc="uce debias", progress=progress)
    for _ in bar:
        debias_targets = [c_keys[c] + (alpha[c][:, None, None] * a_keys[c]).sum(0) for c in concepts]
        all_keys = torch.cat([k for k in (keys, *[c_keys[c] for c in concepts]) if k is not None])
        all_targets = torch.cat([t for t in (target_keys, *debias_targets) if t is not None])
        round_pooled = None
        if pooled is not None:
            round_pooled = (_cat_rows(pooled[0], *[c_pooled[c] for c in concepts]),
                            _cat_rows(pooled[1], *[c_pooled[c] + (alpha[c][:, None, None] * a_pooled[c]).sum(0)
                                                   for c in concepts]), pooled[2])
        delta = WeightDelta.capture(wb, _solve_all(wb, params, all_keys, all_targets, preserve, req, round_pooled),
                                    **meta)
        measured = {}
        with delta.applied(wb):  # reverted on the way out, whatever happens inside
            for c in concepts:
                # The same seeds every round (common random numbers): round-to-round changes in the measured
                # ratio then come from α, not from resampling noise.
                prompts = [_fill(req.templates[i % len(req.templates)], c) for i in range(req.debias_samples)]
                images = wb.sample(prompts, seed=req.seed, batch_size=req.debias_samples)
                measured[c] = _measure(attribute_scorer, images, c, attrs[c])
        gaps = {c: want[c] - measured[c] for c in concepts}
        history.append({c: {"ratios": dict(zip(attrs[c], measured[c].tolist(), strict=True)),
                            "alpha": dict(zip(attrs[c], alpha[c].tolist(), strict=True))} for c in concepts})
        gap = max(float(g.abs().max()) for g in gaps.values())
        if gap < best_gap:
            best, best_gap = delta, gap
        bar.set_postfix(gap=gap)
        if gap < req.tolerance:
            break
        for c in concepts:
            alpha[c] = alpha[c] + gaps[c]
    bar.close()
    delta = best
    delta.metadata["debias_best_gap"] = best_gap
    delta.metadata["debias_history"] = history
    delta.metadata["debias_rounds"] = len(history)
    return delta
