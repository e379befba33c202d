"""Bad input to the editors: one clear, one-line error naming the offending input, raised before any work,
and the model's weights bit-identical afterwards. Plus UCE debiasing matching attributes by name."""

import math
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from editors import EMCIDRequest, ESDRequest, QuickFixRequest, UCERequest, emcid, esd, quickfix, ridge_solve, uce
from editors._checks import UnknownLayerError
from editors.esd import CHECKPOINT
from editors.uce import named_attribute_scorer, parse_debias, parse_debias_specs
from workbench import Workbench
from workbench.delta import tensor_hash
from workbench.toy import classifier, world

NAN, INF = float("nan"), float("inf")
DEBIAS_FORM = "CONCEPT:ATTRIBUTE=RATIO"


@pytest.fixture(scope="module")
def toy():
    return Workbench.toy()


def weights(wb: Workbench) -> dict[str, str]:
    return {f"{part}.{name}": tensor_hash(p.data) for part, module in wb.parts.items()
            for name, p in module.named_parameters()}


@contextmanager
def refused(wb: Workbench | None, exc: type[BaseException], *words: str):
    """The block raises ``exc`` with a one-line message holding every one of ``words``, and leaves ``wb``'s
    weights (and its stack of applied deltas) as they were."""
    before = weights(wb) if wb is not None else None
    applied = len(wb.applied) if wb is not None else 0
    with pytest.raises(exc) as info:
        yield
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    if wb is not None:
        assert weights(wb) == before, "the refused edit changed the model's weights"
        assert len(wb.applied) == applied


# ---------------------------------------------------------------------------------------------- UCE requests
UCE_BAD = [
    (dict(erase=["cat"], preserve=["Cat"]), ValueError, ["'Cat'", "erase", "preserve"]),
    (dict(erase=["van gogh"], preserve=["Van  Gogh"]), ValueError, ["'Van  Gogh'", "both erase"]),
    (dict(erase=["cat", " CAT "]), ValueError, ["erase", "'cat'", "twice"]),
    (dict(moderate=["nude", "nude"]), ValueError, ["moderate", "'nude'", "twice"]),
    (dict(erase=["cat"], preserve=["dog", "Dog"]), ValueError, ["preserve", "'dog'", "twice"]),
    (dict(debias={"doctor": {"warm": 1.0}, "Doctor": {"cool": 1.0}}), ValueError, ["debias", "'doctor'", "twice"]),
    (dict(erase=["cat"], moderate=["cat"]), ValueError, ["'cat'", "erase", "moderate"]),
    (dict(debias={"doctor": {"warm": 1.0}}, preserve=["doctor"]), ValueError, ["'doctor'", "debias", "preserve"]),
    (dict(erase=[""]), ValueError, ["erase[0]", "empty"]),
    (dict(erase=["cat", "   "]), ValueError, ["erase[1]", "whitespace"]),
    (dict(moderate=["nude"], preserve=[""]), ValueError, ["preserve[0]", "empty"]),
    (dict(erase=["cat"], preserve_prompts=[" "]), ValueError, ["preserve_prompts[0]"]),
    (dict(erase=[3]), TypeError, ["erase[0]", "string", "int"]),
    (dict(erase="cat"), TypeError, ["erase", "list of strings", "'cat'"]),
    (dict(erase=["cat"], preserve=[None]), TypeError, ["preserve[0]", "NoneType"]),
    (dict(erase=["cat"], guides=[7]), TypeError, ["guides[0]"]),
    (dict(erase=["cat"], guides=["a dog", "a bird"]), ValueError, ["2 guide", "1 erased"]),
    (dict(debias={3: {"warm": 1.0}}), TypeError, ["debias concept", "int"]),
    (dict(debias={"": {"warm": 1.0}}), ValueError, ["debias concept", "empty"]),
    (dict(debias=["doctor"]), TypeError, ["debias", "dict"]),
    (dict(debias={"doctor": 0.5}), TypeError, ["debias['doctor']", "dict"]),
    (dict(debias={"doctor": {}}), ValueError, ["debias['doctor']", "no attribute"]),
    (dict(debias={"doctor": {"warm": 0.5, "cool": 0.6}}), ValueError, ["'doctor'", "sum to 1.1", "must sum to 1"]),
    (dict(debias={"doctor": {"warm": 0.5}}), ValueError, ["'doctor'", "sum to 0.5"]),
    (dict(debias={"doctor": {"warm": -0.5, "cool": 1.5}}), ValueError, ["'doctor'", "'warm'", ">= 0"]),
    (dict(debias={"doctor": {"warm": NAN, "cool": 0.5}}), ValueError, ["'warm'", "NaN or inf"]),
    (dict(debias={"doctor": {"warm": INF}}), ValueError, ["'warm'", "NaN or inf"]),
    (dict(debias={"doctor": {"warm": "half", "cool": 0.5}}), TypeError, ["'warm'", "number", "str"]),
    (dict(debias={"doctor": {"Warm": 0.5, "warm": 0.5}}), ValueError, ["attributes", "'Warm'", "twice"]),
    (dict(debias={"doctor": {"": 1.0}}), ValueError, ["attribute", "empty"]),
    (dict(erase=["cat"], lam=0), ValueError, ["lam", "> 0", "got 0"]),
    (dict(erase=["cat"], lam=-1.0), ValueError, ["lam", "> 0"]),
    (dict(erase=["cat"], lam=NAN), ValueError, ["lam", "NaN or inf"]),
    (dict(erase=["cat"], lam=INF), ValueError, ["lam", "NaN or inf"]),
    (dict(erase=["cat"], lam="0.5"), TypeError, ["lam", "number", "str"]),
    (dict(erase=["cat"], erase_scale=-1.0), ValueError, ["erase_scale", "> 0"]),
    (dict(erase=["cat"], erase_scale=NAN), ValueError, ["erase_scale", "NaN or inf"]),
    (dict(erase=["cat"], preserve_scale=-0.5), ValueError, ["preserve_scale", ">= 0"]),
    (dict(erase=["cat"], preserve_scale=INF), ValueError, ["preserve_scale", "NaN or inf"]),
    (dict(erase=["cat"], tokens="all"), ValueError, ["tokens", "'all'"]),
    (dict(erase=["cat"], templates=["a photo"]), ValueError, ["templates", "'{}'"]),
    (dict(erase=["cat"], templates=["{} and {}"]), ValueError, ["templates", "'{}'"]),
    (dict(erase=["cat"], templates=["a {0} of {}"]), ValueError, ["'a {0} of {}'", "braces"]),
    (dict(erase=["cat"], templates="a photo of {}"), TypeError, ["templates", "list of strings"]),
    (dict(), ValueError, ["empty UCE request"]),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), UCE_BAD, ids=[str(i) for i in range(len(UCE_BAD))])
def test_uce_request_refused(tiny, kwargs, exc, words):
    with refused(tiny, exc, *words):
        uce.edit(tiny, UCERequest(**kwargs), progress=False)


def test_uce_request_normalises_nothing_it_should_not():
    # a guide equal to its concept, an empty guide and duplicate preserve prompts are all legitimate
    req = UCERequest(erase=["a cat", "a dog"], guides=["a cat", ""], preserve_prompts=["a house", "a house"])
    assert req.guides == ["a cat", ""]
    assert UCERequest(debias={"doctor": {"cool": 1.0}}).debias == {"doctor": {"cool": 1.0}}


ATTN2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def call(editor, wb, request, layers=None, **fields):
    """``editor.edit`` with ``fields`` set on the request first (where a bad value is refused, as a user
    building the request would see it)."""
    if fields:
        request = replace(request, **fields)
    return editor.edit(wb, request, layers, progress=False)


UCE_CALL_BAD = [
    (dict(layers=["unet.nope"]), UnknownLayerError, ["'unet.nope'", "UCE takes", "attn2"]),
    (dict(layers=[ATTN2 + "x"]), UnknownLayerError, ["did you mean", "attn2"]),
    (dict(layers=["unet.down_blocks.0.resnets.0"]), ValueError, ["'unet.down_blocks.0.resnets.0'", "'resnet'",
                                                                 "attn2, to_k, to_v"]),
    (dict(layers=["text.encoder.layers.0.self_attn"]), ValueError, ["is of kind 'self_attn'", "attn2"]),
    (dict(layers=[]), ValueError, ["UCE", "empty"]),
    (dict(layers=[3]), TypeError, ["layers[0]", "int"]),
    (dict(request=UCERequest(erase=[" ".join(["cat"] * 80)])), ValueError, ["UCE erase concept", "tokens long"]),
    (dict(request=UCERequest(erase=["cat"], preserve_prompts=["a " * 80])), ValueError,
     ["preserve_prompts[0]", "tokens long"]),
    (dict(request=UCERequest(debias={"doctor": {"warm": 1.0}})), ValueError, ["attribute_scorer"]),
    (dict(request=UCERequest(debias={"doctor": {"warm": 1.0}}), attribute_scorer="warm"), TypeError,
     ["attribute_scorer", "callable"]),
    (dict(request=UCERequest(debias={"doctor": {"warm": 1.0}}), attribute_scorer=lambda im: {}, max_rounds=0),
     ValueError, ["max_rounds", ">= 1"]),
    (dict(request=UCERequest(debias={"doctor": {"warm": 1.0}}), attribute_scorer=lambda im: {},
          debias_samples=0), ValueError, ["debias_samples", ">= 1"]),
    (dict(request=UCERequest(debias={"doctor": {"warm": 1.0}}), attribute_scorer=lambda im: {}, tolerance=NAN),
     ValueError, ["tolerance", "NaN or inf"]),
    (dict(request={"erase": ["cat"]}), TypeError, ["UCERequest", "dict"]),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), UCE_CALL_BAD, ids=[str(i) for i in range(len(UCE_CALL_BAD))])
def test_uce_call_refused(tiny, kwargs, exc, words):
    kwargs = {"request": UCERequest(erase=["cat"]), **kwargs}
    with refused(tiny, exc, *words):
        call(uce, tiny, **kwargs)


def test_unknown_layer_is_a_key_error_and_a_value_error(tiny):
    with pytest.raises(KeyError):
        uce.edit(tiny, UCERequest(erase=["cat"]), ["unet.nope"], progress=False)
    with pytest.raises(ValueError, match="no layer named 'unet.nope'"):
        uce.edit(tiny, UCERequest(erase=["cat"]), ["unet.nope"], progress=False)


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(erase=["unicorn"]), ["UCE erase concept 'unicorn'", "unknown word", "'unicorn'"]),
    (dict(erase=["circle"], guides=["a unicorn"]), ["UCE guide concept 'a unicorn'", "unknown word"]),
    (dict(erase=["circle"], preserve=["square", "unicorn"]), ["UCE preserve concept 'unicorn'"]),
    (dict(moderate=[world.HAZARD_WORDS[0]], preserve_prompts=["a red unicorn"]),
     ["preserve_prompts[0]", "'a red unicorn'"]),
    (dict(debias={"doctor": {"lukewarm": 1.0}}), ["debias['doctor'] attribute concept 'lukewarm'"]),
    (dict(erase=["circle"], templates=["a {}", "a unicorn {}"]), ["UCE erase concept 'circle'", "'a unicorn"]),
])
def test_uce_vocabulary_refused_on_the_tokenizer(toy, kwargs, words):
    scorer = named_attribute_scorer(lambda im: classifier.score(im)["attribute"], world.ATTRIBUTES)
    with refused(toy, ValueError, *words):
        uce.edit(toy, replace(UCERequest(**kwargs), attribute_scorer=scorer), progress=False)


# ---------------------------------------------------------------------------------------------- debias scorer
def _toy_scores(images):
    return classifier.score(images)["attribute"]


def _counting(fn):
    def scorer(images):
        scorer.calls += 1
        return fn(images)

    scorer.calls = 0
    return scorer


@pytest.mark.parametrize(("scorer", "exc", "words"), [
    (_toy_scores, TypeError, ["mapping", "Tensor of shape (2, 2)", "named_attribute_scorer"]),
    (lambda im: {"warm": _toy_scores(im)[:, 0], "chilly": _toy_scores(im)[:, 1]}, ValueError,
     ["debias['doctor']", "'cool'", "reports 'warm', 'chilly'"]),
    (lambda im: {"warm": _toy_scores(im)[:, 0], "Warm ": _toy_scores(im)[:, 0]}, ValueError, ["'warm'", "'Warm '"]),
    (lambda im: {"warm": _toy_scores(im), "cool": _toy_scores(im)[:, 1]}, ValueError, ["'warm'", "shape (2, 2)",
                                                                                        "(2,)"]),
    (lambda im: {"warm": torch.full((len(im),), NAN), "cool": torch.zeros(len(im))}, ValueError, ["'warm'", "NaN"]),
    (lambda im: {"warm": torch.full((len(im),), 3.0), "cool": torch.zeros(len(im))}, ValueError,
     ["'warm'", "[0, 1]"]),
    (named_attribute_scorer(lambda im: _toy_scores(im)[:, :1], ["warm", "cool"]), ValueError,
     ["named_attribute_scorer", "(2, 1)", "(B, 2)"]),
])
def test_debias_scorer_contract_is_checked_at_the_first_scoring(toy, scorer, exc, words):
    scorer = _counting(scorer)
    with refused(toy, exc, *words):
        uce.edit(toy, replace(UCERequest(debias={"doctor": {"warm": 0.5, "cool": 0.5}}), attribute_scorer=scorer,
                              debias_samples=2, max_rounds=5), progress=False)
    assert scorer.calls == 1  # refused on the first scoring: no round was spent on a broken scorer


def test_a_failing_scorer_leaves_the_model_as_it_was(toy):
    def scorer(images):
        raise RuntimeError("scorer crashed")

    with refused(toy, RuntimeError, "scorer crashed"):
        uce.edit(toy, replace(UCERequest(debias={"doctor": {"warm": 0.5, "cool": 0.5}}), attribute_scorer=scorer,
                              debias_samples=2), progress=False)


def test_debias_matches_attributes_by_name(toy):
    """"warm=1,cool=0" and "cool=1,warm=0" (given in the other order) must correct in opposite directions.

    Matched by position, the second request would read the scorer's warm column as "cool": its recorded
    round-0 ratios would differ from the first request's (same seeds, same unedited model), and its α would
    be computed from the wrong column."""
    scorer = named_attribute_scorer(_toy_scores, world.ATTRIBUTES)
    before = weights(toy)
    runs = {}
    for name, ratios in (("warm", {"warm": 1.0, "cool": 0.0}), ("cool", {"cool": 1.0, "warm": 0.0})):
        delta = uce.edit(toy, replace(UCERequest(debias={"doctor": ratios}), attribute_scorer=scorer, debias_samples=8,
                                      max_rounds=2, tolerance=0.0), progress=False)
        runs[name] = delta.metadata["debias_history"]
        assert len(runs[name]) == 2
    assert weights(toy) == before
    first = {name: history[0]["doctor"]["ratios"] for name, history in runs.items()}
    for attribute in world.ATTRIBUTES:
        assert first["warm"][attribute] == pytest.approx(first["cool"][attribute], abs=1e-6), first
    assert first["warm"]["warm"] > 0.5 > first["warm"]["cool"]  # the toy doctor's warm bias at these seeds
    alpha = {name: history[1]["doctor"]["alpha"] for name, history in runs.items()}  # the first correction
    for name in runs:
        for attribute in world.ATTRIBUTES:  # α = requested - measured, attribute by attribute, by name
            want = 1.0 if attribute == name else 0.0
            assert alpha[name][attribute] == pytest.approx(want - first[name][attribute], abs=1e-5)
    assert alpha["warm"]["warm"] > 0 > alpha["cool"]["warm"]
    assert alpha["cool"]["cool"] > 0 > alpha["warm"]["cool"]
    # and the two edits move the doctor apart: fewer warm doctors after the cool correction
    second = {name: history[1]["doctor"]["ratios"]["warm"] for name, history in runs.items()}
    assert second["cool"] < first["cool"]["warm"] <= second["warm"] + 1e-6, (first, second)


# ---------------------------------------------------------------------------------------------- parse_debias
@pytest.mark.parametrize(("spec", "why"), [
    ("doctor", "no ':'"),
    ("doctor:", "no ATTRIBUTE=RATIO"),
    ("doctor:  ", "no ATTRIBUTE=RATIO"),
    ("doctor:warm", "'warm' is not ATTRIBUTE=RATIO"),
    ("doctor:warm=x", "'x', not a number"),
    ("doctor:warm=", "'', not a number"),
    ("doctor:warm=0.5,warm=0.5", "'warm' is given twice"),
    ("doctor:warm=0.5,WARM=0.5", "'WARM' is given twice"),
    ("doctor:warm=0.6,cool=0.6", "sum to 1.2"),
    ("doctor:warm=-1,cool=2", ">= 0"),
    ("doctor:warm=nan,cool=0.5", "NaN or inf"),
    ("doctor:warm=1,", "stray ','"),
    (":warm=1", "no concept"),
    ("doctor:cool:warm=1", "more than one ':'"),
    ("doctor:=1", "no attribute name"),
])
def test_parse_debias_refuses(spec, why):
    with refused(None, ValueError, repr(spec), why, DEBIAS_FORM):
        parse_debias(spec)


def test_parse_debias_reads_the_cli_form():
    assert parse_debias("doctor:warm=0.5,cool=0.5") == ("doctor", {"warm": 0.5, "cool": 0.5})
    assert parse_debias(" van  gogh : cool = 1 ") == ("van gogh", {"cool": 1.0})
    assert parse_debias_specs(["doctor:warm=1", "nurse:cool=0.25,warm=0.75"]) == {
        "doctor": {"warm": 1.0}, "nurse": {"cool": 0.25, "warm": 0.75}}
    with refused(None, ValueError, "'Doctor:cool=1'", "'Doctor' already has ratios (warm=1)"):
        parse_debias_specs(["doctor:warm=1", "Doctor:cool=1"])
    with refused(None, TypeError, "debias spec", "string"):
        parse_debias(["doctor:warm=1"])


# ---------------------------------------------------------------------------------------------- Diff-QuickFix
QF_BAD = [
    (dict(sources=[], targets=[]), ValueError, ["empty QuickFix request"]),
    (dict(sources=["cat"], targets=["dog", "bird"]), ValueError, ["1 sources but 2 targets"]),
    (dict(sources=["cat", "Cat"], targets=["dog", "bird"]), ValueError, ["sources", "'cat'", "'Cat'", "twice"]),
    (dict(sources=["cat"], targets=[" CAT"]), ValueError, ["pair 0", "'cat'", "' CAT'", "same concept"]),
    (dict(sources=[""], targets=["dog"]), ValueError, ["sources[0]", "empty"]),
    (dict(sources=["cat"], targets=["  "]), ValueError, ["targets[0]", "whitespace"]),
    (dict(sources=[1], targets=["dog"]), TypeError, ["sources[0]", "int"]),
    (dict(sources="cat", targets="dog"), TypeError, ["sources", "list of strings"]),
    (dict(sources=["cat"], targets=["dog"], lam=0), ValueError, ["lam", "> 0"]),
    (dict(sources=["cat"], targets=["dog"], lam=NAN), ValueError, ["lam", "NaN or inf"]),
    (dict(sources=["cat"], targets=["dog"], preserve_scale=-1), ValueError, ["preserve_scale", ">= 0"]),
    (dict(sources=["cat"], targets=["dog"], templates=["a photo"]), ValueError, ["templates", "'{}'"]),
    (dict(sources=["cat"], targets=["dog"], templates=["{} {}"]), ValueError, ["templates", "'{}'"]),
    (dict(sources=["cat"], targets=["dog"], eos="yes"), TypeError, ["eos", "True or False"]),
    (dict(sources=["cat"], targets=["dog"], preserve_prompts=[""]), ValueError, ["preserve_prompts[0]"]),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), QF_BAD, ids=[str(i) for i in range(len(QF_BAD))])
def test_quickfix_request_refused(tiny, kwargs, exc, words):
    with refused(tiny, exc, *words):
        quickfix.edit(tiny, QuickFixRequest(**kwargs))


@pytest.mark.parametrize(("layers", "exc", "words"), [
    (["text.encoder.layers.0", "text.encoder.layers.1"], ValueError, ["single layer", "got 2"]),
    ([], ValueError, ["Diff-QuickFix", "empty"]),
    (["text.encoder.layers.0.self_atn"], UnknownLayerError, ["'text.encoder.layers.0.self_atn'", "did you mean",
                                                             "self_attn.out_proj"]),
    ([ATTN2], ValueError, ["is of kind 'attn2'", "out_proj, self_attn, hidden"]),
    (["text.encoder.layers.0.mlp.fc2"], ValueError, ["is of kind 'fc2'", "out_proj"]),
    ([0], TypeError, ["layers[0]", "int"]),
])
def test_quickfix_layers_refused(tiny, layers, exc, words):
    with refused(tiny, exc, *words):
        quickfix.edit(tiny, QuickFixRequest(["cat"], ["dog"]), layers)


def test_quickfix_vocabulary_refused(toy):
    with refused(toy, ValueError, "QuickFix source 'unicorn'", "unknown word"):
        quickfix.edit(toy, QuickFixRequest(["circle", "unicorn"], ["square", "star"]))
    with refused(toy, ValueError, "QuickFix target 'a unicorn'"):
        quickfix.edit(toy, QuickFixRequest(["circle"], ["a unicorn"]))


# ---------------------------------------------------------------------------------------------- EMCID
EMCID_BAD = [
    (dict(edits=[("cat", "dog"), ("Cat", "bird")]), ValueError, ["edit 1", "'Cat'", "rewritten twice", "'bird'"]),
    (dict(edits=[("cat", "CAT")]), ValueError, ["edit 0", "both 'cat'"]),
    (dict(edits=[("cat", "dog", ["a cat"]), ("CAT", "Dog", ["a photo of a cat"])]), ValueError,
     ["edit 1", "different prompts"]),
    (dict(edits={}), TypeError, ["edits", "list", "dict"]),
    (dict(edits="cat"), TypeError, ["edits", "list", "str"]),
    (dict(edits=[]), ValueError, ["empty EMCID request"]),
    (dict(edits=[["cat"]]), ValueError, ["edit 0", "a list of 1", "[source, destination]"]),
    (dict(edits=[("cat", "dog"), ("a", "b", ["a {}"], "d")]), ValueError, ["edit 1", "a list of 4"]),
    (dict(edits=[{"source": "cat"}]), ValueError, ["edit 0", "destination"]),
    (dict(edits=[{"source": "cat", "destination": "dog", "prompt": ["a {}"]}]), ValueError, ["edit 0", "prompt"]),
    (dict(edits=[(3, "dog")]), TypeError, ["edit 0", "source", "int"]),
    (dict(edits=[("cat", " ")]), ValueError, ["edit 0", "destination"]),
    (dict(edits=[("cat", "dog", [1])]), TypeError, ["edit 0", "prompts[0]", "int"]),
    (dict(edits=[("cat", "dog", "a {}")]), ValueError, ["edit 0", "prompts must be a non-empty list"]),
    (dict(edits=[("cat", "dog")], steps="ten"), TypeError, ["steps", "integer", "'ten'"]),
    (dict(edits=[("cat", "dog")], steps=-1), ValueError, ["steps", ">= 0"]),
    (dict(edits=[("cat", "dog")], steps=2.5), TypeError, ["steps", "integer"]),
    (dict(edits=[("cat", "dog")], noise_samples=0), ValueError, ["noise_samples", ">= 1"]),
    (dict(edits=[("cat", "dog")], sample_steps=0), ValueError, ["sample_steps", ">= 1"]),
    (dict(edits=[("cat", "dog")], lam=NAN), ValueError, ["lam", "NaN or inf"]),
    (dict(edits=[("cat", "dog")], lam=-1.0), ValueError, ["lam", ">= 0"]),
    (dict(edits=[("cat", "dog")], ridge=0.0), ValueError, ["ridge", "> 0"]),
    (dict(edits=[("cat", "dog")], lr=0), ValueError, ["lr", "> 0"]),
    (dict(edits=[("cat", "dog")], clamp=INF), ValueError, ["clamp", "NaN or inf"]),
    (dict(edits=[("cat", "dog")], edit_weight=1.5), ValueError, ["edit_weight", "<= 1"]),
    (dict(edits=[("cat", "dog")], samples="images"), ValueError, ["samples", "'images'", "source"]),
    (dict(edits=[("cat", "dog")], templates=["a photo"]), ValueError, ["templates", "'{}'"]),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), EMCID_BAD, ids=[str(i) for i in range(len(EMCID_BAD))])
def test_emcid_request_refused(tiny, kwargs, exc, words):
    with refused(tiny, exc, *words):
        emcid.edit(tiny, replace(EMCIDRequest(**kwargs), captions=["a cat"]), progress=False)


def test_emcid_repeats_are_compared_as_the_tokenizer_sees_them():
    req = EMCIDRequest([("cat", "dog", ["a Cat"]), ("CAT ", "Dog", ["a  cat"]), ("a car", "a tree")])
    assert req.sources == ["cat", "a car"]
    assert req.edits[0].prompts == ("a {}",)


@pytest.mark.parametrize(("content", "words"), [
    ("{edits: [", ["not valid JSON", "line 1"]),
    ('"cat"', ["holds a string"]),
    ("3", ["holds a number"]),
    ("null", ["holds null"]),
    ('{"edits": [["cat", "dog"]], "stepz": 3}', ["unknown key 'stepz'", "steps"]),
    ('{"steps": 3}', ["no 'edits' key"]),
    ('{"edits": [["cat", "dog"]], "steps": "ten"}', ["steps", "integer", "'ten'"]),
    ('{"edits": {}}', ["edits", "list", "dict"]),
    ('{"edits": [["cat", "dog"], ["cat"]]}', ["edit 1", "a list of 1"]),
    ('[["cat", "dog", "bird", "fish"]]', ["edit 0", "a list of 4"]),
    ('[{"source": "cat", "destination": 5}]', ["edit 0", "destination", "int"]),
    ('{"edits": [["cat", "dog"]], "lam": -1}', ["lam", ">= 0"]),
])
def test_emcid_requests_file_refused(tmp_path, content, words):
    path = tmp_path / "requests.json"
    path.write_text(content)
    with refused(None, ValueError, str(path), *words):
        EMCIDRequest.load(path)


def test_emcid_requests_file_missing(tmp_path):
    with refused(None, FileNotFoundError, "no EMCID requests file", "nothing.json"):
        EMCIDRequest.load(tmp_path / "nothing.json")
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with refused(None, ValueError, str(path)):
        EMCIDRequest.load(path)


@pytest.mark.parametrize(("options", "exc", "words"), [
    (dict(layers=["text.encoder.layers.9"]), UnknownLayerError, ["'text.encoder.layers.9'", "EMCID takes", "fc2"]),
    (dict(layers=["text.encoder.layers.0.self_attn"]), ValueError, ["is of kind 'self_attn'", "fc2, mlp, hidden"]),
    (dict(layers=[ATTN2]), ValueError, ["is of kind 'attn2'", "fc2"]),
    (dict(batch_concepts=0), ValueError, ["batch_concepts", ">= 1"]),
    (dict(covariance={"text.encoder.layers.2.mlp.fc2": torch.eye(3)}), ValueError,
     ["covariance['text.encoder.layers.2.mlp.fc2']", "(3, 3)"]),
    (dict(covariance={}), ValueError, ["no preserve covariance", "text.encoder.layers.2.mlp.fc2"]),
    (dict(captions=[1, 2]), TypeError, ["captions[0]", "int"]),
    (dict(captions=["", " "]), ValueError, ["empty caption corpus"]),
])
def test_emcid_call_refused(tiny, options, exc, words):
    request = EMCIDRequest([("cat", "dog")], steps=1, sample_steps=1, noise_samples=1)
    with refused(tiny, exc, *words):
        call(emcid, tiny, request, **{"captions": ["a cat", "a dog"], **options})


# ---------------------------------------------------------------------------------------------- ESD
ESD_BAD = [
    (dict(iterations=0), ValueError, ["iterations", ">= 1"]),
    (dict(iterations="10"), TypeError, ["iterations", "integer", "str"]),
    (dict(iterations=1.5), TypeError, ["iterations", "integer"]),
    (dict(lr=0), ValueError, ["lr", "> 0"]),
    (dict(lr=-1e-5), ValueError, ["lr", "> 0"]),
    (dict(lr=INF), ValueError, ["lr", "NaN or inf"]),
    (dict(negative_guidance=NAN), ValueError, ["negative_guidance must be finite"]),
    (dict(sample_guidance=INF), ValueError, ["sample_guidance must be finite"]),
    (dict(method="esd-z"), ValueError, ["'esd-z'", "esd-x, esd-x-strict, esd-u"]),
    (dict(erase=3), TypeError, ["erase", "int"]),
    (dict(erase=""), ValueError, ["empty ESD request"]),
    (dict(erase_from=" "), ValueError, ["erase_from is empty"]),
    (dict(erase_from=["hat"]), TypeError, ["erase_from", "list"]),
    (dict(seed=-1), ValueError, ["seed", ">= 0"]),
    (dict(ddim_steps=0), ValueError, ["ddim_steps", ">= 1"]),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), ESD_BAD, ids=[str(i) for i in range(len(ESD_BAD))])
def test_esd_request_refused(tiny, kwargs, exc, words):
    kwargs = {"erase": "cat", "iterations": 1, **kwargs}
    with refused(tiny, exc, *words):
        esd.edit(tiny, ESDRequest(**kwargs), progress=False)


@pytest.mark.parametrize(("layers", "options", "exc", "words"), [
    (None, dict(checkpoint_every=0), ValueError, ["checkpoint_every", ">= 1"]),
    (None, dict(resume=True), ValueError, ["resume=True needs", "checkpoint_dir"]),
    (None, dict(resume="yes"), TypeError, ["resume", "True or False"]),
    (["unet.down_blocks.0.nope"], {}, UnknownLayerError, ["'unet.down_blocks.0.nope'", "ESD takes", "UNet"]),
    (["text.encoder.layers.0.self_attn"], {}, ValueError, ["'text.encoder.layers.0.self_attn'", "text encoder"]),
    ([], {}, ValueError, ["ESD", "empty"]),
])
def test_esd_call_refused(tiny, layers, options, exc, words):
    with refused(tiny, exc, *words):
        call(esd, tiny, ESDRequest("cat", method="esd-x", iterations=1), layers=layers, **options)


def test_esd_checkpoint_refusals(tiny, tmp_path):
    req = ESDRequest("cat", method="esd-x-strict", iterations=1, ddim_steps=2)
    folder = tmp_path / "run"
    esd.edit(tiny, replace(req, checkpoint_dir=folder, checkpoint_every=1), progress=False)
    with refused(tiny, ValueError, "belongs to another run", "erase 'cat' there, 'dog' here"):
        esd.edit(tiny, replace(ESDRequest("dog", method="esd-x-strict", iterations=1, ddim_steps=2),
                               checkpoint_dir=folder, resume=True), progress=False)
    with refused(tiny, ValueError, "belongs to another run", "method 'esd-x-strict' there, 'esd-x' here"):
        esd.edit(tiny, replace(ESDRequest("cat", method="esd-x", iterations=1, ddim_steps=2), checkpoint_dir=folder,
                               resume=True), progress=False)
    with refused(tiny, ValueError, "belongs to another run", "parameter set"):
        esd.edit(tiny, replace(req, checkpoint_dir=folder, resume=True), [ATTN2], progress=False)
    other = Workbench.random("tiny", seed=1)
    with refused(other, ValueError, "belongs to another run", "model weights differ"):
        esd.edit(other, replace(req, checkpoint_dir=folder, resume=True), progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CHECKPOINT).write_bytes(b"not a safetensors file")
    with refused(tiny, ValueError, str(broken / CHECKPOINT), "cannot be read"):
        esd.edit(tiny, replace(req, checkpoint_dir=broken, resume=True), progress=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with refused(tiny, ValueError, "checkpoint_dir", "is a file"):
        esd.edit(tiny, replace(req, checkpoint_dir=a_file), progress=False)


# ---------------------------------------------------------------------------------------------- ridge_solve
def _w():
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), lam=0.0), ["singular", "1 edit key", "3 input",
                                                                      "larger lam"]),
    (dict(keys=torch.ones(2, 3), values=torch.ones(2, 4), lam=1e-300), ["singular", "larger lam"]),
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), preserve_keys=torch.ones(1, 3), lam=0.0),
     ["singular", "1 preserve key"]),
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), lam=NAN), ["lam", "NaN or inf"]),
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), lam=-1.0), ["lam", ">= 0"]),
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), edit_scale=INF), ["edit_scale", "NaN or inf"]),
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), preserve_scale=NAN), ["preserve_scale", "NaN or inf"]),
    (dict(keys=torch.full((1, 3), INF), values=torch.ones(1, 4)), ["keys", "NaN or inf"]),
    (dict(keys=torch.ones(1, 3), values=torch.ones(1, 4), preserve_cov=torch.eye(4)), ["preserve_cov", "(3 × 3)"]),
])
def test_ridge_solve_refuses(kwargs, words):
    with refused(None, ValueError, *words):
        ridge_solve(_w(), **kwargs)


def test_ridge_solve_with_lam_zero_and_enough_keys_still_solves():
    keys = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    new = ridge_solve(_w(), keys, keys @ _w().T * 2, lam=0.0)
    assert math.isclose(float((new - 2 * _w()).abs().max()), 0.0, abs_tol=1e-4)

