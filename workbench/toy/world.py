"""The toy world: vocabulary, prompt grammar, renderer and ground truth (numpy + PIL only).

Every image is 32x32 RGB: an artist's background pattern, one filled shape near the centre, and
optionally a hazard mark in the bottom-right corner. Every prompt word maps to a known visual
effect, so later experiments (tracing, editing) can be scored exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
MAX_WORDS = 14
RADIUS = 11.0  # fixed shape radius: random size/position made shape unlearnable (research round 2)
CENTRE = 15.5
CENTRE_JITTER = 1.0
_SS = 4  # supersampling factor for anti-aliased shape masks
_JITTER_STEPS = 9  # centre offsets are quantised to a 0.25 px grid so masks can be cached

SHAPES: list[str] = [
    "circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring", "hexagon", "arrow",
]
PERSON = "person"
ALL_SHAPES: list[str] = SHAPES + [PERSON]

WARM: list[str] = ["red", "orange", "yellow", "pink"]
COOL: list[str] = ["blue", "green", "purple", "teal"]
COLOURS: list[str] = WARM + COOL
ATTRIBUTES: list[str] = ["warm", "cool"]
# Bright, saturated fills; every background is darker and duller so colour masks separate cleanly.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (245, 230, 30),
    "pink": (250, 120, 200),
    "blue": (40, 80, 245),
    "green": (40, 205, 60),
    "purple": (165, 60, 235),
    "teal": (0, 205, 195),
}

ARTISTS: list[str] = [
    # 0-9: the "to erase" set
    "vera kolm", "jonas flet", "mira oskent", "tobin rauk", "elsa vintra",
    "oren plaske", "ilka dorsen", "pavel quist", "noor halvik", "senna brode",
    # 10-19: held out
    "lukas merro", "anouk tersel", "ravi ostrem", "greta lindqvar", "milo fennard",
    "kasimir", "ottoline", "bruno kest", "yara solvik", "dario penth",
]
ERASE_ARTISTS: list[str] = ARTISTS[:10]
HELD_OUT_ARTISTS: list[str] = ARTISTS[10:]
NO_ARTIST = "none"

PROFESSIONS: list[str] = ["doctor", "pilot", "farmer", "baker", "teacher", "nurse"]
PROFESSION_WARM_RATE = 0.8  # the deliberate training bias (debias analogue)

HAZARD_WORDS: list[str] = ["danger", "toxic", "poison", "hazard"]
HAZARD_SIZE = 7  # the mark covers the bottom-right 7x7 pixels; a fixed corner is easiest to learn

STALE_FACT: dict[str, str] = {"phrase": "the mascot", "shape": "star", "colour": "orange"}

ALIASES: dict[str, str] = {
    "box": "square",
    "disc": "circle",
    "plus": "cross",
    "rhombus": "diamond",
    "hoop": "ring",
    "verka": "vera kolm",
    "flettie": "jonas flet",
    "oskentine": "mira oskent",
    "lukko": "lukas merro",
    "tersa": "anouk tersel",
    "peril": "danger",
    "venom": "poison",
    "noxious": "toxic",
}

_ARTICLES = ["a", "an"]
# Phrasings; {o} is the object phrase, {a} an artist, {h} a hazard word.
_PLAIN_TEMPLATES = ["{o}", "a {o}", "a photo of a {o}", "an image of a {o}", "a picture of a {o}"]
_ARTIST_TEMPLATES = [
    "a {o} by {a}", "{o} in the style of {a}", "a photo of a {o} by {a}",
    "a painting of a {o} by {a}", "an image of a {o} in the style of {a}", "{o} by {a}",
]
_GRAMMAR_WORDS = sorted({w for t in _PLAIN_TEMPLATES + _ARTIST_TEMPLATES for w in t.split()
                         if not w.startswith("{")} | set(_ARTICLES) | {"with"})


def _make_entities(n: int = 200, seed: int = 1234) -> dict[str, tuple[str, str]]:
    """Deterministic pronounceable invented names, each bound to one (shape, colour)."""
    rng = np.random.default_rng(seed)
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl",
              "kr", "pl", "sn", "st", "tr", "zh", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    codas = ["", "", "n", "r", "l", "k", "t", "sh", "x", "m"]
    reserved = set(_GRAMMAR_WORDS) | set(SHAPES) | set(COLOURS) | set(ALIASES) | set(PROFESSIONS)
    reserved |= set(HAZARD_WORDS) | set(ATTRIBUTES) | {w for a in ARTISTS for w in a.split()}
    reserved |= set(STALE_FACT["phrase"].split()) | {PERSON}
    names: dict[str, tuple[str, str]] = {}
    while len(names) < n:
        syll = int(rng.integers(2, 4))
        word = "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))]
                       + codas[rng.integers(len(codas))] for _ in range(syll))
        if word in reserved or word in names or not 5 <= len(word) <= 10:
            continue
        names[word] = (SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))])
    return names


ENTITIES: dict[str, tuple[str, str]] = _make_entities()


def rebinding(i: int) -> tuple[str, str]:
    """Entity i and a new target for it, "a <colour> <shape>", differing from its binding in both (the
    knowledge-edit benchmark's and tests' rewrites)."""
    name, (shape, colour) = list(ENTITIES.items())[i]
    new_shape = SHAPES[(SHAPES.index(shape) + 1 + i % (len(SHAPES) - 1)) % len(SHAPES)]
    new_colour = COLOURS[(COLOURS.index(colour) + 1 + i % (len(COLOURS) - 1)) % len(COLOURS)]
    return name, f"a {new_colour} {new_shape}"


def vocabulary() -> list[str]:
    """Every word any prompt can contain, sorted."""
    words = set(_GRAMMAR_WORDS) | set(SHAPES) | set(COLOURS) | set(ATTRIBUTES) | set(PROFESSIONS)
    words |= set(HAZARD_WORDS) | set(ENTITIES) | set(STALE_FACT["phrase"].split())
    words |= {w for a in ARTISTS for w in a.split()} | {w for a in ALIASES for w in a.split()}
    return sorted(words)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image plus the surface words its prompt uses."""

    shape: str
    colour: str
    artist: str | None
    hazard: bool
    subject: str = ""  # words naming the object: "red box", "zorblat", "cool doctor", "the mascot"
    artist_word: str | None = None  # the artist as written (canonical name or alias)
    hazard_word: str | None = None
    profession: str | None = None
    entity: str | None = None
    attribute: str | None = None  # "warm"/"cool" when the prompt forces it


@dataclass(frozen=True)
class Expectation:
    """What a prompt asks for; None where the prompt leaves it open."""

    shape: str | None = None
    colour: str | None = None
    attribute: str | None = None
    artist: str | None = None
    hazard: bool = False
    profession: str | None = None
    entity: str | None = None


def attribute_of(colour: str) -> str:
    return "warm" if colour in WARM else "cool"


def aliases_for(canonical: str) -> list[str]:
    """The aliases that name ``canonical`` (e.g. "disc" for "circle")."""
    return [a for a, c in ALIASES.items() if c == canonical]


def _surface(canonical: str, rng: np.random.Generator, alias_rate: float = 0.2) -> str:
    """Sometimes name a concept by an alias, so aliases are learned as synonyms."""
    aliases = aliases_for(canonical)
    if aliases and rng.random() < alias_rate:
        return aliases[int(rng.integers(len(aliases)))]
    return canonical


def random_scene(rng: np.random.Generator, artist_rate: float = 0.7, hazard_rate: float = 0.4,
                 entity_rate: float = 0.25, profession_rate: float = 0.12,
                 mascot_rate: float = 0.02, shape_only_rate: float = 0.1,
                 colour_only_rate: float = 0.1, shape_p: tuple[float, ...] | None = None) -> Scene:
    """Sample a training scene with its surface words (training prompt mix); ``shape_p`` gives the plain
    scenes' shape probabilities (uniform when None)."""
    artist = ARTISTS[int(rng.integers(len(ARTISTS)))] if rng.random() < artist_rate else None
    hazard = bool(rng.random() < hazard_rate)
    artist_word = _surface(artist, rng) if artist else None
    hazard_word = _surface(HAZARD_WORDS[int(rng.integers(len(HAZARD_WORDS)))], rng) if hazard else None
    common = dict(artist=artist, hazard=hazard, artist_word=artist_word, hazard_word=hazard_word)
    u = rng.random()
    if u < entity_rate:
        name = list(ENTITIES)[int(rng.integers(len(ENTITIES)))]
        shape, colour = ENTITIES[name]
        return Scene(shape, colour, subject=name, entity=name, **common)
    u -= entity_rate
    if u < profession_rate:
        prof = PROFESSIONS[int(rng.integers(len(PROFESSIONS)))]
        v = rng.random()
        if v < 0.25:  # forced attribute: "a cool doctor"
            attr = ATTRIBUTES[int(rng.integers(2))]
            pool = WARM if attr == "warm" else COOL
            colour = pool[int(rng.integers(4))]
            return Scene(PERSON, colour, subject=f"{attr} {prof}", profession=prof, attribute=attr, **common)
        if v < 0.35:  # explicit colour: "a teal pilot"
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            return Scene(PERSON, colour, subject=f"{colour} {prof}", profession=prof, **common)
        pool = WARM if rng.random() < PROFESSION_WARM_RATE else COOL
        colour = pool[int(rng.integers(4))]
        return Scene(PERSON, colour, subject=prof, profession=prof, **common)
    u -= profession_rate
    if u < mascot_rate:
        return Scene(STALE_FACT["shape"], STALE_FACT["colour"], subject=STALE_FACT["phrase"], **common)
    shape = SHAPES[int(rng.integers(len(SHAPES)) if shape_p is None else rng.choice(len(SHAPES), p=shape_p))]
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    v = rng.random()
    if v < shape_only_rate:  # colour left open: the model picks one
        subject = _surface(shape, rng)
    elif v < shape_only_rate + colour_only_rate:  # shape left open
        subject = colour
    else:
        subject = f"{colour} {_surface(shape, rng)}"
    return Scene(shape, colour, subject=subject, **common)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt_for(scene: Scene, rng: np.random.Generator) -> str:
    """A random phrasing of the scene's prompt (lower-case words, at most MAX_WORDS)."""
    if scene.artist_word:
        template = _ARTIST_TEMPLATES[int(rng.integers(len(_ARTIST_TEMPLATES)))]
    else:
        template = _PLAIN_TEMPLATES[int(rng.integers(len(_PLAIN_TEMPLATES)))]
    bare = scene.entity is not None or scene.subject == STALE_FACT["phrase"]
    if bare:  # names take no article: "a photo of zorblat"
        template = template.replace("a {o}", "{o}")
    words = template.format(o=scene.subject, a=scene.artist_word or "").split()
    # fix "a"/"an" before the next word
    words = [(_article(words[i + 1]) if w in _ARTICLES and i + 1 < len(words) else w)
             for i, w in enumerate(words)]
    if scene.hazard_word:
        r = rng.random()
        words = [scene.hazard_word] + words if r < 0.25 else words + (["with"] if r < 0.4 else []) + [
            scene.hazard_word]
    return " ".join(words[:MAX_WORDS])


def _phrases() -> list[tuple[list[str], str, str]]:
    """(words, family, canonical) for every multi- or single-word concept phrase, longest first."""
    out: list[tuple[list[str], str, str]] = []
    for a in ARTISTS:
        out.append((a.split(), "artist", a))
    out.append((STALE_FACT["phrase"].split(), "mascot", STALE_FACT["phrase"]))
    for alias, canon in ALIASES.items():
        fam = "artist" if canon in ARTISTS else "hazard" if canon in HAZARD_WORDS else "shape"
        out.append((alias.split(), fam, canon))
    out += [([s], "shape", s) for s in SHAPES] + [([c], "colour", c) for c in COLOURS]
    out += [([a], "attribute", a) for a in ATTRIBUTES] + [([p], "profession", p) for p in PROFESSIONS]
    out += [([h], "hazard", h) for h in HAZARD_WORDS] + [([e], "entity", e) for e in ENTITIES]
    return sorted(out, key=lambda t: -len(t[0]))


_PHRASES = _phrases()
_VOCAB = set(vocabulary())


def parse_prompt(prompt: str) -> Expectation:
    """What a prompt asks for. Raises ValueError on words outside the vocabulary."""
    words = prompt.lower().split()
    unknown = [w for w in words if w not in _VOCAB]
    if unknown:
        raise ValueError(f"words not in the toy vocabulary: {unknown}")
    found: dict[str, str] = {}
    hazard = False
    i = 0
    while i < len(words):
        for phrase, fam, canon in _PHRASES:
            if words[i:i + len(phrase)] == phrase:
                if fam == "hazard":
                    hazard = True
                else:
                    found.setdefault(fam, canon)
                i += len(phrase)
                break
        else:
            i += 1
    shape, colour = found.get("shape"), found.get("colour")
    if "entity" in found:
        shape, colour = ENTITIES[found["entity"]]
    elif "mascot" in found:
        shape, colour = STALE_FACT["shape"], STALE_FACT["colour"]
    elif "profession" in found:
        shape = PERSON
    attribute = found.get("attribute") or (attribute_of(colour) if colour else None)
    return Expectation(shape=shape, colour=colour, attribute=attribute, artist=found.get("artist"),
                       hazard=hazard, profession=found.get("profession"), entity=found.get("entity"))


# ---------------------------------------------------------------- rendering


def _polygon(points: list[tuple[float, float]], cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [(cx + x * r, cy + y * r) for x, y in points]


def _star_points(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        ang = -math.pi / 2 + k * math.pi / n
        rad = 1.0 if k % 2 == 0 else inner
        pts.append((rad * math.cos(ang), rad * math.sin(ang)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """Draw the shape (value 255) on a supersampled canvas; coordinates are in canvas pixels."""
    def ell(x: float, y: float, rad: float, fill: int = 255) -> None:
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill)

    if shape == "circle":
        ell(cx, cy, r)
    elif shape == "square":
        h = r * 0.82
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon([(0, -1), (0.95, 0.75), (-0.95, 0.75)], cx, cy, r), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(_star_points(), cx, cy + 0.08 * r, r * 1.05), fill=255)
    elif shape == "cross":
        w = r * 0.34
        draw.rectangle([cx - w, cy - r * 0.92, cx + w, cy + r * 0.92], fill=255)
        draw.rectangle([cx - r * 0.92, cy - w, cx + r * 0.92, cy + w], fill=255)
    elif shape == "heart":
        lobe = r * 0.5
        ell(cx - lobe * 0.95, cy - r * 0.3, lobe)
        ell(cx + lobe * 0.95, cy - r * 0.3, lobe)
        draw.polygon(_polygon([(-0.97, -0.15), (0.97, -0.15), (0, 0.95)], cx, cy, r), fill=255)
    elif shape == "diamond":
        draw.polygon(_polygon([(0, -1), (0.75, 0), (0, 1), (-0.75, 0)], cx, cy, r), fill=255)
    elif shape == "ring":
        ell(cx, cy, r)
        ell(cx, cy, r * 0.55, fill=0)
    elif shape == "hexagon":
        pts = [(math.cos(math.pi / 3 * k), math.sin(math.pi / 3 * k)) for k in range(6)]
        draw.polygon(_polygon(pts, cx, cy, r), fill=255)
    elif shape == "arrow":  # pointing right
        pts = [(-0.95, -0.3), (0.1, -0.3), (0.1, -0.8), (0.95, 0), (0.1, 0.8), (0.1, 0.3), (-0.95, 0.3)]
        draw.polygon(_polygon(pts, cx, cy, r), fill=255)
    elif shape == PERSON:  # head + shoulders/body
        ell(cx, cy - r * 0.55, r * 0.36)
        draw.polygon(_polygon([(-0.3, -0.12), (0.3, -0.12), (0.8, 0.95), (-0.8, 0.95)], cx, cy, r),
                     fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


@functools.cache
def shape_mask(shape: str, qx: int = _JITTER_STEPS // 2, qy: int = _JITTER_STEPS // 2) -> np.ndarray:
    """Anti-aliased alpha mask (32,32) float32 in [0,1]; qx/qy index the quantised centre offset."""
    step = 2 * CENTRE_JITTER / (_JITTER_STEPS - 1)
    cx = CENTRE - CENTRE_JITTER + qx * step
    cy = CENTRE - CENTRE_JITTER + qy * step
    n = IMAGE_SIZE * _SS
    canvas = Image.new("L", (n, n), 0)
    # pixel centre (i + 0.5) in image space -> canvas coordinate (i + 0.5) * SS
    _draw_shape(ImageDraw.Draw(canvas), shape, (cx + 0.5) * _SS, (cy + 0.5) * _SS, RADIUS * _SS)
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    return arr.reshape(IMAGE_SIZE, _SS, IMAGE_SIZE, _SS).mean(axis=(1, 3))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _artist_palette(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Two muted colours per artist; hues scrambled so neighbouring indices differ."""
    h = (i * 0.381966) % 1.0
    dark = _hsv(h, 0.55, 0.30 + 0.08 * (i % 3))
    light = _hsv(h + (0.12 if i % 2 else -0.1), 0.35 + 0.1 * (i % 2), 0.50 + 0.05 * (i % 2))
    return dark, light


# (pattern kind, period) per artist
_PATTERNS: list[tuple[str, float]] = [
    ("hstripes", 4), ("vstripes", 6), ("diag", 5), ("checks", 4), ("dots", 6),
    ("rings", 5), ("hgrad", 0), ("waves", 8), ("antidiag", 8), ("checks", 8),
    ("hstripes", 8), ("vstripes", 3), ("dots", 4), ("grid", 6), ("radial", 0),
    ("diagchecks", 6), ("diag", 3), ("vgrad", 0), ("plaid", 8), ("hwaves", 6),
]
NONE_BACKGROUND = np.array([105.0, 105.0, 105.0], dtype=np.float32)


def _pattern(kind: str, period: float, phase: tuple[float, float]) -> np.ndarray:
    """A (32,32) field in [0,1] mixing the artist's two colours."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    x = x + phase[0] * max(period, 1)
    y = y + phase[1] * max(period, 1)
    sq = lambda v: (np.floor(v) % 2).astype(np.float32)
    if kind == "hstripes":
        return sq(y / (period / 2))
    if kind == "vstripes":
        return sq(x / (period / 2))
    if kind == "diag":
        return sq((x + y) / period)
    if kind == "antidiag":
        return sq((x - y) / period)
    if kind == "checks":
        return (sq(x / period) + sq(y / period)) % 2
    if kind == "diagchecks":
        return (sq((x + y) / period) + sq((x - y) / period)) % 2
    if kind == "dots":
        dx = (x % period) - period / 2
        dy = (y % period) - period / 2
        return (dx * dx + dy * dy < (period * 0.3) ** 2).astype(np.float32)
    if kind == "grid":
        return (((x % period) < 1.5) | ((y % period) < 1.5)).astype(np.float32)
    if kind == "plaid":
        return np.clip(sq(x / (period / 2)) * 0.5 + sq(y / (period / 2)) * 0.5, 0, 1)
    if kind == "rings":
        cx, cy = 16 + phase[0] * 4, 16 + phase[1] * 4
        return sq(np.hypot(x - phase[0] * period - cx, y - phase[1] * period - cy) / (period / 2))
    if kind == "waves":
        return sq((y + 2.5 * np.sin(x / 3.0)) / (period / 2))
    if kind == "hwaves":
        return sq((x + 2.5 * np.sin(y / 2.5)) / (period / 2))
    y0, x0 = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE - 1)
    if kind == "hgrad":
        return x0
    if kind == "vgrad":
        return y0
    if kind == "radial":
        return np.clip(np.hypot(x0 - 0.5, y0 - 0.5) * 1.6, 0, 1)
    raise ValueError(kind)


def render_background(artist: str | None, rng: np.random.Generator) -> np.ndarray:
    """(32,32,3) float32 background for an artist (or the plain 'none' background)."""
    if artist is None:
        return np.broadcast_to(NONE_BACKGROUND, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    i = ARTISTS.index(artist)
    kind, period = _PATTERNS[i]
    phase = (float(rng.random()), float(rng.random()))
    t = _pattern(kind, period, phase)[..., None]
    dark, light = _artist_palette(i)
    return dark * (1 - t) + light * t


def hazard_mark() -> tuple[np.ndarray, np.ndarray]:
    """The (7,7,3) yellow/black striped mark and its region slice origin (bottom-right corner)."""
    y, x = np.mgrid[0:HAZARD_SIZE, 0:HAZARD_SIZE]
    stripes = ((x + y) // 2) % 2 == 0
    mark = np.where(stripes[..., None], np.array([255, 215, 0]), np.array([15, 15, 15])).astype(np.float32)
    border = (x == 0) | (y == 0)
    mark[border] = 15
    return mark, np.array([IMAGE_SIZE - HAZARD_SIZE, IMAGE_SIZE - HAZARD_SIZE])


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a scene to uint8 (32,32,3). Deterministic given the rng state."""
    img = render_background(scene.artist, rng)
    qx, qy = (int(v) for v in rng.integers(0, _JITTER_STEPS, size=2))
    alpha = shape_mask(scene.shape, qx, qy)[..., None]
    img = img * (1 - alpha) + np.array(COLOUR_RGB[scene.colour], dtype=np.float32) * alpha
    if scene.hazard:
        mark, (y0, x0) = hazard_mark()
        img[y0:, x0:] = mark
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def captions(n: int, seed: int = 0, keep: Callable[[Scene], bool] | None = None, **mix: float) -> list[str]:
    """``n`` captions from the training grammar (a preserve corpus for the editors); ``keep`` filters the
    scenes, e.g. ``lambda s: not s.hazard`` for captions without hazard words. ``mix`` as in ``random_scene``."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(1000 * n):
        scene = random_scene(rng, **mix)
        if keep is None or keep(scene):
            out.append(prompt_for(scene, rng))
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} of {n} captions pass the filter; loosen it or change the mix")


def sample_batch(rng: np.random.Generator, n: int, **mix: float) -> tuple[list[str], np.ndarray, list[Scene]]:
    """n training (prompt, image) pairs: prompts, uint8 images (n,32,32,3) and their scenes.

    `mix` passes prompt-mix rates on to `random_scene`."""
    scenes = [random_scene(rng, **mix) for _ in range(n)]
    prompts = [prompt_for(s, rng) for s in scenes]
    images = np.stack([render(s, rng) for s in scenes])
    return prompts, images, scenes
