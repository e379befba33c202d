"""Oracle and property tests of the shared closed-form solve."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editors.solve import ridge_solve


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_no_concepts_and_preserve_only_leave_weights_unchanged():
    w = _rand(6, 5)
    assert torch.equal(ridge_solve(w, torch.zeros(0, 5), torch.zeros(0, 6)), w)
    assert torch.equal(ridge_solve(w, torch.zeros(0, 5), torch.zeros(0, 6), _rand(4, 5, seed=1)), w)


def test_tiny_lambda_maps_the_key_to_its_target():
    w, k, v = _rand(6, 5), _rand(1, 5, seed=1), _rand(1, 6, seed=2)
    new = ridge_solve(w, k, v, lam=1e-8)
    assert torch.allclose(new @ k[0], v[0], atol=1e-5)


def test_preserved_keys_keep_their_outputs_when_they_do_not_conflict():
    w = _rand(8, 6)
    k, kp = _rand(1, 6, seed=1), _rand(3, 6, seed=2)
    new = ridge_solve(w, k, _rand(1, 8, seed=3), kp, lam=1e-6, preserve_scale=1e6)
    assert torch.allclose(new @ kp.T, w @ kp.T, atol=1e-3)


def test_matches_a_direct_float64_reference():
    w, k, v, kp = _rand(7, 5), _rand(3, 5, seed=1), _rand(3, 7, seed=2), _rand(4, 5, seed=3)
    lam, se, sp = 0.5, 1.3, 0.7
    a = se * k.double().T @ k.double() + sp * kp.double().T @ kp.double() + lam * torch.eye(5, dtype=torch.float64)
    b = se * v.double().T @ k.double() + sp * w.double() @ kp.double().T @ kp.double() + lam * w.double()
    ref = b @ torch.linalg.inv(a)
    new = ridge_solve(w, k, v, kp, lam=lam, edit_scale=se, preserve_scale=sp)
    assert (new.double() - ref).abs().max() < 1e-5


@settings(max_examples=40, deadline=None)
@given(d_out=st.integers(1, 12), d_in=st.integers(1, 12), n=st.integers(1, 6), m=st.integers(0, 6),
       lam=st.floats(1e-3, 10), se=st.floats(0.1, 10), sp=st.floats(0, 10), scale=st.floats(1e-2, 1e2),
       seed=st.integers(0, 2**16))
def test_normal_equations_hold(d_out, d_in, n, m, lam, se, sp, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) * scale
    k = torch.randn(n, d_in, generator=g, dtype=torch.float64) * scale
    v = torch.randn(n, d_out, generator=g, dtype=torch.float64) * scale
    kp = torch.randn(m, d_in, generator=g, dtype=torch.float64) * scale
    new = ridge_solve(w, k, v, kp, lam=lam, edit_scale=se, preserve_scale=sp)
    # gradient of the objective vanishes at the solution
    grad = se * (new @ k.T - v.T) @ k + sp * (new - w) @ kp.T @ kp + lam * (new - w)
    size = se * (v.T @ k).abs().max() + sp * (w @ kp.T @ kp).abs().max() + lam * w.abs().max() + 1e-12
    assert grad.abs().max() / size < 1e-8


def test_bad_input_is_refused():
    w = _rand(4, 3)
    with pytest.raises(ValueError, match="keys contains NaN"):
        ridge_solve(w, torch.full((1, 3), float("nan")), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"values must be \(1 × 4\)"):
        ridge_solve(w, torch.zeros(1, 3), torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"keys must be \(n × 3\)"):
        ridge_solve(w, torch.zeros(1, 4), torch.zeros(1, 4))


def test_ridge_map_gives_every_projections_solution_from_one_solve():
    from editors.solve import ridge_map

    g = torch.Generator().manual_seed(3)
    keys, targets, keep = (torch.randn(n, 12, generator=g) for n in (5, 5, 7))
    s = ridge_map(keys, targets, keep, lam=0.3, edit_scale=2.0, preserve_scale=0.5)
    for out in (4, 9):
        w = torch.randn(out, 12, generator=g, dtype=torch.float64)
        direct = ridge_solve(w, keys.double(), targets.double() @ w.T, keep.double(), lam=0.3, edit_scale=2.0,
                             preserve_scale=0.5)
        assert torch.allclose(w @ s, direct, atol=1e-10)
    assert torch.equal(ridge_map(keys[:0], targets[:0]), torch.eye(12, dtype=torch.float64))
    with pytest.raises(ValueError, match="singular"):
        ridge_map(keys, targets, lam=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        ridge_map(keys.clone().fill_(float("nan")), targets)
