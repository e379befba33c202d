"""TraceResult: restore effects over (layer × token) or (layer × step window), with provenance."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workbench.files import atomic_dir

# ROME's token categories, used to average text-encoder maps over prompts of different lengths.
TOKEN_GROUPS = ["first subject", "middle subject", "last subject", "first after", "further tokens", "last token"]
TRACE_FILES = ("result.json", "scores.safetensors", "heatmap.png")  # what a trace folder may hold


@dataclass
class TraceResult:
    """Restore effect (0 = nothing of the clean behaviour comes back, 1 = all of it) per row and column.

    Rows are layer names the editors accept; columns are tokens (text-encoder traces) or denoising-step
    windows (UNet traces). ``spread`` is the standard deviation over noise samples (one prompt) or over
    prompts (an averaged map).
    """

    scores: torch.Tensor  # (rows, cols)
    rows: list[str]
    cols: list[str]
    part: str  # "text" or "unet"
    kind: str  # layer kind restored: hidden, self_attn, mlp, attn2, ...
    metric: str  # "proxy-text", "proxy-unet", "faithful", ...
    prompt: str | list[str]
    subject: str | list[str]
    subject_cols: list[int] = field(default_factory=list)  # columns holding subject tokens
    clean: float = 1.0  # metric value of the clean run
    corrupted: float = 0.0  # metric value of the corrupted run
    spread: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    model_fingerprint: str = ""
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if tuple(self.scores.shape) != (len(self.rows), len(self.cols)):
            raise ValueError(f"scores have shape {tuple(self.scores.shape)} but there are {len(self.rows)} rows "
                             f"and {len(self.cols)} columns")

    # ------------------------------------------------------------------ reading
    def ranking(self, by: str | None = None) -> torch.Tensor:
        """One value per row used to rank layers.

        ``last_subject`` (text default, Basu et al.: the state at the last subject token), ``max`` over
        columns (the default of text traces that include padding positions), or ``mean`` over columns (UNet
        default). A trace may record its own default as ``settings["rank_by"]``.
        """
        by = by or self.settings.get("rank_by") or ("last_subject" if self.part == "text" and self.subject_cols
                                                     else "mean")
        if by == "last_subject":
            if not self.subject_cols:
                raise ValueError("this result has no subject columns; rank by 'max' or 'mean'")
            return self.scores[:, max(self.subject_cols)]
        if by == "max":
            return self.scores.max(dim=1).values
        if by == "mean":
            return self.scores.mean(dim=1)
        raise ValueError(f"unknown ranking {by!r}; expected 'last_subject', 'max' or 'mean'")

    def pick_layers(self, k: int = 1, by: str | None = None) -> list[str]:
        """The ``k`` most causal layers, strongest first."""
        from .checks import whole

        whole("k (the number of layers to pick)", k)
        order = torch.argsort(self.ranking(by), descending=True, stable=True)
        return [self.rows[i] for i in order[:k].tolist()]

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
        grouped = [r.grouped() if r.part == "text" else r for r in results]
        if any(g.cols != grouped[0].cols for g in grouped):
            raise ValueError("can only average UNet traces with the same step windows")
        stack = torch.stack([g.scores for g in grouped])
        return cls(scores=stack.nanmean(0), spread=_nanstd(stack), rows=first.rows, cols=grouped[0].cols,
                   part=first.part, kind=first.kind, metric=first.metric, prompt=[str(r.prompt) for r in results],
                   subject=[str(r.subject) for r in results], subject_cols=grouped[0].subject_cols,
                   clean=float(torch.tensor([r.clean for r in results]).mean()),
                   corrupted=float(torch.tensor([r.corrupted for r in results]).mean()),
                   settings={**first.settings, "n_prompts": len(results)}, model=first.model,
                   model_fingerprint=first.model_fingerprint, seconds=sum(r.seconds for r in results))

    def grouped(self) -> TraceResult:
        """This text trace with its token columns averaged into ROME's six token groups (NaN if empty), plus
        a "padding" group when the trace restored padding positions."""
        if not self.subject_cols:
            raise ValueError("grouping needs subject columns")
        positions = self.settings.get("positions")
        if positions is not None and list(positions) != list(range(len(self.cols))):
            raise ValueError("grouping needs a trace over consecutive positions from the start token (tokens='real' "
                             f"or 'all'); this one restored positions {positions}")
        first, last = min(self.subject_cols), max(self.subject_cols)
        # Columns past the prompt's end-of-text (a trace with tokens="all") form a seventh group.
        n = int(self.settings.get("real_tokens", len(self.cols)))
        members: list[list[int]] = [[first], list(range(first + 1, last)), [last], [last + 1] if last + 1 < n - 1
                                    else [], list(range(last + 2, n - 1)), [n - 1]]
        labels = list(TOKEN_GROUPS)
        if n < len(self.cols):
            members.append(list(range(n, len(self.cols))))
            labels.append("padding")
        cols = [self.scores[:, m].mean(1) if m else torch.full((len(self.rows),), float("nan")) for m in members]
        if first == last:
            cols[0] = torch.full((len(self.rows),), float("nan"))  # a one-token subject is its own last token
        return TraceResult(scores=torch.stack(cols, 1), rows=self.rows, cols=labels, part=self.part,
                           kind=self.kind, metric=self.metric, prompt=self.prompt, subject=self.subject,
                           subject_cols=[0, 1, 2], clean=self.clean, corrupted=self.corrupted,
                           settings=self.settings, model=self.model, model_fingerprint=self.model_fingerprint,
                           seconds=self.seconds)

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
        known = {f.name for f in fields(cls)} - {"scores", "spread"}
        needed = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} - {"scores"}
        missing, unknown = sorted(needed - set(meta)), sorted(set(meta) - known)
        if missing or unknown:
            raise ValueError(f"{str(path)!r} is not a trace result: "
                             + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                         + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
        for key in ("rows", "cols"):
            if not isinstance(meta[key], list) or not all(isinstance(x, str) for x in meta[key]):
                raise ValueError(f"{str(path)!r}: {key} must be a list of strings")
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


def _nanstd(stack: torch.Tensor) -> torch.Tensor:
    mean = stack.nanmean(0, keepdim=True)
    return ((stack - mean) ** 2).nanmean(0).sqrt()
