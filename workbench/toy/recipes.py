"""The editor recipes of the README's measured table, in one place: the tests, the benchmark that scans the
whole world after each of them, and the README all use these.

Each recipe builds its ``WeightDelta`` on the toy world and names the concepts it edits (with aliases), which
the world scan (``workbench.toy.scan``) marks as "edited"; everything else must stay where it was.
"""

from __future__ import annotations

from collections.abc import Callable

from . import world
from .check import ARTIST_TEMPLATES, HAZARD_TEMPLATES, SHAPE_TEMPLATES

QUICKFIX_LAYER = "text.encoder.layers.0.self_attn"  # the layer the text trace of an artist locates


def _uce():
    from editors import UCERequest, uce

    return UCERequest, uce


def _quickfix():
    from editors import QuickFixRequest, quickfix

    return QuickFixRequest, quickfix


def shape_preserve_captions(shape: str, n: int = 200, seed: int = 11) -> list[str]:
    """Captions from every family (artists, colours, hazard words, professions, entities) that neither show
    nor name ``shape``: the toy encoder carries artists and hazard words in its padding positions, which
    ``to_end`` keys edit, so preserving only the other shapes let an erased shape take artists with it."""
    words = {shape, *world.aliases_for(shape)}
    return world.captions(n, seed=seed, keep=lambda s: s.shape != shape and not words & set(s.subject.split()))


def uce_erase_shape(wb, shape: str = "circle"):
    UCERequest, uce = _uce()
    others = [s for s in world.SHAPES if s != shape]
    request = UCERequest(erase=[shape], preserve=others, preserve_prompts=shape_preserve_captions(shape),
                         tokens="to_end", templates=SHAPE_TEMPLATES)
    return uce(wb, request, progress=False), [shape, *world.aliases_for(shape)]


def uce_erase_artists(wb):
    UCERequest, uce = _uce()
    held = set(world.HELD_OUT_ARTISTS)
    captions = world.captions(200, seed=123, keep=lambda s: s.artist in held and s.entity is None, artist_rate=1.0,
                              hazard_rate=0.0)
    request = UCERequest(erase=world.ERASE_ARTISTS, preserve=world.HELD_OUT_ARTISTS, preserve_prompts=captions,
                         tokens="to_end", templates=ARTIST_TEMPLATES)
    erased = world.ERASE_ARTISTS + [a for a in world.ALIASES if world.ALIASES[a] in world.ERASE_ARTISTS]
    return uce(wb, request, progress=False), erased


def uce_moderate_hazard(wb):
    UCERequest, uce = _uce()
    request = UCERequest(moderate=world.HAZARD_WORDS, preserve_prompts=world.captions(200, seed=7, hazard_rate=0.0),
                         tokens="to_end", templates=HAZARD_TEMPLATES)
    words = world.HAZARD_WORDS + [a for a in world.ALIASES if world.ALIASES[a] in world.HAZARD_WORDS]
    return uce(wb, request, progress=False), words


def uce_debias_doctor(wb):
    from editors.uce import named_attribute_scorer

    from . import classifier

    UCERequest, uce = _uce()
    warm_cool = named_attribute_scorer(lambda images: classifier.score(images)["attribute"], world.ATTRIBUTES)
    request = UCERequest(debias={"doctor": {"warm": 0.5, "cool": 0.5}},
                         templates=["{}", "a {}", "a photo of a {}", "an image of a {}"],
                         preserve=[p for p in world.PROFESSIONS if p != "doctor"])
    return uce(wb, request, attribute_scorer=warm_cool, progress=False), ["doctor"]


def quickfix_erase_artist(wb, artist: str = "jonas flet"):
    QuickFixRequest, quickfix = _quickfix()
    captions = world.captions(200, seed=3, keep=lambda s: s.artist != artist, artist_rate=0.9)
    request = QuickFixRequest([artist], ["painting"], templates=ARTIST_TEMPLATES[:5], eos=True,
                              preserve_prompts=captions)
    # The alias is a separate token the edit does not see: it is marked edited so its own rows do not count as
    # collateral, but it is not erased (the next recipe lists it as a second source).
    return quickfix(wb, request, [QUICKFIX_LAYER]), [artist, *world.aliases_for(artist)]


def quickfix_erase_artist_and_alias(wb, artist: str = "jonas flet"):
    QuickFixRequest, quickfix = _quickfix()
    aliases = world.aliases_for(artist)
    captions = world.captions(200, seed=3, artist_rate=0.9,
                              keep=lambda s: s.artist != artist and s.artist_word not in aliases)
    request = QuickFixRequest([artist, *aliases], ["painting"] * (1 + len(aliases)), templates=ARTIST_TEMPLATES[:5],
                              eos=True, preserve_prompts=captions)
    return quickfix(wb, request, [QUICKFIX_LAYER]), [artist, *aliases]


STALE_FACT_TARGET = "blue heart"


def quickfix_stale_fact(wb):
    QuickFixRequest, quickfix = _quickfix()
    phrase = world.STALE_FACT["phrase"]
    captions = world.captions(200, seed=3, hazard_rate=0.0, keep=lambda s: s.subject != phrase)
    templates = ["{}", "a picture of {}", "a photo of {}", "an image of {}", "{} by jonas flet",
                 "a picture of {} by vera kolm"]
    request = QuickFixRequest([phrase], [STALE_FACT_TARGET], templates=templates, eos=True, preserve_prompts=captions,
                              preserve_scale=0.1)
    return quickfix(wb, request), [phrase]


RECIPES: dict[str, Callable] = {
    "UCE erase circle": uce_erase_shape,
    "UCE erase 10 artists": uce_erase_artists,
    "UCE moderate 4 hazard words": uce_moderate_hazard,
    "UCE debias doctor to 50/50": uce_debias_doctor,
    "Diff-QuickFix erase jonas flet": quickfix_erase_artist,
    "Diff-QuickFix erase jonas flet and flettie": quickfix_erase_artist_and_alias,
    "Diff-QuickFix stale fact to a blue heart": quickfix_stale_fact,
}
