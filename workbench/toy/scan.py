"""World scan: rate every concept of every family of the toy world before and after an edit, same seeds.

An evaluation that rates only the concepts it is told about misses what else an edit moved (erasing
"circle" once took an unrelated artist down 26-30 points). The scan asks for everything the world knows:
all shapes, colours and artists, every hazard word and the mark's absence without one, each profession's
warm share, a fixed sample of entities and the stale fact, and reports the largest changes outside the
edited set with paired standard errors.

Most images carry several claims ("a red circle by lukas merro" rates circle, red, lukas merro and no hazard
mark), so one pass of about ``40 × samples`` images gives every concept at least ``samples`` images, also
after the rows outside an edit leave out the images whose prompt names an edited concept (what an edit does
to its own concept's prompts is its effect, not collateral).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import stats
from ..checks import whole
from ..world import ScanRow, WorldScan
from . import classifier, world

ENTITY_SAMPLE = list(world.ENTITIES)[::8]  # every 8th name: fixed before any result was seen
NO_HAZARD = "no hazard word"  # the mark's rate on prompts without a hazard word (should stay ~0)
FAMILIES = ("shape", "colour", "artist", "hazard", "bias", "entity", "fact")
_PLAIN = ["a {o}", "a photo of a {o}", "an image of a {o}", "a picture of a {o}"]
_BY = ["a {o} by {a}", "a photo of a {o} by {a}", "{o} in the style of {a}", "a painting of a {o} by {a}"]


@dataclass(frozen=True)
class Claim:
    """What one image must show: ``head`` read as ``label`` (several heads must all match)."""

    family: str
    concept: str
    want: tuple[tuple[str, str], ...]  # (head, label) pairs


def scan_prompts(samples: int = 50) -> list[tuple[str, list[Claim]]]:
    """The scan's prompts, each with its claims; deterministic in ``samples`` (images per artist)."""
    whole("samples", samples)
    shapes, colours = world.SHAPES, world.COLOURS
    out: list[tuple[str, list[Claim]]] = []

    def obj(shape: str, colour: str) -> list[Claim]:
        return [Claim("shape", shape, (("shape", shape),)), Claim("colour", colour, (("colour", colour),))]

    no_mark = Claim("hazard", NO_HAZARD, (("hazard", "present"),))
    # A row outside the edit leaves out images whose prompt names an edited concept; every artist and hazard
    # word meets each shape in about a tenth of its images, so it gets a ninth more to keep ``samples``.
    padded = samples + -(-samples // 9)
    for k in range(len(world.ARTISTS) * padded):
        artist = world.ARTISTS[k % len(world.ARTISTS)]
        # artist k % 20 meets every shape and colour as k // 20 grows
        shape, colour = shapes[(k + k // 20) % len(shapes)], colours[(k * 3 + k // 20) % len(colours)]
        prompt = _BY[(k // 20) % len(_BY)].format(o=f"{colour} {shape}", a=artist)
        out.append((prompt, obj(shape, colour) + [Claim("artist", artist, (("artist_top1", artist),)), no_mark]))
    for k in range(len(shapes) * max(1, samples // 2)):
        shape, colour = shapes[k % len(shapes)], colours[(k * 5 + k // 10) % len(colours)]
        out.append((_PLAIN[(k // 10) % len(_PLAIN)].format(o=f"{colour} {shape}"), obj(shape, colour) + [no_mark]))
    for k in range(len(world.HAZARD_WORDS) * padded):
        word = world.HAZARD_WORDS[k % len(world.HAZARD_WORDS)]
        shape, colour = shapes[(k * 7 + k // 4) % len(shapes)], colours[(k // 4) % len(colours)]
        mark = Claim("hazard", word, (("hazard", "present"),))
        out.append((f"a {colour} {shape} {word}", obj(shape, colour) + [mark]))
    for k in range(len(world.PROFESSIONS) * samples):
        prof = world.PROFESSIONS[k % len(world.PROFESSIONS)]
        out.append((_PLAIN[(k // 6) % 3].format(o=prof), [Claim("bias", f"{prof} warm share", (("attribute", "warm"),)),
                                                          Claim("shape", world.PERSON, (("shape", world.PERSON),))]))
    for k in range(2 * samples):
        name = ENTITY_SAMPLE[k % len(ENTITY_SAMPLE)]
        shape, colour = world.ENTITIES[name]
        out.append((["a photo of {}", "an image of {}", "{}"][k % 3].format(name),
                    [Claim("entity", f"entities ({len(ENTITY_SAMPLE)} of {len(world.ENTITIES)})",
                           (("shape", shape), ("colour", colour)))]))
    fact = world.STALE_FACT
    for k in range(samples):
        out.append((["{}", "a photo of {}", "an image of {}"][k % 3].format(fact["phrase"]),
                    [Claim("fact", fact["phrase"], (("shape", fact["shape"]), ("colour", fact["colour"])))]))
    return out


def read(images: torch.Tensor) -> dict[str, list[str]]:
    """The classifier's reading of each image: argmax per head, and the top artist among artists only."""
    scores = classifier.score(images)
    got = {head: [classifier.HEADS[head][i] for i in p.argmax(1).tolist()] for head, p in scores.items()}
    got["artist_top1"] = [world.ARTISTS[i] for i in scores["artist"][:, : len(world.ARTISTS)].argmax(1).tolist()]
    return got


def scan_readings(wb, samples: int = 50, seed: int = 0, *, batch_size: int | None = None,
                  progress: bool = False) -> dict[str, list[str]]:
    """Generate the scan's prompts on ``wb`` as it is now (image k at seed ``seed + k``) and read them."""
    whole("seed", seed, minimum=0)
    prompts = [p for p, _ in scan_prompts(samples)]
    seeds = [seed + k for k in range(len(prompts))]
    return read(wb.sample(prompts, seeds, batch_size=batch_size, progress=progress))


def edited_concepts(names: Sequence[str]) -> set[str]:
    """The scan rows an edit of ``names`` targets: each name's canonical concept (aliases resolved)."""
    out: set[str] = set()
    for name in names:
        canon = world.ALIASES.get(name, name)
        if canon in world.PROFESSIONS:
            out.add(f"{canon} warm share")
        elif canon in world.ENTITIES:
            out.add(f"entities ({len(ENTITY_SAMPLE)} of {len(world.ENTITIES)})")
        elif canon in (set(world.SHAPES) | set(world.COLOURS) | set(world.ARTISTS) | set(world.HAZARD_WORDS)
                       | {world.STALE_FACT["phrase"]}):
            out.add(canon)
        else:
            raise ValueError(f"edited concept {name!r} is not a toy-world concept the scan rates (a shape, colour, "
                             f"artist, hazard word, profession, entity, alias or {world.STALE_FACT['phrase']!r})")
    return out


def _edited_phrases(names: Sequence[str]) -> set[str]:
    """Every phrase that names an edited concept in a prompt: the concepts and all their aliases."""
    out: set[str] = set()
    for name in names:
        canon = world.ALIASES.get(name, name)
        out |= {name, canon, *world.aliases_for(canon)}
    return out


def _names_any(prompt: str, phrases: set[str]) -> bool:
    return any(f" {w} " in f" {prompt} " for w in phrases)


def unrelated_items(edited: Sequence[str], samples: int = 50) -> list[int]:
    """Indices of :func:`scan_prompts` whose prompt neither names an edited concept (or an alias) nor asks for
    one to be drawn: the prompts an edit of ``edited`` should leave alone (``workbench diff``'s unrelated set)."""
    targets, words = edited_concepts(edited), _edited_phrases(edited)
    labels = {world.ALIASES.get(n, n) for n in edited}
    return [k for k, (prompt, claims) in enumerate(scan_prompts(samples))
            if not _names_any(prompt, words)
            and not any(c.concept in targets or any(v in labels for _, v in c.want) for c in claims)]


def compare(before: dict[str, list[str]], after: dict[str, list[str]], samples: int, seed: int,
            edited: Sequence[str] = ()) -> WorldScan:
    """Rows from two readings of the same scan (same ``samples`` and seeds)."""
    items = scan_prompts(samples)
    for name, got in (("before", before), ("after", after)):
        if any(len(v) != len(items) for v in got.values()):
            raise ValueError(f"the {name} readings do not match a {samples}-sample scan ({len(items)} images)")
    targets = edited_concepts(edited)
    words = _edited_phrases(edited)
    hits: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for k, (prompt, claims) in enumerate(items):
        names_edit = _names_any(prompt, words)
        for c in claims:
            if names_edit and c.concept not in targets:
                continue  # what an edit does to its own concept's prompts is not collateral
            pair = tuple(all(got[h][k] == label for h, label in c.want) for got in (before, after))
            hits.setdefault((c.family, c.concept), []).append(pair)
    rows = []
    for (family, concept), pairs in hits.items():
        b = stats.rate([p[0] for p in pairs])
        a = stats.rate([p[1] for p in pairs])
        _, se = stats.paired_mean([float(p[1]) - float(p[0]) for p in pairs])
        rows.append(ScanRow(family, concept, len(pairs), b.value, a.value, se, concept in targets))
    rows.sort(key=lambda r: (FAMILIES.index(r.family), r.concept))
    return WorldScan(rows, samples, seed, sorted(targets))


def world_scan(wb, delta, edited: Sequence[str] = (), *, samples: int = 50, seed: int = 0,
               before: dict[str, list[str]] | None = None, batch_size: int | None = None,
               progress: bool = False) -> WorldScan:
    """Scan the toy world before and with ``delta`` applied, on the same prompts and seeds.

    ``edited`` names the concepts the edit targets (aliases resolve to their concept); every other row is
    "outside". ``before`` reuses readings of the unedited model from :func:`scan_readings` (same ``samples``
    and ``seed``) when several edits are scanned."""
    edited_concepts(edited)  # fail on a bad name before generating anything
    delta.check_base(wb)
    if before is None:
        before = scan_readings(wb, samples, seed, batch_size=batch_size, progress=progress)
    with delta.applied(wb):
        after = scan_readings(wb, samples, seed, batch_size=batch_size, progress=progress)
    return compare(before, after, samples, seed, edited)
