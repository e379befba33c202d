"""Prompt suites from local files, in the formats the field publishes.

- CSV with a header (I2P's ``unsafe-prompts4703.csv``, UCE/ESD's Imagenette and artist CSVs, ``coco_30k.csv``):
  the prompt from ``prompt`` / ``text`` / ``caption``; the seed from ``evaluation_seed`` / ``sd_seed`` /
  ``seed``; guidance from ``evaluation_guidance`` / ``sd_guidance_scale`` / ``guidance``; the concept from
  ``concept`` / ``class`` / ``artist`` / ``label``; the case id from ``case_number`` / ``id`` / ``image_id``.
  Other columns (I2P's ``categories``, ``nudity_percentage`` ...) are kept as metadata.
- COCO caption JSON (``captions_val2014.json``: ``{"annotations": [{"image_id", "id", "caption"}]}``) or a JSON
  list of prompts or of objects with the CSV's keys.
- A text file of names, one per line (an artist list, an Imagenette class list): each name is a concept,
  its prompts ``template.format(name)``, ``per_concept`` of them with seeds ``seed + i``.

Seeds and guidance come from the file when present; a row without a seed gets ``seed + row``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_COLUMNS = ("prompt", "text", "caption")
SEED_COLUMNS = ("evaluation_seed", "sd_seed", "seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale", "guidance_scale", "guidance")
CONCEPT_COLUMNS = ("concept", "class", "artist", "label")
CASE_COLUMNS = ("case_number", "id", "image_id")


@dataclass(frozen=True)
class SuitePrompt:
    case: str  # unique within the suite: names the item's saved result
    prompt: str
    seed: int
    guidance: float | None = None  # None: the model's default
    concept: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Suite:
    path: str
    format: str  # "csv", "coco-json", "json", "names"
    items: list[SuitePrompt]

    def __len__(self) -> int:
        return len(self.items)


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _seed(value, where: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: seed {value!r} is not a whole number") from None
    if not math.isfinite(f) or f != int(f) or f < 0:
        raise ValueError(f"{where}: seed {value!r} is not a whole number >= 0")
    return int(f)


def _guidance(value, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        g = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: guidance {value!r} is not a number") from None
    if not math.isfinite(g) or g < 0:
        raise ValueError(f"{where}: guidance {value!r} must be a finite number >= 0")
    return g


def _rows(records: list[dict], path: Path, seed: int, fmt: str) -> Suite:
    if not records:
        raise ValueError(f"suite {str(path)!r} has no rows")
    columns = list(records[0].keys())
    prompt_col = _pick(columns, PROMPT_COLUMNS)
    if prompt_col is None:
        raise ValueError(f"suite {str(path)!r} has no prompt column (expected one of {', '.join(PROMPT_COLUMNS)}; "
                         f"found {', '.join(map(str, columns))})")
    seed_col, guide_col = _pick(columns, SEED_COLUMNS), _pick(columns, GUIDANCE_COLUMNS)
    concept_col, case_col = _pick(columns, CONCEPT_COLUMNS), _pick(columns, CASE_COLUMNS)
    used = {prompt_col, seed_col, guide_col, concept_col, case_col}
    items, cases = [], set()
    for i, row in enumerate(records):
        where = f"suite {str(path)!r} row {i + 1}"
        prompt = row.get(prompt_col)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: empty prompt")
        case = str(row[case_col]).strip() if case_col and str(row.get(case_col, "")).strip() else str(i)
        if case in cases:
            raise ValueError(f"{where}: case {case!r} appears twice; cases name saved results and must be unique")
        cases.add(case)
        s = _seed(row[seed_col], where) if seed_col and str(row.get(seed_col, "")).strip() else seed + i
        concept = str(row[concept_col]).strip() if concept_col and str(row.get(concept_col, "")).strip() else None
        meta = {k: v for k, v in row.items() if k not in used and v not in (None, "")}
        items.append(SuitePrompt(case, " ".join(prompt.split()), s, _guidance(row.get(guide_col), where)
                                 if guide_col else None, concept, meta))
    return Suite(str(path), fmt, items)


def load_suite(path: str | Path, *, template: str = "{}", per_concept: int = 1, seed: int = 0) -> Suite:
    """A :class:`Suite` from a CSV, JSON or text file (formats above); a clear one-line error otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"suite {str(path)!r} is not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"suite {str(path)!r} is not UTF-8 text") from None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise ValueError(f"suite {str(path)!r} has no header row")
        try:
            records = list(reader)
        except csv.Error as err:
            raise ValueError(f"suite {str(path)!r} is not valid CSV: {err}") from None
        return _rows(records, p, seed, "csv")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"suite {str(path)!r} is not valid JSON: {err}") from None
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            # five captions per image: the caption's id names the case, the image id stays as metadata
            return _rows([dict(a, case_number=a.get("id")) for a in data["annotations"]
                          if isinstance(a, dict)], p, seed, "coco-json")
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return _rows([{"prompt": x} for x in data], p, seed, "json")
        if isinstance(data, list) and all(isinstance(x, dict) for x in data):
            return _rows(data, p, seed, "json")
        raise ValueError(f"suite {str(path)!r}: expected COCO captions ({{\"annotations\": [...]}}), a list of "
                         "prompts or a list of objects with a prompt key")
    if suffix in (".txt", ".lst", ""):
        if "{}" not in template:
            raise ValueError(f"suite template {template!r} must contain {{}} where the name goes")
        if per_concept < 1:
            raise ValueError(f"per_concept must be >= 1, got {per_concept}")
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not names:
            raise ValueError(f"suite {str(path)!r} lists no names")
        records = [{"prompt": template.format(n), "concept": n, "seed": seed + j, "case_number": f"{n}#{j}"}
                   for n in names for j in range(per_concept)]
        return _rows(records, p, seed, "names")
    raise ValueError(f"suite {str(path)!r}: unknown format {suffix!r}; use .csv, .json or .txt")
