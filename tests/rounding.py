"""How far float32 rounding lets two evaluations of the same SAE encode differ.

torch's CPU matmul (MKL) picks its kernel and summation order by matrix shape and by instruction
set, so the same rows encoded inside batches of different sizes can differ in the last bits. Any
evaluation order of the length-(d + 1) dot product pre = Σ_j a_j·W_ji + b_i (a = x − b_dec, the same
elementwise in every batch) lies within γ_{d+1}·S of the exact value, S = Σ_j |a_j·W_ji| + |b_i| and
γ_n = n·u / (1 − n·u), u = 2⁻²⁴ (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1); two
evaluations therefore differ by at most B = 2·γ_{d+1}·S. Latents inherit that bound (|Δz| ≤ B), and
the per-latent float64 sums the bound summed over tokens. A decision (z > 0, z > θ, the k-th
largest) can flip only where the exact value lies within B of its threshold: inputs are drawn
until no decision is that close, so counts and codes must agree exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from pyfloor.sae import SAE
from pyfloor.stats import FeatureStats

U32 = 2.0**-24


def gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u) for float32."""
    return n * U32 / (1 - n * U32)


def _terms(x: torch.Tensor, sae: SAE) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (float64) pre-activations of the float32 a = x − b_dec, and the bound B on two float32 evaluations."""
    with torch.no_grad():
        a = (x.reshape(-1, sae.d_in).float() - sae.b_dec.float()).double()
        W, b = sae.W_enc.double(), sae.b_enc.double()
        exact = a @ W + b
        bound = 2 * gamma(sae.d_in + 1) * (a.abs() @ W.abs() + b.abs())
    return exact, bound


def ambiguous_decisions(x: torch.Tensor, sae: SAE, activation: str, k: int | None = None) -> int:
    """Number of activation decisions in ``x`` that two float32 evaluations could take differently."""
    exact, bound = _terms(x, sae)
    finite = torch.isfinite(exact).all(-1)
    exact, bound = exact[finite], bound[finite]
    if activation == "relu":
        return int((exact.abs() <= bound).sum())
    if activation == "jumprelu":
        return int(((exact - sae.threshold.double()).abs() <= bound).sum())
    values, order = torch.sort(exact, dim=-1, descending=True)
    slack = bound.gather(-1, order)
    kth, next_ = values[:, k - 1], values[:, k] if k < values.shape[1] else torch.full_like(values[:, 0], -np.inf)
    boundary = (kth - next_) <= slack[:, k - 1] + (slack[:, k] if k < values.shape[1] else 0)
    near_zero = (values[:, :k].abs() <= slack[:, :k]).any(-1)
    return int((boundary | near_zero).sum())


def clear_inputs(
    sae: SAE, shape: tuple[int, ...], activation: str, k: int | None = None, tries: int = 50
) -> torch.Tensor:
    """Fresh standard-normal activations of ``shape`` with no decision within float32 rounding of its threshold."""
    for _ in range(tries):
        x = torch.randn(shape)
        if ambiguous_decisions(x, sae, activation, k) == 0:
            return x
    raise AssertionError(f"no input of shape {shape} without a rounding-close decision in {tries} draws")


def assert_stats_agree(a: FeatureStats, b: FeatureStats, x: torch.Tensor, sae: SAE) -> None:
    """``a`` and ``b`` are statistics of the same tokens ``x``, evaluated in possibly different batch shapes.

    Token and fire counts must be equal; the float64 sums may differ by the float32 bound summed over tokens (plus
    float64 reordering), the maxima by the largest bound.
    """
    assert a.n_tokens == b.n_tokens
    np.testing.assert_array_equal(a.fire_count, b.fire_count)
    exact, bound = _terms(x, sae)
    keep = torch.isfinite(exact).all(-1)
    z = exact[keep].abs().numpy()
    B = bound[keep].numpy()
    tol_sum = B.sum(0)
    tol_sq = (B * (2 * z + B)).sum(0)
    for name, tol in (("act_sum", tol_sum), ("act_sq_sum", tol_sq), ("act_max", B.max(0, initial=0.0))):
        va, vb = getattr(a, name), getattr(b, name)
        excess = np.abs(va - vb) - (tol + 1e-12 * np.abs(va))
        assert np.all(excess <= 0), f"{name} differs beyond float32 rounding at latents {np.flatnonzero(excess > 0)}"
