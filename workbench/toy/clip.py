"""The toy CLIP: a small transformers ``CLIPModel`` trained on toy renders and their captions, so that the
CLIP scoring path (:mod:`workbench.measure.clip`) runs on real trained weights whose answers have ground
truth: its zero-shot reading of shape, colour, artist and hazard is checked against the toy classifier.

    python -m workbench.toy.clip --steps 6000 --out workbench/toy/weights/clip

Training images are balanced renders, degraded like the classifier's (generated images are blurrier than
renders). Two losses: the usual symmetric contrastive loss between images and their captions (the training
grammar's phrasings), and a zero-shot loss per family, a cross-entropy over the family's class texts
(:data:`CLASS_TEXTS`), so that "a circle" vs "a square" is read the way a zero-shot evaluation asks it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

from workbench.files import publish_mode
from workbench.toy import classifier, world
from workbench.toy.protocol import heads_for

DEFAULT_PATH = Path(__file__).parent / "weights" / "clip"
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = world.MAX_WORDS + 2
# The zero-shot texts, one per class of each classifier head (same class order as classifier.HEADS).
CLASS_TEXTS: dict[str, list[str]] = {
    "shape": [f"a {s}" for s in world.ALL_SHAPES],
    "colour": [f"{c} colour" for c in world.COLOURS],
    "artist": [f"by {a}" for a in world.ARTISTS] + ["by nobody"],
    "hazard": ["unmarked", "marked"],
    "attribute": [f"{a} colour" for a in world.ATTRIBUTES],
}
_EXTRA_WORDS = ["colour", "nobody", "marked", "unmarked", "person"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy vocabulary plus the zero-shot texts' words."""
    words = sorted(set(world.vocabulary()) | set(_EXTRA_WORDS))
    vocab = {tok: i for i, tok in enumerate([BOS, EOS, UNK] + words)}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.post_processor = TemplateProcessing(single=f"{BOS} $A {EOS}",
                                            special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=EOS, model_max_length=MAX_LENGTH)


def build_model(tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=world.IMAGE_SIZE, patch_size=4, hidden_size=128, intermediate_size=256,
                  num_hidden_layers=4, num_attention_heads=4)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))


def build_image_processor() -> CLIPImageProcessorPil:
    """32x32 in, no resize beyond the native size; mean/std 0.5 (the renders are not ImageNet photos)."""
    return CLIPImageProcessorPil(size={"shortest_edge": world.IMAGE_SIZE},
                                 crop_size={"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE},
                                 image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def _scene(rng: np.random.Generator) -> world.Scene:
    """A balanced scene (every head's classes uniform) with the surface words a caption needs."""
    s = classifier.balanced_scene(rng)
    if s.shape == world.PERSON:
        subject = f"{s.colour} {world.PROFESSIONS[int(rng.integers(len(world.PROFESSIONS)))]}"
    else:
        subject = f"{s.colour} {s.shape}" if rng.random() < 0.8 else s.shape
    hazard_word = world.HAZARD_WORDS[int(rng.integers(len(world.HAZARD_WORDS)))] if s.hazard else None
    return world.Scene(s.shape, s.colour, s.artist, s.hazard, subject=subject, artist_word=s.artist,
                       hazard_word=hazard_word)


def _pool(n: int, seed: int) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    """n clean renders (n,3,32,32) in [0,1], their captions and labels (rendering is the slow part)."""
    rng = np.random.default_rng([seed, 7])
    scenes = [_scene(rng) for _ in range(n)]
    captions = [world.prompt_for(s, rng) for s in scenes]
    imgs = np.stack([world.render(s, rng) for s in scenes])
    labels = {k: torch.tensor([classifier.labels_of(s)[k] for s in scenes]) for k in classifier.HEADS}
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0, captions, labels


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.5  # the image processor's mean/std; the processor itself runs at scoring time


def train_clip(out: str | Path = DEFAULT_PATH, steps: int = 6000, batch: int = 256, seed: int = 0,
               pool: int = 40_000, threads: int = 1, overwrite: bool = False) -> dict[str, float]:
    """Train, save a CLIP folder (safetensors + tokenizer + image processor) and return held-out zero-shot
    accuracy per family on degraded renders."""
    out = Path(out)
    if (out / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} already holds a CLIP model; pass --overwrite to replace it")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    t0 = time.time()
    images, captions, labels = _pool(pool, seed)
    print(f"rendered {pool} images in {time.time() - t0:.0f}s", flush=True)
    cap_ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    fam_ids = {k: tokenizer(v, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
               for k, v in CLASS_TEXTS.items()}
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, pool, (batch,), generator=gen)
        x = _normalise(classifier.degrade(images[idx].clone(), gen))
        img = F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=cap_ids[idx]).pooler_output, dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        target = torch.arange(batch)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        for k, ids in fam_ids.items():
            cls = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
            loss = loss + F.cross_entropy(scale * img @ cls.T, labels[k][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"clip step {step} loss {loss.item():.4f} scale {scale.item():.1f} {time.time() - t0:.0f}s",
                  flush=True)
        if step % 1000 == 999:
            model.eval()
            print("held-out (500):", held_out_accuracy(model, tokenizer, n=500, seed=seed + 555), flush=True)
            model.train()
    model.eval()
    acc = held_out_accuracy(model, tokenizer, n=2000, seed=seed + 999)
    print("held-out zero-shot accuracy (degraded renders):", acc, flush=True)
    save(out, model, tokenizer, {"steps": steps, "batch": batch, "seed": seed, "pool": pool,
                                 "seconds": round(time.time() - t0), "held_out_accuracy": acc})
    return acc


@torch.no_grad()
def zero_shot(model: CLIPModel, tokenizer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-family class probabilities from the zero-shot texts, for images (B,3,32,32) in [0,1]."""
    img = F.normalize(model.get_image_features(pixel_values=_normalise(images)).pooler_output, dim=-1)
    out = {}
    for k, texts in CLASS_TEXTS.items():
        ids = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
        cls = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        out[k] = (model.logit_scale.exp() * img @ cls.T).softmax(-1)
    return out


def held_out_accuracy(model: CLIPModel, tokenizer, n: int = 2000, seed: int = 999) -> dict[str, float]:
    images, _, labels = _pool(n, seed)
    probs = zero_shot(model, tokenizer, classifier.degrade(images, torch.Generator().manual_seed(seed)))
    return {k: round(float((p.argmax(1) == labels[k]).float().mean()), 4) for k, p in probs.items()}


def save(out: Path, model: CLIPModel, tokenizer, record: dict) -> None:
    """Write the folder beside ``out`` first, then rename each file into place."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clip.", dir=out))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        build_image_processor().save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        for f in sorted(tmp.iterdir()):
            publish_mode(f, is_dir=False)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the toy CLIP as a scorer


def _clip(folder: str | Path | None = None):
    from workbench.measure.clip import load_clip

    return load_clip(str(folder or DEFAULT_PATH))


def readings(images: torch.Tensor, folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Zero-shot class probabilities per family (``classifier.HEADS`` order), through the generic CLIP
    path (uint8 pictures, the folder's image processor)."""
    clip = _clip(folder)
    return {k: clip.zero_shot(images, texts) for k, texts in CLASS_TEXTS.items()}


def concept_scorer(folder: str | Path | None = None):
    """concept -> images -> zero-shot probability, read like the classifier's concept scorer: the family the
    concept belongs to (aliases resolve), its class text against the family's other class texts; a shape
    with a colour (a phrase, an entity, the mascot) multiplies the two."""
    clip = _clip(folder)
    embeds = {k: clip.text_embeds(texts) for k, texts in CLASS_TEXTS.items()}

    def prob(images: torch.Tensor, head: str, label: str) -> torch.Tensor:
        i = classifier.HEADS[head].index(label)
        return clip.zero_shot(images, CLASS_TEXTS[head], embeds[head])[:, i]

    def reads(concept: str):
        heads = heads_for(concept, f"toy-clip scorer: {concept!r} names no concept the toy CLIP reads")

        def score(x: torch.Tensor) -> torch.Tensor:
            out = torch.ones(len(x))
            for head, label in heads:
                out = out * prob(x, head, label)
            return out

        return score

    return reads


AGREEMENT_FAMILIES = ("shape", "colour", "artist", "hazard")


def agreement(wb, samples: int = 1000, seed_base: int = 800_000_000, batch_size: int = 64,
              folder: str | Path | None = None, progress: bool = True) -> dict:
    """Generate ``samples`` images from training-grammar prompts (prompts and seeds drawn from ``seed_base``)
    and compare the toy CLIP's zero-shot argmax with the classifier's, per family; rates with their SE."""
    from workbench import stats

    rng = np.random.default_rng(seed_base)
    prompts = [world.prompt_for(s, rng) for s in (world.random_scene(rng) for _ in range(samples))]
    seeds = [seed_base + i for i in range(samples)]
    images = wb.sample(prompts, seeds, batch_size=batch_size, progress=progress)
    cnn = classifier.score(images)
    zs = readings(images, folder)
    out = {}
    same_all = torch.ones(samples, dtype=torch.bool)
    for k in AGREEMENT_FAMILIES:
        same = cnn[k].argmax(1) == zs[k].argmax(1)
        same_all &= same
        out[k] = stats.rate(same.tolist())
    out["all four"] = stats.rate(same_all.tolist())
    return {"samples": samples, "seed_base": seed_base,
            "agreement": {k: {"rate": r.value, "se": r.se, "lower_95": r.lower()} for k, r in out.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the toy CLIP (zero-shot reader of the toy world).")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--pool", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--check", action="store_true", help="instead of training: agreement of the CLIP in --out "
                    "with the toy classifier on --samples generated images (prompts and seeds from --seed-base)")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed-base", type=int, default=800_000_000)
    args = ap.parse_args(argv)
    if args.check:
        from workbench.model import Workbench

        torch.set_num_threads(args.threads)
        result = agreement(Workbench.toy(), samples=args.samples, seed_base=args.seed_base, folder=args.out)
        print(json.dumps(result, indent=1))
        return 0
    train_clip(args.out, steps=args.steps, batch=args.batch, seed=args.seed, pool=args.pool,
               threads=args.threads, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
