"""WeightDelta integrity: damaged, altered or foreign delta files and inconsistent deltas are refused with one
clear error naming the file and the tensor, and a refused (or failing) apply leaves the model bit-identical."""

import hashlib
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench import WeightDelta, Workbench
from workbench.delta import tensor_hash

K = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # (64, 32) in tiny
V = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
OUT = "text.encoder.layers.0.self_attn.out_proj.weight"


def _model():
    return Workbench.random("tiny", seed=0, vae=False)


def _delta(wb):
    return WeightDelta.capture(wb, {K: wb.parameter(K) * 2.0, V: wb.parameter(V) - 0.5, OUT: wb.parameter(OUT) + 1.0},
                               method="test", concepts=["cat"])


def _weights(wb):
    return {f"{part}.{n}": tensor_hash(t) for part, m in wb.parts.items() for n, t in m.state_dict().items()}


def _file_hash(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["workbench_delta"])


def _write(path, tensors, info):
    raw = info if isinstance(info, str) else json.dumps(info)
    save_file(tensors, str(path), metadata={"workbench_delta": raw})
    return path


def _refused(path, *words, exc=ValueError):
    """Loading ``path`` raises ``exc`` naming the file and every word; the file is left unchanged."""
    before = _file_hash(path) if path.is_file() else None
    with pytest.raises(exc) as info:
        WeightDelta.load(path)
    message = str(info.value)
    for word in (path.name, *words):
        assert word in message, f"{word!r} not in {message!r}"
    if before is not None:
        assert _file_hash(path) == before
    return message


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    wb = _model()
    path = _delta(wb).save(tmp_path_factory.mktemp("delta") / "edit.safetensors")
    return wb, path


# ------------------------------------------------------------------ the working path
def test_round_trip_is_bit_exact(tmp_path):
    wb = _model()
    before, fp = _weights(wb), wb.fingerprint()
    delta = _delta(wb)
    assert set(delta.digests) == set(delta.base) == set(delta.tensors) == {K, V, OUT}
    path = delta.save(tmp_path / "edit.safetensors")
    on_disk = _file_hash(path)
    loaded = WeightDelta.load(path)
    assert loaded.base == delta.base and loaded.digests == delta.digests
    assert loaded.metadata["concepts"] == ["cat"]
    loaded.apply(wb)
    for n in (K, V, OUT):
        assert torch.equal(wb.parameter(n).data, delta.tensors[n])
    assert wb.fingerprint() != fp
    loaded.revert(wb)
    assert _weights(wb) == before and wb.fingerprint() == fp
    with loaded.applied(wb):
        assert torch.equal(wb.parameter(K).data, delta.tensors[K])
    assert _weights(wb) == before and not wb.applied
    assert _file_hash(path) == on_disk


def test_tensor_hash_covers_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.float32)
    h = hashlib.sha256(b"torch.float32|(6,)|" + t.numpy().tobytes()).hexdigest()
    assert tensor_hash(t) == h
    assert tensor_hash(t.reshape(2, 3)) != h and tensor_hash(t.double()) != h
    assert tensor_hash(t.reshape(2, 3).t()) == tensor_hash(t.reshape(2, 3).t().contiguous())


# ------------------------------------------------------------------ damaged or altered files
def test_flipped_bytes_in_a_tensor_are_refused(saved, tmp_path):
    _, src = saved
    data = bytearray(src.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8:8 + n])[K]["data_offsets"]
    position = 8 + n + (start + end) // 2
    data[position] ^= 0xFF
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    _refused(path, K, "does not match its recorded digest", "damaged or changed")


def test_extra_tensor_is_refused(saved, tmp_path):
    _, src = saved
    tensors, info = _read(src)
    tensors["unet.extra.weight"] = torch.zeros(3)
    path = _write(tmp_path / "extra.safetensors", tensors, info)
    _refused(path, "unet.extra.weight", "without a base entry", "exactly the same parameters")
    # with fingerprint and digest it loads, but the model has no such parameter: apply refuses, untouched
    info["base"]["unet.extra.weight"] = "0" * 64
    info["digests"]["unet.extra.weight"] = tensor_hash(tensors["unet.extra.weight"])
    delta = WeightDelta.load(_write(tmp_path / "extra2.safetensors", tensors, info))
    wb = _model()
    before = _weights(wb)
    with pytest.raises(ValueError, match=r"'unet\.extra\.weight': the model has no such parameter"):
        delta.apply(wb)
    assert _weights(wb) == before and not wb.applied


def test_missing_tensor_is_refused(saved, tmp_path):
    _, src = saved
    tensors, info = _read(src)
    del tensors[OUT]
    path = _write(tmp_path / "missing.safetensors", tensors, info)
    _refused(path, OUT, "base entries for parameter(s) the delta holds no tensor for")


def test_missing_digest_is_refused(saved, tmp_path):
    _, src = saved
    tensors, info = _read(src)
    del info["digests"][V]
    path = _write(tmp_path / "nodigest.safetensors", tensors, info)
    _refused(path, V, "without a digest entry")


def test_base_table_must_cover_every_tensor_in_memory(tiny):
    delta = _delta(tiny)
    with pytest.raises(ValueError, match=re.escape(f"tensor(s) without a base entry: {OUT!r}")):
        WeightDelta(dict(delta.tensors), {n: h for n, h in delta.base.items() if n != OUT})


@pytest.mark.parametrize("shape", [(1, 32), (64, 1), (32, 64), (64, 32, 1)])
def test_wrong_shape_is_refused_not_broadcast(saved, tmp_path, shape):
    wb0, src = saved
    tensors, info = _read(src)
    tensors[K] = torch.ones(shape)  # (1, 32) and (64, 1) would broadcast into the (64, 32) parameter
    info["digests"][K] = tensor_hash(tensors[K])
    path = _write(tmp_path / "shape.safetensors", tensors, info)
    delta = WeightDelta.load(path)  # consistent file; only the model can tell the shape is wrong
    wb = _model()
    before = _weights(wb)
    with pytest.raises(ValueError) as err:
        delta.apply(wb)
    for word in (K, f"shape {shape}", "(64, 32)", "must match exactly", "nothing is broadcast"):
        assert word in str(err.value)
    assert _weights(wb) == before and not wb.applied


def test_wrong_dtype_is_refused(tiny):
    delta = WeightDelta.capture(tiny, {K: tiny.parameter(K) * 2})
    digests = dict(delta.digests)
    tensors = dict(delta.tensors)
    tensors[K] = tensors[K].double()
    digests[K] = tensor_hash(tensors[K])
    wrong = WeightDelta(tensors, dict(delta.base), {}, digests)
    before = _weights(tiny)
    with pytest.raises(ValueError, match=r"is torch\.float64, the model's parameter torch\.float32"):
        wrong.apply(tiny)
    assert _weights(tiny) == before


def test_empty_base_table_is_refused(saved, tmp_path, tiny):
    _, src = saved
    tensors, info = _read(src)
    info["base"] = {}
    path = _write(tmp_path / "nobase.safetensors", tensors, info)
    _refused(path, "base table is empty", "fingerprint of the original")
    delta = _delta(tiny)
    with pytest.raises(ValueError, match="base table is empty"):
        WeightDelta(dict(delta.tensors), {})
    with pytest.raises(ValueError, match="at least one parameter"):
        WeightDelta({}, {})
    info.update(base={}, digests={})
    _refused(_write(tmp_path / "nothing.safetensors", {}, info), "at least one parameter")


def test_nan_with_a_valid_digest_is_refused(saved, tmp_path):
    _, src = saved
    tensors, info = _read(src)
    tensors[V] = tensors[V].clone()
    tensors[V][3, 4] = float("nan")
    tensors[V][0, 0] = float("inf")
    info["digests"][V] = tensor_hash(tensors[V])  # a well-formed file that says what it holds
    path = _write(tmp_path / "nan.safetensors", tensors, info)
    _refused(path, V, "2 NaN or inf value(s)", "must hold finite weights")


def test_values_changed_in_memory_are_refused_before_writing(tmp_path):
    wb = _model()
    before = _weights(wb)
    delta = _delta(wb)
    delta.tensors[V][0, 0] = float("nan")  # edited in place after capture
    with pytest.raises(ValueError, match=re.escape(f"tensor {V!r} does not match its recorded digest")):
        delta.apply(wb)
    assert _weights(wb) == before and not wb.applied
    with pytest.raises(ValueError, match="does not match its recorded digest"):
        delta.save(tmp_path / "bad.safetensors")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="NaN or inf"):
        WeightDelta({V: delta.tensors[V]}, {V: delta.base[V]})


# ------------------------------------------------------------------ broken or foreign files
@pytest.mark.parametrize("raw,words", [
    ('{"format": 2, "base": {', ["'workbench_delta' metadata is not valid JSON", "expected a JSON object"]),
    ("[1, 2]", ["is a JSON list", "expected a JSON object"]),
])
def test_malformed_header_json_is_refused(saved, tmp_path, raw, words):
    _, src = saved
    tensors, _ = _read(src)
    _refused(_write(tmp_path / "json.safetensors", tensors, raw), *words)


@pytest.mark.parametrize("change,words", [
    ({"base": ["a", "b"]}, ["base table", "dict of str -> str", "got list"]),
    ({"base": {K: 5}}, ["base table", "dict of str -> str", K]),
    ({"digests": "abc"}, ["digest table", "dict of str -> str"]),
    ({"base": {K: "not-a-hash"}}, ["base entry for", K, "not a sha256 hex digest"]),
    ({"metadata": "x"}, ["'metadata' must be a JSON object"]),
])
def test_header_of_the_wrong_types_is_refused(saved, tmp_path, change, words):
    _, src = saved
    tensors, info = _read(src)
    info.update(change)
    _refused(_write(tmp_path / "types.safetensors", tensors, info), *words)


def test_older_format_without_digests_is_refused(saved, tmp_path):
    _, src = saved
    tensors, info = _read(src)
    del info["digests"]
    _refused(_write(tmp_path / "old.safetensors", tensors, info), "older delta format without tensor digests",
             "recreate the delta")


def test_truncated_file_is_refused(saved, tmp_path):
    _, src = saved
    data = src.read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[:len(data) // 2])
    _refused(tmp_path / "half.safetensors", "is truncated", "bytes of tensor data")
    (tmp_path / "head.safetensors").write_bytes(data[:40])
    _refused(tmp_path / "head.safetensors", "truncated or not a safetensors file", "header should be")


@pytest.mark.parametrize("content", [b"", b"abc", b"hello, this is plainly not a delta\n",
                                     b"\x89PNG\r\n\x1a\n" + bytes(64), b'{"base": {}, "metadata": {}}',
                                     (20).to_bytes(8, "little") + b"\xff" * 20])
def test_non_safetensors_file_is_refused(tmp_path, content):
    path = tmp_path / "edit.safetensors"
    path.write_bytes(content)
    _refused(path, "is not a safetensors file", "expected")


def test_missing_file_foreign_safetensors_and_folder(tmp_path):
    _refused(tmp_path / "absent.safetensors", "no delta file at", exc=FileNotFoundError)
    (tmp_path / "dir.safetensors").mkdir()
    _refused(tmp_path / "dir.safetensors", "is not a file", exc=FileNotFoundError)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    _refused(tmp_path / "plain.safetensors", "not a workbench delta", "'workbench_delta' metadata")


# ------------------------------------------------------------------ apply is all-or-nothing
def test_failing_apply_midway_restores_the_model(saved, monkeypatch):
    _, path = saved
    on_disk = _file_hash(path)
    delta = WeightDelta.load(path)
    wb = _model()
    before, fp = _weights(wb), wb.fingerprint()
    import workbench.delta as delta_module

    real, calls = delta_module._write, []

    def flaky(param, value):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure on the second write")
        real(param, value)

    monkeypatch.setattr(delta_module, "_write", flaky)
    with pytest.raises(RuntimeError, match="simulated failure on the second write"):
        delta.apply(wb)
    assert len(calls) == 2  # the first tensor had been written, then restored
    assert _weights(wb) == before and wb.fingerprint() == fp and not wb.applied
    assert _file_hash(path) == on_disk
    monkeypatch.setattr(delta_module, "_write", real)
    with delta.applied(wb):
        assert torch.equal(wb.parameter(K).data, delta.tensors[K])
    assert _weights(wb) == before


def test_refused_base_leaves_model_and_file_untouched(saved):
    _, path = saved
    on_disk = _file_hash(path)
    delta = WeightDelta.load(path)
    other = Workbench.random("tiny", seed=5, vae=False)
    before = _weights(other)
    with pytest.raises(ValueError, match="was made for other weights: .*refusing to apply"):
        delta.apply(other)
    assert _weights(other) == before and not other.applied
    assert _file_hash(path) == on_disk
