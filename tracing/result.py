"""TraceResult: restore effects over (layer × token) or (layer × step window), with provenance."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workbench.files import atomic_dir

from .settings import TraceSettings

# ROME's token categories, used to average text-encoder maps over prompts of different lengths.
TOKEN_GROUPS = ["first subject", "middle subject", "last subject", "first after", "further tokens", "last token"]
TRACE_FILES = ("result.json", "scores.safetensors", "heatmap.png")  # what a trace folder may hold
RANKINGS = ("last_subject", "max", "mean")


@dataclass
class TraceResult:
    """Restore effect (0 = nothing of the clean behaviour comes back, 1 = all of it) per row and column.

    Rows are layer names (``row_kinds`` says each one's kind, as ``wb.layer(name).kind``); columns are
    tokens (text-encoder traces) or denoising-step windows (UNet traces). ``spread`` is the standard
    deviation over noise samples (one prompt) or over prompts (an averaged map). ``settings`` are the
    trace's, every default filled in; the fields after it are the part-specific provenance.
    """

    scores: torch.Tensor  # (rows, cols)
    rows: list[str]
    row_kinds: list[str]  # the kind of each row's layer: embeddings, hidden, self_attn, mlp, attn2, resnet, ...
    cols: list[str]
    part: str  # the text encoder traced ("text", SDXL also "text2") or "unet"
    kind: str  # layer kind traced (the rows' kind but for a hidden trace's embeddings row), or "mixed"
    prompt: str | list[str]
    subject: str | list[str]
    subject_cols: list[int] = field(default_factory=list)  # columns holding subject tokens
    clean: float = 1.0  # metric value of the clean run
    corrupted: float = 0.0  # metric value of the corrupted run
    spread: torch.Tensor | None = None
    settings: TraceSettings = field(default_factory=TraceSettings)
    rank_by: str | None = None  # the default of ranking() and pick_layers(); None: by part (see ranking)
    window: int = 1  # text traces: layers restored together per row
    positions: list[int] | None = None  # text traces: the token position of each column
    real_tokens: int | None = None  # text traces: the prompt's tokens, start to end-of-text; then padding
    subject_positions: list[int] = field(default_factory=list)  # the subject's token positions in the prompt
    rows_per_forward: dict[str, int] = field(default_factory=dict)  # batch sizes used, rows run
    model: str = ""
    model_fingerprint: str = ""
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if tuple(self.scores.shape) != (len(self.rows), len(self.cols)):
            raise ValueError(f"scores have shape {tuple(self.scores.shape)} but there are {len(self.rows)} rows "
                             f"and {len(self.cols)} columns")
        if len(self.row_kinds) != len(self.rows):
            raise ValueError(f"{len(self.row_kinds)} row kinds for {len(self.rows)} rows")
        if not isinstance(self.settings, TraceSettings):
            raise ValueError(f"settings must be a TraceSettings, got {type(self.settings).__name__}")
        if self.rank_by is not None and self.rank_by not in RANKINGS:
            raise ValueError(f"unknown ranking {self.rank_by!r}; expected {', '.join(RANKINGS)} or None")

    @property
    def metric(self) -> str:
        """What the scores measure: proxy, text or faithful (``settings.metric``)."""
        return self.settings.metric

    # ------------------------------------------------------------------ reading
    def ranking(self, by: str | None = None) -> torch.Tensor:
        """One value per row used to rank layers.

        ``last_subject`` (text default, Basu et al.: the state at the last subject token), ``max`` over
        columns (the default of text traces that include padding positions), or ``mean`` over columns (UNet
        default). ``by=None`` takes ``rank_by``, the trace's own default.
        """
        by = by or self.rank_by or ("last_subject" if self.part != "unet" and self.subject_cols else "mean")
        if by == "last_subject":
            if not self.subject_cols:
                raise ValueError("this result has no subject columns; rank by 'max' or 'mean'")
            return self.scores[:, max(self.subject_cols)]
        if by == "max":
            return self.scores.max(dim=1).values
        if by == "mean":
            return self.scores.mean(dim=1)
        raise ValueError(f"unknown ranking {by!r}; expected 'last_subject', 'max' or 'mean'")

    def pick_layers(self, k: int = 1, by: str | None = None, kinds: Collection[str] | None = None) -> list[str]:
        """The ``k`` most causal layers, strongest first; with ``kinds`` (the layer kinds an editor accepts,
        e.g. ``editors.uce.LAYER_KINDS``) only layers of those kinds, so an editor never gets one it cannot
        edit (a hidden trace's embeddings row, say)."""
        from .checks import whole

        whole("k (the number of layers to pick)", k)
        if isinstance(kinds, str):  # "attn2" would otherwise accept any kind that is a substring of it
            raise ValueError(f"kinds must be a collection of layer kinds, e.g. ({kinds!r},), not a string")
        order = torch.argsort(self.ranking(by), descending=True, stable=True).tolist()
        if kinds is not None:
            order = [i for i in order if self.row_kinds[i] in kinds]
            if not order:
                raise ValueError(f"no layer of this trace is of a kind in {', '.join(sorted(kinds)) or '(none)'}; "
                                 f"its layers are {', '.join(sorted(set(self.row_kinds)))}")
        return [self.rows[i] for i in order[:k]]

    def effect(self, layer: str, col: int | str | None = None) -> float:
        """The restore effect of ``layer`` at a column (index or label; default the ranking value)."""
        if layer not in self.rows:
            raise KeyError(f"{layer!r} is not a row of this trace; rows: {self.rows[:3]}...")
        i = self.rows.index(layer)
        if col is None:
            return float(self.ranking()[i])
        j = self.cols.index(col) if isinstance(col, str) else col
        return float(self.scores[i, j])

    # ------------------------------------------------------------------ combining
    @classmethod
    def average(cls, results: Sequence[TraceResult]) -> TraceResult:
        """Mean ± spread over prompts. Text maps are aligned on ROME's token groups first (prompts differ
        in length); UNet maps must share their columns."""
        if not results:
            raise ValueError("nothing to average")
        first = results[0]
        if any(r.rows != first.rows or r.part != first.part or r.metric != first.metric for r in results):
            raise ValueError("can only average traces of the same layers, part and metric")
        grouped = [r.grouped() if r.part != "unet" else r for r in results]
        if any(g.cols != grouped[0].cols for g in grouped):
            raise ValueError("can only average UNet traces with the same step windows")
        stack = torch.stack([g.scores for g in grouped])
        # Settings and ranking are the first trace's; token positions differ between prompts, so none are kept.
        return cls(scores=stack.nanmean(0), spread=_nanstd(stack), rows=first.rows, row_kinds=first.row_kinds,
                   cols=grouped[0].cols, part=first.part, kind=first.kind, prompt=[str(r.prompt) for r in results],
                   subject=[str(r.subject) for r in results], subject_cols=grouped[0].subject_cols,
                   clean=float(torch.tensor([r.clean for r in results]).mean()),
                   corrupted=float(torch.tensor([r.corrupted for r in results]).mean()),
                   settings=first.settings, rank_by=first.rank_by, window=first.window, model=first.model,
                   model_fingerprint=first.model_fingerprint, seconds=sum(r.seconds for r in results))

    def grouped(self) -> TraceResult:
        """This text trace with its token columns averaged into ROME's six token groups (NaN if empty), plus
        a "padding" group when the trace restored padding positions."""
        if not self.subject_cols:
            raise ValueError("grouping needs subject columns")
        positions = self.positions
        if positions is not None and list(positions) != list(range(len(self.cols))):
            raise ValueError("grouping needs a trace over consecutive positions from the start token (tokens='real' "
                             f"or 'all'); this one restored positions {positions}")
        first, last = min(self.subject_cols), max(self.subject_cols)
        # Columns past the prompt's end-of-text (a trace with tokens="all") form a seventh group.
        n = len(self.cols) if self.real_tokens is None else self.real_tokens
        members: list[list[int]] = [[first], list(range(first + 1, last)), [last], [last + 1] if last + 1 < n - 1
                                    else [], list(range(last + 2, n - 1)), [n - 1]]
        labels = list(TOKEN_GROUPS)
        if n < len(self.cols):
            members.append(list(range(n, len(self.cols))))
            labels.append("padding")
        cols = [self.scores[:, m].mean(1) if m else torch.full((len(self.rows),), float("nan")) for m in members]
        if first == last:
            cols[0] = torch.full((len(self.rows),), float("nan"))  # a one-token subject is its own last token
        return replace(self, scores=torch.stack(cols, 1), spread=None, cols=labels, subject_cols=[0, 1, 2],
                       positions=None, real_tokens=None)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike, *, overwrite: bool = False, heatmap: bool = False) -> Path:
        """``folder/result.json`` + ``folder/scores.safetensors`` (+ ``heatmap.png`` when ``heatmap``).

        All files are written into a temporary sibling folder that is then renamed into place, so a
        failure leaves nothing half-written. An existing non-empty ``folder`` is refused unless
        ``overwrite``, and even then it is replaced only when it holds nothing but files a trace writes
        (``result.json``, ``scores.safetensors``, ``heatmap.png``): a folder with anything else in it is never
        deleted. Files and folders get the usual permissions (0666 / 0777 less the umask).
        """
        meta = {k: v for k, v in asdict(self).items() if k not in ("scores", "spread")}
        tensors = {"scores": self.scores.detach().float().cpu().contiguous()}
        if self.spread is not None:
            tensors["spread"] = self.spread.detach().float().cpu().contiguous()

        def fill(tmp: Path) -> None:
            save_file(tensors, str(tmp / "scores.safetensors"))
            (tmp / "result.json").write_text(json.dumps(meta, indent=2, default=str))
            if heatmap:
                from .plot import save_heatmap

                save_heatmap(self, tmp / "heatmap.png")

        # TRACE_FILES: folders written before atomic_dir left its manifest are still replaceable
        atomic_dir(folder, fill, overwrite=overwrite, owned=TRACE_FILES)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TraceResult:
        """A result written by :meth:`save`; clear errors naming the file for anything else."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"trace folder {str(folder)!r} does not exist" if not folder.exists()
                                    else f"{str(folder)!r} is a file, not a trace folder")
        for name in ("result.json", "scores.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{str(folder)!r} holds no trace result: {name} is missing")
        path = folder / "result.json"
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(meta).__name__}")
        meta = _upgraded(meta)
        known = {f.name for f in fields(cls)} - {"scores", "spread"}
        needed = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} - {"scores"}
        missing, unknown = sorted(needed - set(meta)), sorted(set(meta) - known)
        if missing or unknown:
            raise ValueError(f"{str(path)!r} is not a trace result: "
                             + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                         + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
        for key in ("rows", "row_kinds", "cols"):
            if not isinstance(meta[key], list) or not all(isinstance(x, str) for x in meta[key]):
                raise ValueError(f"{str(path)!r}: {key} must be a list of strings")
        if len(meta["row_kinds"]) != len(meta["rows"]):
            raise ValueError(f"{str(path)!r}: {len(meta['row_kinds'])} row_kinds for {len(meta['rows'])} rows")
        if "settings" in meta:
            meta["settings"] = _settings(meta["settings"], path)
        path = folder / "scores.safetensors"
        try:
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
        if "scores" not in tensors:
            raise ValueError(f"{str(path)!r} holds no 'scores' tensor")
        shape = (len(meta["rows"]), len(meta["cols"]))
        for key in ("scores", "spread"):
            if key in tensors and tuple(tensors[key].shape) != shape:
                raise ValueError(f"{str(path)!r}: {key} has shape {tuple(tensors[key].shape)}, but result.json "
                                 f"names {shape[0]} rows and {shape[1]} columns")
        return cls(scores=tensors["scores"], spread=tensors.get("spread"), **meta)

    def plot(self, ax=None, title: str | None = None):
        """ROME-style heatmap: layers down, tokens (subject marked with *) or step windows across."""
        from .plot import heatmap

        return heatmap(self, ax=ax, title=title)

    def __repr__(self) -> str:
        top = ", ".join(self.pick_layers(min(3, len(self.rows))))
        return (f"TraceResult({self.part}/{self.kind}, {self.metric}, {len(self.rows)}×{len(self.cols)}, "
                f"top: {top})")


# A result.json from before TraceSettings kept "metric" at the top and a free-form "settings" dict that also
# held these TraceResult fields (and two that said again what cols and prompt say).
_MOVED = ("window", "positions", "real_tokens", "subject_positions", "rank_by", "rows_per_forward")
_DROPPED = ("windows", "n_prompts")


def _upgraded(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` in today's shape when it is an old result.json (it has a top-level "metric"), else as is."""
    if "metric" not in meta:
        return meta
    meta, old = dict(meta), meta.get("settings")
    settings = dict(old) if isinstance(old, dict) else {}
    settings["metric"] = meta.pop("metric")
    meta.update({key: settings.pop(key) for key in _MOVED if key in settings})
    for key in _DROPPED:
        settings.pop(key, None)
    meta["settings"] = settings
    rows = meta.get("rows") if isinstance(meta.get("rows"), list) else []
    # Old traces did not record row kinds: the traced kind, but for a hidden trace's embeddings row (a
    # UNet trace of several kinds gets "mixed", which no editor accepts: retrace it).
    meta.setdefault("row_kinds", ["embeddings" if r == "text.embeddings" else meta.get("kind") for r in rows])
    return meta


def _settings(raw: Any, path: Path) -> TraceSettings:
    """result.json's "settings" object as TraceSettings; an error naming the file otherwise."""
    if not isinstance(raw, dict):
        raise ValueError(f"{str(path)!r}: settings must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {f.name for f in fields(TraceSettings)})
    if unknown:
        raise ValueError(f"{str(path)!r}: unknown settings {', '.join(unknown)}")
    try:
        return TraceSettings(**raw)
    except ValueError as e:
        raise ValueError(f"{str(path)!r}: {e}") from None


def _nanstd(stack: torch.Tensor) -> torch.Tensor:
    mean = stack.nanmean(0, keepdim=True)
    return ((stack - mean) ** 2).nanmean(0).sqrt()
