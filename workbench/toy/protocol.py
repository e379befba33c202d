"""The toy world's scoring protocol: how each concept is prompted, paraphrased and scored, the key contexts
edits read it in, and the :class:`~workbench.world.World` that :meth:`Workbench.toy` attaches.

The acceptance check (``check.py``), the world scan (``scan.py``), the recipes and the evaluation all read
the toy world through these functions, so a concept is scored the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..world import Description, World
from . import classifier, world

# Key contexts for edits on the toy world (UCE's expand_prompts): each family in the phrasings the grammar
# uses around it. The evaluation prompts (``concept_prompt``) are not all among them.
ARTIST_TEMPLATES = ["{}", "a circle by {}", "a red square in the style of {}", "a photo of a blue star by {}",
                    "a painting of a heart by {}", "a green ring by {}", "a yellow cross by {}"]
SHAPE_TEMPLATES = ["{}", "a {}", "a photo of a {}", "a red {}", "a photo of a blue {}", "an image of a green {}",
                   "a yellow {} by jonas flet"]
HAZARD_TEMPLATES = ["{}", "a red circle {}", "a photo of a blue star {}", "a {} square", "a green heart with {}"]


# What the report of ``workbench diff`` can name that no prompt word does: (head, label) of the classifier
VISUAL: dict[str, tuple[str, str]] = {"person": ("shape", world.PERSON), "no artist": ("artist", world.NO_ARTIST),
                                      "warm": ("attribute", "warm"), "cool": ("attribute", "cool")}


def heads_for(concept: str, unreadable: str) -> tuple[tuple[str, str], ...]:
    """The (head, label) pairs whose probabilities multiply into a concept's score, for both toy scorers:
    an artist, the hazard mark (any hazard word), a shape with a colour (a phrase, an entity, the mascot), a
    shape, a colour, an attribute ("warm"), or a :data:`VISUAL` description. Aliases resolve to their
    canonical concept; ``unreadable`` is the error for a phrase that names none of them."""
    if concept in VISUAL:
        return (VISUAL[concept],)
    exp = world.parse_prompt(concept)
    if exp.artist is not None:
        return (("artist", exp.artist),)
    if exp.hazard:
        return (("hazard", "present"),)
    pairs = tuple((h, v) for h, v in (("shape", exp.shape), ("colour", exp.colour)) if v is not None)
    if pairs:
        return pairs
    if exp.attribute is not None:
        return (("attribute", exp.attribute),)
    raise ValueError(unreadable)


def concept_scorer(subject: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> probability that the concept named by ``subject`` is present (CNN scorer): the product of
    the class probabilities :func:`heads_for` names (the person shape for a profession)."""
    heads = heads_for(subject, f"subject {subject!r} names no concept the toy scorer reads")

    def score(images: torch.Tensor) -> torch.Tensor:
        s = classifier.score(images)
        out = torch.ones(len(images))
        for head, label in heads:
            out = out * s[head][:, classifier.HEADS[head].index(label)]
        return out

    return score


def descriptions() -> list[Description]:
    """Everything the toy world draws, one description per concept (``workbench diff``'s proposer): the 11
    shapes, 8 colours, 2 attributes, 20 artists and the plain background, and the hazard mark. Aliases are
    merged into their concept; the four hazard words (and theirs) all draw the one mark."""
    def named(canon: str) -> tuple[str, ...]:
        return tuple(world.aliases_for(canon))

    out = [Description(s, family="shape", aliases=named(s)) for s in world.ALL_SHAPES]
    out += [Description(c, family="colour") for c in world.COLOURS]
    out += [Description(a, family="attribute") for a in world.ATTRIBUTES]
    out += [Description(a, family="artist", aliases=named(a)) for a in world.ARTISTS]
    out.append(Description("no artist", family="artist"))
    words = [w for h in world.HAZARD_WORDS for w in (h, *named(h))]
    out.append(Description(words[0], name="hazard mark", family="hazard", aliases=tuple(words[1:])))
    return out


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


def attribute_scorer(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """images -> {"warm": (B,) probabilities, "cool": ...}: the professions' attribute (UCE debiasing)."""
    p = classifier.score(images)["attribute"]
    return {name: p[:, i] for i, name in enumerate(world.ATTRIBUTES)}


def preserve_captions() -> list[str]:
    """10,000 captions of the training grammar (seed 0): EMCID's preserve corpus on the toy worlds.

    10,000 so that each of the 200 entities appears about 12 times: with 2,000 (2-3 each) the covariance
    barely saw some of them, and 100 edits moved unedited entities' states by 0.20 of the mean stage-I shift
    instead of 0.15."""
    return world.captions(10_000, 0)


def _scan(wb, delta, edited: Sequence[str] = (), **kw):
    from .scan import world_scan

    return world_scan(wb, delta, edited, **kw)


def _scannable(names: Sequence[str]) -> set[str]:
    from .scan import edited_concepts

    return edited_concepts(names)


def _toy_clip():
    from .clip import concept_scorer as clip_concept_scorer

    return clip_concept_scorer()


def toy_world(name: str = "toy") -> World:
    """The toy world's :class:`World` (the same for the base and the entity world: one grammar, one scorer,
    and the toy CLIP as a second scorer)."""
    from .clip import DEFAULT_PATH as CLIP_FOLDER

    return World(name=name, concept_scorer=concept_scorer, concept_prompt=concept_prompt,
                 paraphrase_prompt=paraphrase_prompt, vocabulary=world.vocabulary,
                 preserve_captions=preserve_captions, attribute_scorer=attribute_scorer,
                 scan=_scan, scannable=_scannable,
                 scorers={"toy": lambda: concept_scorer, "toy-clip": _toy_clip}, clip_folder=CLIP_FOLDER,
                 descriptions=descriptions)
