"""The closed-form ridge solve shared by Diff-QuickFix, UCE and EMCID stage II.

For a linear map W_old (out × in), edit keys k_e with targets v*_e and preserve keys k_p:

    minimise  s_e Σ_e ‖W k_e − v*_e‖² + s_p Σ_p ‖W k_p − W_old k_p‖² + λ ‖W − W_old‖²_F
    W = (s_e Σ v*_e k_eᵀ + s_p Σ W_old k_p k_pᵀ + λ W_old) (s_e Σ k_e k_eᵀ + s_p Σ k_p k_pᵀ + λ I)⁻¹

Gram matrices are accumulated in float64 and the system is solved with ``torch.linalg.solve`` (never an
explicit inverse); the result comes back in W_old's dtype.
"""

from __future__ import annotations

import torch

from ._checks import number


def _finite(name: str, t: torch.Tensor | None) -> None:
    if t is not None and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values; nothing was solved")


def ridge_solve(w_old: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                preserve_keys: torch.Tensor | None = None, *, lam: float = 0.5, edit_scale: float = 1.0,
                preserve_scale: float = 1.0, preserve_cov: torch.Tensor | None = None) -> torch.Tensor:
    """New weights for ``w_old`` (out × in). ``keys`` (n × in) map to ``values`` (n × out).

    ``preserve_keys`` (m × in) keep their old outputs; ``preserve_cov`` (in × in) adds a precomputed
    Σ k_p k_pᵀ (EMCID's caption covariance) with the same ``preserve_scale``. No edit keys: W_old exactly.
    """
    if w_old.ndim != 2:
        raise ValueError(f"w_old must be a matrix (out × in), got shape {tuple(w_old.shape)}")
    d_out, d_in = w_old.shape
    if keys.ndim != 2 or keys.shape[1] != d_in:
        raise ValueError(f"keys must be (n × {d_in}), got {tuple(keys.shape)}")
    if values.shape != (keys.shape[0], d_out):
        raise ValueError(f"values must be ({keys.shape[0]} × {d_out}), got {tuple(values.shape)}")
    if preserve_keys is not None and (preserve_keys.ndim != 2 or preserve_keys.shape[1] != d_in):
        raise ValueError(f"preserve_keys must be (m × {d_in}), got {tuple(preserve_keys.shape)}")
    for name, value in (("lam", lam), ("edit_scale", edit_scale), ("preserve_scale", preserve_scale)):
        number("ridge_solve", name, value, low=0)
    if preserve_cov is not None and tuple(preserve_cov.shape) != (d_in, d_in):
        raise ValueError(f"preserve_cov must be ({d_in} × {d_in}), got {tuple(preserve_cov.shape)}")
    for name, t in (("w_old", w_old), ("keys", keys), ("values", values), ("preserve_keys", preserve_keys),
                    ("preserve_cov", preserve_cov)):
        _finite(name, t)
    if keys.shape[0] == 0 or edit_scale == 0:
        return w_old.clone()  # preserve terms alone are solved exactly by W_old
    w = w_old.double()
    k, v = keys.double(), values.double()
    lhs = edit_scale * (k.T @ k) + lam * torch.eye(d_in, dtype=torch.float64, device=w.device)
    rhs = edit_scale * (v.T @ k) + lam * w
    cov = torch.zeros_like(lhs)
    if preserve_keys is not None and preserve_keys.shape[0]:
        kp = preserve_keys.double()
        cov = cov + kp.T @ kp
    if preserve_cov is not None:
        cov = cov + preserve_cov.double()
    lhs = lhs + preserve_scale * cov
    rhs = rhs + preserve_scale * (w @ cov)
    singular = (f"the ridge system is singular ({keys.shape[0]} edit key(s)"
                f"{f', {preserve_keys.shape[0]} preserve key(s)' if preserve_keys is not None else ''}"
                f"{', a preserve covariance' if preserve_cov is not None else ''} for {d_in} input dimensions, "
                f"lam={lam:g}); use a larger lam (> 0, e.g. 0.1)")
    return _solve_right(lhs, rhs, lam, singular).to(w_old.dtype)


def _solve_right(lhs: torch.Tensor, rhs: torch.Tensor, lam: float, singular: str) -> torch.Tensor:
    """X with X lhs = rhs for the symmetric ridge matrix ``lhs``; ``singular`` is the error when it has none."""
    d_in = lhs.shape[0]
    # lam > 0 keeps lhs positive definite. A lam that is zero, or below float64 resolution next to the Gram
    # matrices, leaves it as singular as Σ k kᵀ: check the spectrum (only then; the bound on the largest
    # eigenvalue is the trace).
    if lam <= float(lhs.diagonal().sum()) * d_in * torch.finfo(torch.float64).eps:
        eig = torch.linalg.eigvalsh(lhs)
        if not eig[0] > eig[-1] * d_in * torch.finfo(torch.float64).eps:
            raise ValueError(singular)
    # X lhs = rhs with lhs symmetric  <=>  lhs Xᵀ = rhsᵀ
    try:
        out = torch.linalg.solve(lhs, rhs.T).T
    except torch.linalg.LinAlgError as err:
        raise ValueError(singular) from err
    if not torch.isfinite(out).all():
        raise ValueError(f"the solve produced NaN or inf: {singular}")
    return out


def ridge_map(keys: torch.Tensor, target_keys: torch.Tensor, preserve_keys: torch.Tensor | None = None, *,
              lam: float = 0.5, edit_scale: float = 1.0, preserve_scale: float = 1.0) -> torch.Tensor:
    """The (in × in) float64 map S with ``ridge_solve(W, keys, target_keys @ Wᵀ, preserve_keys) == W @ S`` for
    every W: when each target is W_old applied to a target key (UCE's v* = W_old c_target), the solution is
    W_old (s_e Σ c_t kᵀ + s_p Σ k_p k_pᵀ + λI)(s_e Σ k kᵀ + s_p Σ k_p k_pᵀ + λI)⁻¹. One solve then serves every
    projection that reads the same keys (all of a UNet's to_k/to_v) instead of one per projection."""
    if keys.ndim != 2 or target_keys.shape != keys.shape:
        raise ValueError(f"keys and target_keys must both be (n × in); got {tuple(keys.shape)} and "
                         f"{tuple(target_keys.shape)}")
    d_in = keys.shape[1]
    if preserve_keys is not None and (preserve_keys.ndim != 2 or preserve_keys.shape[1] != d_in):
        raise ValueError(f"preserve_keys must be (m × {d_in}), got {tuple(preserve_keys.shape)}")
    for name, value in (("lam", lam), ("edit_scale", edit_scale), ("preserve_scale", preserve_scale)):
        number("ridge_map", name, value, low=0)
    for name, t in (("keys", keys), ("target_keys", target_keys), ("preserve_keys", preserve_keys)):
        _finite(name, t)
    eye = torch.eye(d_in, dtype=torch.float64, device=keys.device)
    if keys.shape[0] == 0 or edit_scale == 0:
        return eye
    k, kt = keys.double(), target_keys.double()
    cov = torch.zeros_like(eye)
    if preserve_keys is not None and preserve_keys.shape[0]:
        kp = preserve_keys.double()
        cov = kp.T @ kp
    lhs = edit_scale * (k.T @ k) + preserve_scale * cov + lam * eye
    rhs = edit_scale * (kt.T @ k) + preserve_scale * cov + lam * eye
    singular = (f"the ridge system is singular ({keys.shape[0]} edit key(s) for {d_in} input dimensions, "
                f"lam={lam:g}); use a larger lam (> 0, e.g. 0.1)")
    return _solve_right(lhs, rhs, lam, singular)
