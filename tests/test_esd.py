"""ESD fine-tuning on the tiny random model: the objective, the parameter sets, resume, bad input."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors import safe_open

from editors import ESDRequest, esd
from editors.esd import CHECKPOINT, esd_loss, parameter_names

PROMPT = "a red circle"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Many tiny forwards: a second thread gains nothing and, on a busy machine, costs up to 8x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def request(**kw) -> ESDRequest:
    # lr far above the paper's 1e-5 so a few steps move a random model measurably; 3 DDIM steps keep it fast
    return ESDRequest(PROMPT, **{"iterations": 4, "lr": 1e-3, "ddim_steps": 3, **kw})


def snapshot(wb) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.clone() for part, m in wb.parts.items() for k, v in m.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def trained(tiny):
    req = request(iterations=30)
    return req, esd.edit(tiny, req, progress=False)


def test_loss_decreases(tiny, trained):
    req, delta = trained
    held_out = range(10_000, 10_008)  # x_t the run never trained on
    before, after = esd_loss(tiny, req, held_out), esd_loss(tiny, req, held_out, delta)
    assert after < 0.5 * before, (before, after)
    losses = delta.metadata["losses"]
    assert len(losses) == 30 and sum(losses[-10:]) < sum(losses[:10])


def test_the_edit_points_away_from_the_concept(tiny, trained):
    # Checked with plain forwards, not the editor's code: on fresh noise at the sampler's first timestep,
    # the edit moves ε(c) against the concept direction ε*(c) − ε*(∅), as the target asks (−(1 + η) times it).
    _, delta = trained
    tiny.scheduler.set_timesteps(3)
    t = tiny.scheduler.timesteps[0]
    x = torch.randn(8, *tiny.latent_shape, generator=torch.Generator().manual_seed(123))
    ctx = tiny.encode(["", PROMPT])
    with torch.no_grad():
        uncond, cond = (tiny.unet(x, t, encoder_hidden_states=c.expand(8, -1, -1)).sample for c in ctx)
        with delta.applied(tiny):
            edited = tiny.unet(x, t, encoder_hidden_states=ctx[1].expand(8, -1, -1)).sample
    cos = torch.nn.functional.cosine_similarity((edited - cond).flatten(1), (cond - uncond).flatten(1))
    assert (cos < -0.5).all(), cos


def test_target_formula(tiny):
    # At the original weights the prediction on c_from is ε*(c_from), so the loss is
    # ‖(1 + η)(ε*(c) − ε*(∅))‖²: scaling with (1 + η)², on the same x_t whatever η is.
    steps = range(3)
    for erase_from in (None, "a blue square"):
        base = esd_loss(tiny, request(erase_from=erase_from, negative_guidance=0.0), steps)
        three = esd_loss(tiny, request(erase_from=erase_from, negative_guidance=3.0), steps)
        assert base > 0
        assert three / base == pytest.approx(16.0, rel=1e-4)
    # erasing "circle" from "a red circle" keeps the prompt's own prediction as the anchor: a different
    # target from erasing the whole prompt
    # a v-prediction model with trailing timesteps, as the toy world is: same arithmetic, its own space
    v_model = copy.copy(tiny)
    v_model.scheduler = DDIMScheduler.from_config({**tiny.scheduler.config, "prediction_type": "v_prediction",
                                                   "timestep_spacing": "trailing", "clip_sample": True})
    base = esd_loss(v_model, request(negative_guidance=0.0), steps)
    assert esd_loss(v_model, request(negative_guidance=3.0), steps) / base == pytest.approx(16.0, rel=1e-4)
    assert base != pytest.approx(esd_loss(tiny, request(negative_guidance=0.0), steps))
    erase_part = ESDRequest("circle", erase_from=PROMPT, iterations=1, ddim_steps=3)
    assert esd_loss(tiny, erase_part, steps) != pytest.approx(esd_loss(tiny, request(), steps))


def expected_names(wb, method: str) -> set[str]:
    """The parameter sets, re-derived from the module names independently of the editor."""
    names = [f"unet.{n}" for n, _ in wb.unet.named_parameters()]
    if method == "esd-x":
        return {n for n in names if ".attn2." in n}
    if method == "esd-x-strict":
        return {n for n in names if ".attn2.to_k." in n or ".attn2.to_v." in n}
    if method == "esd-u":
        return {n for n in names if ".attn2." not in n}
    return set(names)


@pytest.mark.parametrize("method", ["esd-x", "esd-x-strict", "esd-u", "esd-all", "located"])
def test_only_the_chosen_parameters_change(tiny, method):
    before = snapshot(tiny)
    layers = None
    if method == "located":
        layers = [tiny.layers("attn2")[1], tiny.layers("resnet")[0]]
        want = {n for n in expected_names(tiny, "esd-all") if n.startswith(tuple(f"{layer}." for layer in layers))}
    else:
        want = expected_names(tiny, method)
    delta = esd.edit(tiny, request(method=method, iterations=2), layers, progress=False)
    assert set(delta.names) == want and want
    moved = [n for n in delta.names if not torch.equal(delta.tensors[n], before[n])]
    assert len(moved) == len(want), set(want) - set(moved)
    assert_same(snapshot(tiny), before)  # the wrapper is left as it was
    assert all(not p.requires_grad for m in tiny.parts.values() for p in m.parameters())
    with delta.applied(tiny):
        after = snapshot(tiny)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == want


def test_interrupted_trained_forward_leaves_the_wrapper_as_it_was(tiny):
    before = snapshot(tiny)
    objects = {n: p for n, p in tiny.unet.named_parameters()}
    to_k = tiny.module(tiny.layers("to_k")[0])

    def interrupt(module, _inputs, _output):
        if not isinstance(module.weight, torch.nn.Parameter):  # the trained slice is swapped in
            raise KeyboardInterrupt

    handle = to_k.register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            esd.edit(tiny, request(method="esd-x-strict"), progress=False)
    finally:
        handle.remove()
    assert all(p is objects[n] for n, p in tiny.unet.named_parameters())
    assert_same(snapshot(tiny), before)


def test_layers_narrow_a_method(tiny):
    layer = tiny.layers("attn2")[0]
    assert parameter_names(tiny, "esd-x-strict", [layer]) == [f"{layer}.to_k.weight", f"{layer}.to_v.weight"]
    assert set(parameter_names(tiny, "located", [layer])) == set(parameter_names(tiny, "esd-x", [layer]))


def test_deterministic(tiny):
    a = esd.edit(tiny, request(iterations=3), progress=False)
    b = esd.edit(tiny, request(iterations=3), progress=False)
    c = esd.edit(tiny, request(iterations=3, seed=1), progress=False)
    assert_same(a.tensors, b.tensors)
    assert a.metadata["losses"] == b.metadata["losses"]
    assert any(not torch.equal(a.tensors[n], c.tensors[n]) for n in a.names)


def interrupt_at(monkeypatch, at: int, exc: BaseException) -> None:
    step = esd._Trainer.step

    def failing(self, i):
        if i == at:
            raise exc
        return step(self, i)

    monkeypatch.setattr(esd._Trainer, "step", failing)


def test_resume_equals_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    req = request(method="esd-u", iterations=7)
    full = esd.edit(tiny, replace(req, checkpoint_dir=tmp_path / "full", checkpoint_every=2), progress=False)

    with monkeypatch.context() as m:
        interrupt_at(m, 5, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            esd.edit(tiny, replace(req, checkpoint_dir=tmp_path / "cut", checkpoint_every=2), progress=False)
    with safe_open(str(tmp_path / "cut" / CHECKPOINT), "pt") as f:
        assert json.loads(f.metadata()["esd_checkpoint"])["step"] == 4  # steps 4 and 5 are lost, no more
    with pytest.raises(FileExistsError, match="resume=True"):
        esd.edit(tiny, replace(req, checkpoint_dir=tmp_path / "cut"), progress=False)
    resumed = esd.edit(tiny, replace(req, checkpoint_dir=tmp_path / "cut", checkpoint_every=2, resume=True),
                       progress=False)
    assert resumed.metadata["resumed_from"] == 4
    assert_same(resumed.tensors, full.tensors)
    assert resumed.metadata["losses"] == full.metadata["losses"]

    # a finished shorter run extends to the longer one
    esd.edit(tiny, replace(request(method="esd-u", iterations=4), checkpoint_dir=tmp_path / "ext", checkpoint_every=3),
             progress=False)
    extended = esd.edit(tiny, replace(req, checkpoint_dir=tmp_path / "ext", checkpoint_every=3, resume=True),
                        progress=False)
    assert_same(extended.tensors, full.tensors)

    with pytest.raises(ValueError, match="belongs to another run"):
        esd.edit(tiny, replace(request(method="esd-u", iterations=7, lr=2e-3), checkpoint_dir=tmp_path / "cut",
                               resume=True), progress=False)


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="unknown ESD method 'esd-z'"):
        request(method="esd-z")
    with pytest.raises(ValueError, match="unknown ESD method"):
        parameter_names(tiny, "xattn")
    with pytest.raises(ValueError, match="lr must be"):
        request(lr=float("nan"))
    with pytest.raises(ValueError, match="negative_guidance must be finite"):
        request(negative_guidance=float("inf"))
    with pytest.raises(ValueError, match="empty ESD request"):
        ESDRequest("  ")
    with pytest.raises(ValueError, match="no parameters to train"):
        esd.edit(tiny, request(method="esd-x"), [tiny.layers("resnet")[0]], progress=False)
    with pytest.raises(ValueError, match="no parameters to train"):
        esd.edit(tiny, request(method="esd-x-strict"), [tiny.layers("ff")[0]], progress=False)
    with pytest.raises(ValueError, match="give them"):
        esd.edit(tiny, request(method="located"), progress=False)
    with pytest.raises(ValueError, match="text encoder"):
        esd.edit(tiny, request(method="located"), [tiny.layers("self_attn")[0]], progress=False)
    with pytest.raises(KeyError, match="no layer named"):
        esd.edit(tiny, request(method="located"), ["unet.down_blocks.0.nope"], progress=False)
    with pytest.raises(ValueError, match="resume=True needs"):
        esd.edit(tiny, replace(request(), resume=True), progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    before = snapshot(tiny)
    req = request(iterations=6)
    loss = esd._Trainer.loss

    def poisoned(self, i):
        out = loss(self, i)
        return out * float("nan") if i == 3 else out

    with monkeypatch.context() as m:
        m.setattr(esd._Trainer, "loss", poisoned)
        with pytest.raises(FloatingPointError, match=r"loss became nan at step 3.*checkpoint \(step 2\)"):
            esd.edit(tiny, replace(req, checkpoint_dir=tmp_path, checkpoint_every=2), progress=False)
    assert_same(snapshot(tiny), before)
    # the kept checkpoint is the clean run's state after 2 steps: resuming from it finishes the clean run
    resumed = esd.edit(tiny, replace(req, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True), progress=False)
    assert resumed.metadata["resumed_from"] == 2
    assert_same(resumed.tensors, esd.edit(tiny, req, progress=False).tensors)

    # a learning rate that really diverges
    with pytest.raises(FloatingPointError, match="try a lower lr"):
        esd.edit(tiny, request(lr=1e30), progress=False)
    assert_same(snapshot(tiny), before)
