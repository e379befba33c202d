"""One editor interface: every module of the registry has the same ``edit`` and a request dataclass that holds
every setting, and the CLI reaches every setting (each README recipe, rebuilt from the command line, is the
same request)."""

import dataclasses
import inspect
import types

import pytest

import editors
from editors import EDITORS
from workbench.app.cli import _flag, build_parser, main
from workbench.toy import recipes


class Captured(Exception):
    def __init__(self, request, layers):
        super().__init__("captured")
        self.request, self.layers = request, layers


@pytest.fixture(scope="module")
def toy():
    from workbench import Workbench

    return Workbench.toy()


def capture(monkeypatch, module) -> None:
    def fake(wb, request, layers=None, *, progress=True):
        raise Captured(request, layers)

    monkeypatch.setattr(module, "edit", fake)


def test_every_editor_has_the_same_interface():
    assert set(EDITORS) == {"uce", "quickfix", "emcid", "esd"}
    for name, module in EDITORS.items():
        assert isinstance(module, types.ModuleType) and module is getattr(editors, name)
        assert not inspect.isfunction(getattr(module, name, None)), f"editors.{name}.{name} shadows its module"
        params = inspect.signature(module.edit).parameters
        assert list(params) == ["wb", "request", "layers", "progress"], name
        assert params["layers"].default is None and params["progress"].default is True
        assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY
        assert dataclasses.is_dataclass(module.REQUEST)
        assert module.LAYER_KINDS is None or all(isinstance(k, str) for k in module.LAYER_KINDS)


def test_edit_refuses_another_editors_request(tiny):
    other = {"uce": editors.QuickFixRequest(["cat"], ["dog"]), "quickfix": editors.UCERequest(erase=["cat"]),
             "emcid": editors.ESDRequest("cat"), "esd": editors.EMCIDRequest([("cat", "dog")])}
    for name, module in EDITORS.items():
        with pytest.raises(TypeError, match=module.REQUEST.__name__):
            module.edit(tiny, other[name], progress=False)


def test_only_callables_and_tensors_stay_off_the_command_line():
    off = {(name, f.name) for name, m in EDITORS.items() for f in dataclasses.fields(m.REQUEST)
           if not f.metadata.get("cli", True)}
    assert off == {("uce", "attribute_scorer"), ("emcid", "covariance")}
    parser = build_parser()
    edit = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["edit"]
    per_editor = next(a for a in edit._subparsers._group_actions if a.dest == "editor").choices
    for name, module in EDITORS.items():
        dests = {a.dest for a in per_editor[name]._actions}
        for f in dataclasses.fields(module.REQUEST):
            assert (f"req_{f.name}" in dests) == f.metadata.get("cli", True), (name, f.name)
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"


def test_options_not_given_leave_the_dataclass_defaults(monkeypatch, tmp_path):
    minimal = {"uce": (["--erase", "circle"], editors.UCERequest(erase=["circle"])),
               "quickfix": (["--erase", "circle", "--target", "square"],
                            editors.QuickFixRequest(["circle"], ["square"])),
               "esd": (["--erase", "circle"], editors.ESDRequest("circle"))}
    for name, (argv, expected) in minimal.items():
        capture(monkeypatch, EDITORS[name])
        with pytest.raises(Captured) as got:
            main(["edit", name, "--model", "tiny", "--debug", *argv, "--out", str(tmp_path / "d.safetensors")])
        assert got.value.request == expected and got.value.layers is None, name


def _argv(request, tmp_path) -> list[str]:
    """The command-line options that rebuild ``request``: every field that differs from its default."""
    out = []
    for f in dataclasses.fields(request):
        if not f.metadata.get("cli", True):
            continue
        value = getattr(request, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default:
            continue
        flag = _flag(f)
        if f.metadata.get("file"):
            path = tmp_path / f"{f.name}.txt"
            path.write_text("\n".join(value) + "\n")
            out += [flag, str(path)]
        elif isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):  # UCE debias: CONCEPT:attr=ratio,...
            for concept, ratios in value.items():
                out += [flag, f"{concept}:" + ",".join(f"{a}={r!r}" for a, r in ratios.items())]
        elif isinstance(value, list):
            for item in value:
                out += [flag, item]
        else:
            out += [flag, str(value)]
    return out


@pytest.mark.parametrize("recipe", list(recipes.RECIPES))
def test_every_readme_recipe_is_reachable_from_the_cli(recipe, toy, monkeypatch, tmp_path):
    module = EDITORS["uce" if recipe.startswith("UCE") else "quickfix"]
    capture(monkeypatch, module)
    with pytest.raises(Captured) as made:
        recipes.RECIPES[recipe](toy)
    layers = ["--layer", made.value.layers[0]] if made.value.layers else []
    argv = ["edit", module.__name__.split(".")[-1], "--model", "toy", "--debug",
            *_argv(made.value.request, tmp_path), *layers, "--out", str(tmp_path / "d.safetensors")]
    with pytest.raises(Captured) as typed:
        main(argv)
    assert typed.value.request == made.value.request, argv
    expected_layers = [toy.layer(name).name for name in made.value.layers] if made.value.layers else None
    assert typed.value.layers == expected_layers


def test_a_bad_value_names_the_option(capsys, tmp_path):
    assert main(["edit", "uce", "--model", "tiny", "--erase", "cat", "--lam", "0", "--out",
                 str(tmp_path / "d.safetensors")]) == 2
    assert "--lam: UCE lam must be" in capsys.readouterr().err
    assert main(["edit", "uce", "--model", "tiny", "--erase", "cat", "--preserve-prompts", str(tmp_path / "no.txt"),
                 "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "--preserve-prompts: no file at" in capsys.readouterr().err


def test_the_trace_command_reaches_every_trace_setting(monkeypatch, tmp_path):
    import tracing
    from workbench.app.cli import TRACE_SETTINGS

    fields = {f.name for f in dataclasses.fields(tracing.TraceSettings)}
    assert set(TRACE_SETTINGS) == fields - {"progress"}  # progress follows --quiet
    seen = {}

    def fake(wb, prompt, subject, *, settings=None, scorer=None, **part):
        seen.update(settings=settings, part=part)
        raise Captured(settings, None)

    monkeypatch.setattr(tracing, "trace_text_encoder", fake)
    with pytest.raises(Captured):
        main(["trace", "--model", "tiny", "--debug", "--prompt", "a cat", "--subject", "cat", "--samples", "2",
              "--noise", "2.5", "--std", "0.1", "--seed", "3", "--draws", "4", "--steps", "5", "--guidance", "2",
              "--batch-size", "6", "--metric", "text", "--out", str(tmp_path / "t")])
    assert seen["settings"] == tracing.TraceSettings(metric="text", samples=2, noise=2.5, std=0.1, seed=3, draws=4,
                                                     steps=5, guidance=2.0, batch_size=6)
    with pytest.raises(Captured):
        main(["trace", "--model", "tiny", "--debug", "--prompt", "a cat", "--subject", "cat", "--out",
              str(tmp_path / "u")])
    assert seen["settings"] == tracing.TraceSettings()
