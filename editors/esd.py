"""ESD, Erased Stable Diffusion (Gandikota et al. 2023): fine-tune a slice of the UNet so that, on images
of the concept, the conditional prediction points away from the concept.

    ε_θ(x_t, c_from, t)  →  ε*(x_t, c_from, t) − (1 + η) [ε*(x_t, c, t) − ε*(x_t, t)]

ε* is the frozen original model, η the negative guidance, c the erased concept and c_from the prompt
trained on (``erase_from``; c by default). With c_from = c this is the paper's target
ε*(x_t, t) − η [ε*(x_t, c, t) − ε*(x_t, t)] exactly; with another c_from it is the reference code's
erase-from target (whose η is our 1 + η), which keeps c_from and removes only what c adds.

x_t comes from DDIM sampling of c_from with the frozen model (guidance 3) stopped at a random step; the
model is trained at that step's timestep. (The paper's first code sampled with the model being trained;
its second samples with the frozen one, as here: x_t then stays where the concept is drawn, and depends
on (seed, step) alone.) All arithmetic and the MSE are in the model's own output space
(ε, v or x0): the target is an affine combination with weights summing to one, so it means the same thing
in every parametrisation; for a v-prediction model the loss is the ε loss weighted by 1/ᾱ_t, as the model
was trained.

One UNet in memory: the wrapper keeps its original weights; the trained slice lives in a separate copy
that is swapped in for the trained forward only (and swapped out in a ``finally``, before the backward
pass, which holds its own references). The frozen predictions are plain forwards of the wrapper
(unconditional and conditional rows in one batch), and an interrupted or diverged run cannot leave the
model half edited.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from workbench import Conditioning, WeightDelta, Workbench
from workbench.files import atomic_write, check_not_protected
from workbench.progress import bar as progress_bar

from . import _checks
from ._checks import about, norm, number, record

METHODS = ("esd-x", "esd-x-strict", "esd-u", "esd-all", "located")
CHECKPOINT = "esd-checkpoint.safetensors"
# Fields that may change between an interrupted run and its resumption (more iterations extend the run; where
# and how often it is kept is no part of what it computes).
_RESUMABLE_CHANGES = ("iterations", "checkpoint_dir", "checkpoint_every", "resume")


@dataclass
class ESDRequest:
    """One concept to erase, and how. Defaults are the paper's (the first release of its code), except
    ``ddim_steps``: the model's own default number of sampling steps (50 for SD checkpoints)."""

    erase: str = field(metadata=about("the concept to erase"))
    erase_from: str | None = field(default=None, metadata=about(
        "train on this prompt instead of the erased concept (e.g. erase 'hat' from 'cowboy')"))
    method: str = field(default="esd-x", metadata=about(
        "parameter set: attn2 (esd-x), its to_k/to_v (esd-x-strict), the rest (esd-u), everything, or the "
        "located layers", choices=METHODS))
    negative_guidance: float = field(default=1.0, metadata=about("η"))
    iterations: int = field(default=1000, metadata=about("optimisation steps"))
    lr: float = field(default=1e-5, metadata=about("Adam learning rate"))
    ddim_steps: int | None = field(default=None, metadata=about(
        "DDIM steps of the x_t sampler (default: the model's default number of steps)"))
    sample_guidance: float = field(default=3.0, metadata=about("classifier-free guidance of the x_t sampler"))
    seed: int = field(default=0, metadata=about("seed of every step's draws (step k draws from (seed, k))"))
    # where the run is kept, not what it computes: left out of the checkpoint's identity
    checkpoint_dir: str | os.PathLike | None = field(default=None, metadata=about(
        "folder to checkpoint into (resumable with --resume)"))
    checkpoint_every: int = field(default=100, metadata=about("steps between checkpoints"))
    resume: bool = field(default=False, metadata=about("continue from the checkpoint in checkpoint_dir"))

    def __post_init__(self) -> None:
        owner = "ESD"
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"unknown ESD method {self.method!r}; expected one of {', '.join(METHODS)}")
        if not isinstance(self.erase, str):
            raise TypeError(f"ESD erase must be the concept to erase (a string), got {type(self.erase).__name__} "
                            f"{self.erase!r}")
        if not self.erase.strip():
            raise ValueError("empty ESD request: give the concept to erase")
        if self.erase_from is not None:
            if not isinstance(self.erase_from, str):
                raise TypeError(f"ESD erase_from must be a string or None, got {type(self.erase_from).__name__} "
                                f"{self.erase_from!r}")
            if not self.erase_from.strip():
                raise ValueError("erase_from is empty; leave it None to train on the erased concept itself")
        number(owner, "iterations", self.iterations, low=1, integer=True)
        number(owner, "lr", self.lr, low=0, low_open=True)
        if self.ddim_steps is not None:
            number(owner, "ddim_steps", self.ddim_steps, low=1, integer=True)
        for name in ("negative_guidance", "sample_guidance"):
            number(owner, name, getattr(self, name))
        number(owner, "seed", self.seed, low=0, integer=True)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str | os.PathLike):
            raise TypeError(f"ESD checkpoint_dir must be a folder path or None, got "
                            f"{type(self.checkpoint_dir).__name__} {self.checkpoint_dir!r}")
        number(owner, "checkpoint_every", self.checkpoint_every, low=1, integer=True)
        if not isinstance(self.resume, bool):
            raise TypeError(f"ESD resume must be True or False, got {type(self.resume).__name__} {self.resume!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir of the interrupted run")


def _in_set(path: str, method: str) -> bool:
    """Whether the UNet parameter at ``path`` belongs to ``method``'s parameter set."""
    parts = path.split(".")
    cross = "attn2" in parts
    if method == "esd-x":
        return cross
    if method == "esd-x-strict":
        return cross and parts[parts.index("attn2") + 1] in ("to_k", "to_v")
    if method == "esd-u":
        return not cross
    return True  # esd-all, and located (narrowed by the layers)


def parameter_names(wb: Workbench, method: str, layers: Sequence[str] | None = None) -> list[str]:
    """Prefixed names (``unet.…``) of the UNet parameters ``method`` trains, in module order.

    ``layers`` (UNet layer names, e.g. from ``TraceResult.pick_layers()``) narrows any method to the
    parameters inside those layers; ``located`` trains every parameter inside them and needs them.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown ESD method {method!r}; expected one of {', '.join(METHODS)}")
    layers = _checks.layer_names("ESD", layers)
    if method == "located" and not layers:
        raise ValueError("method 'located' trains the layers a trace picked: give them (layers=[...])")
    prefixes = None
    if layers is not None:
        prefixes = []
        takes = "UNet layers of any kind, e.g. from TraceResult.pick_layers() or wb.layers(part='unet')"
        for name in layers:
            layer = _checks.layer(wb, "ESD", name, takes)  # a KeyError and ValueError, with suggestions
            if layer.part != "unet":
                raise ValueError(f"ESD fine-tunes the UNet; layer {name!r} is in the text encoder (give {takes})")
            prefixes.append(layer.name + ".")
    names = [f"unet.{path}" for path, _ in wb.unet.named_parameters() if _in_set(path, method)]
    if prefixes is not None:
        names = [n for n in names if n.startswith(tuple(prefixes))]
    if not names:
        where = f" inside layers {list(layers)}" if layers is not None else ""
        raise ValueError(f"no parameters to train: method {method!r} selects none{where}")
    return names


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step): a resumed run needs no saved RNG state."""
    digest = hashlib.blake2b(f"esd:{seed}:{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


class _Trainer:
    """State of one ESD run: the trained slice, its optimiser, the fixed text encodings."""

    def __init__(self, wb: Workbench, req: ESDRequest, names: list[str]):
        self.wb, self.req, self.names = wb, req, names
        self.paths = [n.removeprefix("unet.") for n in names]
        self.trained = {p: wb.unet.get_parameter(p).detach().clone().requires_grad_(True) for p in self.paths}
        self.optimizer = torch.optim.Adam(list(self.trained.values()), lr=req.lr)
        self._slots = []  # (owning module, attribute, trained tensor)
        for path, tensor in self.trained.items():
            owner, _, attr = path.rpartition(".")
            self._slots.append((wb.unet.get_submodule(owner), attr, tensor))
        same = req.erase_from is None or norm(req.erase_from) == norm(req.erase)  # the tokenizer lowercases
        self.from_row = 1 if same else 2  # row of c_from among the frozen predictions
        prompts = ["", req.erase] if same else ["", req.erase, req.erase_from]
        with torch.no_grad():
            # [∅, c(, c_from)]; ∅ as the sampler's guidance has it (SDXL-base: zeros)
            self.context = Conditioning.cat([wb.unconditional(1), wb.conditioning(prompts[1:])])
        self.sample_context = self.context[[0, self.from_row]]  # the sampler's CFG batch: [∅, c_from]
        self.scheduler = copy.deepcopy(wb.scheduler)
        self.scheduler.set_timesteps(int(req.ddim_steps or wb.defaults["steps"]), device=wb.device)
        self.losses: list[float] = []

    @contextmanager
    def _swapped(self) -> Iterator[None]:
        """The trained slice in place of the originals for one forward. ``torch.func.functional_call`` does
        the same but walks the whole module tree on every call: ~5 ms, a quarter of a tiny-UNet forward."""
        originals = [module._parameters[attr] for module, attr, _ in self._slots]
        try:
            for module, attr, tensor in self._slots:
                module._parameters[attr] = tensor
            yield
        finally:
            for (module, attr, _), original in zip(self._slots, originals, strict=True):
                module._parameters[attr] = original

    def _unet(self, x: torch.Tensor, t: torch.Tensor, context: Conditioning, trained: bool = False) -> torch.Tensor:
        kwargs = self.wb.family.unet_kwargs(context)
        if trained:
            with self._swapped():
                return self.wb.unet(x, t, **kwargs, return_dict=False)[0]
        return self.wb.unet(x, t, **kwargs, return_dict=False)[0]

    @torch.no_grad()
    def sample_xt(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t and t for ``step``: DDIM-sample c_from with the frozen model up to a random step index."""
        wb, sch, g = self.wb, self.scheduler, _step_generator(self.req.seed, step)
        stop = int(torch.randint(len(sch.timesteps), (1,), generator=g))
        x = torch.randn((1, *wb.latent_shape), generator=g).to(wb.device, wb.dtype) * sch.init_noise_sigma
        for t in sch.timesteps[:stop]:
            pu, pc = self._unet(sch.scale_model_input(torch.cat([x, x]), t), t, self.sample_context).chunk(2)
            x = sch.step(pu + self.req.sample_guidance * (pc - pu), t, x).prev_sample
        t = sch.timesteps[stop]
        return sch.scale_model_input(x, t), t

    def loss(self, step: int) -> torch.Tensor:
        """The ESD loss of the trained slice on ``step``'s x_t (a graph to backpropagate through)."""
        x, t = self.sample_xt(step)
        with torch.no_grad():
            frozen = self._unet(x.expand(len(self.context), *x.shape[1:]), t, self.context)
            uncond, cond, source = frozen[0:1], frozen[1:2], frozen[self.from_row:self.from_row + 1]
            target = source - (1 + self.req.negative_guidance) * (cond - uncond)
        with torch.enable_grad():
            pred = self._unet(x, t, self.context[self.from_row:self.from_row + 1], trained=True)
            return F.mse_loss(pred.float(), target.float())

    def step(self, step: int) -> float:
        loss = self.loss(step)
        value = float(loss.detach())
        if not torch.isfinite(loss.detach()):
            return value  # the caller stops before this loss touches the weights
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(value)
        return value

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict[str, Any]:
        req = {k: v for k, v in asdict(self.req).items() if k not in _RESUMABLE_CHANGES}
        return {"request": req, "parameters": self.names, "model_fingerprint": self.wb.fingerprint()}

    def save(self, path: Path, done: int) -> None:
        """The trained slice and the Adam state after ``done`` steps, as one safetensors file."""
        tensors = {}
        for name, tensor in zip(self.names, self.trained.values(), strict=True):
            state = self.optimizer.state.get(tensor, {})
            tensors[f"param/{name}"] = tensor.detach()
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in state:  # absent before the first step
                    tensors[f"{key}/{name}"] = state[key].detach()
        header = {"esd_checkpoint": json.dumps({**self._identity(), "step": done, "losses": self.losses})}
        atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                                                 metadata=header))

    def load(self, path: Path) -> int:
        """Restore the state saved at ``path``; returns the number of steps it had done."""
        try:
            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get("esd_checkpoint")
                tensors = {k: f.get_tensor(k) for k in f.keys()} if raw is not None else {}
            info = json.loads(raw) if raw is not None else None
        except Exception as err:  # safetensors' own error types, truncated files, bad JSON
            raise ValueError(f"{str(path)!r} cannot be read as an ESD checkpoint ({type(err).__name__}: "
                             f"{' '.join(str(err).split())}); delete it, or pick another checkpoint_dir") from None
        mine = self._identity()
        if not isinstance(info, dict) or any(k not in info for k in (*mine, "step", "losses")):
            raise ValueError(f"{str(path)!r} is not an ESD checkpoint")
        for key in ("request", "parameters", "model_fingerprint"):
            if info[key] != mine[key]:
                if key == "request":
                    diff = [f"{k} {info[key].get(k)!r} there, {v!r} here" for k, v in mine[key].items()
                            if info[key].get(k) != v]
                    what = f"request differs: {'; '.join(diff) or info[key]}"
                else:
                    what = {"parameters": "parameter set differs (another method or layers)",
                            "model_fingerprint": "model weights differ (another model, or an edit applied)"}[key]
                raise ValueError(f"the checkpoint at {str(path)!r} belongs to another run (its {what}); resume "
                                 f"with the same request and model, or pick another checkpoint_dir")
        done = int(info["step"])
        if done > self.req.iterations:
            raise ValueError(f"the checkpoint at {str(path)!r} has done {done} steps, more than the "
                             f"{self.req.iterations} requested")
        opt_state = self.optimizer.state_dict()
        opt_state["state"] = {}
        with torch.no_grad():
            for i, (name, tensor) in enumerate(zip(self.names, self.trained.values(), strict=True)):
                tensor.copy_(tensors[f"param/{name}"])
                if f"step/{name}" in tensors:
                    opt_state["state"][i] = {k: tensors[f"{k}/{name}"] for k in ("step", "exp_avg", "exp_avg_sq")}
        self.optimizer.load_state_dict(opt_state)
        self.losses = [float(v) for v in info["losses"]]
        return done

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.trained.values())


REQUEST = ESDRequest
LAYER_KINDS = None  # any UNet layer: the method's parameter set is narrowed to the parameters inside them


def edit(wb: Workbench, request: ESDRequest, layers: Sequence[str] | None = None, *,
         progress: bool = True) -> WeightDelta:
    """Fine-tune the request's parameter set (narrowed to ``layers`` when given) and return the WeightDelta.

    With ``checkpoint_dir``, the trained slice and the Adam state are written there every
    ``checkpoint_every`` steps and at the end; ``resume=True`` continues from that checkpoint (or starts
    afresh when there is none) and ends with the same weights, bit for bit, as an uninterrupted run. Every
    step draws its randomness from (seed, step), so the run is deterministic on the CPU. A non-finite loss
    stops the run with a FloatingPointError and leaves the last good checkpoint in place. ``wb`` itself
    is never modified.
    """
    req = request
    if not isinstance(req, ESDRequest):
        raise TypeError(f"esd needs an ESDRequest, got {type(req).__name__}")
    names = parameter_names(wb, req.method, layers)
    checkpoint_every, resume = req.checkpoint_every, req.resume
    ckpt = Path(req.checkpoint_dir) / CHECKPOINT if req.checkpoint_dir is not None else None
    if ckpt is not None:  # a checkpoint is never written into what the model was read from
        check_not_protected(req.checkpoint_dir, wb.read_paths())
    if ckpt is not None and ckpt.parent.exists() and not ckpt.parent.is_dir():
        raise ValueError(f"checkpoint_dir {str(ckpt.parent)!r} is a file; give a folder for the ESD "
                         f"checkpoint")
    if ckpt is not None and ckpt.exists() and not ckpt.is_file():
        raise ValueError(f"{str(ckpt)!r} is not a file; it cannot hold the ESD checkpoint")
    if ckpt is not None and ckpt.exists() and not resume:
        raise FileExistsError(f"{str(ckpt)!r} holds an earlier run's checkpoint; pass resume=True to continue "
                              f"it, or pick another checkpoint_dir")

    trainer = _Trainer(wb, req, names)
    start = trainer.load(ckpt) if resume and ckpt.exists() else 0
    saved_at = start if resume and ckpt.exists() else None
    began = time.perf_counter()
    bar = progress_bar(range(start, req.iterations), initial=start, total=req.iterations, desc=f"esd {req.method}",
                       progress=progress, leave=True)
    def stop(why: str) -> FloatingPointError:
        bar.close()
        kept = (f"the last good checkpoint (step {saved_at}) is at {str(ckpt)!r}" if saved_at is not None
                else "no checkpoint was written")
        return FloatingPointError(f"{why} ({req.method}, lr {req.lr}); training stopped, the model is untouched "
                                  f"and {kept}; try a lower lr")

    for step in bar:
        loss = trainer.step(step)
        if not math.isfinite(loss):
            raise stop(f"ESD loss became {loss} at step {step}")
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        done = step + 1
        if ckpt is not None and (done % checkpoint_every == 0 or done == req.iterations):
            if not trainer.finite():  # never replace a good checkpoint with a broken one
                raise stop(f"ESD weights became non-finite by step {step}")
            trainer.save(ckpt, done)
            saved_at = done
    bar.close()
    new = {name: tensor.detach() for name, tensor in zip(names, trainer.trained.values(), strict=True)}
    return WeightDelta.capture(wb, new, method="esd", esd_method=req.method, request=record(req),
                               layers=list(layers) if layers is not None else None, parameters=names,
                               ddim_steps=len(trainer.scheduler.timesteps), losses=trainer.losses,
                               resumed_from=start if start else None,
                               seconds=round(time.perf_counter() - began, 3))


def esd_loss(wb: Workbench, request: ESDRequest, steps: Sequence[int], delta: WeightDelta | None = None) -> float:
    """Mean ESD loss over ``steps`` (the x_t those training steps draw) of ``delta``'s weights, or of the
    original weights when None; the frozen model is always ``wb`` as it is. How well an edit fits its
    objective, e.g. on steps past the ones it was trained on."""
    if delta is not None:
        names = delta.names
        delta.check_base(wb)
    else:
        names = parameter_names(wb, "esd-x-strict")  # any slice: at the originals the choice is moot
    trainer = _Trainer(wb, request, names)
    with torch.no_grad():
        for name, tensor in zip(names, trainer.trained.values(), strict=True):
            tensor.requires_grad_(False)  # evaluation only: no graph
            if delta is not None:
                tensor.copy_(delta.tensors[name])
    return sum(float(trainer.loss(s)) for s in steps) / len(steps)
