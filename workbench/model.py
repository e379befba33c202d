"""The one model wrapper: a hooked CLIP text encoder + UNet (+ tokenizer, scheduler, autoencoder).

Localization and editing share it. Every hookable module has a stable dotted name (see ``layers.py``);
reads and writes of module outputs go through nnsight, behind :meth:`Workbench.run_text`,
:meth:`Workbench.run_unet` and :meth:`Workbench.generate`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import math
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nnsight
import torch
from nnsight import NNsight
from torch import nn

from . import autoencoder as ae
from . import families
from .checks import finite, whole
from .conditioning import Conditioning
from .files import PACKAGE_DATA, atomic_dir
from .layers import Layer, build_table, execution_order, select
from .progress import bar
from .world import World

CONFIG_DIR = Path(__file__).parent / "configs"
TOY_DIR = Path(__file__).parent / "toy" / "weights"
ARCHES = {"tiny": "sd", "sd15": "sd", "sd21": "sd", "sdxl": "sdxl", "tiny-xl": "sdxl"}  # config -> family
TOY_WORLDS = {"base": "toy", "entities": "toy-entities", "xl": "toy-xl"}  # world -> model name
INPUT = ":input"

PatchValue = torch.Tensor | float | Callable[[torch.Tensor], torch.Tensor] | Mapping[int, torch.Tensor]


@dataclass(frozen=True)
class Patch:
    """Overwrite a named module's output.

    ``value`` is a tensor (broadcast into the selected slice), a function of the selected slice, or, in
    :meth:`Workbench.generate`, a mapping from denoising step to tensor. ``rows`` are batch rows (of the
    conditional batch in ``generate``), ``positions`` index dimension 1 (tokens for text states and
    ``to_k``/``to_v``; spatial positions for ``attn2`` outputs), ``steps`` the denoising steps to act at
    (all when None). The classifier-free-guidance unconditional pass is left alone unless ``uncond``.
    """

    layer: str
    value: PatchValue
    rows: Sequence[int] | slice | None = None
    positions: Sequence[int] | None = None
    steps: Collection[int] | None = None
    uncond: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str):
            raise TypeError(f"Patch layer must be a layer name (str), got {type(self.layer).__name__}")
        values = self.value.values() if isinstance(self.value, Mapping) else [self.value]
        for v in values:
            if callable(v):
                continue
            if not isinstance(v, torch.Tensor | int | float) or isinstance(v, bool):
                raise TypeError(f"Patch {self.layer!r}: value must be a tensor, a number, a function or a mapping "
                                f"step -> tensor, got {type(v).__name__}")
            if not torch.isfinite(torch.as_tensor(v)).all():
                raise ValueError(f"Patch {self.layer!r}: value holds NaN or inf")
        for what, idx in (("rows", self.rows), ("positions", self.positions), ("steps", self.steps)):
            if idx is None or isinstance(idx, slice):
                continue
            if isinstance(idx, torch.Tensor):
                idx = idx.tolist()
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                raise ValueError(f"Patch {self.layer!r}: {what} must be whole numbers, got {list(idx)[:5]}")


@dataclass
class Generation:
    """Images from :meth:`Workbench.generate`, with what was read on the way."""

    images: torch.Tensor | None  # (B, 3, H, W) in [0, 1]; None from generate(..., decode=False)
    latents: torch.Tensor  # final latents
    prompts: list[str]
    seeds: list[int]
    reads: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> one tensor per step


def _primary(out: Any) -> torch.Tensor:
    """The main tensor of a module output (tensors, tuples such as ``self_attn``'s, diffusers outputs)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _index(rows, positions) -> tuple:
    if positions is None:
        return (slice(None),) if rows is None else (rows if isinstance(rows, slice) else torch.as_tensor(rows),)
    pos = torch.as_tensor(positions, dtype=torch.long)
    if rows is None or isinstance(rows, slice):
        return (slice(None) if rows is None else rows, pos)
    return (torch.as_tensor(rows, dtype=torch.long)[:, None], pos[None, :])


def _write(out: Any, patch: Patch, rows=None, step: int | None = None) -> None:
    target = _primary(out)
    idx = _index(patch.rows if rows is None else rows, patch.positions)
    value = patch.value
    if isinstance(value, Mapping):
        value = value[step]
    if callable(value):
        value = value(target[idx])
    target[idx] = torch.as_tensor(value, dtype=target.dtype, device=target.device)


class Workbench:
    """A text-to-image diffusion model with every layer addressable by name.

    Build one with :meth:`from_pretrained` (a local diffusers folder or single file), :meth:`random`
    (``tiny`` / ``sd15`` / ``sd21`` / ``sdxl`` / ``tiny-xl`` shapes, random weights) or :meth:`toy` (the
    shipped toy world). ``family`` is the adapter that knows the model's text encoders and conditioning
    (:mod:`workbench.families`); ``text_encoder`` and ``tokenizer`` are one module each, or a mapping
    part name -> module for families with several (SDXL: ``text`` and ``text2``).
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | Mapping[str, nn.Module], tokenizer, scheduler,
                 autoencoder: ae.Autoencoder | None = None, *, name: str = "model",
                 defaults: dict | None = None, source: str | None = None, text_key_prefix: str = "",
                 vae: nn.Module | None = None, scheduler_config: Mapping[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None, read_paths: Sequence[str | os.PathLike] | None = None,
                 world: World | None = None, family: families.StableDiffusion | None = None):
        self.family = family or families.StableDiffusion()
        names = [p.part for p in self.family.text]
        encoders = dict(text_encoder) if isinstance(text_encoder, Mapping) else {names[0]: text_encoder}
        tokenizers = dict(tokenizer) if isinstance(tokenizer, Mapping) else {names[0]: tokenizer}
        for what, given in (("text encoders", encoders), ("tokenizers", tokenizers)):
            if list(given) != names:
                raise ValueError(f"a {self.family.name} model takes {what} for {', '.join(names)}; got "
                                 f"{', '.join(given) or 'none'}")
        self.text_encoders: dict[str, nn.Module] = {part: m.eval() for part, m in encoders.items()}
        self.tokenizers = tokenizers
        _check_tokenizers(self.tokenizers)
        self.unet = unet.eval()
        self.text_encoder = self.text_encoders[names[0]]  # the primary encoder and tokenizer
        self.tokenizer = self.tokenizers[names[0]]
        self.scheduler = scheduler
        self.vae = vae
        self.autoencoder = autoencoder or (ae.KLAutoencoder(vae) if vae is not None else ae.PixelSpace())
        self.name = name
        self.source = source
        # How to prompt and score this model's concepts: set for the toy worlds, None for other models
        self.world = world
        self.text_key_prefix = text_key_prefix  # "text_model." when the checkpoint used transformers-4 keys
        # Sampling uses DDIM; exports keep the scheduler the checkpoint came with, config untouched.
        self.scheduler_config = dict(scheduler_config if scheduler_config is not None else scheduler.config)
        self.extra = dict(extra or {})  # workbench.json of a loaded folder (image size, ...), kept on export
        local = [Path(source)] if source and Path(source).exists() else []
        self._read_paths = [Path(p) for p in (read_paths if read_paths is not None else local)]
        self.defaults = {"guidance": 7.5, "steps": 50, **(defaults or {})}
        self.parts: dict[str, nn.Module] = {**self.text_encoders, "unet": self.unet}
        self._nn = {part: NNsight(module) for part, module in self.parts.items()}
        self._table: list[Layer] | None = None
        self._fingerprint: str | None = None
        self._applied: list[tuple[Any, dict[str, torch.Tensor]]] = []  # (WeightDelta, originals), in order
        for module in self.parts.values():
            module.requires_grad_(False)

    # ------------------------------------------------------------------ applied deltas
    @property
    def applied(self) -> tuple:
        """The WeightDeltas applied to the weights now, oldest first."""
        return tuple(delta for delta, _ in self._applied)

    def record_applied(self, delta, originals: Mapping[str, torch.Tensor]) -> None:
        """Note that ``delta`` was just written into the weights, replacing ``originals`` (what a revert
        restores); the fingerprint is recomputed on next use."""
        self._applied.append((delta, dict(originals)))
        self.weights_changed()

    def take_applied(self, delta) -> dict[str, torch.Tensor]:
        """The originals ``delta`` replaced, taken off the stack: only the most recent delta can go."""
        if not self._applied or self._applied[-1][0] is not delta:
            raise ValueError("this delta is not the last one applied to the model; revert later ones first")
        return self._applied.pop()[1]

    def weights_changed(self) -> None:
        """Call after writing parameters in place: the cached fingerprint no longer describes them."""
        self._fingerprint = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        config: str | os.PathLike | None = None) -> Workbench:
        """Load a local diffusers folder (SD-1.x/2.x or SDXL), or a single ``.safetensors`` checkpoint.

        Never touches the network and never unpickles: weights load from safetensors only. A folder missing
        weights, holding broken or non-finite ones, or whose configs are unreadable, is refused with the file
        named. A single file needs ``config``: a local diffusers folder holding the model's configs
        (diffusers cannot infer them offline); that folder also says the family.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model path {str(path)!r} does not exist")
        if path.is_file():
            return cls._from_single_file(path, config=config, device=device, dtype=dtype)
        if config is not None:
            raise ValueError(f"--config goes with a single .safetensors file; {str(path)!r} is a folder")
        family = families.detect(path)
        missing = [p for p in family.required if not (path / p).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{str(path)!r} is not a diffusers {family.pipelines[0]} folder: missing subfolder(s) "
                f"{', '.join(missing)} (expected {', '.join(family.required)}, optionally vae)")
        unet = _load_weights(UNet2DConditionModel, path / "unet")
        encoders = {p.part: _load_weights(_text_class(p.model_class), path / p.encoder) for p in family.text}
        tokenizers = {p.part: _load_tokenizer(path / p.tokenizer) for p in family.text}
        vae = _load_weights(AutoencoderKL, path / "vae") if (path / "vae").is_dir() else None
        scheduler_config = _read_json(path / "scheduler" / "scheduler_config.json", "scheduler config")
        extra = _read_json(path / "workbench.json", "workbench settings") if (path / "workbench.json").exists() else {}
        try:
            autoencoder = ae.from_spec(extra.get("autoencoder"), vae)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{str(path / 'workbench.json')!r}: unreadable autoencoder entry "
                             f"{extra.get('autoencoder')!r} ({err})") from err
        wb = cls(unet, encoders, tokenizers, _sampling_scheduler(scheduler_config, path), autoencoder,
                 name=str(extra.get("name", path.name)), defaults=_defaults(extra, path / "workbench.json"),
                 source=str(path), text_key_prefix=_text_key_prefix(path / family.text[0].encoder), vae=vae,
                 scheduler_config=scheduler_config, extra=extra, family=family)
        return wb.to(device, dtype)

    @classmethod
    def _from_single_file(cls, path: Path, *, config, device, dtype) -> Workbench:
        if path.suffix != ".safetensors":
            raise ValueError(f"{str(path)!r}: only .safetensors single-file checkpoints load (pickled "
                             f"checkpoints such as .ckpt can run code when read); convert it first")
        if config is None:
            raise ValueError(f"single-file checkpoint {str(path)!r} needs a config (--config FOLDER, config= in "
                             f"Python): a local diffusers folder with the model's configs; without the hub "
                             f"diffusers cannot infer them")
        if not Path(config).is_dir():
            raise FileNotFoundError(f"config folder {str(config)!r} for {str(path)!r} does not exist")
        family = families.detect(Path(config))
        _check_safetensors(path)
        try:
            with _quiet_libraries():
                pipe = family.pipeline_class().from_single_file(str(path), config=str(config),
                                                                local_files_only=True, **family.single_file_kwargs())
        except Exception as err:  # diffusers raises many types here; each is a bad file or config to the user
            raise ValueError(f"cannot load {str(path)!r} with the configs in {str(config)!r}: "
                             f"{_first_line(err)}") from err
        scheduler_config = dict(pipe.scheduler.config)
        wb = cls(pipe.unet, {p.part: getattr(pipe, p.encoder) for p in family.text},
                 {p.part: getattr(pipe, p.tokenizer) for p in family.text},
                 _sampling_scheduler(scheduler_config, path), vae=pipe.vae, name=path.stem, source=str(path),
                 text_key_prefix="text_model.", scheduler_config=scheduler_config, read_paths=[path, Path(config)],
                 family=family)
        _check_finite(wb.parts.items(), path)
        return wb.to(device, dtype)

    @classmethod
    def random(cls, arch: str = "tiny", seed: int = 0, *, sample_size: int | None = None, vae: bool = True,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> Workbench:
        """Randomly initialised model from the configs the repo carries: SD-1.5 / SD-2.1 / SDXL-base shapes,
        or the tiny SD (``tiny``) and tiny SDXL-topology (``tiny-xl``) ones for tests.

        ``sample_size`` shrinks the default latent side (the weights do not depend on it). ``device="meta"``
        builds the modules without allocating weights: enough for the layer table of a full-size model.
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        if arch not in ARCHES:
            raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")
        family = families.FAMILIES[ARCHES[arch]]()
        folder = CONFIG_DIR / arch
        cfg = {p: json.loads((folder / f"{p}.json").read_text()) for p in ("unet", "scheduler", "vae")}
        text_cfgs = {p.part: json.loads((folder / f"{p.encoder}.json").read_text()) for p in family.text}
        tokenizers = {p.part: load_builtin_tokenizer(text_cfgs[p.part]["max_position_embeddings"],
                                                     pad=text_cfgs[p.part].get("pad_token"))
                      for p in family.text}
        if sample_size is not None:
            cfg["unet"]["sample_size"] = sample_size
        meta = torch.device(device).type == "meta"
        with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(cfg["unet"])
            encoders = {p.part: _text_model(p.model_class, text_cfgs[p.part], tokenizers[p.part]) for p in family.text}
            kl = AutoencoderKL.from_config(cfg["vae"]) if vae else None
        scheduler = DDIMScheduler.from_config(cfg["scheduler"])
        wb = cls(unet, encoders, tokenizers, scheduler, vae=kl, name=f"random-{arch}-seed{seed}",
                 source=f"random:{arch}:{seed}", defaults={"steps": 20}, scheduler_config=cfg["scheduler"],
                 family=family)
        return wb if meta else wb.to(device, dtype)

    @classmethod
    def toy(cls, world: str = "base", *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Workbench:
        """A trained toy world shipped in the repo (``workbench/toy/weights``).

        ``world``: ``"base"`` (the default world, name ``toy``), ``"entities"`` (name ``toy-entities``): the
        same world retrained so that each of the 200 entities' binding is stored in the text encoder at the
        name's own position, as knowledge editors such as EMCID assume, or ``"xl"`` (name ``toy-xl``): the same
        world with SDXL's conditioning topology, two text encoders and the pooled path
        (``workbench/toy/README.md``).
        """
        if world not in TOY_WORLDS:
            raise ValueError(f"unknown toy world {world!r}; expected one of {', '.join(TOY_WORLDS)}")
        if not (TOY_DIR / "unet").is_dir():
            raise FileNotFoundError(f"toy-world weights are missing at {TOY_DIR}; train them with "
                                    f"`workbench toy train`")
        # The one place the kernel reaches up into the toy package (import contract exception in pyproject.toml)
        from .toy.protocol import toy_world

        if world == "xl":  # a whole SDXL pipeline folder of its own
            if not (TOY_DIR / "xl" / "unet").is_dir():
                raise FileNotFoundError(f"the SDXL-shaped toy world is missing at {TOY_DIR / 'xl'}; grow it with "
                                        f"`workbench toy train --family xl --init {TOY_DIR}`")
            wb = cls.from_pretrained(TOY_DIR / "xl", device=device, dtype=dtype)
            wb.world = toy_world(wb.name)
            return wb
        wb = cls.from_pretrained(TOY_DIR, device=device, dtype=dtype)
        wb.name = TOY_WORLDS[world]
        wb.world = toy_world(wb.name)
        if world != "base":
            from safetensors.torch import load_model

            # Only the retrained weights are stored; configs, tokenizer and scheduler are the base world's.
            for part, module in (("unet", wb.unet), ("text_encoder", wb.text_encoder)):
                file = TOY_DIR / world / f"{part}.safetensors"
                _check_safetensors(file)
                load_model(module, file, device=str(wb.device))
            _check_finite(wb.parts.items(), TOY_DIR / world)
            wb.source = f"{TOY_DIR} ({world})"
            wb._fingerprint = None
        return wb

    @classmethod
    def load(cls, model: str, *, config: str | os.PathLike | None = None, sample_size: int | None = None,
             **kw) -> Workbench:
        """``toy``, ``toy-entities``, ``tiny``, ``sd15``, ``sd21`` or a local path (the CLI's ``--model``).

        ``config``: the config folder of a single-file checkpoint; ``sample_size``: the latent side to
        sample at (a smaller one makes large models cheap to try; the weights do not depend on it)."""
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a name or a local path, got {model!r}")
        builtin = model in TOY_WORLDS.values() or model in ARCHES
        if builtin and config is not None:
            raise ValueError(f"--config is for single-file checkpoints; {model!r} is a built-in model")
        if model in TOY_WORLDS.values():
            wb = cls.toy(next(w for w, n in TOY_WORLDS.items() if n == model), **kw)
        elif model in ARCHES:
            wb = cls.random(model, **kw)
        elif not Path(model).exists() and "/" not in model and "." not in model:
            raise FileNotFoundError(f"unknown model {model!r}: expected {', '.join([*TOY_WORLDS.values(), *ARCHES])} "
                                    f"or a local diffusers folder / .safetensors file (nothing is downloaded)")
        else:
            wb = cls.from_pretrained(model, config=config, **kw)
        if sample_size is not None:
            wb.set_sample_size(sample_size)
        return wb

    def set_sample_size(self, side: int) -> None:
        """Sample at ``side`` × ``side`` latents (the weights do not depend on it)."""
        levels = 2 ** (len(self.unet.config.down_block_types) - 1)
        if isinstance(side, bool) or not isinstance(side, int) or side < levels or side % levels:
            raise ValueError(f"sample size must be a whole multiple of {levels} (the UNet halves the latent "
                             f"{levels.bit_length() - 1} times), got {side!r}")
        self.unet.register_to_config(sample_size=side)

    def read_paths(self) -> list[Path]:
        """What this model was read from, plus the package's shipped data: never a target for a writer."""
        return [*self._read_paths, *PACKAGE_DATA]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Workbench:
        if torch.device(device or self.device) == self.device and (dtype or self.dtype) == self.dtype:
            return self  # a no-op .to() on diffusers models only prints a dtype warning
        for module in (*self.parts.values(), self.vae):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ------------------------------------------------------------------ layers
    def _layer_table(self) -> list[Layer]:
        if self._table is None:
            table = []
            for part in self.text_parts:
                module = self.parts[part]
                ids = self.family.part_ids(self, part, self._dummy_ids())
                order = execution_order(module, lambda m=module, i=ids, p=part: m(i, **self.family.text_kwargs(p)))
                table += build_table(part, module, order)
            x, t, cond = self._dummy_unet_inputs()
            order = execution_order(self.unet, lambda: self.unet(x, t, **self.family.unet_kwargs(cond)))
            self._table = table + build_table("unet", self.unet, order)
        return self._table

    def _dummy_ids(self) -> torch.Tensor:
        tok = self.tokenizer
        return torch.tensor([[tok.bos_token_id, tok.eos_token_id]], device=self.device)

    def _dummy_unet_inputs(self) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
        c = self.unet.config
        side = 2 ** len(c.down_block_types)  # 2×2 at the bottom: GroupNorm needs > 1 value
        x = torch.zeros(1, c.in_channels, side, side, device=self.device, dtype=self.dtype)
        return x, torch.tensor([1], device=self.device), self.family.dummy_conditioning(self)

    @property
    def text_parts(self) -> tuple[str, ...]:
        """The text encoders' part names, primary first: ``("text",)``, or ``("text", "text2")`` for SDXL."""
        return tuple(self.text_encoders)

    def layers(self, kind: str | Sequence[str] | None = None, pattern: str | None = None,
               part: str | None = None) -> list[str]:
        """Layer names in execution order (text encoder first), filtered by kind, glob and part."""
        table = self._layer_table()
        kinds = {layer.kind for layer in table}
        for k in [kind] if isinstance(kind, str) else kind or []:
            if k not in kinds:
                raise ValueError(f"unknown layer kind {k!r}; this model has kinds: {', '.join(sorted(kinds))}")
        if part is not None and part not in self.parts:
            raise ValueError(f"unknown part {part!r}; this model has parts {', '.join(self.parts)}")
        return [layer.name for layer in select(table, kind, pattern) if part in (None, layer.part)]

    def layer(self, name: str) -> Layer:
        """The :class:`Layer` record for ``name``; a clear error with suggestions when it does not exist."""
        for layer in self._layer_table():
            if layer.name == name:
                return layer
        names = [layer.name for layer in self._layer_table()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list them with Workbench.layers()"
        raise KeyError(f"no layer named {name!r} in {self.name}{hint}")

    def module(self, name: str) -> nn.Module:
        layer = self.layer(name)
        return self.parts[layer.part].get_submodule(layer.path)

    def parameter(self, name: str) -> nn.Parameter:
        """A parameter by its prefixed name, e.g. ``unet.mid_block.attentions.0....attn2.to_k.weight``."""
        part, _, path = name.partition(".")
        if part not in self.parts:
            raise KeyError(f"parameter name {name!r} must start with one of "
                           f"{', '.join(p + '.' for p in self.parts)}")
        try:
            return self.parts[part].get_parameter(path)
        except AttributeError as err:
            raise KeyError(f"no parameter named {name!r} in {self.name}") from err

    # ------------------------------------------------------------------ prompts
    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10_000
                   else self.text_encoder.config.max_position_embeddings)

    def _unknown_words(self, prompt: str) -> list[str]:
        unk = self.tokenizer.unk_token_id
        if unk is None or not _is_word_level(self.tokenizer):
            return []
        return [w for w in prompt.split() if unk in self.tokenizer(w, add_special_tokens=False).input_ids]

    def _check_prompt(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        unknown = self._unknown_words(prompt)
        if unknown:
            raise ValueError(f"prompt {prompt!r}: unknown word(s) {unknown} (this model's tokenizer is "
                             f"word-level; see its vocabulary)")
        ids = self.tokenizer(prompt).input_ids
        if len(ids) > self.max_length:
            raise ValueError(f"prompt {prompt!r} is {len(ids)} tokens long (with start/end tokens); this "
                             f"model takes at most {self.max_length}")
        return ids

    def tokens(self, prompt: str) -> list[str]:
        """The prompt's tokens, start and end tokens included, no padding."""
        return self.tokenizer.convert_ids_to_tokens(self._check_prompt(prompt))

    def token_ids(self, prompts: str | Sequence[str], length: int | None = None) -> torch.Tensor:
        """(B, max_length) token ids, padded as the model was trained (SD-1.x pads with end-of-text).

        ``length`` keeps only the first ``length`` positions. The text encoder is causal (a state never sees
        the tokens after it), so the states at those positions are exactly the full sequence's: whoever reads
        only early positions, or only the real tokens, can skip encoding the padding (SD pads every prompt to
        77 tokens)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            self._check_prompt(p)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        if length is not None:
            if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= self.max_length:
                raise ValueError(f"token_ids length must be a whole number from 1 to {self.max_length}, got "
                                 f"{length!r}")
            ids = ids[:, :length]
        return ids.to(self.device)

    def token_count(self, prompt: str) -> int:
        """The prompt's tokens, start and end-of-text included (the positions before the padding)."""
        self._check_prompt(prompt)
        return min(len(self.tokenizer(prompt).input_ids), self.max_length)

    def subject_positions(self, prompt: str, subject: str) -> list[int]:
        """Token positions of ``subject`` (first occurrence) in ``prompt``; the last one is the last
        subject token. Found from the subject's own tokens, never from padding (SD's CLIP pads with EOS)."""
        if not subject or not subject.strip():
            raise ValueError(f"empty subject for prompt {prompt!r}")
        ids = self._check_prompt(prompt)
        sub = self.tokenizer(subject, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(sub) + 1):
            if ids[start:start + len(sub)] == sub:
                return list(range(start, start + len(sub)))
        raise ValueError(f"subject {subject!r} not found in prompt {prompt!r} (prompt tokens "
                         f"{self.tokenizer.convert_ids_to_tokens(ids)}, subject tokens "
                         f"{self.tokenizer.convert_ids_to_tokens(sub)})")

    def encode(self, prompts: str | Sequence[str], patches: Sequence[Patch] = ()) -> torch.Tensor:
        """Text states (B, T, D) the UNet cross-attends to (SDXL: both encoders' side by side)."""
        return self.conditioning(prompts, patches).states

    def conditioning(self, prompts: str | Sequence[str], patches: Sequence[Patch] = ()) -> Conditioning:
        """Everything the denoiser reads for each prompt: the states, and the pooled embedding and time ids
        where the family has them."""
        return self.run_text(self.token_ids(prompts), patches=patches)[0]

    def unconditional(self, n: int, negative_prompt: str = "", patches: Sequence[Patch] = ()) -> Conditioning:
        """The classifier-free-guidance rows for ``negative_prompt`` (SDXL-base: all zeros for ``""``)."""
        return self.family.unconditional(self, negative_prompt, n, patches)

    # ------------------------------------------------------------------ interventions
    def _run(self, part: str, args: tuple, kwargs: dict, read: Sequence[str], patches: Sequence[Patch],
             rows_of: Callable[[Patch], Any] | None = None, step: int | None = None, grad: bool = False):
        read = list(read)
        # "<layer>:input" reads a module's (first) input instead of its output
        layers = {name: self.layer(name.removesuffix(INPUT)) for name in [*read, *(p.layer for p in patches)]}
        for name, layer in layers.items():
            if layer.part != part:
                raise ValueError(f"layer {name!r} is in the {layer.part} part, not in {part}")
        module = self.parts[part]
        # grad=True: gradients flow through the forward and through patch values (a tensor that requires grad,
        # or a function of one), e.g. to optimise what a patch adds; the weights themselves stay frozen.
        autograd = torch.enable_grad() if grad else torch.no_grad()
        if not layers:
            with autograd:
                return module(*args, **kwargs), {}
        model = self._nn[part]
        order = sorted(layers, key=lambda n: layers[n].start if n.endswith(INPUT) else layers[n].order)
        by_layer: dict[str, list[Patch]] = {}
        for p in patches:
            if p.layer.endswith(INPUT):
                raise ValueError(f"patch {p.layer!r}: patches overwrite outputs; patch the previous module")
            by_layer.setdefault(p.layer, []).append(p)
        saved: dict[str, Any] = {}
        # One invoke over a stacked batch; nnsight needs modules touched in execution order.
        with autograd, model.trace(*args, **kwargs):
            for name in order:
                envoy = model.get(layers[name].path)
                if name.endswith(INPUT):
                    saved[name] = nnsight.save(envoy.input.clone())
                    continue
                for p in by_layer.get(name, ()):
                    _write(envoy.output, p, rows_of(p) if rows_of else None, step)
                if name in read:
                    saved[name] = nnsight.save(_primary(envoy.output).clone())
            result = nnsight.save(model.output)
        return result, saved

    def run_text(self, input_ids: torch.Tensor, read: Sequence[str] = (), patches: Sequence[Patch] = (), *,
                 grad: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every text encoder's forward; returns (the :class:`Conditioning` they make, {layer: output read}).

        ``input_ids`` are the primary tokenizer's (:meth:`token_ids`); the family maps them to each encoder's.

        A read named ``"<layer>:input"`` returns that module's first input instead of its output. With
        ``grad=True`` the forward carries gradients: to a patch's value (a tensor that requires grad, or a
        function of one) and on through everything downstream (e.g. the UNet), the weights staying frozen."""
        part_of = {name: self.layer(name.removesuffix(INPUT)).part for name in [*read, *(p.layer for p in patches)]}
        for name, part in part_of.items():
            if part not in self.text_parts:
                raise ValueError(f"layer {name!r} is in the {part} part, not in a text encoder "
                                 f"({', '.join(self.text_parts)})")
        input_ids = input_ids.to(self.device)
        outputs, saved = {}, {}
        for part in self.text_parts:
            outputs[part], got = self._run(part, (self.family.part_ids(self, part, input_ids),),
                                           self.family.text_kwargs(part),
                                           [n for n in read if part_of[n] == part],
                                           [p for p in patches if part_of[p.layer] == part], grad=grad)
            saved.update(got)
        return self.family.conditioning(self, outputs), saved

    def run_unet(self, latents: torch.Tensor, timestep: torch.Tensor | int, context: Conditioning | torch.Tensor,
                 read: Sequence[str] = (), patches: Sequence[Patch] = ()
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """UNet forward; returns (model output (B, C, h, w), {layer: output read}). ``context`` is a
        :class:`Conditioning` (a plain tensor of states is taken for families that read nothing else)."""
        t = torch.as_tensor(timestep, device=self.device)
        kwargs = self.family.unet_kwargs(_conditioning(context))
        out, saved = self._run("unet", (latents, t), kwargs, read, patches)
        return _primary(out), saved

    # ------------------------------------------------------------------ sampling
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        side = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        return (c.in_channels, side, side)

    def initial_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """One noise tensor per seed, drawn on the CPU so the same seed gives the same image anywhere."""
        noise = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    def generate(self, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, *, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str = "", patches: Sequence[Patch] = (),
                 text_patches: Sequence[Patch] = (), read: Sequence[str] = (),
                 context: Conditioning | torch.Tensor | None = None,
                 progress: bool = False, step_bar=None, decode: bool = True) -> Generation:
        """Deterministic DDIM sampling, batched, with optional reads and patches.

        ``seed`` is one seed per prompt, or a base seed (row i uses ``seed + i``). ``text_patches`` act on
        the conditional text encoding only; ``patches`` act on the UNet's conditional rows at their
        ``steps`` (and on the unconditional rows only with ``Patch(uncond=True)``). ``context`` replaces
        the conditional text encoding. ``decode=False`` skips the image decoder (latents only).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = len(prompts)
        if n == 0:
            raise ValueError("no prompts to generate")
        seeds = _seeds(seed, n)
        steps = whole("steps", self.defaults["steps"] if steps is None else steps)
        guidance = finite("guidance", self.defaults["guidance"] if guidance is None else guidance)
        if not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        if context is not None:
            context = _conditioning(context)
            if len(context) != n or not context.isfinite():
                raise ValueError(f"context must be {n} finite rows, one per prompt; got {len(context)} rows of "
                                 f"states {tuple(context.states.shape)}")
        cond = context if context is not None else self.conditioning(prompts, patches=text_patches)
        use_cfg = guidance != 1.0
        if use_cfg:
            uncond = self.unconditional(n, negative_prompt, [p for p in text_patches if p.uncond])
            ctx = Conditioning.cat([uncond, cond])
        else:
            ctx = cond
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(steps, device=self.device)
        x = self.initial_latents(seeds) * scheduler.init_noise_sigma
        offset = n if use_cfg else 0

        def rows_of(p: Patch):
            base = range(n) if p.rows is None else (range(n)[p.rows] if isinstance(p.rows, slice) else p.rows)
            rows = [offset + r for r in base]
            return (list(base) + rows) if (p.uncond and use_cfg) else rows

        reads: dict[str, list[torch.Tensor]] = {name: [] for name in read}
        own_bar = bar(desc="sampling", total=len(scheduler.timesteps), progress=progress and step_bar is None)
        for i, t in enumerate(scheduler.timesteps):
            active = [p for p in patches if p.steps is None or i in p.steps]
            x_in = scheduler.scale_model_input(torch.cat([x, x]) if use_cfg else x, t)
            out, saved = self._run("unet", (x_in, t), self.family.unet_kwargs(ctx), read, active, rows_of, i)
            pred = _primary(out)
            for name in read:
                reads[name].append(saved[name][offset:])
            if use_cfg:
                pu, pc = pred.chunk(2)
                pred = pu + guidance * (pc - pu)
            x = scheduler.step(pred, t, x).prev_sample
            (step_bar or own_bar).update(1)
        own_bar.close()
        if not torch.isfinite(x).all():  # clamping would turn NaN into black images that score as erased
            raise ValueError(f"the model produced NaN or inf latents for prompt(s) {prompts[:3]}; its weights or "
                             f"patches are broken, so no images are returned")
        images = (self.autoencoder.decode(x).float().clamp(-1, 1) + 1) / 2 if decode else None
        return Generation(images=images.cpu() if decode else None, latents=x, prompts=prompts, seeds=seeds,
                          reads=reads)

    def sample(self, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, *, steps: int | None = None,
               guidance: float | None = None, negative_prompt: str = "", batch_size: int | None = None,
               progress: bool = False, **kw) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]; deterministic for a seed. Batched in chunks of ``batch_size``
        prompts, by default as many as memory allows."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts to sample")
        seeds = _seeds(seed, len(prompts))
        for p in prompts:
            self._check_prompt(p)
        if batch_size is None:
            from .memory import rows_per_batch

            batch_size = min(64, rows_per_batch(self, "generate"))
        batch_size = whole("batch_size", batch_size)
        chunks = range(0, len(prompts), batch_size)
        total = len(chunks) * whole("steps", self.defaults["steps"] if steps is None else steps)
        with bar(desc="sampling", total=total, progress=progress and total > 1) as steps_bar:
            out = [self.generate(prompts[i:i + batch_size], seeds[i:i + batch_size], steps=steps,
                                 guidance=guidance, negative_prompt=negative_prompt, step_bar=steps_bar, **kw).images
                   for i in chunks]
        return torch.cat(out)

    # ------------------------------------------------------------------ identity and export
    def fingerprint(self) -> str:
        """A hash of every weight (cached; reset when a WeightDelta is applied or reverted)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            for part, module in self.parts.items():
                for name, t in module.state_dict().items():
                    h.update(f"{part}.{name}".encode())
                    h.update(tensor_bytes(t))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def save_pretrained(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a diffusers folder that the family's plain pipeline (``StableDiffusionPipeline``,
        ``StableDiffusionXLPipeline``) loads with ``from_pretrained``.

        Built in a temporary folder and swapped into place, so a failure leaves nothing half-written. The
        text encoder keeps the key layout its source checkpoint had (transformers-4 ``text_model.`` keys
        stay) and the scheduler config is the checkpoint's own. With ``overwrite`` an earlier export is
        replaced, but never a folder holding anything else, nor one that is, holds or lies inside what this
        model was read from (:meth:`read_paths`).
        """
        def fill(tmp: Path) -> None:
            pipe = self.family.pipeline(self)
            with _quiet_libraries():
                pipe.save_pretrained(tmp, safe_serialization=True)
            config = {"_class_name": type(self.scheduler).__name__, **self.scheduler_config}
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2, default=str))
            if self.text_key_prefix:
                _rewrite_text_keys(tmp / self.family.text[0].encoder, self.text_key_prefix)
            extra = {**self.extra, "name": self.name, "autoencoder": self.autoencoder.spec, **self.defaults}
            (tmp / "workbench.json").write_text(json.dumps(extra, indent=2))

        return atomic_dir(folder, fill, overwrite=overwrite, protected=self.read_paths())

    def __repr__(self) -> str:
        n = sum(p.numel() for m in self.parts.values() for p in m.parameters())
        return f"Workbench({self.name!r}, {n / 1e6:.1f}M parameters, autoencoder={self.autoencoder.spec['type']})"


def _conditioning(context: Conditioning | torch.Tensor) -> Conditioning:
    if isinstance(context, Conditioning):
        return context
    if isinstance(context, torch.Tensor):
        return Conditioning(context)
    raise TypeError(f"context must be a Conditioning (Workbench.encode) or a tensor of text states, got "
                    f"{type(context).__name__}")


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def load_builtin_tokenizer(max_length: int = 77, pad: str | None = None):
    """The small CLIP-layout BPE tokenizer the repo ships (random-weight models use it); ``pad`` replaces its
    padding token (SDXL's second tokenizer pads with ``!``)."""
    from transformers import CLIPTokenizer

    d = CONFIG_DIR / "tokenizer"
    kw = {"pad_token": pad} if pad else {}
    return CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=max_length,
                         **kw)


def _text_class(name: str):
    import transformers

    return getattr(transformers, name)


def _text_model(class_name: str, cfg: Mapping[str, Any], tokenizer) -> nn.Module:
    """A randomly initialised text encoder from a config the repo carries, its special ids the tokenizer's."""
    from transformers import CLIPTextConfig

    fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "pad_token")}
    fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return _text_class(class_name)(CLIPTextConfig(**fields))


def _check_tokenizers(tokenizers: Mapping[str, Any]) -> None:
    """Token positions are shared across a family's text encoders: their tokenizers must agree on every id
    but the padding."""
    first, *rest = tokenizers.items()
    for part, tok in rest:
        if len(tok) != len(first[1]) or tok.get_vocab() != first[1].get_vocab() or any(
                getattr(tok, k) != getattr(first[1], k) for k in ("bos_token_id", "eos_token_id")):
            raise ValueError(f"the {part} tokenizer has another vocabulary than the {first[0]} one; the workbench "
                             f"needs tokenizers that differ only in padding (as SDXL's do)")


def _is_word_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def _text_key_prefix(folder: Path) -> str:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return ""
    with safe_open(str(files[0]), "pt") as f:
        return "text_model." if any(k.startswith("text_model.") for k in f.keys()) else ""


def _rewrite_text_keys(folder: Path, prefix: str) -> None:
    from safetensors.torch import load_file, save_file

    for file in folder.glob("*.safetensors"):
        tensors = load_file(str(file))
        renamed = {k if k.startswith(prefix) else prefix + k: v for k, v in tensors.items()}
        save_file(renamed, str(file), metadata={"format": "pt"})


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if isinstance(seed, int | float) and not isinstance(seed, bool):
        return [whole("seed", seed, minimum=0) + i for i in range(n)]
    seeds = [whole("seed", s, minimum=0) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    return seeds


PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing (the {what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r}: the {what} is not readable JSON ({_first_line(err)})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def _defaults(extra: dict, path: Path) -> dict:
    out = {}
    for key, kind in (("guidance", float), ("steps", int)):
        if key in extra:
            value = extra[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                    kind is int and (value != int(value) or value < 1)):
                raise ValueError(f"{str(path)!r}: {key} must be a finite number{' >= 1' if kind is int else ''}, "
                                 f"got {value!r}")
            out[key] = kind(value)
    return out


def _check_safetensors(file: Path) -> None:
    """A clear error for a missing, truncated or foreign weights file, before any library reads it."""
    from safetensors import safe_open

    if not file.is_file():
        raise FileNotFoundError(f"weights file {str(file)!r} is missing")
    try:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ValueError(f"{str(file)!r} is not a readable safetensors file (truncated or damaged?): "
                         f"{_first_line(err)}") from err
    size = file.stat().st_size
    with open(file, "rb") as fh:
        header = int.from_bytes(fh.read(8), "little")
        meta = json.loads(fh.read(header))
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + header + end != size:
        raise ValueError(f"{str(file)!r} is {size} bytes but its header describes {8 + header + end}: truncated "
                         f"or damaged")


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLED)
        if pickled:
            raise ValueError(f"{str(folder)!r} holds only pickled weights ({', '.join(pickled)}); unpickling can run "
                             f"code, so the workbench loads safetensors only: convert them first")
        raise FileNotFoundError(f"{str(folder)!r} holds no .safetensors weights")
    return files


def _check_finite(parts, where: Path | str) -> None:
    for part, module in parts:
        for name, t in module.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"{str(where)!r}: weight {part}.{name} holds NaN or inf values; refusing a broken "
                                 f"model")


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers' and transformers' per-file bars and load warnings ("newly initialized ...") are noise beside
    the workbench's own bars and errors: the loader reports missing weights itself."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    was = [(lib, lib.is_progress_bar_enabled(), lib.get_verbosity()) for lib in (hf_logging, df_logging)]
    for lib, _, _ in was:
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, bars, verbosity in was:
            if bars:
                lib.enable_progress_bar()
            lib.set_verbosity(verbosity)


def _load_weights(model_class, folder: Path):
    """A diffusers/transformers model from a local folder: safetensors only, every weight present and finite."""
    _read_json(folder / "config.json", f"{folder.name} config")
    for file in _weight_files(folder):
        _check_safetensors(file)
    try:
        with _quiet_libraries():
            model, info = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                      output_loading_info=True)
    except Exception as err:  # the libraries raise OSError, ValueError, KeyError, ... for a broken folder
        raise ValueError(f"cannot load {str(folder)!r}: {_first_line(err)}") from err
    for key, what in (("missing_keys", "missing"), ("mismatched_keys", "of the wrong shape")):
        bad = sorted(str(k if isinstance(k, str) else k[0]) for k in (info or {}).get(key) or ())
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ValueError(f"{str(folder)!r}: weights {what}: {shown}; refusing to fill them with random values")
    _check_finite([(folder.name, model)], folder)
    return model


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # the tokenizer classes raise many types for a broken folder
        raise ValueError(f"cannot load the tokenizer in {str(folder)!r}: {_first_line(err)}") from err


def _sampling_scheduler(config: Mapping[str, Any], where: Path):
    """DDIM on the checkpoint's noise schedule (the workbench samples deterministically)."""
    from diffusers import DDIMScheduler

    try:
        return DDIMScheduler.from_config(dict(config))
    except Exception as err:  # a malformed config surfaces as TypeError/ValueError inside diffusers
        raise ValueError(f"{str(where)!r}: unusable scheduler config ({_first_line(err)})") from err
