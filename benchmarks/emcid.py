"""EMCID timings: stage II for many concepts at once, and stage I per concept.

Stage II (100 concepts by default) runs on the toy world (preserve covariance from 2000 toy-grammar
captions, timed separately) and, with ``--sd15``, on an SD-1.5-shaped random text encoder (CLIP-L: 12
layers, fc2 3072 -> 768) with a tiny UNet beside it (stage II never touches the UNet) and a synthetic
full-rank covariance (stage II's cost does not depend on what C holds). Stage I runs on the toy world for a
few concepts with the request's settings and prints the time per concept.

    python benchmarks/emcid.py [--concepts 100] [--stage-one-concepts 4] [--steps 100] [--sd15]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from editors.emcid import (
    EMCIDRequest,
    caption_covariance,
    fc2_layers,
    stage_one,
    stage_two,
    subject_states,
)
from workbench import Workbench
from workbench.toy.protocol import preserve_captions
from workbench.toy.world import rebinding


def toy_request(n: int, **kw) -> EMCIDRequest:
    """Entity i -> a (colour, shape) that differs from its own."""
    return EMCIDRequest([rebinding(i) for i in range(n)], **kw)


def time_stage_two(wb: Workbench, req: EMCIDRequest, layers: list[str], cov: dict[str, torch.Tensor]) -> float:
    # targets = current states + a shift, so every layer has a real residual to spread
    z0 = subject_states(wb, req, layers[-1])
    targets = z0 + 0.3 * z0.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(torch.randn_like(z0), dim=1)
    start = time.perf_counter()
    stage_two(wb, req, layers, targets, cov)
    return time.perf_counter() - start


def sd15_text_workbench() -> Workbench:
    """SD-1.5's text encoder shape (random weights) beside a tiny UNet whose cross-attention takes 768."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from workbench.model import CONFIG_DIR, load_builtin_tokenizer

    cfg = {p: json.loads((CONFIG_DIR / a / f"{p}.json").read_text())
           for a, p in (("sd15", "text_encoder"), ("tiny", "unet"), ("sd15", "scheduler"))}
    tokenizer = load_builtin_tokenizer(cfg["text_encoder"]["max_position_embeddings"])
    text_cfg = {k: v for k, v in cfg["text_encoder"].items() if k not in ("architectures", "model_type")}
    text_cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    unet = UNet2DConditionModel.from_config({**cfg["unet"], "cross_attention_dim": text_cfg["hidden_size"]})
    return Workbench(unet, text, tokenizer, DDIMScheduler.from_config(cfg["scheduler"]), name="sd15-text")


def sd15_words(wb: Workbench, n: int) -> list[str]:
    """Single-token words from the built-in tokenizer's vocabulary."""
    vocab = json.loads((Path(__file__).parents[1] / "workbench/configs/tokenizer/vocab.json").read_text())
    words = sorted(w[:-4] for w in vocab if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6)
    words = [w for w in words if len(wb.tokens(w)) == 3]
    if len(words) < n:
        raise SystemExit(f"only {len(words)} single-token words in the built-in vocabulary; use --concepts <= that")
    return words[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", type=int, default=100, help="concepts edited at once in stage II")
    ap.add_argument("--stage-one-concepts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=EMCIDRequest.steps, help="stage I Adam steps")
    ap.add_argument("--sd15", action="store_true", help="also time stage II on an SD-1.5-shaped text encoder")
    args = ap.parse_args()
    torch.manual_seed(0)

    wb = Workbench.toy()
    layers = fc2_layers(wb)
    req = toy_request(args.concepts)
    start = time.perf_counter()
    cov = caption_covariance(wb, layers, preserve_captions())
    t_cov = time.perf_counter() - start
    t_two = time_stage_two(wb, req, layers, cov)
    print(f"toy: {len(layers)} fc2 layers, covariance from 10000 captions {t_cov:.2f} s (once per model)")
    print(f"toy: stage II for {args.concepts} concepts ({len(req.edits) * len(req.templates)} prompts): {t_two:.2f} s")

    small = toy_request(args.stage_one_concepts, steps=args.steps)
    start = time.perf_counter()
    one = stage_one(wb, small, layers[-1], progress=False)
    t_one = time.perf_counter() - start
    loss = one.losses.mean(1)
    print(f"toy: stage I, {args.stage_one_concepts} concepts x {len(small.templates)} prompts x "
          f"{small.noise_samples} noise draws, {args.steps} steps: {t_one:.1f} s = "
          f"{t_one / args.stage_one_concepts:.2f} s per concept (loss {loss[0]:.4f} -> {loss[-1]:.4f})")

    if args.sd15:
        sd = sd15_text_workbench()
        sd_layers = fc2_layers(sd)
        words = sd15_words(sd, 2 * args.concepts)
        sd_req = EMCIDRequest(list(zip(words[::2], words[1::2], strict=True)))
        d = sd.module(sd_layers[0]).in_features
        g = torch.randn(d, d + 64, dtype=torch.float64) / (d + 64) ** 0.5
        sd_cov = {name: g @ g.T for name in sd_layers}
        t_sd = time_stage_two(sd, sd_req, sd_layers, sd_cov)
        print(f"sd15 text encoder: stage II for {args.concepts} concepts on {len(sd_layers)} fc2 layers "
              f"({d} -> {sd.module(sd_layers[0]).out_features}): {t_sd:.2f} s")


if __name__ == "__main__":
    main()
