"""The editor recipes of the README's measured table, in one place: the tests, the benchmark that scans the
whole world after each of them, and the README all use these.

Each recipe builds its ``WeightDelta`` on the toy world and names the concepts it edits (with aliases), which
the world scan (``workbench.toy.scan``) marks as "edited"; everything else must stay where it was.
"""

from __future__ import annotations

from collections.abc import Callable

from editors import QuickFixRequest, UCERequest, quickfix, uce

from . import world
from .protocol import ARTIST_TEMPLATES, HAZARD_TEMPLATES, SHAPE_TEMPLATES

QUICKFIX_LAYER = "text.encoder.layers.0.self_attn"  # the layer the text trace of an artist locates


def shape_preserve_captions(shape: str, n: int = 200, seed: int = 11) -> list[str]:
    """Captions from every family (artists, colours, hazard words, professions, entities) that neither show
    nor name ``shape``: the toy encoder carries artists and hazard words in its padding positions, which
    ``to_end`` keys edit, so preserving only the other shapes let an erased shape take artists with it."""
    words = {shape, *world.aliases_for(shape)}
    return world.captions(n, seed=seed, keep=lambda s: s.shape != shape and not words & set(s.subject.split()))


def uce_erase_shape(wb, shape: str = "circle", pooled: bool = False):
    others = [s for s in world.SHAPES if s != shape]
    request = UCERequest(erase=[shape], preserve=others, preserve_prompts=shape_preserve_captions(shape),
                         tokens="to_end", templates=SHAPE_TEMPLATES, pooled=pooled)
    return uce.edit(wb, request, progress=False), [shape, *world.aliases_for(shape)]


def uce_erase_artists(wb, pooled: bool = False, every_family: bool = False):
    """``every_family`` adds 400 captions of every family without the erased artists (hazard words included)
    to the preserve set: on the SDXL-shaped world the base recipe took the hazard words along (world scan)."""
    held = set(world.HELD_OUT_ARTISTS)
    erased = world.ERASE_ARTISTS + [a for a in world.ALIASES if world.ALIASES[a] in world.ERASE_ARTISTS]
    captions = world.captions(200, seed=123, keep=lambda s: s.artist in held and s.entity is None, artist_rate=1.0,
                              hazard_rate=0.0)
    if every_family:
        captions += artist_preserve_captions(set(erased))
    request = UCERequest(erase=world.ERASE_ARTISTS, preserve=world.HELD_OUT_ARTISTS, preserve_prompts=captions,
                         tokens="to_end", templates=ARTIST_TEMPLATES, pooled=pooled)
    return uce.edit(wb, request, progress=False), erased


def uce_erase_artists_every_family(wb, pooled: bool = False):
    return uce_erase_artists(wb, pooled, every_family=True)


def uce_moderate_hazard(wb, pooled: bool = False):
    request = UCERequest(moderate=world.HAZARD_WORDS, preserve_prompts=world.captions(200, seed=7, hazard_rate=0.0),
                         tokens="to_end", templates=HAZARD_TEMPLATES, pooled=pooled)
    words = world.HAZARD_WORDS + [a for a in world.ALIASES if world.ALIASES[a] in world.HAZARD_WORDS]
    return uce.edit(wb, request, progress=False), words


def uce_debias_doctor(wb):
    # Keys at the last token only, with the other professions preserved, took the whole world with the
    # doctor (world scan: every hazard word 100 -> 0 %, shapes -51 points on average; the doctor's key shares
    # directions with every word in the toy's 128 dimensions). Through the padding (to_end) with 200
    # profession-rich captions kept whole, the rest of the world holds; the other professions still cool a
    # little (README).
    captions = world.captions(200, seed=21, keep=lambda s: s.profession != "doctor", profession_rate=0.5)
    request = UCERequest(debias={"doctor": {"warm": 0.5, "cool": 0.5}},
                         templates=["{}", "a {}", "a photo of a {}", "an image of a {}"],
                         preserve=[p for p in world.PROFESSIONS if p != "doctor"], preserve_prompts=captions,
                         tokens="to_end")  # warm/cool read by the toy world's attribute scorer (wb.world)
    return uce.edit(wb, request, progress=False), ["doctor"]


def _neutral(source: str) -> str:
    """The Diff-QuickFix target for an erased artist name: "painting", padded to the source's word count (the
    toy tokenizer is word-level), so the positions after the subject pair up at the same absolute positions."""
    words = len(source.split())
    if words > 2:
        raise ValueError(f"no neutral target of {words} words for {source!r}; the toy world's names have 1 or 2")
    return "painting" if words == 1 else "a painting"


def artist_preserve_captions(names: set[str], seed: int = 3) -> list[str]:
    """200 captions of other artists and 200 from every family, none naming ``names``: the edit keys are the
    padding positions every prompt shares, so every family needs its share of the preserve set."""
    def free(s) -> bool:
        return s.artist_word not in names and not names & set(s.subject.split())

    return (world.captions(200, seed=seed, keep=free, artist_rate=0.9)
            + world.captions(200, seed=11, keep=free))


# Measured on the shipped world (world scan, 50+ images per concept, seeds from 0): the preserve set at scale 1
# blocks the edit (jonas flet stays at 66-100 %), at 0.3 it erases with entities -6 and ring -6 points; 0.5
# erases with every concept within 5 points. See the README's world-scan section.
QUICKFIX_PRESERVE_SCALE = 0.5


def _quickfix_erase(wb, sources: list[str], names: set[str], layer: str):
    """Erase ``sources`` to the neutral target, preserving captions that name none of ``names``."""
    request = QuickFixRequest(sources, [_neutral(s) for s in sources], templates=ARTIST_TEMPLATES[:5], eos=True,
                              preserve_prompts=artist_preserve_captions(names),
                              preserve_scale=QUICKFIX_PRESERVE_SCALE)
    return quickfix.edit(wb, request, [layer])


def quickfix_erase_artist(wb, artist: str = "jonas flet", layer: str = QUICKFIX_LAYER):
    # The alias is a separate token the edit does not see: it is marked edited so its own rows do not count as
    # collateral, but it is not erased (the next recipe lists it as a second source).
    names = {artist, *world.aliases_for(artist)}
    return _quickfix_erase(wb, [artist], names, layer), sorted(names)


def quickfix_erase_artist_and_alias(wb, artist: str = "jonas flet"):
    sources = [artist, *world.aliases_for(artist)]
    return _quickfix_erase(wb, sources, set(sources), QUICKFIX_LAYER), sources


STALE_FACT_TARGET = "blue heart"


def quickfix_stale_fact(wb):
    phrase = world.STALE_FACT["phrase"]
    captions = world.captions(200, seed=3, hazard_rate=0.0, keep=lambda s: s.subject != phrase)
    templates = ["{}", "a picture of {}", "a photo of {}", "an image of {}", "{} by jonas flet",
                 "a picture of {} by vera kolm"]
    request = QuickFixRequest([phrase], [STALE_FACT_TARGET], templates=templates, eos=True, preserve_prompts=captions,
                              preserve_scale=0.1)
    return quickfix.edit(wb, request), [phrase]


# The UCE recipes that can also edit a pooled text path (SDXL-shaped models: ``recipe(wb, pooled=True)``)
POOLED_RECIPES = ("UCE erase circle", "UCE erase 10 artists", "UCE erase 10 artists, every family preserved",
                  "UCE moderate 4 hazard words")

RECIPES: dict[str, Callable] = {
    "UCE erase circle": uce_erase_shape,
    "UCE erase 10 artists": uce_erase_artists,
    "UCE erase 10 artists, every family preserved": uce_erase_artists_every_family,
    "UCE moderate 4 hazard words": uce_moderate_hazard,
    "UCE debias doctor to 50/50": uce_debias_doctor,
    "Diff-QuickFix erase jonas flet": quickfix_erase_artist,
    "Diff-QuickFix erase jonas flet and flettie": quickfix_erase_artist_and_alias,
    "Diff-QuickFix stale fact to a blue heart": quickfix_stale_fact,
}
