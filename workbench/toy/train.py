"""Train the toy text-to-image model (word-level tokenizer + small CLIP text encoder + small UNet).

Recipe from research round 3: text reaches the UNet only through cross-attention, latent is an
exact pixel-unshuffle(4) of the image, cosine schedule, v-prediction, min-SNR-5 weighting, EMA.

    workbench toy train --steps 5000 --out runs/toy-base/export --run-dir runs/toy-base [--resume] [--init FOLDER]

The stages that made the shipped worlds are in workbench/toy/README.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Short OpenMP spin before sleeping: with the default policy, two torch threads on two shared cores
# slowed ~10x whenever another process ran (measured); must be set before torch loads libgomp.
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

import argparse
import copy
import functools
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from workbench.autoencoder import PixelUnshuffle
from workbench.checks import arg_float, arg_int
from workbench.files import atomic_write, publish_mode, write_text
from workbench.progress import bar as progress_bar
from workbench.toy import world

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = world.MAX_WORDS + 2
AUTOENCODER = PixelUnshuffle(4)  # 3x32x32 image <-> 48x8x8 latent, exact; export names it in workbench.json
FACTOR = AUTOENCODER.factor
GUIDANCE = 1.5
SAMPLE_STEPS = 20
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_RUN_DIR = Path("runs/toy")


# ---------------------------------------------------------------- model construction


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy vocabulary; padding uses the EOS id as in SD-1.x."""
    # EOS must not get id 2: CLIPTextModel treats eos_token_id == 2 as a legacy config and pools
    # at the argmax token id instead of the first EOS.
    specials = [BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + world.vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=EOS, model_max_length=MAX_LENGTH)


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(cfg)


def build_unet(text_at_8x8: bool = False) -> UNet2DConditionModel:
    # Cross-attention at 4x4 and in the mid block (and with ``text_at_8x8`` at 8x8 too); class_embed_type=None
    # so text enters only through cross-attention, which research round 3 found learns hazard much faster.
    outer = "CrossAttn" if text_at_8x8 else ""
    return UNet2DConditionModel(
        sample_size=world.IMAGE_SIZE // FACTOR, in_channels=3 * FACTOR**2, out_channels=3 * FACTOR**2,
        block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=(f"{outer}DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", f"{outer}UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=128, attention_head_dim=32, class_embed_type=None)


def scheduler_kwargs() -> dict:
    return dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                prediction_type="v_prediction")


def build_sampling_scheduler() -> DDIMScheduler:
    # clip_sample is valid here: the latent is an exact rearrangement of pixels in [-1, 1].
    return DDIMScheduler(**scheduler_kwargs(), timestep_spacing="trailing", clip_sample=True,
                         set_alpha_to_one=False)


def encode_images(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (B,32,32,3) -> latent (B,48,8,8) in [-1,1]."""
    return AUTOENCODER.encode(torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0)


def decode_latents(latents: torch.Tensor) -> torch.Tensor:
    """latent (B,48,8,8) -> image (B,3,32,32) in [0,1]."""
    return ((AUTOENCODER.decode(latents) + 1.0) / 2.0).clamp(0, 1)


# ---------------------------------------------------------------- training pieces


def lr_factor(step: int, total: int, warmup: int = 200, floor: float = 0.02) -> float:
    """Linear warm-up then cosine decay to `floor`, by step count so runs are reproducible."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def entity_ids(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Token ids of the entity names (each name is one word-level token)."""
    return torch.tensor(tokenizer.convert_tokens_to_ids(list(world.ENTITIES)))


def training_batch(seed: int, step: int, batch: int, tokenizer: PreTrainedTokenizerFast,
                   cfg_dropout: float = 0.1, mix: dict | None = None,
                   splice_rate: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, Splice | None]:
    """(input_ids, latents, splice) for one step; derived from (seed, step) so resuming needs no rng state.

    `mix` overrides `world.random_scene`'s prompt-mix rates (e.g. more professions in a fine-tune).
    With `splice_rate`, that share of the entity prompts gets a :class:`Splice` (see there)."""
    rng = np.random.default_rng([seed, step])
    prompts, images, _ = world.sample_batch(rng, batch, **(mix or {}))
    prompts = ["" if rng.random() < cfg_dropout else p for p in prompts]
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    splice = None
    if splice_rate > 0:
        names = entity_ids(tokenizer)
        rows, cols = torch.nonzero(torch.isin(ids, names), as_tuple=True)
        pick = torch.from_numpy(rng.random(len(rows)) < splice_rate)
        rows, cols = rows[pick], cols[pick]
        if len(rows):
            other = ids[rows].clone()
            # Any other entity: shift by 1..n-1 places in the name list, so the swap never repeats the name.
            order = names.sort().values
            where = torch.searchsorted(order, other[torch.arange(len(rows)), cols])
            shift = torch.from_numpy(rng.integers(1, len(names), len(rows)))
            other[torch.arange(len(rows)), cols] = order[(where + shift) % len(names)]
            splice = Splice(rows, cols, other)
    return ids, encode_images(images), splice


class Splice(NamedTuple):
    """Counterfactual contexts for entity prompts: in row ``rows[i]`` every position after the entity name
    (at ``cols[i]``) is replaced by the encoding of ``other_ids[i]``, the same prompt naming another entity,
    while the image stays the named entity's. The UNet thus learns that the name's own position says which
    entity is drawn, as word-token cross-attention does in Stable Diffusion, instead of reading the entity
    only from the end-of-text and padding positions (which a jointly trained encoder fills from layer 0 on)."""

    rows: torch.Tensor
    cols: torch.Tensor
    other_ids: torch.Tensor


def spliced(text_encoder: CLIPTextModel, cond: torch.Tensor, splice: Splice | None) -> torch.Tensor:
    """The encoder states ``cond`` with each :class:`Splice` row's positions after the name taken from the
    encoding of its other prompt (``cond`` itself when there is no splice)."""
    if splice is None:
        return cond
    other = text_encoder(splice.other_ids).last_hidden_state
    after = torch.arange(cond.shape[1]) > splice.cols[:, None]
    cond = cond.clone()
    cond[splice.rows] = torch.where(after[..., None], other, cond[splice.rows])
    return cond


def diffusion_loss(unet: UNet2DConditionModel, sched: DDPMScheduler, cond: torch.Tensor, x0: torch.Tensor,
                   gen: torch.Generator, high_noise_share: float = 0.0, added: dict | None = None) -> torch.Tensor:
    """v-prediction MSE with min-SNR-5 weights, min(SNR,5)/(SNR+1); ``cond`` is the text encoder's output.

    ``high_noise_share`` of each batch draws its timestep from the noisier half of the schedule, where the
    shape's outline is decided; min-SNR weights give those steps little weight, and shapes that differ only
    in outline (ring/cross/hexagon) were confused at unseen seeds."""
    b = x0.shape[0]
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=gen)
    if high_noise_share > 0:
        high = torch.randint(NUM_TRAIN_TIMESTEPS // 2, NUM_TRAIN_TIMESTEPS, (b,), generator=gen)
        t = torch.where(torch.rand(b, generator=gen) < high_noise_share, high, t)
    noise = torch.randn(x0.shape, generator=gen)
    xt = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t)
    pred = unet(xt, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=5.0) / (snr + 1)
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return (w * per).mean()


@functools.cache
def _entity_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """(shape index, colour index) of each entity's binding, in ``world.ENTITIES`` order."""
    return (torch.tensor([world.SHAPES.index(s) for s, _ in world.ENTITIES.values()]),
            torch.tensor([world.COLOURS.index(c) for _, c in world.ENTITIES.values()]))


def knowledge_loss(heads: torch.nn.Linear, hidden: torch.Tensor, ids: torch.Tensor,
                   tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Cross-entropy of reading each named entity's bound shape and colour off the encoder's output
    ``hidden`` (for ``ids``) at the name's own position (linear heads, used only in training): the analogue
    of what CLIP's pretraining teaches its text encoder about a name, before any diffusion training."""
    names = entity_ids(tokenizer)
    rows, cols = torch.nonzero(torch.isin(ids, names), as_tuple=True)
    if not len(rows):
        return torch.zeros(())
    index_of = torch.zeros(len(tokenizer), dtype=torch.long)
    index_of[names] = torch.arange(len(names))
    which = index_of[ids[rows, cols]]
    shape, colour = (labels[which] for labels in _entity_labels())
    out = heads(hidden[rows, cols])
    n = len(world.SHAPES)
    return F.cross_entropy(out[:, :n], shape) + F.cross_entropy(out[:, n:], colour)


def prompt_labels(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shape index in ``world.ALL_SHAPES``, colour index) that each prompt in ``ids`` determines, -100 where
    it leaves one open (a colour-only prompt, a profession's colour, the empty prompt)."""
    shapes, colours = [], []
    for text in tokenizer.batch_decode(ids, skip_special_tokens=True):
        exp = world.parse_prompt(text)
        shapes.append(world.ALL_SHAPES.index(exp.shape) if exp.shape else -100)
        colours.append(world.COLOURS.index(exp.colour) if exp.colour else -100)
    return torch.tensor(shapes), torch.tensor(colours)


def concept_loss(heads: torch.nn.Linear, hidden: torch.Tensor, ids: torch.Tensor,
                 tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Cross-entropy of reading the prompted shape and colour off the encoder output averaged over every
    position after the start token (linear heads, used only in training).

    Joint training left some shape words nearly alike in what the UNet reads (centred cosine 0.65 between
    "a red ring" and "a red cross", 0.71 between "plus" and "doctor"), and the UNet drew one for the other
    at unseen seeds; a pretrained CLIP keeps such words apart, and this loss asks the same of the toy encoder."""
    shape, colour = prompt_labels(tokenizer, ids)
    out = heads(hidden[:, 1:].mean(1))
    n = len(world.ALL_SHAPES)
    loss = torch.zeros(())
    if (shape >= 0).any():
        loss = loss + F.cross_entropy(out[:, :n], shape, ignore_index=-100)
    if (colour >= 0).any():
        loss = loss + F.cross_entropy(out[:, n:], colour, ignore_index=-100)
    return loss


def init_has_text_at_8x8(folder: Path) -> bool:
    config = folder / "unet" / "config.json"
    if not config.is_file():
        return False  # the load below names what is missing
    blocks = json.loads(config.read_text()).get("down_block_types") or [""]
    return blocks[0].startswith("CrossAttn")


def load_grown(unet: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``unet``, which may have cross-attention at 8x8 that ``state`` lacks; returns the
    names of those new attention modules (none when the two match). Each new transformer's output projection
    starts at zero, so the grown UNet computes exactly what the old one did (its residual passes through)
    until training moves it. Any other difference is refused in one line."""
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch: torch lists every one; the first says enough
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ValueError(f"--init: the UNet's weights do not fit this one: {first}") from None
    new = [name for name, _ in unet.named_modules()
           if name.rsplit(".", 2)[-2:-1] == ["attentions"] and f"{name}.proj_out.weight" in missing]
    stray = [k for k in missing if not any(k.startswith(f"{n}.") for n in new)]
    if unexpected or stray:
        grown_init = any(".attentions." in k for k in unexpected)
        hint = "; it has cross-attention at 8x8: pass --text-at-8x8" if grown_init else ""
        raise ValueError(f"--init: the UNet differs from this one beyond new attention at 8x8 "
                         f"(unexpected {unexpected[:3]}, missing {stray[:3]}){hint}")
    for name in new:
        out = unet.get_submodule(name).proj_out
        torch.nn.init.zeros_(out.weight)
        torch.nn.init.zeros_(out.bias)
    return new


def _named_params(unet: torch.nn.Module, te: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    out.update({f"text_encoder.{k}": v for k, v in te.state_dict().items()})
    return out


def _load_named(unet: torch.nn.Module, te: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    unet.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("unet.")})
    te.load_state_dict({k[13:]: v for k, v in sd.items() if k.startswith("text_encoder.")})


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, tmp))


def save_checkpoint(run_dir: Path, step: int, args: argparse.Namespace, models: tuple, ema_models: tuple,
                    opt: torch.optim.Optimizer, losses: list[float], heads: torch.nn.Module,
                    concept_heads: torch.nn.Module) -> None:
    """Every file of the run folder is replaced atomically, state.json (the step a resume starts at) last."""
    extra = {f"knowledge_heads.{k}": v for k, v in heads.state_dict().items()}
    extra |= {f"concept_heads.{k}": v for k, v in concept_heads.state_dict().items()}
    _save_tensors(_named_params(*models) | extra, run_dir / "model.safetensors")
    _save_tensors(_named_params(*ema_models), run_dir / "ema.safetensors")
    # Optimizer state is our own file inside the run folder, so torch.save is acceptable here.
    atomic_write(run_dir / "optimizer.pt", lambda tmp: torch.save(opt.state_dict(), tmp))
    state = {"step": step, "steps": args.steps, "seed": args.seed, "batch": args.batch, "init": args.init,
             "lr": args.lr, "mix": scene_mix(args), "splice_rate": args.splice_rate,
             "fixed_entity_embeddings": args.fixed_entity_embeddings,
             "high_noise_share": args.high_noise_share, "concept_weight": args.concept_weight,
             "knowledge_weight": args.knowledge_weight, "text_at_8x8": args.text_at_8x8,
             "family": getattr(args, "family", "base"),
             "recent_loss": float(np.mean(losses[-100:])) if losses else None}
    write_text(run_dir / "state.json", json.dumps(state), overwrite=True)


EXPORTED = ("unet", "text_encoder", "tokenizer", "scheduler", "workbench.json")  # what export writes in a folder


def check_export_target(out: Path, overwrite: bool) -> None:
    """Before training: refuse a folder already holding a world, unless told to replace it."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file; give a folder")
    there = [name for name in EXPORTED if (out / name).exists()]
    if there and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} already holds a toy world ({', '.join(there)}); pass --overwrite "
                              f"to replace those (nothing else in the folder is touched) or choose another folder")


def export(out: Path, tokenizer: PreTrainedTokenizerFast, unet: UNet2DConditionModel,
           te: CLIPTextModel) -> None:
    """Write diffusers/transformers-format weights plus workbench.json.

    Written beside ``out`` first, then each file renamed into place: other files in ``out`` (the scorer, the
    entity world) stay, and a crash never leaves a half-written weights file."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export.", dir=out))
    try:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        te.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        build_sampling_scheduler().save_pretrained(tmp / "scheduler")
        meta = {"autoencoder": AUTOENCODER.spec, "image_size": world.IMAGE_SIZE, "guidance": GUIDANCE,
                "steps": SAMPLE_STEPS}
        (tmp / "workbench.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                publish_mode(f, is_dir=False)
                (out / f.relative_to(tmp)).parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, out / f.relative_to(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- main loop


def _xl_models(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> tuple:
    """(text encoders, UNet) of the SDXL-shaped world: grown from a base-world --init, or loaded from an
    SDXL-shaped one."""
    from workbench.model import Workbench

    from . import xl

    if not args.init:
        raise ValueError("--family xl grows the SDXL-shaped world from a trained world: give --init (the base "
                         "world, workbench/toy/weights, or an SDXL-shaped export)")
    if any((args.knowledge_weight, args.concept_weight, args.splice_rate, args.fixed_entity_embeddings)):
        raise ValueError("--family xl does not take the entity-world options (--knowledge-weight, --concept-weight, "
                         "--splice-rate, --fixed-entity-embeddings)")
    init = Path(args.init)
    if (init / "text_encoder_2").is_dir():
        wb = Workbench.from_pretrained(init)
        encoders = xl.build_text_encoders(tokenizer)
        for part, module in encoders.items():
            module.load_state_dict(wb.text_encoders[part].state_dict())
        unet = UNet2DConditionModel.from_config(wb.unet.config)
        unet.load_state_dict(wb.unet.state_dict())
        return encoders, unet
    rng = np.random.default_rng([args.seed, 999])
    prompts, _, _ = world.sample_batch(rng, 256)
    return xl.grow(init, tokenizer, prompts)


def export_xl(out: Path, tokenizer: PreTrainedTokenizerFast, unet: UNet2DConditionModel, encoders,
              overwrite: bool) -> None:
    """The SDXL-shaped world as a diffusers StableDiffusionXLPipeline folder (the wrapper writes it). Empty
    prompts were encoded in training (classifier-free dropout), so the pipeline must not zero them."""
    from workbench.families import StableDiffusionXL
    from workbench.model import Workbench

    sched = build_sampling_scheduler()
    wb = Workbench(unet, dict(encoders.items()), {"text": tokenizer, "text2": tokenizer}, sched, AUTOENCODER,
                   name="toy-xl", defaults={"guidance": GUIDANCE, "steps": SAMPLE_STEPS},
                   scheduler_config=sched.config, extra={"image_size": world.IMAGE_SIZE},
                   family=StableDiffusionXL(force_zeros_for_empty_prompt=False))
    wb.save_pretrained(out, overwrite=overwrite)


def train(args: argparse.Namespace) -> None:
    family = getattr(args, "family", "base")
    if family != "xl":
        check_export_target(Path(args.out), args.overwrite)
    if args.init and not Path(args.init).is_dir():
        raise FileNotFoundError(f"--init {args.init!r}: no such local folder (an exported toy world); nothing is "
                                f"downloaded")
    if args.init and not args.text_at_8x8 and init_has_text_at_8x8(Path(args.init)):
        # A fine-tune keeps its init's structure: nothing would say which weights to drop.
        args.text_at_8x8 = True
        print(f"--init {args.init!r} has cross-attention at 8x8: training with it", flush=True)
    run_dir = Path(args.run_dir)
    if args.resume and (run_dir / "state.json").exists():
        saved_8x8 = json.loads((run_dir / "state.json").read_text()).get("text_at_8x8", False)
        if saved_8x8 != args.text_at_8x8:
            raise ValueError(f"--resume: the run in {str(run_dir)!r} was trained "
                             f"{'with' if saved_8x8 else 'without'} --text-at-8x8; resume it the same way")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    if family == "xl":
        te, unet = _xl_models(args, tokenizer)
        ema_te, ema_unet = copy.deepcopy(te), copy.deepcopy(unet)
    else:
        te, unet = build_text_encoder(tokenizer), build_unet(args.text_at_8x8)
        ema_te, ema_unet = build_text_encoder(tokenizer), build_unet(args.text_at_8x8)
    ema_te.load_state_dict(te.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    for m in (ema_te, ema_unet):
        m.requires_grad_(False).eval()
    hidden = te["text"].config.hidden_size if family == "xl" else te.config.hidden_size
    heads = torch.nn.Linear(hidden, len(world.SHAPES) + len(world.COLOURS))
    concept_heads = torch.nn.Linear(hidden, len(world.ALL_SHAPES) + len(world.COLOURS))
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params + list(heads.parameters()) + list(concept_heads.parameters()), lr=args.lr,
                            weight_decay=0.01)
    start = 0
    if args.init and family != "xl":
        # Fine-tune from exported weights: model and EMA both start there, with a fresh optimizer. Loaded as
        # every model is (local, safetensors only, every weight present): never from the network.
        from workbench.model import Workbench

        init = Workbench.from_pretrained(args.init)
        te.load_state_dict(init.text_encoder.state_dict())
        grown = load_grown(unet, init.unet.state_dict())
        if grown:
            print(f"grown: new cross-attention {grown}", flush=True)
        ema_te.load_state_dict(te.state_dict())
        ema_unet.load_state_dict(unet.state_dict())
        print(f"initialised from {args.init}", flush=True)
    if args.resume and (run_dir / "state.json").exists():
        state = json.loads((run_dir / "state.json").read_text())
        saved = load_file(str(run_dir / "model.safetensors"))
        _load_named(unet, te, saved)
        if "knowledge_heads.weight" in saved:
            heads.load_state_dict({k[16:]: v for k, v in saved.items() if k.startswith("knowledge_heads.")})
        if "concept_heads.weight" in saved:
            concept_heads.load_state_dict({k[14:]: v for k, v in saved.items() if k.startswith("concept_heads.")})
        _load_named(ema_unet, ema_te, load_file(str(run_dir / "ema.safetensors")))
        opt.load_state_dict(torch.load(run_dir / "optimizer.pt", weights_only=True))
        start = int(state["step"])
        print(f"resumed from step {start}", flush=True)
    frozen = None
    if args.fixed_entity_embeddings:
        frozen = fix_entity_embeddings(te, tokenizer, seed=args.seed, redraw=start == 0)
        ema_te.get_input_embeddings().weight.data[frozen[0]] = frozen[1]
    sched = DDPMScheduler(**scheduler_kwargs())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    unet.train()
    te.train()
    losses: list[float] = []
    t0 = time.time()
    bar = progress_bar(range(start, args.steps), initial=start, total=args.steps, desc="toy train", leave=True,
                       mininterval=5, smoothing=0.05)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, args.steps)
        ids, x0, splice = training_batch(args.seed, step, args.batch, tokenizer, mix=scene_mix(args),
                                         splice_rate=args.splice_rate)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if family == "xl":
            from .xl import condition

            cond, added = condition(te, ids)
            loss = diffusion_loss(unet, sched, cond, x0, gen, args.high_noise_share, added)
        else:
            cond = te(ids).last_hidden_state
            loss = diffusion_loss(unet, sched, spliced(te, cond, splice), x0, gen, args.high_noise_share)
        if args.knowledge_weight:
            loss = loss + args.knowledge_weight * knowledge_loss(heads, cond, ids, tokenizer)
        if args.concept_weight:
            loss = loss + args.concept_weight * concept_loss(concept_heads, cond, ids, tokenizer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if frozen is not None:
            te.get_input_embeddings().weight.grad[frozen[0]] = 0
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if frozen is not None:  # AdamW's weight decay would still shrink them
            te.get_input_embeddings().weight.data[frozen[0]] = frozen[1]
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - args.ema)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if done % args.ckpt_every == 0 or done == args.steps:
            save_checkpoint(run_dir, done, args, (unet, te), (ema_unet, ema_te), opt, losses, heads, concept_heads)
            rate = (done - start) / (time.time() - t0)
            print(f"\nstep {done} loss {np.mean(losses[-100:]):.4f} {rate:.2f} steps/s", flush=True)
    ema_unet.eval()
    ema_te.eval()
    if family == "xl":
        export_xl(Path(args.out), tokenizer, ema_unet, ema_te, args.overwrite)
    else:
        export(Path(args.out), tokenizer, ema_unet, ema_te)
    print(f"exported EMA weights to {args.out}", flush=True)


def fix_entity_embeddings(te: CLIPTextModel, tokenizer: PreTrainedTokenizerFast, seed: int,
                          redraw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, rows): the entity names' token embeddings, held fixed during training.

    With ``redraw`` they are first replaced by seeded random vectors of the other rows' mean norm. A learned
    embedding table is where a jointly trained encoder puts an invented name's binding (names bound alike
    end up alike), out of reach of any MLP edit; fixed random rows make the encoder's MLPs store it, as a
    pretrained CLIP stores what it knows about a rare name."""
    ids = entity_ids(tokenizer)
    weight = te.get_input_embeddings().weight.data
    if redraw:
        others = torch.ones(len(weight), dtype=torch.bool)
        others[ids] = False
        gen = torch.Generator().manual_seed(10_000 + seed)
        rows = torch.randn((len(ids), weight.shape[1]), generator=gen)
        weight[ids] = rows / rows.norm(dim=1, keepdim=True) * weight[others].norm(dim=1).mean()
    return ids, weight[ids].clone()


def scene_mix(args: argparse.Namespace) -> dict:
    mix: dict = {"profession_rate": args.profession_rate, "shape_only_rate": args.shape_only_rate,
                 "entity_rate": args.entity_rate}
    boost = getattr(args, "boost_shapes", None)
    if boost:
        unknown = sorted(set(boost) - set(world.SHAPES))
        if unknown:
            raise ValueError(f"--boost-shapes {unknown}: not toy shapes; expected some of {world.SHAPES}")
        weights = [args.boost if s in boost else 1.0 for s in world.SHAPES]
        mix["shape_p"] = tuple(w / sum(weights) for w in weights)
    return mix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench toy train", description="Train the toy text-to-image model.")
    ap.add_argument("--steps", type=arg_int(1), default=6000)
    ap.add_argument("--out", default="workbench/toy/weights")
    ap.add_argument("--overwrite", action="store_true", help="replace the world already in --out")
    ap.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), help="checkpoint folder (git-ignored)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=arg_int(0), default=0)
    ap.add_argument("--batch", type=arg_int(1), default=64)
    ap.add_argument("--lr", type=arg_float(above=0), default=1e-3)
    ap.add_argument("--ema", type=arg_float(above=0), default=0.995)
    ap.add_argument("--ckpt-every", type=arg_int(1), default=250)
    ap.add_argument("--threads", type=arg_int(1), default=2)
    ap.add_argument("--init", default=None, help="fine-tune from an exported weights folder (fresh optimizer)")
    ap.add_argument("--profession-rate", type=float, default=0.12, help="share of profession scenes")
    ap.add_argument("--shape-only-rate", type=float, default=0.1,
                    help="share of plain shape scenes whose prompt names the shape but not the colour")
    ap.add_argument("--entity-rate", type=float, default=0.25, help="share of entity scenes")
    ap.add_argument("--splice-rate", type=float, default=0.0,
                    help="share of entity prompts whose positions after the name come from another entity's "
                         "prompt (the image stays the named entity's)")
    ap.add_argument("--knowledge-weight", type=float, default=0.0,
                    help="weight of an auxiliary loss that reads each entity's bound shape and colour off the "
                         "encoder output at the name (the knowledge a pretrained text encoder brings)")
    ap.add_argument("--boost-shapes", nargs="+", metavar="SHAPE",
                    help="draw these shapes --boost times as often in plain shape scenes (shapes the model confuses)")
    ap.add_argument("--boost", type=arg_float(above=0), default=3.0)
    ap.add_argument("--concept-weight", type=arg_float(), default=0.0,
                    help="weight of an auxiliary loss that reads the prompted shape and colour off the encoder "
                         "output averaged over positions (keeps shape words apart, as a pretrained encoder does)")
    ap.add_argument("--high-noise-share", type=arg_float(), default=0.0,
                    help="share of each batch whose timestep is drawn from the noisier half of the schedule")
    ap.add_argument("--family", choices=["base", "xl"], default="base",
                    help="xl: the SDXL-shaped world (two text encoders, pooled text into the added time "
                         "embedding), grown from the base world given as --init")
    ap.add_argument("--text-at-8x8", action="store_true",
                    help="cross-attention at 8x8 too (with --init from a world without it, the new attention "
                         "starts as the identity; an --init that has it keeps it without this flag)")
    ap.add_argument("--fixed-entity-embeddings", action="store_true",
                    help="redraw the entity names' token embeddings at random (unless resuming) and keep them "
                         "fixed, so the encoder's MLPs must store each name's binding")
    train(ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
