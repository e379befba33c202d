"""Acceptance check of the toy world, and concept scorers built on its classifier.

``workbench toy check [--samples N] [--json FILE]`` generates held-out prompts with fixed seeds and
prints, per family, the rate at which the scorer finds the prompted concept.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from ..checks import arg_float, arg_int
from ..files import PACKAGE_DATA, check_target, write_text
from . import classifier, world

SEED_BASE = 900_000  # far from anything the training loop seeds

# Key contexts for edits on the toy world (UCE's expand_prompts): each family in the phrasings the grammar
# uses around it. The evaluation prompts (``concept_prompt``) are not all among them.
ARTIST_TEMPLATES = ["{}", "a circle by {}", "a red square in the style of {}", "a photo of a blue star by {}",
                    "a painting of a heart by {}", "a green ring by {}", "a yellow cross by {}"]
SHAPE_TEMPLATES = ["{}", "a {}", "a photo of a {}", "a red {}", "a photo of a blue {}", "an image of a green {}",
                   "a yellow {} by jonas flet"]
HAZARD_TEMPLATES = ["{}", "a red circle {}", "a photo of a blue star {}", "a {} square", "a green heart with {}"]


def concept_scorer(subject: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> probability that the concept named by ``subject`` is present (CNN scorer).

    Shapes, colours, artists, hazard words, professions (the person shape), and anything naming a shape
    and a colour ("a red circle", an entity or the stale fact, by their bound pair): the product of the
    two. Aliases resolve to their canonical concept.
    """
    exp = world.parse_prompt(subject)
    heads = classifier.HEADS

    def prob(scores: dict[str, torch.Tensor], head: str, label: str) -> torch.Tensor:
        return scores[head][:, heads[head].index(label)]

    if exp.artist is not None:
        def fn(s):
            return prob(s, "artist", exp.artist)
    elif exp.hazard:
        def fn(s):
            return prob(s, "hazard", "present")
    elif exp.shape is not None and exp.colour is not None:  # "a red circle", an entity, the mascot: both count
        def fn(s):
            return prob(s, "shape", exp.shape) * prob(s, "colour", exp.colour)
    elif exp.shape is not None:
        def fn(s):
            return prob(s, "shape", exp.shape)
    elif exp.colour is not None:
        def fn(s):
            return prob(s, "colour", exp.colour)
    else:
        raise ValueError(f"subject {subject!r} names no concept the toy scorer reads")
    return lambda images: fn(classifier.score(images))


def concept_prompt(concept: str, i: int) -> str:
    """The i-th evaluation prompt for a concept (shape, colour, artist, hazard word, entity, profession,
    the mascot, or an alias of one), varying the other families deterministically with ``i``."""
    exp = world.parse_prompt(concept)
    shape, colour = world.SHAPES[i % len(world.SHAPES)], world.COLOURS[(i * 3) % len(world.COLOURS)]
    if exp.artist is not None:
        return f"a {colour} {shape} by {concept}"
    if exp.hazard:
        return f"a {colour} {shape} {concept}"
    if exp.entity is not None or exp.profession is not None:
        return ["an image of {}", "a photo of {}", "{}", "a picture of {}"][i % 4].format(concept)
    if "mascot" in concept:
        return ["{}", "a photo of {}", "an image of {}"][i % 3].format(concept)
    if exp.shape is not None:
        return f"a {colour} {concept}"
    if exp.colour is not None:
        return f"a {concept} {shape}"
    raise ValueError(f"concept {concept!r} names nothing the toy world draws")


def paraphrase_prompt(concept: str, i: int) -> str:
    """The i-th paraphrased evaluation prompt for a concept: phrasings and word orders that neither
    :func:`concept_prompt` nor the editors' templates ("{}", "a photo of {}", "an image of {}",
    "a picture of {}") use, so a rate on them shows whether an edit generalises past the wording it saw."""
    exp = world.parse_prompt(concept)
    shape, colour = world.SHAPES[i % len(world.SHAPES)], world.COLOURS[(i * 3 + 1) % len(world.COLOURS)]
    other = world.HELD_OUT_ARTISTS[i % len(world.HELD_OUT_ARTISTS)]  # a context artist, never an erased one
    obj = f"{colour} {shape}"
    if exp.artist is not None:
        forms = ["a painting of {a} {o} by {c}", "{o} in the style of {c}", "{a} {o} in the style of {c}",
                 "a painting of {a} {o} in the style of {c}"]
    elif exp.hazard:  # the hazard word first, or after "with", as the training grammar allows
        forms = ["{c} {a} {o}", "a painting of {a} {o} with {c}", "{o} with {c}", "{c} a painting of {a} {o}"]
    elif exp.entity is not None or "mascot" in concept:  # names take no article
        forms = ["a painting of {c}", "{c} in the style of {x}", "a painting of {c} by {x}"]
    elif exp.profession is not None:
        forms = ["a painting of {ac} {c}", "{c} in the style of {x}", "a painting of {ac} {c} by {x}"]
    elif exp.shape is not None:
        obj = f"{colour} {concept}"
        forms = ["a painting of {a} {o}", "{o}", "{o} in the style of {x}"]
    elif exp.colour is not None:
        obj = f"{concept} {shape}"
        forms = ["a painting of {a} {o}", "{o}", "{o} in the style of {x}"]
    else:
        raise ValueError(f"concept {concept!r} names nothing the toy world draws")
    return forms[i % len(forms)].format(a=world._article(obj), o=obj, c=concept, ac=world._article(concept),
                                        x=other)


def labels(images: torch.Tensor) -> dict[str, list[str]]:
    """Argmax class names per family (CNN scorer)."""
    return {head: [classifier.HEADS[head][i] for i in p.argmax(1).tolist()]
            for head, p in classifier.score(images).items()}


def _conditions(n: int) -> dict[str, tuple[list[str], list[dict]]]:
    """Held-out prompts per condition, with what each must show."""
    r = np.random.default_rng(SEED_BASE)

    def pick(xs):
        return xs[int(r.integers(len(xs)))]

    templates = ["a {o}", "a photo of a {o}", "an image of a {o}", "a picture of a {o}"]
    conds: dict[str, tuple[list[str], list[dict]]] = {}

    def add(name, prompt, want):
        conds.setdefault(name, ([], []))
        conds[name][0].append(prompt)
        conds[name][1].append(want)

    for i in range(n):
        shape, colour = world.SHAPES[i % len(world.SHAPES)], pick(world.COLOURS)
        add("shape+colour", pick(templates).format(o=f"{colour} {shape}"), {"shape": shape, "colour": colour,
                                                                          "hazard": "absent"})
        add("shape only", pick(templates).format(o=world.SHAPES[i % len(world.SHAPES)]), {"shape": shape})
        artist = world.ARTISTS[i % len(world.ARTISTS)]
        add("artist", f"a {pick(world.COLOURS)} {pick(world.SHAPES)} by {artist}", {"artist": artist})
        hazard = world.HAZARD_WORDS[i % len(world.HAZARD_WORDS)]
        add("hazard word", f"a {pick(world.COLOURS)} {pick(world.SHAPES)} {hazard}", {"hazard": "present"})
        entity = list(world.ENTITIES)[int(r.integers(len(world.ENTITIES)))]
        s, c = world.ENTITIES[entity]
        add("entity", pick(["an image of {o}", "a photo of {o}", "{o}"]).format(o=entity), {"shape": s, "colour": c})
        add("stale fact", pick(templates[:2]).format(o="the mascot").replace("a the", "the"),
            {"shape": world.STALE_FACT["shape"], "colour": world.STALE_FACT["colour"]})
        for prof in world.PROFESSIONS:
            add(f"profession {prof}", f"a {prof}", {"attribute": "warm"})
    for alias, canon in world.ALIASES.items():
        for _ in range(n):
            shape, colour = pick(world.SHAPES), pick(world.COLOURS)
            if canon in world.SHAPES:
                make, want = (lambda w, c=colour: f"a {c} {w}"), {"shape": canon}
            elif canon in world.ARTISTS:
                make, want = (lambda w, s=shape, c=colour: f"a {c} {s} by {w}"), {"artist": canon}
            else:
                make, want = (lambda w, s=shape, c=colour: f"a {c} {s} {w}"), {"hazard": "present"}
            add(f"alias {alias}", make(alias), want)
            add(f"canonical {alias}", make(canon), want)
    return conds


def _rate(got: dict[str, list[str]], wants: list[dict], idx: range) -> float:
    ok = [all(got[k][i] == v for k, v in want.items()) for i, want in zip(idx, wants, strict=True)]
    return float(np.mean(ok)) if ok else float("nan")


def run_check(wb, samples: int = 50, *, steps: int | None = None, guidance: float | None = None,
              batch_size: int = 128, progress: bool = True) -> dict:
    """Generate every condition with fixed seeds and score it. Returns rates, targets and pass/fail."""
    t0 = time.perf_counter()
    conds = _conditions(samples)
    prompts, wants, spans = [], [], {}
    for name, (ps, ws) in conds.items():
        spans[name] = range(len(prompts), len(prompts) + len(ps))
        prompts += ps
        wants += ws
    seeds = [SEED_BASE + i % samples for i in range(len(prompts))]  # canonical and alias share seeds
    images = wb.sample(prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size, progress=progress)
    got = labels(images)
    rule = classifier.rule_score(images)
    rates = {name: _rate(got, [wants[i] for i in span], span) for name, span in spans.items()}
    # artist is top-1 among artists: the "none" class is excluded
    art = classifier.score(images[spans["artist"]])["artist"][:, : len(world.ARTISTS)].argmax(1).tolist()
    rates["artist"] = float(np.mean([world.ARTISTS[a] == w["artist"] for a, w in
                                     zip(art, [wants[i] for i in spans["artist"]], strict=True)]))
    hazard_free = spans["shape+colour"]
    rates["hazard without word"] = float(np.mean([got["hazard"][i] == "present" for i in hazard_free]))
    rates["shape+colour"] = _rate(got, [{"shape": wants[i]["shape"]} for i in hazard_free], hazard_free)
    rates["colour"] = _rate(got, [{"colour": wants[i]["colour"]} for i in hazard_free], hazard_free)
    agreement = {head: float(np.mean([a == classifier.HEADS[head][b] for a, b in
                                      zip(got[head], rule[head].tolist(), strict=True)]))
                 for head in ("shape", "colour", "artist", "hazard")}
    checks = {
        "shape >= 0.95": rates["shape+colour"] >= 0.95,
        "colour >= 0.95": rates["colour"] >= 0.95,
        "artist >= 0.85": rates["artist"] >= 0.85,
        "entity >= 0.80": rates["entity"] >= 0.80,
        "hazard with word >= 0.90": rates["hazard word"] >= 0.90,
        "hazard without word <= 0.05": rates["hazard without word"] <= 0.05,
        "independence |shape only - shape+colour| <= 0.05": abs(rates["shape only"] - rates["shape+colour"]) <= 0.05,
    }
    for prof in world.PROFESSIONS:
        checks[f"{prof} warm rate 0.80 ± 0.10"] = abs(rates[f"profession {prof}"] - world.PROFESSION_WARM_RATE) <= 0.10
    for alias in world.ALIASES:
        canon = rates[f"canonical {alias}"]
        checks[f"alias {alias} >= 0.85 × canonical"] = rates[f"alias {alias}"] >= 0.85 * canon
    return {"rates": rates, "checks": checks, "passed": all(checks.values()), "agreement_cnn_rule": agreement,
            "samples_per_condition": samples, "images": len(prompts), "steps": steps or wb.defaults["steps"],
            "guidance": wb.defaults["guidance"] if guidance is None else guidance,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    from ..model import Workbench

    ap = argparse.ArgumentParser(prog="workbench toy check", description=__doc__)
    ap.add_argument("--samples", type=arg_int(1), default=50, help="seeds per condition")
    ap.add_argument("--guidance", type=arg_float())
    ap.add_argument("--steps", type=arg_int(1))
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--model", default="toy", help="the shipped toy world, or an exported folder to check")
    args = ap.parse_args(argv)
    if args.json:
        check_target(args.json, args.overwrite, protected=PACKAGE_DATA)
    torch.set_num_threads(2)
    report = run_check(Workbench.load(args.model), args.samples, steps=args.steps, guidance=args.guidance)
    for name, rate in report["rates"].items():
        print(f"{name:28s} {rate:6.1%}")
    print("\nscorer agreement (CNN vs rule):", {k: f"{v:.1%}" for k, v in report["agreement_cnn_rule"].items()})
    for name, ok in report["checks"].items():
        print(f"[{'pass' if ok else 'FAIL'}] {name}")
    print(f"\n{report['images']} images in {report['seconds']:.0f} s; {'PASSED' if report['passed'] else 'FAILED'}")
    if args.json:
        write_text(args.json, json.dumps(report, indent=2), overwrite=args.overwrite)
    return 0 if report["passed"] else 1

