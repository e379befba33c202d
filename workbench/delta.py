"""WeightDelta: the result of every editor. New values of named parameters + provenance.

A delta carries a fingerprint of each original tensor it replaces (``base``), so it is only ever applied to
the weights it was computed from, and reverting restores those originals bit for bit. It also carries a
digest of each new value it holds (``digests``), so a file damaged or altered after it was saved is refused
on load instead of writing garbage into a model.

Integrity rules (checked on construction, load, save and apply):

* the delta names at least one parameter, and ``tensors``, ``base`` and ``digests`` name exactly the same ones;
* every stored value matches its digest and is finite;
* on apply, every parameter exists in the model with exactly the value's shape and dtype (nothing is
  broadcast or converted), and its current weights match the base fingerprint.

``apply`` checks all of that before writing anything, and if a write still fails midway it restores what it
had written and re-raises, so the model is either fully edited or bit-identical to before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import atomic_write

if TYPE_CHECKING:
    from .model import Workbench

FORMAT = 2  # 1: base + metadata only; 2: + a digest of every stored tensor
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_CHUNK = 1 << 22  # elements per chunk when scanning for NaN/inf (bounded extra memory)


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 over dtype, shape and raw bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _count_nonfinite(t: torch.Tensor) -> int:
    """How many NaN/inf values ``t`` holds (0 for integer and bool tensors)."""
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    flat = t.detach().reshape(-1)
    bad = 0
    for chunk in flat.split(_CHUNK):
        if chunk.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and not chunk.is_complex():
            chunk = chunk.float()  # e.g. float8 kinds
        bad += int((~torch.isfinite(chunk)).sum())
    return bad


def _listing(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_table(table: Any, what: str) -> None:
    """``table`` must be a dict mapping parameter names to sha256 hex digests."""
    if not isinstance(table, dict):
        raise ValueError(f"the {what} table must map each parameter name to a sha256 hex digest "
                         f"(a dict of str -> str), got {type(table).__name__}")
    for name, value in table.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"the {what} table must map each parameter name to a sha256 hex digest "
                             f"(a dict of str -> str), but has {name!r}: {value!r}")
        if not _HEX64.fullmatch(value):
            raise ValueError(f"the {what} entry for {name!r} is {value[:80]!r}, not a sha256 hex digest "
                             f"(64 lowercase hex characters)")


def _check_keys(tensors: Iterable[str], base: Mapping[str, str], digests: Mapping[str, str]) -> None:
    """``tensors``, ``base`` and ``digests`` must name exactly the same, non-empty set of parameters."""
    names = set(tensors)
    if not names:
        raise ValueError("a WeightDelta needs at least one parameter, this one holds no tensors")
    for table, what, expected in ((base, "base", "a fingerprint of the original it replaces"),
                                  (digests, "digest", "a digest of its stored value")):
        if not table:
            raise ValueError(f"the {what} table is empty: a delta must carry {expected} for each of its "
                             f"{len(names)} tensor(s) ({_listing(names)})")
        missing, extra = names - set(table), set(table) - names
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"tensor(s) without a {what} entry: {_listing(missing)}")
            if extra:
                parts.append(f"{what} entries for parameter(s) the delta holds no tensor for: {_listing(extra)}")
            raise ValueError(f"the {what} table and the tensors must name exactly the same parameters; "
                             + "; ".join(parts))


@dataclass
class WeightDelta:
    """New values for named parameters (``unet.…to_k.weight``, ``text.encoder.…``), with provenance.

    ``digests`` (parameter name -> :func:`tensor_hash` of the stored new value) is computed from ``tensors``
    when not given; when given it is verified.
    """

    tensors: dict[str, torch.Tensor]
    base: dict[str, str]  # parameter name -> tensor_hash of the original it replaces
    metadata: dict[str, Any] = field(default_factory=dict)  # method, concepts, hyperparameters, model
    digests: dict[str, str] | None = None  # parameter name -> tensor_hash of the new value stored here

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in self.tensors.items()):
            raise ValueError("a WeightDelta's tensors must be a dict mapping parameter names to torch tensors")
        if not self.tensors:
            raise ValueError("a WeightDelta needs at least one parameter")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"a WeightDelta's metadata must be a dict, got {type(self.metadata).__name__}")
        if self.digests is None:
            self.digests = {name: tensor_hash(t) for name, t in self.tensors.items()}
        self.verify()

    @classmethod
    def capture(cls, wb: Workbench, new: Mapping[str, torch.Tensor], **metadata: Any) -> WeightDelta:
        """Build a delta from new values for ``wb``'s parameters, fingerprinting what they replace.

        Refuses non-finite values and shape mismatches, so a broken edit never reaches the model.
        """
        if not new:
            raise ValueError("a WeightDelta needs at least one parameter")
        base, tensors = {}, {}
        for name, value in new.items():
            param = wb.parameter(name)
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: new value has shape {tuple(value.shape)}, the parameter "
                                 f"{tuple(param.shape)}")
            if _count_nonfinite(value):
                raise ValueError(f"{name}: the edit produced NaN or inf values; the model was left untouched")
            base[name] = tensor_hash(param.data)
            tensors[name] = value.detach().to("cpu", param.dtype).contiguous()
        meta = {"model": wb.name, "model_fingerprint": wb.fingerprint(), **metadata}
        return cls(tensors, base, meta)

    @property
    def names(self) -> list[str]:
        return sorted(self.tensors)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    # ------------------------------------------------------------------ integrity
    def verify(self) -> None:
        """Raise ValueError unless the delta is whole: the same non-empty parameter set in ``tensors``,
        ``base`` and ``digests``, every value matching its digest, every value finite."""
        _check_table(self.base, "base")
        _check_table(self.digests, "digest")
        _check_keys(self.tensors, self.base, self.digests)
        for name in sorted(self.tensors):
            value = self.tensors[name]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"tensor {name!r} is a {type(value).__name__}, not a torch tensor")
            actual = tensor_hash(value)
            if actual != self.digests[name]:
                raise ValueError(f"tensor {name!r} does not match its recorded digest (expected sha256 "
                                 f"{self.digests[name][:16]}…, found {actual[:16]}… for {value.dtype} "
                                 f"{tuple(value.shape)}): it was damaged or changed after the delta was made")
            bad = _count_nonfinite(value)
            if bad:
                raise ValueError(f"tensor {name!r} holds {bad} NaN or inf value(s) out of {value.numel()}; "
                                 f"a delta must hold finite weights")

    def _check_fits(self, wb: Workbench) -> None:
        """Every parameter exists in ``wb`` with exactly the stored value's shape and dtype."""
        problems = []
        for name in self.names:
            value = self.tensors[name]
            try:
                param = wb.parameter(name)
            except (KeyError, AttributeError):
                problems.append(f"{name!r}: the model has no such parameter")
                continue
            if tuple(value.shape) != tuple(param.shape):
                problems.append(f"{name!r}: the delta's value has shape {tuple(value.shape)}, the model's "
                                f"parameter {tuple(param.shape)} (shapes must match exactly, nothing is broadcast)")
            if value.dtype != param.dtype:
                problems.append(f"{name!r}: the delta's value is {value.dtype}, the model's parameter "
                                f"{param.dtype} (dtypes must match, nothing is converted)")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(f"refusing to apply this delta ({self.metadata.get('method', 'edit')} for model "
                             f"{self.metadata.get('model', '?')!r}) to {wb.name!r}: {shown}")

    # ------------------------------------------------------------------ apply / revert
    def check_base(self, wb: Workbench) -> None:
        """Raise if ``wb``'s current weights are not the ones this delta was computed from."""
        _check_keys(self.tensors, self.base, self.digests or {})
        wrong = []
        for name, expected in self.base.items():
            try:
                param = wb.parameter(name)
            except KeyError:
                wrong.append(f"{name} (missing)")
                continue
            if tensor_hash(param.data) != expected:
                wrong.append(name)
        if wrong:
            shown = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
            raise ValueError(f"this delta ({self.metadata.get('method', 'edit')} for model "
                             f"{self.metadata.get('model', '?')!r}) was made for other weights: {shown} differ "
                             f"from the originals it replaces; refusing to apply it to {wb.name!r}")

    def apply(self, wb: Workbench) -> None:
        """Write the new values into ``wb``; remembered for :meth:`revert`.

        Everything is checked first (the delta's integrity, that each parameter exists with the same shape and
        dtype, that ``wb``'s originals match the base fingerprints); nothing is written unless all pass. If a
        write still fails midway, the parameters already written are restored before the error is re-raised.
        """
        self.verify()
        self._check_fits(wb)
        self.check_base(wb)
        names = self.names
        params = {name: wb.parameter(name) for name in names}
        originals = {name: params[name].data.clone() for name in names}  # before any write
        started: list[str] = []
        try:
            with torch.no_grad():
                for name in names:
                    started.append(name)
                    _write(params[name], self.tensors[name])
        except BaseException as err:
            unrestored = []
            with torch.no_grad():
                for name in started:
                    try:
                        params[name].data.copy_(originals[name])
                    except Exception:  # noqa: BLE001 - reported below
                        unrestored.append(name)
            wb.weights_changed()
            if unrestored:
                raise RuntimeError(f"applying the delta failed ({err}) and restoring {_listing(unrestored)} "
                                   f"failed too: the model's weights are inconsistent, reload the model") from err
            raise
        wb.record_applied(self, originals)

    def revert(self, wb: Workbench) -> None:
        """Restore the originals bit-exactly. Only the most recently applied delta can be reverted."""
        originals = wb.take_applied(self)
        with torch.no_grad():
            for name, value in originals.items():
                wb.parameter(name).data.copy_(value)
        wb.weights_changed()

    @contextmanager
    def applied(self, wb: Workbench) -> Iterator[Workbench]:
        """``with delta.applied(wb): ...`` edits the model for the block only."""
        self.apply(wb)
        try:
            yield wb
        finally:
            self.revert(wb)

    def export(self, wb: Workbench, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``wb`` with this delta applied as a diffusers folder (the family's plain pipeline, e.g.
        ``StableDiffusionXLPipeline``, loads it)."""
        with self.applied(wb):
            return wb.save_pretrained(folder, overwrite=overwrite)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """safetensors with base, digests and metadata as JSON in the header; written atomically."""
        self.verify()
        header = {"workbench_delta": json.dumps({"format": FORMAT, "base": self.base, "digests": self.digests,
                                                 "metadata": self.metadata}, default=str)}
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.tensors.items()}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WeightDelta:
        """Read a delta written by :meth:`save`, verifying every tensor against its digest.

        Any damaged or foreign file raises one ValueError (FileNotFoundError when absent) naming the file.
        """
        path = Path(path)
        where = repr(str(path))
        if not path.exists():
            raise FileNotFoundError(f"no delta file at {where}")
        if not path.is_file():
            raise FileNotFoundError(f"{where} is not a file; expected a delta .safetensors file")
        entries, meta = _read_header(path, where)
        raw = meta.get("workbench_delta")
        if raw is None:
            raise ValueError(f"{where} is a safetensors file but not a workbench delta (no 'workbench_delta' "
                             f"metadata in its header)")
        try:
            info = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: its 'workbench_delta' metadata is not valid JSON ({err.msg} at character "
                             f"{err.pos}); expected a JSON object with 'base', 'digests' and 'metadata'") from None
        if not isinstance(info, dict):
            raise ValueError(f"{where}: its 'workbench_delta' metadata is a JSON {type(info).__name__}; expected "
                             f"a JSON object with 'base', 'digests' and 'metadata'")
        if "digests" not in info:
            raise ValueError(f"{where} was written in an older delta format without tensor digests, so its "
                             f"contents cannot be verified; recreate the delta (workbench edit) to use it")
        base, digests, metadata = info.get("base"), info["digests"], info.get("metadata", {})
        try:
            _check_table(base, "base")
            _check_table(digests, "digest")
            if not isinstance(metadata, dict):
                raise ValueError(f"'metadata' must be a JSON object, got {type(metadata).__name__}")
            _check_keys(entries, base, digests)  # before reading any tensor data
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        try:
            with safe_open(str(path), "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{where} could not be read as a safetensors file: {err}") from None
        try:
            return cls(tensors, base, metadata, digests)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def __repr__(self) -> str:
        return (f"WeightDelta({self.metadata.get('method', 'edit')}, {len(self.tensors)} tensors, "
                f"{self.num_parameters():,} parameters, model={self.metadata.get('model')!r})")


def _write(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Copy one stored value into a parameter (shape and dtype already checked equal)."""
    param.data.copy_(value.to(param.device))


def _read_header(path: Path, where: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse and check a safetensors header by hand: (tensor entries, ``__metadata__``), or one ValueError."""
    expected = "expected an 8-byte header length, a JSON header and the tensor data"
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{where} is not a safetensors file: it is only {size} bytes long ({expected})")
        n = int.from_bytes(head, "little")
        if n < 2 or n > _MAX_HEADER:
            raise ValueError(f"{where} is not a safetensors file: its first 8 bytes do not give a plausible "
                             f"header length ({expected})")
        if 8 + n > size:
            raise ValueError(f"{where} is truncated or not a safetensors file: its header should be {n} bytes "
                             f"long but only {size - 8} bytes follow")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} is not a safetensors file: its header is not valid JSON ({err}); "
                         f"{expected}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where} is not a safetensors file: its header is a JSON {type(header).__name__}, "
                         f"expected a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{where}: the safetensors '__metadata__' must map strings to strings")
    data_size, end = size - 8 - n, 0
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{where}: the safetensors header entry for tensor {name!r} is malformed "
                             f"(expected 'dtype', 'shape' and 'data_offsets')")
        end = max(end, offsets[1])
    if end > data_size:
        raise ValueError(f"{where} is truncated: its header lists {end} bytes of tensor data but only "
                         f"{data_size} bytes are there")
    return header, meta
