"""WeightDelta: the result of every editor. New values of named parameters + provenance.

A delta carries a fingerprint of each original tensor it replaces, so it is only ever applied to the
weights it was computed from, and reverting restores those originals bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import atomic_write
from .model import tensor_bytes

if TYPE_CHECKING:
    from .model import Workbench


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 over dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()


@dataclass
class WeightDelta:
    """New values for named parameters (``unet.…to_k.weight``, ``text.encoder.…``), with provenance."""

    tensors: dict[str, torch.Tensor]
    base: dict[str, str]  # parameter name -> tensor_hash of the original it replaces
    metadata: dict[str, Any] = field(default_factory=dict)  # method, concepts, hyperparameters, model

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
            if not torch.isfinite(value).all():
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

    # ------------------------------------------------------------------ apply / revert
    def check_base(self, wb: Workbench) -> None:
        """Raise if ``wb``'s current weights are not the ones this delta was computed from."""
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
        """Write the new values into ``wb`` (after checking its originals); remembered for :meth:`revert`."""
        self.check_base(wb)
        originals = {name: wb.parameter(name).data.clone() for name in self.tensors}
        with torch.no_grad():
            for name, value in self.tensors.items():
                param = wb.parameter(name)
                param.data.copy_(value.to(param.device, param.dtype))
        wb.applied.append((self, originals))
        wb._fingerprint = None

    def revert(self, wb: Workbench) -> None:
        """Restore the originals bit-exactly. Only the most recently applied delta can be reverted."""
        if not wb.applied or wb.applied[-1][0] is not self:
            raise ValueError("this delta is not the last one applied to the model; revert later ones first")
        _, originals = wb.applied.pop()
        with torch.no_grad():
            for name, value in originals.items():
                wb.parameter(name).data.copy_(value)
        wb._fingerprint = None

    @contextmanager
    def applied(self, wb: Workbench) -> Iterator[Workbench]:
        """``with delta.applied(wb): ...`` edits the model for the block only."""
        self.apply(wb)
        try:
            yield wb
        finally:
            self.revert(wb)

    def export(self, wb: Workbench, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``wb`` with this delta applied as a diffusers folder (``StableDiffusionPipeline`` loads it)."""
        with self.applied(wb):
            return wb.save_pretrained(folder, overwrite=overwrite)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """safetensors with the metadata as JSON in the header; written atomically."""
        header = {"workbench_delta": json.dumps({"base": self.base, "metadata": self.metadata}, default=str)}
        return atomic_write(path, lambda tmp: save_file(self.tensors, tmp, metadata=header))

    @classmethod
    def load(cls, path: str | os.PathLike) -> WeightDelta:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no delta file at {str(path)!r}")
        with safe_open(str(path), "pt") as f:
            header = (f.metadata() or {}).get("workbench_delta")
            if header is None:
                raise ValueError(f"{str(path)!r} is a safetensors file but not a workbench delta (no "
                                 f"'workbench_delta' metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(header)
        return cls(tensors, info["base"], info["metadata"])

    def __repr__(self) -> str:
        return (f"WeightDelta({self.metadata.get('method', 'edit')}, {len(self.tensors)} tensors, "
                f"{self.num_parameters():,} parameters, model={self.metadata.get('model')!r})")
