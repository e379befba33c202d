
"""Determinism: which results are bit-identical run to run, across thread counts and across batch composition.

Every result kind is computed in fresh subprocesses, twice with ``torch.set_num_threads(1)`` and twice with
``torch.set_num_threads(2)`` (set before any work; ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the
environment too). Each subprocess writes its tensors (safetensors) and a few derived numbers (JSON); the
parent compares them bit for bit and prints two tables:

1. result kind | same threads, run to run | 1 vs 2 threads (max abs difference) | what it changes downstream
   (uint8 pixels, the layer a trace picks, a classifier rate);
2. batch composition: a prompt + seed generated alone vs as row 4 of a batch with 8 other prompts.

Small settings (toy world, ``Workbench.random("tiny")``, 2 trace samples, 5 ESD iterations, 20 EMCID steps)
so the whole script runs in a few minutes on 2 CPU cores.

    python benchmarks/determinism.py [--out determinism.json] [--threads 1 2] [--repeats 2]

Measured (torch 2.13 CPU, 2 shared cores): every kind is bit-identical run to run at a fixed thread count.
Bit-identical across 1 and 2 threads: random init, wb.encode, text traces with metric="text", UCE and
Diff-QuickFix deltas, the toy classifier, apply + revert. Not bit-identical across thread counts (UNet
numerics): sampled images (max 4e-7 toy, 1e-6 tiny; 0 uint8 pixels changed), proxy text / UNet traces
(max 3e-7; same picked layer and ranking), ESD (2e-6) and EMCID (8e-7) deltas; no classifier decision
changed (its probabilities sit ~0.5 from the threshold). Whether images differ depends on the batch shape
(8-prompt batches came out identical). A prompt + seed alone vs inside a batch of 9: images differ by up
to 1e-6 at any thread count (0 uint8 pixels); text states do not. The 2-thread workers take 5-10x longer
than 1-thread ones when other jobs share the cores (506 s in all measured that way, ~30 s per 1-thread run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from workbench import Workbench

# ---------------------------------------------------------------------------------------------- settings
PROMPTS = ["a red circle", "a blue star by vera kolm", "a green square", "a yellow heart by jonas flet"]
SEEDS = [0, 1, 2, 3]
TOY_STEPS = 20  # the toy world's default
TINY_STEPS = 10
OTHER_CONCEPTS = ["square", "ring", "cross", "star", "lukas merro", "heart", "blue", "red"]
OTHER_SEEDS = list(range(100, 108))
BATCH_ROW = 4  # where the target sits among the 8 other prompts
RATE_CONCEPTS = ["circle", "jonas flet"]
RATE_SAMPLES = 8  # images per concept for the classifier rates
EDIT_SAMPLES = 8  # images for the rate after each edit
RENDERED = 32  # fixed rendered images for the classifier alone
BATCH_TARGETS = 2  # of PROMPTS, for the batch-composition check
TRACE_PROMPT, TRACE_SUBJECT = "a red circle by vera kolm", "vera kolm"
ESD_ITERATIONS, ESD_LR, ESD_DDIM_STEPS = 5, 1e-4, 10
EMCID_EDITS, EMCID_STEPS, EMCID_CAPTIONS = 2, 10, 500

# (key prefix, description) in table order
KINDS: list[tuple[str, str]] = [
    ("weights.tiny", "Workbench.random('tiny', seed=0) weights"),
    ("images.toy", f"toy wb.sample, 4 prompts, {TOY_STEPS} steps"),
    ("images.tiny", f"tiny wb.sample, 4 prompts, {TINY_STEPS} steps"),
    ("encode", "toy wb.encode, 4 prompts"),
    ("trace.text.proxy", "trace_text_encoder, samples=2, proxy"),
    ("trace.text.text", "trace_text_encoder, samples=2, metric=text"),
    ("trace.unet", "trace_unet, samples=2, proxy"),
    ("delta.uce", "UCE erase 'circle' delta"),
    ("delta.quickfix", "Diff-QuickFix jonas flet -> painting, eos"),
    ("delta.esd", f"ESD-x 'circle', {ESD_ITERATIONS} its, lr {ESD_LR:g}, {ESD_DDIM_STEPS} DDIM steps"),
    ("delta.emcid", f"EMCID {EMCID_EDITS} entities, {EMCID_STEPS} steps"),
    ("classifier.fixed", f"toy classifier probs on {RENDERED} fixed rendered images"),
    ("classifier", f"toy classifier probs on {len(RATE_CONCEPTS) * RATE_SAMPLES} images sampled in the run"),
    ("revert", "weights after apply + revert (UCE, QF, ESD)"),
]
BATCH_KINDS: list[tuple[str, str]] = [
    ("batch.toy", f"toy images ({BATCH_TARGETS} targets)"),
    ("batch.tiny", f"tiny images ({BATCH_TARGETS} targets)"),
    ("batch.encode", f"toy wb.encode ({BATCH_TARGETS} targets)"),
]


# ---------------------------------------------------------------------------------------------- worker
PACKAGES = ("workbench", "tracing", "editors")


def source_hash() -> str:
    """A hash of the project's loaded source files: the parent refuses to compare runs of different code."""
    h = hashlib.sha256()
    files = sorted(Path(m.__file__).resolve() for name, m in list(sys.modules.items())
                   if name.split(".")[0] in PACKAGES and getattr(m, "__file__", None))
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _state_hash(wb: Workbench) -> str:
    h = hashlib.sha256()
    for part, module in wb.parts.items():
        for name, t in module.state_dict().items():
            h.update(f"{part}.{name}".encode())
            h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _others() -> list[str]:
    from workbench.toy.protocol import concept_prompt

    return [concept_prompt(c, i) for i, c in enumerate(OTHER_CONCEPTS)]


def _in_batch(target: str, others: Sequence[str]) -> list[str]:
    return [*others[:BATCH_ROW], target, *others[BATCH_ROW:]]


def _batch_images(wb: Workbench, steps: int, others: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target alone (batch of 1) and as row BATCH_ROW of one batch with the 8 others."""
    targets = list(zip(PROMPTS, SEEDS, strict=True))[:BATCH_TARGETS]
    alone = torch.cat([wb.sample([p], [s], steps=steps) for p, s in targets])
    seeds = [*OTHER_SEEDS[:BATCH_ROW], 0, *OTHER_SEEDS[BATCH_ROW:]]
    rows = []
    for p, s in targets:
        seeds[BATCH_ROW] = s
        batch = _in_batch(p, others)
        rows.append(wb.sample(batch, seeds, steps=steps, batch_size=len(batch))[BATCH_ROW:BATCH_ROW + 1])
    return alone, torch.cat(rows)


def _rate_probs(wb: Workbench, concept: str, seeds: Sequence[int], prompt_of: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, scorer probabilities for ``concept``) of its evaluation prompts (``prompt_of``'s, when given)."""
    from workbench.toy.protocol import concept_prompt, concept_scorer

    prompts = [concept_prompt(prompt_of or concept, i) for i in range(len(seeds))]
    images = wb.sample(prompts, list(seeds))
    return images, concept_scorer(concept)(images)


def worker(threads: int, dest: Path) -> None:
    """Compute every result kind at ``threads`` threads; write ``dest/tensors.safetensors`` + ``dest/meta.json``."""
    torch.set_num_threads(threads)  # before any work, and before the project is imported
    from safetensors.torch import save_file

    import editors
    import tracing
    from workbench import Workbench
    from workbench.toy import classifier
    from workbench.toy.protocol import concept_scorer
    from workbench.toy.world import captions, rebinding

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                            "torch": torch.__version__, "seconds": {}}

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        meta["seconds"][key] = round(time.perf_counter() - t0, 3)
        return out

    wb = Workbench.toy()
    tiny = timed("weights.tiny", lambda: Workbench.random("tiny", seed=0))
    for part, module in tiny.parts.items():
        for name, t in module.state_dict().items():
            tensors[f"weights.tiny/{part}.{name}"] = t
    others = _others()

    tensors["images.toy/x"] = timed("images.toy", lambda: wb.sample(PROMPTS, SEEDS, steps=TOY_STEPS))
    tensors["images.tiny/x"] = timed("images.tiny", lambda: tiny.sample(PROMPTS, SEEDS, steps=TINY_STEPS))
    tensors["encode/x"] = timed("encode", lambda: wb.encode(PROMPTS))

    quiet = tracing.TraceSettings(samples=2, progress=False)
    traces = {
        "trace.text.proxy": lambda: tracing.trace_text_encoder(wb, TRACE_PROMPT, TRACE_SUBJECT, settings=quiet),
        "trace.text.text": lambda: tracing.trace_text_encoder(wb, TRACE_PROMPT, TRACE_SUBJECT,
                                                              settings=replace(quiet, metric="text")),
        "trace.unet": lambda: tracing.trace_unet(wb, TRACE_PROMPT, TRACE_SUBJECT, settings=quiet),
    }
    meta["picked"], meta["ranking"] = {}, {}
    for key, fn in traces.items():
        result = timed(key, fn)
        tensors[f"{key}/scores"] = result.scores
        meta["picked"][key] = result.pick_layers(1)[0]
        meta["ranking"][key] = torch.argsort(result.ranking(), descending=True, stable=True).tolist()

    deltas = {
        "delta.uce": (lambda: editors.uce.edit(wb, editors.UCERequest(erase=["circle"]), progress=False), "circle"),
        "delta.quickfix": (lambda: editors.quickfix.edit(wb, editors.QuickFixRequest(["jonas flet"], ["painting"],
                                                                                eos=True)), "jonas flet"),
        "delta.esd": (lambda: editors.esd.edit(wb, editors.ESDRequest(erase="circle", iterations=ESD_ITERATIONS,
                                                                 lr=ESD_LR, ddim_steps=ESD_DDIM_STEPS),
                                          progress=False), "circle"),
    }
    before = _state_hash(wb)
    meta["revert"] = {"before": before, "restored": [], "changed_while_applied": []}
    edit_seeds = [2000 + i for i in range(EDIT_SAMPLES)]
    for key, (fn, concept) in deltas.items():
        delta = timed(key, fn)
        for name, t in delta.tensors.items():
            tensors[f"{key}/{name}"] = t
        delta.apply(wb)
        meta["revert"]["changed_while_applied"].append(_state_hash(wb) != before)
        try:
            tensors[f"rates/{key}"] = _rate_probs(wb, concept, edit_seeds)[1]
        finally:
            delta.revert(wb)
        meta["revert"]["restored"].append(_state_hash(wb) == before)

    ent = Workbench.toy("entities")
    edits = [rebinding(i) for i in range(EMCID_EDITS)]
    request = editors.EMCIDRequest(edits, steps=EMCID_STEPS, captions=captions(EMCID_CAPTIONS, 0))
    delta = timed("delta.emcid", lambda: editors.emcid.edit(ent, request, progress=False))
    for name, t in delta.tensors.items():
        tensors[f"delta.emcid/{name}"] = t
    with delta.applied(ent):
        src, dst = edits[0]
        tensors["rates/delta.emcid"] = _rate_probs(ent, dst, edit_seeds, prompt_of=src)[1]

    for i, concept in enumerate(RATE_CONCEPTS):
        seeds = [1000 + 100 * i + j for j in range(RATE_SAMPLES)]
        images, probs = timed(f"classifier.{concept}", lambda c=concept, s=seeds: _rate_probs(wb, c, s))
        tensors[f"classifier/{concept}"], tensors[f"classifier.images/{concept}"] = probs, images
    rendered, _ = classifier.render_labelled(np.random.default_rng(0), RENDERED)
    scores = timed("classifier.fixed", lambda: classifier.score(rendered))
    for head, probs in scores.items():
        tensors[f"classifier.fixed/{head}"] = probs

    # batch composition: the target alone vs as row BATCH_ROW among 8 others; scored in one classifier call
    for key, model, steps in (("batch.toy", wb, TOY_STEPS), ("batch.tiny", tiny, TINY_STEPS)):
        alone, inside = timed(key, lambda m=model, s=steps: _batch_images(m, s, others))
        tensors[f"{key}/alone"], tensors[f"{key}/inside"] = alone, inside
    # both images of a target go through one classifier call, so only the generation differs
    alone, inside = tensors["batch.toy/alone"], tensors["batch.toy/inside"]
    probs = [concept_scorer(p)(torch.cat([alone[k:k + 1], inside[k:k + 1]]))
             for k, p in enumerate(PROMPTS[:BATCH_TARGETS])]
    tensors["batch.toy.probs/alone"] = torch.stack([p[0] for p in probs])
    tensors["batch.toy.probs/inside"] = torch.stack([p[1] for p in probs])
    tensors["batch.encode/alone"] = torch.cat([wb.encode([p]) for p in PROMPTS[:BATCH_TARGETS]])
    tensors["batch.encode/inside"] = torch.cat([wb.encode(_in_batch(p, others))[BATCH_ROW:BATCH_ROW + 1]
                                                for p in PROMPTS[:BATCH_TARGETS]])

    meta["source"] = source_hash()
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(dest / "tensors.safetensors"))
    (dest / "meta.json").write_text(json.dumps(meta, indent=2))


# ---------------------------------------------------------------------------------------------- comparing
def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().flatten().view(torch.uint8).numpy().tobytes()


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Bit identity and max abs / relative difference over matching tensors."""
    if sorted(a) != sorted(b):
        return {"identical": False, "max_abs": float("inf"), "max_rel": float("inf"), "tensors": len(a),
                "note": "different tensor names"}
    same, max_abs, scale, differing = True, 0.0, 0.0, 0
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return {"identical": False, "max_abs": float("inf"), "max_rel": float("inf"), "tensors": len(a),
                    "note": f"{k}: shape or dtype differs"}
        if _bits(x) != _bits(y):
            same = False
            differing += 1
            if x.is_floating_point():
                max_abs = max(max_abs, (x.double() - y.double()).abs().max().item())
            else:
                max_abs = max(max_abs, (x.long() - y.long()).abs().max().item())
        if x.numel():
            scale = max(scale, x.double().abs().max().item())
    return {"identical": same, "max_abs": max_abs, "max_rel": max_abs / scale if scale else 0.0,
            "tensors": len(a), "tensors_differing": differing}


def group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.split("/", 1)[0] == prefix}


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _pixels(a: torch.Tensor, b: torch.Tensor) -> str:
    n = int((_uint8(a) != _uint8(b)).sum())
    return f"uint8 pixels differ: {n} / {a.numel()}"


def _rate(p: torch.Tensor) -> float:
    return 100.0 * float((p > 0.5).float().mean())


def _flips(a: torch.Tensor, b: torch.Tensor) -> int:
    return int(((a > 0.5) != (b > 0.5)).sum())


def consequence(kind: str, ta: dict[str, torch.Tensor], tb: dict[str, torch.Tensor], ma: dict, mb: dict) -> str:
    """What a difference between two runs (a, b) changes downstream."""
    if kind.startswith("images."):
        return _pixels(ta[f"{kind}/x"], tb[f"{kind}/x"])
    if kind == "weights.tiny":
        return "same initial model" if compare(group(ta, kind), group(tb, kind))["identical"] else "different model"
    if kind == "encode":
        return "(feeds every image, trace and edit)"
    if kind.startswith("trace."):
        same_pick = ma["picked"][kind] == mb["picked"][kind]
        same_rank = ma["ranking"][kind] == mb["ranking"][kind]
        return (f"picked layer {'same' if same_pick else 'differs'} ({ma['picked'][kind].split('.', 1)[1]}); "
                f"row ranking {'same' if same_rank else 'differs'}")
    if kind.startswith("delta."):
        pa, pb = ta[f"rates/{kind}"], tb[f"rates/{kind}"]
        return (f"rate after edit {_rate(pa):.0f} vs {_rate(pb):.0f} % ({len(pa)} imgs, {_flips(pa, pb)} flips, "
                f"max dp {(pa - pb).abs().max().item():.0e}, closest |p-0.5| {_margin(pa):.2f})")
    if kind == "classifier.fixed":
        same = all(torch.equal(ta[k].argmax(1), tb[k].argmax(1)) for k in group(ta, kind))
        return f"predicted labels {'same' if same else 'differ'}"
    if kind == "classifier":
        parts = [f"{c} {_rate(ta[f'classifier/{c}']):.0f} vs {_rate(tb[f'classifier/{c}']):.0f} %"
                 for c in RATE_CONCEPTS]
        pa = torch.cat([ta[f"classifier/{c}"] for c in RATE_CONCEPTS])
        pb = torch.cat([tb[f"classifier/{c}"] for c in RATE_CONCEPTS])
        imgs = compare(group(ta, "classifier.images"), group(tb, "classifier.images"))
        return (f"its input images: {_fmt(imgs)}; {'; '.join(parts)}; {_flips(pa, pb)} flips "
                f"(closest |p-0.5| {_margin(pa):.2f})")
    return ""


def _margin(p: torch.Tensor) -> float:
    return (p - 0.5).abs().min().item()


def _fmt(c: dict[str, Any]) -> str:
    if c["identical"]:
        return "yes"
    return f"no ({c['max_abs']:.1e}, rel {c['max_rel']:.0e})"


# ---------------------------------------------------------------------------------------------- parent
def run_worker(threads: int, dest: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(threads), "--dest",
                           str(dest)], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"worker at {threads} thread(s) failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def load_run(dest: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    return load_file(str(dest / "tensors.safetensors")), json.loads((dest / "meta.json").read_text())


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write every comparison as JSON here")
    ap.add_argument("--threads", type=int, nargs=2, default=[1, 2], metavar=("A", "B"))
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per thread count (>= 2)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.dest)
        return 0
    if args.repeats < 2:
        ap.error("--repeats must be >= 2 (run-to-run needs two runs)")

    t_start = time.perf_counter()
    t1, t2 = args.threads
    runs: dict[int, list[tuple[dict[str, torch.Tensor], dict[str, Any]]]] = {t1: [], t2: []}
    worker_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="determinism.") as tmp:
        for r in range(args.repeats):
            for t in (t1, t2):
                dest = Path(tmp) / f"t{t}-r{r}"
                s = run_worker(t, dest)
                worker_seconds[f"{t} threads, run {r + 1}"] = round(s, 1)
                print(f"  run {r + 1} at {t} thread(s): {s:.1f} s", flush=True)
                runs[t].append(load_run(dest))

    (ta, ma), (tb, mb) = runs[t1][0], runs[t2][0]
    for t, rs in runs.items():
        got = {m["threads"] for _, m in rs}
        if got != {t}:
            raise RuntimeError(f"workers asked for {t} threads ran with {got}")
    if len({m["source"] for rs in runs.values() for _, m in rs}) != 1:
        raise RuntimeError("the project's source changed between workers (someone edited it during the run); "
                           "rerun on a quiet tree")
    report: dict[str, Any] = {"torch": ma["torch"], "threads": [t1, t2], "repeats": args.repeats,
                              "interop_threads": {t1: ma["interop_threads"], t2: mb["interop_threads"]},
                              "worker_seconds": worker_seconds, "kinds": {}, "batch": {}}

    rows = []
    for kind, desc in KINDS:
        if kind == "revert":
            ok = all(all(m["revert"]["restored"]) and all(m["revert"]["changed_while_applied"])
                     for rs in runs.values() for _, m in rs)
            hashes = {m["revert"]["before"] for rs in runs.values() for _, m in rs}
            n = sum(len(rs) for rs in runs.values())
            r2r = f"yes ({n}/{n} runs restored bit-exactly)" if ok else "NO"
            xt = "yes (same weight hash)" if len(hashes) == 1 else "no"
            rows.append([desc, r2r, xt, "revert is a copy of the saved originals"])
            report["kinds"][kind] = {"description": desc, "restored_every_run": ok, "weight_hashes": len(hashes)}
            continue
        same = {}
        for t, rs in runs.items():
            base = group(rs[0][0], kind)
            cs = [compare(base, group(other, kind)) for other, _ in rs[1:]]
            worst = max(cs, key=lambda c: (not c["identical"], c["max_abs"]))
            same[t] = worst
        cross = compare(group(ta, kind), group(tb, kind))
        cons = consequence(kind, ta, tb, ma, mb)
        r2r = ", ".join(f"{t}t {_fmt(c)}" for t, c in same.items())
        rows.append([desc, r2r, _fmt(cross), cons])
        report["kinds"][kind] = {"description": desc, "run_to_run": {str(t): c for t, c in same.items()},
                                 "across_threads": cross, "consequence": cons,
                                 "seconds_at": {str(t1): ma["seconds"].get(kind), str(t2): mb["seconds"].get(kind)}}

    brows = []
    for kind, desc in BATCH_KINDS:
        cells, entry = [], {"description": desc}
        for t in (t1, t2):
            tt = runs[t][0][0]
            c = compare({"x": tt[f"{kind}/alone"]}, {"x": tt[f"{kind}/inside"]})
            cells.append(_fmt(c))
            entry[str(t)] = c
        tt = runs[t1][0][0]
        if kind == "batch.encode":
            cons = "(the UNet reads these states)"
        else:
            cons = _pixels(tt[f"{kind}/alone"], tt[f"{kind}/inside"]) + f" at {t1}t"
            if kind == "batch.toy":
                pa, pb = tt["batch.toy.probs/alone"], tt["batch.toy.probs/inside"]
                cons += (f"; classifier: {_flips(pa, pb)} flips, max dp {(pa - pb).abs().max().item():.1e}")
        entry["consequence"] = cons
        report["batch"][kind] = entry
        brows.append([desc, *cells, cons])

    seconds = time.perf_counter() - t_start
    report["seconds"] = round(seconds, 1)
    print()
    print(f"torch {ma['torch']}; {args.repeats} fresh processes per thread count; 'no (a, rel r)' = not "
          f"bit-identical, max abs difference a, relative to the largest |value| r")
    print()
    print(table(["result kind", "same threads, run to run: bit-identical?",
                 f"{t1} vs {t2} threads: bit-identical? (max abs diff)", "consequence"], rows))
    print()
    print(f"Batch composition: each target prompt + seed generated alone vs as row {BATCH_ROW} of a batch "
          f"with 8 other prompts")
    print()
    print(table(["result kind", f"{t1} thread: bit-identical?", f"{t2} threads: bit-identical?", "consequence"],
                brows))
    print()
    print(f"total {seconds:.0f} s (workers: {', '.join(f'{v:.0f} s' for v in worker_seconds.values())})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
