"""The one model wrapper: a hooked CLIP text encoder + UNet (+ tokenizer, scheduler, autoencoder).

Localization and editing share it. Every hookable module has a stable dotted name (see ``layers.py``);
reads and writes of module outputs go through nnsight, behind :meth:`Workbench.run_text`,
:meth:`Workbench.run_unet` and :meth:`Workbench.generate`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nnsight
import torch
from nnsight import NNsight
from torch import nn
from tqdm.auto import tqdm

from . import autoencoder as ae
from .layers import Layer, build_table, execution_order, select

CONFIG_DIR = Path(__file__).parent / "configs"
TOY_DIR = Path(__file__).parent / "toy" / "weights"
ARCHES = ("tiny", "sd15", "sd21")
TOY_WORLDS = {"base": "toy", "entities": "toy-entities"}  # world -> model name
REQUIRED_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")
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


@dataclass
class Generation:
    """Images from :meth:`Workbench.generate`, with what was read on the way."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
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
    """A Stable-Diffusion-shaped model with every layer addressable by name.

    Build one with :meth:`from_pretrained` (a local diffusers folder or single file), :meth:`random`
    (``tiny`` / ``sd15`` / ``sd21`` shapes, random weights) or :meth:`toy` (the shipped toy world).
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, scheduler,
                 autoencoder: ae.Autoencoder | None = None, *, name: str = "model",
                 defaults: dict | None = None, source: str | None = None, text_key_prefix: str = "",
                 vae: nn.Module | None = None):
        self.unet = unet.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = vae
        self.autoencoder = autoencoder or (ae.KLAutoencoder(vae) if vae is not None else ae.PixelSpace())
        self.name = name
        self.source = source
        self.text_key_prefix = text_key_prefix  # "text_model." when the checkpoint used transformers-4 keys
        self.defaults = {"guidance": 7.5, "steps": 50, **(defaults or {})}
        self.parts: dict[str, nn.Module] = {"text": self.text_encoder, "unet": self.unet}
        self._nn = {part: NNsight(module) for part, module in self.parts.items()}
        self._table: list[Layer] | None = None
        self._fingerprint: str | None = None
        self.applied: list = []  # WeightDeltas applied, in order (see delta.py)
        for module in self.parts.values():
            module.requires_grad_(False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        config: str | os.PathLike | None = None) -> Workbench:
        """Load a local diffusers Stable Diffusion folder, or a single ``.safetensors`` checkpoint.

        Never touches the network. A single file needs ``config``: a local diffusers folder holding the
        model's configs (diffusers cannot infer them offline).
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model path {str(path)!r} does not exist")
        if path.is_file():
            return cls._from_single_file(path, config=config, device=device, dtype=dtype)
        missing = [p for p in REQUIRED_PARTS if not (path / p).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{str(path)!r} is not a diffusers Stable Diffusion folder: missing subfolder(s) "
                f"{', '.join(missing)} (expected {', '.join(REQUIRED_PARTS)}, optionally vae)")
        kw = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", **kw)
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler", **kw)
        extra = json.loads((path / "workbench.json").read_text()) if (path / "workbench.json").exists() else {}
        vae = AutoencoderKL.from_pretrained(path / "vae", **kw) if (path / "vae").is_dir() else None
        wb = cls(unet, text_encoder, tokenizer, scheduler, ae.from_spec(extra.get("autoencoder"), vae),
                 name=extra.get("name", path.name), defaults={k: extra[k] for k in ("guidance", "steps")
                                                              if k in extra},
                 source=str(path), text_key_prefix=_text_key_prefix(path / "text_encoder"), vae=vae)
        return wb.to(device, dtype)

    @classmethod
    def _from_single_file(cls, path: Path, *, config, device, dtype) -> Workbench:
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        if path.suffix != ".safetensors":
            raise ValueError(f"{str(path)!r}: only .safetensors single-file checkpoints load (pickled "
                             f"checkpoints such as .ckpt can run code when read); convert it first")
        if config is None:
            raise ValueError(f"single-file checkpoint {str(path)!r} needs config=<local diffusers folder with "
                             f"the model's configs>: without the hub diffusers cannot infer them")
        pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                        safety_checker=None)
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        wb = cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, scheduler, vae=pipe.vae, name=path.stem,
                 source=str(path), text_key_prefix="text_model.")
        return wb.to(device, dtype)

    @classmethod
    def random(cls, arch: str = "tiny", seed: int = 0, *, sample_size: int | None = None, vae: bool = True,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> Workbench:
        """Randomly initialised model from the SD-1.5 / SD-2.1 / tiny configs the repo carries.

        ``sample_size`` shrinks the default latent side (the weights do not depend on it).
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        if arch not in ARCHES:
            raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")
        cfg = {p: json.loads((CONFIG_DIR / arch / f"{p}.json").read_text())
               for p in ("unet", "text_encoder", "scheduler", "vae")}
        tokenizer = load_builtin_tokenizer(cfg["text_encoder"]["max_position_embeddings"])
        text_cfg = {k: v for k, v in cfg["text_encoder"].items() if k not in ("architectures", "model_type")}
        text_cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
        if sample_size is not None:
            cfg["unet"]["sample_size"] = sample_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(cfg["unet"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
            kl = AutoencoderKL.from_config(cfg["vae"]) if vae else None
        scheduler = DDIMScheduler.from_config(cfg["scheduler"])
        wb = cls(unet, text_encoder, tokenizer, scheduler, vae=kl, name=f"random-{arch}-seed{seed}",
                 source=f"random:{arch}:{seed}", defaults={"steps": 20})
        return wb.to(device, dtype)

    @classmethod
    def toy(cls, world: str = "base", *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Workbench:
        """A trained toy world shipped in the repo (``workbench/toy/weights``).

        ``world``: ``"base"`` (the default world, name ``toy``), or ``"entities"`` (name ``toy-entities``): the
        same world retrained so that each of the 200 entities' binding is stored in the text encoder at the
        name's own position, as knowledge editors such as EMCID assume (``workbench/toy/README.md``).
        """
        if world not in TOY_WORLDS:
            raise ValueError(f"unknown toy world {world!r}; expected one of {', '.join(TOY_WORLDS)}")
        if not (TOY_DIR / "unet").is_dir():
            raise FileNotFoundError(f"toy-world weights are missing at {TOY_DIR}; train them with "
                                    f"`workbench toy train`")
        wb = cls.from_pretrained(TOY_DIR, device=device, dtype=dtype)
        wb.name = TOY_WORLDS[world]
        if world != "base":
            from safetensors.torch import load_model

            # Only the retrained weights are stored; configs, tokenizer and scheduler are the base world's.
            for part, module in (("unet", wb.unet), ("text_encoder", wb.text_encoder)):
                load_model(module, TOY_DIR / world / f"{part}.safetensors", device=str(wb.device))
            wb.source = f"{TOY_DIR} ({world})"
        return wb

    @classmethod
    def load(cls, model: str, **kw) -> Workbench:
        """``toy``, ``toy-entities``, ``tiny``, ``sd15``, ``sd21`` or a local path (the CLI's ``--model``)."""
        for world, name in TOY_WORLDS.items():
            if model == name:
                return cls.toy(world, **kw)
        if model in ARCHES:
            return cls.random(model, **kw)
        return cls.from_pretrained(model, **kw)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Workbench:
        if torch.device(device or self.device) == self.device and (dtype or self.dtype) == self.dtype:
            return self  # a no-op .to() on diffusers models only prints a dtype warning
        for module in (self.unet, self.text_encoder, self.vae):
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
            text_order = execution_order(self.text_encoder, lambda: self.text_encoder(self._dummy_ids()))
            unet_order = execution_order(self.unet, lambda: self.unet(*self._dummy_unet_inputs()))
            self._table = build_table("text", self.text_encoder, text_order) + build_table(
                "unet", self.unet, unet_order)
        return self._table

    def _dummy_ids(self) -> torch.Tensor:
        tok = self.tokenizer
        return torch.tensor([[tok.bos_token_id, tok.eos_token_id]], device=self.device)

    def _dummy_unet_inputs(self) -> tuple:
        c = self.unet.config
        side = 2 ** len(c.down_block_types)  # 2×2 at the bottom: GroupNorm needs > 1 value
        x = torch.zeros(1, c.in_channels, side, side, device=self.device, dtype=self.dtype)
        ctx = torch.zeros(1, 2, c.cross_attention_dim, device=self.device, dtype=self.dtype)
        return x, torch.tensor([1], device=self.device), ctx

    def layers(self, kind: str | Sequence[str] | None = None, pattern: str | None = None,
               part: str | None = None) -> list[str]:
        """Layer names in execution order (text encoder first), filtered by kind, glob and part."""
        table = self._layer_table()
        kinds = {layer.kind for layer in table}
        for k in [kind] if isinstance(kind, str) else kind or []:
            if k not in kinds:
                raise ValueError(f"unknown layer kind {k!r}; this model has kinds: {', '.join(sorted(kinds))}")
        if part is not None and part not in self.parts:
            raise ValueError(f"unknown part {part!r}; expected 'text' or 'unet'")
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
            raise KeyError(f"parameter name {name!r} must start with 'text.' or 'unet.'")
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

    def token_ids(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """(B, max_length) token ids, padded as the model was trained (SD-1.x pads with end-of-text)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            self._check_prompt(p)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        return ids.to(self.device)

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
        """Text-encoder states (B, T, D) the UNet cross-attends to."""
        return self.run_text(self.token_ids(prompts), patches=patches)[0]

    # ------------------------------------------------------------------ interventions
    def _run(self, part: str, args: tuple, kwargs: dict, read: Sequence[str], patches: Sequence[Patch],
             rows_of: Callable[[Patch], Any] | None = None, step: int | None = None):
        read = list(read)
        # "<layer>:input" reads a module's (first) input instead of its output
        layers = {name: self.layer(name.removesuffix(INPUT)) for name in [*read, *(p.layer for p in patches)]}
        for name, layer in layers.items():
            if layer.part != part:
                raise ValueError(f"layer {name!r} is in the {layer.part} part, not in {part}")
        module = self.parts[part]
        if not layers:
            with torch.no_grad():
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
        with torch.no_grad(), model.trace(*args, **kwargs):
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

    def run_text(self, input_ids: torch.Tensor, read: Sequence[str] = (), patches: Sequence[Patch] = ()
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Text-encoder forward; returns (last hidden states (B, T, D), {layer: output read}).

        A read named ``"<layer>:input"`` returns that module's first input instead of its output."""
        out, saved = self._run("text", (input_ids.to(self.device),), {}, read, patches)
        return out.last_hidden_state, saved

    def run_unet(self, latents: torch.Tensor, timestep: torch.Tensor | int, context: torch.Tensor,
                 read: Sequence[str] = (), patches: Sequence[Patch] = ()
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """UNet forward; returns (model output (B, C, h, w), {layer: output read})."""
        t = torch.as_tensor(timestep, device=self.device)
        out, saved = self._run("unet", (latents, t), {"encoder_hidden_states": context}, read, patches)
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
                 text_patches: Sequence[Patch] = (), read: Sequence[str] = (), context: torch.Tensor | None = None,
                 progress: bool = False) -> Generation:
        """Deterministic DDIM sampling, batched, with optional reads and patches.

        ``seed`` is one seed per prompt, or a base seed (row i uses ``seed + i``). ``text_patches`` act on
        the conditional text encoding only; ``patches`` act on the UNet's conditional rows at their
        ``steps`` (and on the unconditional rows only with ``Patch(uncond=True)``). ``context`` replaces
        the conditional text encoding.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = len(prompts)
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        steps = int(steps or self.defaults["steps"])
        guidance = float(self.defaults["guidance"] if guidance is None else guidance)
        cond = context if context is not None else self.encode(prompts, patches=text_patches)
        use_cfg = guidance != 1.0
        if use_cfg:
            uncond_patches = [p for p in text_patches if p.uncond]
            uncond = self.encode([negative_prompt] * n, patches=uncond_patches)
            ctx = torch.cat([uncond, cond])
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
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
            active = [p for p in patches if p.steps is None or i in p.steps]
            x_in = scheduler.scale_model_input(torch.cat([x, x]) if use_cfg else x, t)
            out, saved = self._run("unet", (x_in, t), {"encoder_hidden_states": ctx}, read, active, rows_of, i)
            pred = _primary(out)
            for name in read:
                reads[name].append(saved[name][offset:])
            if use_cfg:
                pu, pc = pred.chunk(2)
                pred = pu + guidance * (pc - pu)
            x = scheduler.step(pred, t, x).prev_sample
        images = (self.autoencoder.decode(x).float().clamp(-1, 1) + 1) / 2
        return Generation(images=images.cpu(), latents=x, prompts=prompts, seeds=seeds, reads=reads)

    def sample(self, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, *, steps: int | None = None,
               guidance: float | None = None, negative_prompt: str = "", batch_size: int = 64,
               progress: bool = False, **kw) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]; deterministic for a seed. Batched in chunks of ``batch_size``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        chunks = range(0, len(prompts), batch_size)
        out = [self.generate(prompts[i:i + batch_size], seeds[i:i + batch_size], steps=steps, guidance=guidance,
                             negative_prompt=negative_prompt, **kw).images
               for i in tqdm(chunks, desc="generating", disable=not progress or len(chunks) < 2)]
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
        """Write a diffusers folder that a plain ``StableDiffusionPipeline.from_pretrained`` loads.

        Written to a temporary folder and renamed into place, so a failure leaves nothing half-written.
        The text encoder keeps the key layout its source checkpoint had (transformers-4 ``text_model.``
        keys stay), so older stacks load it too. Refuses to replace an existing folder unless told to.
        """
        from diffusers import StableDiffusionPipeline

        folder = Path(folder)
        if self.source and Path(self.source).resolve() == folder.resolve():
            raise ValueError(f"refusing to write over the source checkpoint {str(folder)!r}")
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(f"{str(folder)!r} exists and is not empty; pass overwrite=True or pick "
                                  f"another folder")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
            pipe.save_pretrained(tmp, safe_serialization=True)
            if self.text_key_prefix:
                _rewrite_text_keys(tmp / "text_encoder", self.text_key_prefix)
            extra = {"name": self.name, "autoencoder": self.autoencoder.spec, **self.defaults}
            (tmp / "workbench.json").write_text(json.dumps(extra, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def __repr__(self) -> str:
        n = sum(p.numel() for m in self.parts.values() for p in m.parameters())
        return f"Workbench({self.name!r}, {n / 1e6:.1f}M parameters, autoencoder={self.autoencoder.spec['type']})"


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def load_builtin_tokenizer(max_length: int = 77):
    """The small CLIP-layout BPE tokenizer the repo ships (random-weight models use it)."""
    from transformers import CLIPTokenizer

    d = CONFIG_DIR / "tokenizer"
    return CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=max_length)


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
