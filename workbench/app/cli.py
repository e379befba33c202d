"""The ``workbench`` console script."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing

from ..checks import arg_float as _float
from ..checks import arg_int as _int

# TraceSettings fields the trace command takes (progress follows --quiet)
TRACE_SETTINGS = ("metric", "samples", "noise", "std", "seed", "draws", "steps", "guidance", "batch_size")
SCORER_HELP = ("toy (the toy world's classifier; the default there), toy-clip, clip:PATH[:contrast,...], "
               "nudenet[:THRESHOLD[:CLASS,...]] or classifier:PATH[:LABELS_FILE]")
MODEL_HELP = ("toy, toy-entities, toy-xl (the toy worlds), tiny, sd15, sd21, tiny-xl, sdxl (random weights) or a "
              "local diffusers (SD or SDXL) folder / .safetensors file")


def _load(args: argparse.Namespace, **kw):
    from ..model import Workbench

    return Workbench.load(args.model, config=getattr(args, "config", None),
                          sample_size=getattr(args, "sample_size", None), **kw)


def _outputs(args: argparse.Namespace, wb, *paths: str | None) -> None:
    """Every file a command will write, checked before any work: none exists (unless --overwrite), none is
    or lies inside what the model was read from."""
    from ..files import check_target

    for path in paths:
        if path is not None:
            check_target(path, args.overwrite, protected=wb.read_paths())


def _output_dir(args: argparse.Namespace, wb, folder: str) -> None:
    from ..files import check_dir_target

    check_dir_target(folder, args.overwrite, wb.read_paths())


def cmd_layers(args: argparse.Namespace) -> int:
    from ..model import ARCHES

    # a random-weight model's table needs no weights: full SDXL shapes would take 14 GB on the CPU
    wb = _load(args, device="meta") if args.model in ARCHES else _load(args)
    names = wb.layers(kind=args.kind, pattern=args.pattern)
    if not names:
        what = " and ".join(x for x in (args.kind and f"kind {args.kind!r}", args.pattern and
                                        f"pattern {args.pattern!r}") if x)
        raise ValueError(f"no layer of {wb.name} matches {what}; list them all with `workbench layers`")
    for name in names:
        print(f"{name}\t{wb.layer(name).kind}" if args.with_kind else name)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..images import grid, save_image

    wb = _load(args)
    _outputs(args, wb, args.out)
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed + i for _ in args.prompt for i in range(args.n)]
    images = wb.sample(prompts, seeds, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                       progress=True)
    labels = args.prompt if args.n > 1 else None
    path = save_image(grid(images, nrow=args.n if args.n > 1 else min(8, len(prompts)), scale=args.scale,
                           labels=labels), args.out, overwrite=args.overwrite)
    print(f"wrote {path} ({len(prompts)} images)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the toy world: trace an artist, erase it on the located layers, evaluate, report."""
    from .demo import run_demo

    run_demo(args.out, model=args.model, subject=args.subject, prompt=args.prompt, trace_samples=args.trace_samples,
             eval_samples=args.samples, attack=not args.no_attack, overwrite=args.overwrite)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from tracing import TraceSettings, trace_text_encoder, trace_unet

    wb = _load(args)
    _output_dir(args, wb, args.out)
    scorer = None
    if args.metric == "faithful":  # args.metric is None when not given: the proxy
        scorer = _scorer(args, wb)(args.subject)
    elif args.scorer:
        raise ValueError("--scorer is read by --metric faithful only (the proxy and text metrics score no image)")
    given = {name: getattr(args, name) for name in TRACE_SETTINGS if getattr(args, name, None) is not None}
    settings = TraceSettings(**given)  # every default lives in TraceSettings
    if args.part != "unet":
        result = trace_text_encoder(wb, args.prompt, args.subject, kind=args.kind, window=args.window,
                                    tokens=args.tokens, settings=settings, scorer=scorer, part=args.part)
    else:
        result = trace_unet(wb, args.prompt, args.subject, layers=args.layers, windows=args.windows,
                            settings=settings, scorer=scorer)
    if args.rank_by:  # recorded, so that `workbench edit --trace` picks the same layers
        result.rank_by = args.rank_by
    out = result.save(args.out, overwrite=args.overwrite, heatmap=True)
    print(f"{result.part} trace of {args.subject!r} in {args.prompt!r} ({result.metric}, {result.seconds:.1f} s)")
    print(f"clean {result.clean:.3f}, corrupted {result.corrupted:.3f}; picked layers:")
    for name in result.pick_layers(args.top):
        print(f"  {name}\t{result.effect(name):.3f}")
    print(f"wrote {out}/result.json, scores.safetensors, heatmap.png")
    return 0


def _edit_layers(args: argparse.Namespace, wb, kinds) -> list[str] | None:
    """--layer names or globs (each must match), or the layers a --trace picks (made on this very model)."""
    if args.layer and args.trace:
        raise ValueError("give --layer or --trace, not both")
    if args.trace:
        from tracing import TraceResult

        trace = TraceResult.load(args.trace)
        if trace.model_fingerprint and trace.model_fingerprint != wb.fingerprint():
            raise ValueError(f"--trace {args.trace!r} was traced on other weights ({trace.model!r}) than --model "
                             f"{args.model} ({wb.name!r}); trace this model first")
        layers = trace.pick_layers(args.top, kinds=kinds)  # only layers this editor can edit
        print(f"layers picked by {args.trace}: {layers}")
        return layers
    if not args.layer:
        return None
    layers: list[str] = []
    for spec in args.layer:
        names = wb.layers(pattern=spec) if any(c in spec for c in "*?[") else [wb.layer(spec).name]
        if not names:
            raise ValueError(f"--layer {spec!r} matches no layer of {wb.name}; list them with `workbench layers`")
        layers += [n for n in names if n not in layers]
    return layers


def _lines(path: str, what: str) -> list[str]:
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what}: no file at {path!r} (expected one line per item)")
    try:
        lines = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {path!r} is not a text file (expected one line per item)") from None
    if not lines:
        raise ValueError(f"{what}: {path!r} holds no line")
    return lines


class _Once(argparse.Action):
    """A single-valued option refuses a second value instead of silently keeping the last."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} takes one value; it was given twice")
        setattr(namespace, self.dest, values)


def _flag(f) -> str:
    """The option of a request field: its ``flag`` metadata, or ``--field-name``."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _option(f, kind) -> tuple[str, dict]:
    """The argparse option of one request field, built from its type and metadata (no default restated:
    an option not given leaves the dataclass default)."""
    import types

    meta = f.metadata
    flag = _flag(f)
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in args if a is not type(None))  # X | None: the option gives an X
    default = (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    shown = "" if default is dataclasses.MISSING or default in (None, [], {}) else f" (default {default!r})"
    kw: dict = {"dest": f"req_{f.name}", "default": None, "help": meta.get("help", "") + shown,
                "metavar": flag.lstrip("-").replace("-", "_").upper()}
    if default is dataclasses.MISSING:
        kw["required"] = True
    origin = typing.get_origin(kind)
    if meta.get("file") or meta.get("request_file"):
        kw["metavar"] = "FILE"
    elif kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
        del kw["metavar"]
    elif origin in (list, dict):
        kw["action"] = "append"
    else:
        kw["action"] = _Once
        if kind in (int, float):
            kw["type"] = _int() if kind is int else _float()
    if "choices" in meta:
        kw["choices"] = list(meta["choices"])
        del kw["metavar"]
    return flag, kw


def _request(module, args: argparse.Namespace):
    """The editor's request from the options given; every default comes from the dataclass."""
    cls = module.REQUEST
    given = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"req_{f.name}", None)
        if value is None:
            continue
        if f.metadata.get("file"):
            value = _lines(value, _flag(f))
        elif "parse" in f.metadata:
            value = f.metadata["parse"](value)
        given[f.name] = value
    from_file = [f.name for f in dataclasses.fields(cls) if f.metadata.get("request_file") and f.name in given]
    try:
        if from_file:  # EMCID's --requests: a file with the edits and any field; options given beside it win
            return dataclasses.replace(cls.load(given.pop(from_file[0])), **given)
        return cls(**given)
    except (TypeError, ValueError) as err:  # name the option the user typed, not only the field
        words = set(re.findall(r"\w+", str(err)))
        flags = [_flag(f) for f in dataclasses.fields(cls) if f.name in given and f.name in words]
        raise type(err)(f"{flags[0]}: {err}" if flags else str(err)) from None


def cmd_edit(args: argparse.Namespace) -> int:
    from editors import EDITORS

    module = EDITORS[args.editor]
    request = _request(module, args)  # refuse bad options before loading the model
    wb = _load(args)
    _outputs(args, wb, args.out)
    layers = _edit_layers(args, wb, module.LAYER_KINDS)
    delta = module.edit(wb, request, layers, progress=True)
    delta.save(args.out, overwrite=args.overwrite)
    print(f"{delta}\nwrote {args.out}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from ..delta import WeightDelta

    wb = _load(args)
    _output_dir(args, wb, args.out)
    delta = WeightDelta.load(args.delta)
    _check_delta(args, delta, wb)
    folder = delta.export(wb, args.out, overwrite=args.overwrite)
    print(f"wrote the edited model to {folder} (loads with {wb.family.pipelines[0]}.from_pretrained)")
    return 0


def _check_delta(args: argparse.Namespace, delta, wb) -> None:
    try:
        delta.check_base(wb)
    except ValueError as err:  # the usual cause is a wrong --model: say which two models disagree
        made_for = delta.metadata.get("model", "?")
        kind = "other weights of" if made_for == wb.name else "another base model,"  # same name: retrained
        raise ValueError(f"{args.delta} was made for {kind} {made_for!r}, not for --model {args.model} "
                         f"({wb.name!r}); use it on the model it was made from. Details: {err}") from err


def _scorer(args: argparse.Namespace, wb):
    """The --scorer spec's scorer; without one, the model's world's own ("toy" on the toy worlds)."""
    from ..measure import SCORER_SPECS, load_scorer

    spec = args.scorer
    if spec is None:
        if wb.world is None or "toy" not in wb.world.scorers:
            raise ValueError(f"{wb.name!r} has no scorer of its own (the toy worlds have); pass --scorer, one of "
                             f"{', '.join(SCORER_SPECS[2:])}")
        spec = "toy"
    return load_scorer(spec, world=wb.world, device=wb.device, batch_size=args.batch_size or 64)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..delta import WeightDelta
    from ..evaluate import evaluate

    if args.suite:
        return _evaluate_suite(args)
    if args.out:
        raise ValueError("--out is the folder of a --suite run; a concept evaluation writes --json and --grid")
    missing = [flag for flag, value in (("--delta", args.delta), ("--concept", args.concept)) if not value]
    if missing:
        raise ValueError(f"evaluate needs {' and '.join(missing)} (or --suite FILE to run a prompt suite)")
    wb = _load(args)
    _outputs(args, wb, args.json, args.grid)
    delta = WeightDelta.load(args.delta)
    _check_delta(args, delta, wb)
    scorer = _scorer(args, wb) if args.scorer else None
    descriptions = None
    if args.descriptions:
        from ..measure.diff import load_descriptions

        descriptions = load_descriptions(args.descriptions, wb.world)
    prompt_fn = None
    if args.template is not None or wb.world is None:  # a model without a world: the concept in a template
        template = _template(args.template or "{}")
        prompt_fn = lambda concept, i: template.format(concept)  # noqa: E731 - the seed varies with i
    report = evaluate(wb, delta, args.concept, holdouts=args.holdout or [], aliases=args.alias or [],
                      unrelated=args.unrelated or [], samples=args.samples, seed=args.seed, steps=args.steps,
                      paraphrase=args.paraphrase, attack=args.attack, attack_rounds=args.attack_rounds,
                      attack_candidates=args.attack_candidates, attack_seeds=args.attack_seeds,
                      grid_images=args.grid_images if args.grid else 0, batch_size=args.batch_size,
                      scan=args.scan, scorer=scorer, prompt_fn=prompt_fn, descriptions=descriptions, progress=True)
    print(report.markdown())
    if args.json:
        print(f"wrote {report.save_json(args.json, overwrite=args.overwrite)}")
    if args.grid:
        print(f"wrote {report.save_grid(args.grid, overwrite=args.overwrite)}")
    for flag in report.flags:
        print(f"workbench evaluate: warning: {flag}", file=sys.stderr)
    return 1 if report.flags else 0


def _template(template: str) -> str:
    if template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
        raise ValueError(f"--template {template!r} must hold one {{}} where the concept goes")
    return template


def _evaluate_suite(args: argparse.Namespace) -> int:
    from ..delta import WeightDelta
    from ..measure.suite_eval import evaluate_suite
    from ..measure.suites import load_suite

    extra = [flag for flag, value in (("--holdout", args.holdout), ("--alias", args.alias),
                                      ("--unrelated", args.unrelated), ("--paraphrase", args.paraphrase),
                                      ("--attack", args.attack), ("--scan", args.scan), ("--grid", args.grid),
                                      ("--descriptions", args.descriptions))
             if value]
    if extra:
        raise ValueError(f"{extra[0]} is not read with --suite (a suite run writes suite.json, suite.md and "
                         "grid.png in --out)")
    if args.concept and len(args.concept) > 1:
        raise ValueError("--suite takes at most one --concept (it overrides every row's concept)")
    suite = load_suite(args.suite, template=_template(args.template or "{}"), per_concept=args.samples,
                       seed=args.seed)
    wb = _load(args)
    out = args.out or "out/suite"
    from ..files import check_not_protected

    check_not_protected(out, wb.read_paths())
    delta = None
    if args.delta:
        delta = WeightDelta.load(args.delta)
        _check_delta(args, delta, wb)
    scorer = _scorer(args, wb)
    extras = {}
    if args.features:
        from ..measure.image_sets import feature_extractor

        extras["features"] = feature_extractor(args.features, world=wb.world, device=wb.device)
        if args.features.startswith(("clip:", "toy-clip")):
            from ..measure.clip import load_clip

            folder = wb.world.clip_folder if args.features == "toy-clip" else args.features.partition(":")[2]
            extras["clip"] = load_clip(str(folder), str(wb.device))
    if args.lpips:
        from ..measure.image_sets import load_lpips

        extras["lpips"] = load_lpips(args.lpips)
    report = evaluate_suite(wb, suite, out, scorer=scorer, scorer_name=args.scorer or "toy", delta=delta,
                            concept=args.concept[0] if args.concept else None, steps=args.steps,
                            batch_size=args.batch_size or 16, features_name=args.features, progress=True, **extras)
    print(report.markdown())
    print(f"wrote {out}/suite.json, suite.md, grid.png and items/ (a rerun resumes from items/)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..delta import WeightDelta
    from ..measure import diff

    folders = args.before is not None or args.after is not None
    if folders:
        given = [flag for flag, value in (("--delta", args.delta), ("--prompt", args.prompt),
                                          ("--prompts", args.prompts)) if value]
        if given or args.before is None or args.after is None:
            raise ValueError(f"{given[0]} is not read with --before/--after (two image folders are compared as "
                             "they are)" if given else "diff on folders needs both --before DIR and --after DIR")
    elif not args.delta or not (args.prompt or args.prompts):
        raise ValueError("diff needs --delta and --prompt/--prompts (generate both sets), or --before DIR and "
                         "--after DIR (two image folders)")
    if args.unpaired and not folders:
        raise ValueError("--unpaired is for --before/--after folders; generated sets always pair by prompt and seed")
    specs = [*(args.descriptions or []), *(args.description or [])]
    # only the toy world's scorers and vocabulary need a model when two folders are compared
    needs_world = not specs or "world" in (args.descriptions or []) or args.scorer in (None, "toy", "toy-clip")
    wb = _load(args) if not folders or needs_world else None
    out = Path(args.out)
    from ..files import check_target

    for name in diff.OUTPUTS:
        check_target(out / name, args.overwrite, protected=wb.read_paths() if wb is not None else ())
    world = wb.world if wb is not None else None
    descriptions = diff.load_descriptions([*(args.descriptions or []), *(
        diff.Description(d) for d in args.description or [])] or ["world"], world)
    if wb is None:
        from ..measure import load_scorer

        scorer = load_scorer(args.scorer, batch_size=args.batch_size or 64)
    else:
        scorer = _scorer(args, wb)
    stat = dict(correction=args.correction, alpha=args.alpha, threshold=args.threshold, resolution=args.resolution)
    if folders:
        paired = False if args.unpaired else None
        result = diff.diff_folders(args.before, args.after, descriptions=descriptions, scorer=scorer, paired=paired,
                                   progress=True, **stat)
    else:
        prompts = [*(args.prompt or []), *(_lines(args.prompts, "--prompts") if args.prompts else [])]
        delta = WeightDelta.load(args.delta)
        _check_delta(args, delta, wb)
        result = diff.diff_edit(wb, delta, prompts, samples=args.n, seed=args.seed, descriptions=descriptions,
                                scorer=scorer, steps=args.steps, batch_size=args.batch_size, progress=True, **stat)
    print(result.markdown(args.top))
    paths = result.save(out, overwrite=args.overwrite, top=args.top)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    commands = {"train": "train", "check": "check", "clip": "clip"}
    if not args.rest or args.rest[0] not in commands:
        raise ValueError("usage: workbench toy {train,check,clip} [options]; add --help after the command for "
                         "options")
    from importlib import import_module

    return import_module(f"workbench.toy.{commands[args.rest[0]]}").main(args.rest[1:])


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error of the workbench."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="workbench", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars (also TQDM_DISABLE=1)")
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default="toy", help=MODEL_HELP)
    model.add_argument("--config", help="with a single .safetensors --model: a local diffusers folder with its configs")
    model.add_argument("--sample-size", type=_int(1), help="latent side to sample at (default: the model's)")
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--batch-size", type=_int(1), help="rows per forward (default: as many as memory allows)")
    write = argparse.ArgumentParser(add_help=False)
    write.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str, *parents):
        return sub.add_parser(name, help=help, parents=[common, *parents])

    p = command("layers", "print one layer name per line, in execution order", model)
    p.add_argument("--kind", help="only this kind (hidden, self_attn, mlp, attn1, attn2, to_k, resnet, ff, ...)")
    p.add_argument("--pattern", help="glob over names, e.g. 'unet.*.attn2'")
    p.add_argument("--with-kind", action="store_true", help="print the kind beside each name")
    p.set_defaults(func=cmd_layers)

    p = command("generate", "write an image grid", model, batch, write)
    p.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument("-n", type=_int(1), default=1, help="images per prompt (seeds seed, seed+1, ...)")
    p.add_argument("--steps", type=_int(1))
    p.add_argument("--guidance", type=_float())
    p.add_argument("--scale", type=_int(1), default=4, help="upscale factor for small images")
    p.add_argument("--out", default="grid.png")
    p.set_defaults(func=cmd_generate)

    p = command("trace", "causal tracing: corrupt the subject, restore layers, write a heatmap", model, batch, write)
    p.add_argument("--prompt", required=True)
    p.add_argument("--subject", required=True, help="the words of the prompt to corrupt")
    p.add_argument("--part", choices=["text", "text2", "unet"], default="text",
                   help="a text encoder (text2: SDXL's second) or the UNet")
    p.add_argument("--metric", choices=["proxy", "text", "faithful"], help="default proxy")
    p.add_argument("--kind", default="hidden", help="text part: hidden, self_attn or mlp")
    p.add_argument("--window", type=_int(1), default=1, help="text part: layers restored together (self_attn/mlp)")
    p.add_argument("--tokens", choices=["real", "all"], default="real",
                   help="text part: restore the prompt's tokens only, or padding positions too")
    p.add_argument("--rank-by", choices=["last_subject", "max", "mean"],
                   help="how layers are ranked (default: last_subject for text, max with --tokens all, mean "
                        "for unet)")
    p.add_argument("--layers", default="attn2", help="unet part: a kind (attn2, resnet, ff, block, ...) or glob")
    p.add_argument("--windows", type=_int(1), default=1, help="unet part: number of denoising-step windows")
    p.add_argument("--samples", type=_int(1), help="noise samples of the corruption (default 10)")
    p.add_argument("--noise", type=_float(above=0), help="noise scale, × --std (default 3)")
    p.add_argument("--std", type=_float(above=0), help="the embeddings' std (default: measured on the model)")
    p.add_argument("--seed", type=_int(0))
    p.add_argument("--draws", type=_int(1), help="proxy metric: (noise, timestep) draws (per step window; "
                   "default 3 for text, 2 for unet)")
    p.add_argument("--steps", type=_int(1), help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=_float(), help="classifier-free guidance (default: the model's)")
    p.add_argument("--scorer", help="--metric faithful: " + SCORER_HELP)
    p.add_argument("--top", type=_int(1), default=3, help="how many picked layers to print")
    p.add_argument("--out", default="out/trace")
    p.set_defaults(func=cmd_trace)

    p = command("edit", "edit a concept (uce, quickfix, emcid, esd); writes a WeightDelta")
    editor_commands = p.add_subparsers(dest="editor", required=True, parser_class=_Parser)
    from editors import EDITORS

    for name, module in EDITORS.items():
        e = editor_commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0],
                                       parents=[common, model, write])
        hints = typing.get_type_hints(module.REQUEST)
        for f in dataclasses.fields(module.REQUEST):
            if f.metadata.get("cli", True):
                flag, kw = _option(f, hints[f.name])
                e.add_argument(flag, **kw)
        e.add_argument("--layer", action="append", help="layer name or glob to edit (default: the method's own)")
        e.add_argument("--trace", help="a trace result folder: edit the layers it picks")
        e.add_argument("--top", type=_int(1), default=1, help="with --trace: how many picked layers")
        e.add_argument("--out", default="delta.safetensors")
        e.set_defaults(func=cmd_edit)

    p = command("apply", "write a model folder with a delta applied", model, write)
    p.add_argument("--delta", required=True)
    p.add_argument("--out", required=True, help="a new folder (an earlier export with --overwrite)")
    p.set_defaults(func=cmd_apply)

    p = command("evaluate", "rates before/after (edited, alias, paraphrase, holdout, unrelated), adversarial "
                "prompt search, image fidelity, before/after grid", model, batch, write)
    p.add_argument("--delta", help="the edit (a WeightDelta); required unless --suite, where it is optional")
    p.add_argument("--concept", action="append", help="an edited concept (repeat); with --suite: the concept "
                   "every row is scored for (default: the row's concept column)")
    p.add_argument("--scorer", help=SCORER_HELP)
    p.add_argument("--suite", help="a prompt suite file (I2P-style CSV, COCO captions JSON, a names .txt): "
                   "generate, score and save every row before/after --delta, resumably")
    p.add_argument("--out", help="with --suite: the run's folder (default out/suite; a rerun resumes)")
    p.add_argument("--template", help="the prompt around each concept, {} is the concept (default: the model's "
                   "world's prompts; '{}' on a model without one); with a names .txt suite: around each name")
    p.add_argument("--features", help="with --suite: FID/KID (and CLIP score) on clip:PATH, toy-clip or "
                   "inception:FILE features")
    p.add_argument("--lpips", help="with --suite: LPIPS before vs after, from an AlexNet-LPIPS safetensors file")
    p.add_argument("--holdout", action="append")
    p.add_argument("--alias", action="append")
    p.add_argument("--unrelated", action="append")
    p.add_argument("--samples", type=_int(1), default=50, help="seeds per concept and group (with a names "
                   ".txt suite: prompts per name)")
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument("--steps", type=_int(1), help="sampling steps (default: the model's)")
    p.add_argument("--paraphrase", action="store_true", help="also rate the edited concepts in unseen phrasings")
    p.add_argument("--attack", action="store_true", help="greedy adversarial prompt search per edited concept")
    p.add_argument("--attack-rounds", type=_int(1), default=3)
    p.add_argument("--attack-candidates", type=_int(1), default=8, help="one-word edits tried per round")
    p.add_argument("--attack-seeds", type=_int(1), default=4, help="seeds per candidate prompt")
    p.add_argument("--scan", action="store_true",
                   help="toy world: also rate every concept of every family (38 x --samples images, before and "
                        "after) and report the largest changes outside the edited concepts and aliases")
    p.add_argument("--descriptions", action="append", help="what the leak ranking on the held-out and unrelated "
                   "images tries (as in `workbench diff`; default: the model's world's, when it has one)")
    p.add_argument("--grid", help="write a before/after image grid (PNG) here")
    p.add_argument("--grid-images", type=_int(1), default=4, help="seeds per grid row")
    p.add_argument("--json", help="write the report as JSON here")
    p.set_defaults(func=cmd_evaluate)

    from ..measure.diff import vocabularies

    p = command("diff", "what changed: rank descriptions by how well they tell the base model's images from the "
                "edited one's (VisDiff), both directions, with p-values", model, batch, write)
    p.add_argument("--delta", help="the edit (a WeightDelta): both models draw the same prompts and seeds")
    p.add_argument("--prompt", action="append", help="a prompt to draw (repeat)")
    p.add_argument("--prompts", help="a file of prompts, one per line")
    p.add_argument("-n", type=_int(1), default=1, help="images per prompt (image k of the set at seed --seed + k)")
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument("--steps", type=_int(1), help="sampling steps (default: the model's)")
    p.add_argument("--before", help="instead of drawing: a folder of base images (png, jpg, ...)")
    p.add_argument("--after", help="with --before: a folder of edited images; the same file names pair them")
    p.add_argument("--unpaired", action="store_true", help="with folders: never pair images by file name")
    p.add_argument("--descriptions", action="append", help="world (the toy worlds' concepts; the default there), "
                   "vocab:NAME (" + ", ".join(vocabularies()) + ") or a file, one per line ('a | b' merges b into "
                   "a); repeat to add more")
    p.add_argument("--description", action="append", help="one description to rank (repeat)")
    p.add_argument("--scorer", help="the ranker: " + SCORER_HELP)
    p.add_argument("--correction", choices=["holm", "bh", "bonferroni", "none"], default="holm",
                   help="for testing every description (default holm)")
    p.add_argument("--alpha", type=_float(above=0), default=0.05, help="significance level after correction")
    p.add_argument("--threshold", type=_float(above=0), default=0.5, help="a score above it shows the description")
    p.add_argument("--resolution", type=_float(), default=0.01, help="scores within it of 0 or 1 count as 0 or 1")
    p.add_argument("--top", type=_int(1), default=10, help="rows per direction in the table")
    p.add_argument("--out", default="out/diff", help="folder for diff.json, diff.md and diff.png")
    p.set_defaults(func=cmd_diff)

    p = command("demo", "trace an artist, erase it on the located layers, evaluate, write a report", write)
    p.add_argument("--model", default="toy", help="toy or toy-entities (the demo needs the toy scorer)")
    p.add_argument("--subject", default="jonas flet", help="the artist to locate and erase")
    p.add_argument("--prompt", help="the prompt to trace (default 'a red circle by SUBJECT')")
    p.add_argument("--trace-samples", type=_int(1), default=5, help="noise samples per trace")
    p.add_argument("--samples", type=_int(1), default=24, help="seeds per concept in the evaluation")
    p.add_argument("--no-attack", action="store_true", help="skip the adversarial prompt search")
    p.add_argument("--out", default="out/demo")
    p.set_defaults(func=cmd_demo)

    p = command("toy", "the toy world: `workbench toy train ...`, `workbench toy check ...`, `workbench toy clip "
                "...` (train or --check the toy CLIP)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_toy)
    return parser


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:  # str(KeyError) wraps the message in quotes
        return str(err.args[0])
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.strerror or err}: {err.filename!r}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    from ..progress import set_quiet

    # transformers warns about optional image processors the workbench never uses, on every model load
    hf_logging.set_verbosity_error()

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a bad argument already reported in one line
        return done.code if isinstance(done.code, int) else 2
    set_quiet(args.quiet)
    name = f"workbench {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as done:  # a sub-command's own parser (`workbench toy check`) refused an argument
        return done.code if isinstance(done.code, int) else 2
    except Exception as err:  # every error reaches the user as one line; --debug shows where it came from
        if args.debug:
            raise
        internal = not isinstance(err, ValueError | TypeError | OSError | KeyError | LookupError)
        hint = " (unexpected: rerun with --debug and report the traceback)" if internal else ""
        print(f"{name}: error: {_message(err)}{hint}", file=sys.stderr)
        return 2
    finally:
        set_quiet(False)
