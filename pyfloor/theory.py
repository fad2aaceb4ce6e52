"""The geometric limit of distillation: capacity, budgets, critical width and floor predictors.

Sarkar & Deka (2026), "Geometric Limits of Knowledge Distillation: A Minimum-Width Theorem via
Superposition Theory", arXiv 2604.04037. A student of hidden width ``d_S`` can hold at most
``d_S·g(α)`` of a teacher's ``F`` features of sparsity ``α``; the features beyond that budget are
lost and their summed importance is the floor of the distillation loss.

Every function takes plain numbers or numpy arrays (vectorized over widths) and never imports torch.
Arguments outside their domain raise :class:`ValueError` naming the argument and its valid range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks

__all__ = [
    "SPARSE_REGIME_ALPHA",
    "MIN_CAPACITY",
    "capacity",
    "sparsity_for_capacity",
    "feature_budget",
    "critical_width",
    "uniform_floor",
    "importance_floor",
    "tail_sums",
    "effective_budget",
    "continuous_floor",
    "Calibration",
    "fit_calibration",
    "PackingLaw",
    "fit_budget_law",
    "fit_packing_law",
    "check_importances",
]

#: α = 1 − 1/e, where g(α) has its minimum. Below it the formula leaves its sparse regime.
SPARSE_REGIME_ALPHA: float = 1.0 - 1.0 / math.e
#: g(1 − 1/e) = e, the smallest capacity the formula gives.
MIN_CAPACITY: float = math.e

DenseMode = Literal["clamp", "raise"]
#: A single number: functions given only scalars return a Python scalar.
Scalar = float | np.floating[Any] | np.integer[Any]
#: Anything array-like that is not a single number: functions given one return an ndarray.
Array = NDArray[Any] | Sequence[float] | Sequence[int]


def _scalar_or_array(values: ArrayLike) -> Any:
    """``values`` as a Python scalar when it is 0-dimensional (all inputs were scalars), else as an array.

    Typed ``Any`` on purpose: each public caller narrows it with ``@overload``s (scalar in, scalar out).
    """
    values = np.asarray(values)
    return values.item() if values.ndim == 0 else values


def _check_alpha(alpha: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(alpha, dtype=np.float64)
    if a.size == 0:
        raise ValueError("alpha is empty; expected a sparsity in the open interval (0, 1)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"alpha must be a finite number in (0, 1); got {_show(a[~np.isfinite(a)])}")
    bad = (a <= 0.0) | (a >= 1.0)
    if np.any(bad):
        raise ValueError(
            f"alpha must lie in the open interval (0, 1) (α = 1 − L0/F, the fraction of "
            f"features inactive on a token); got {_show(a[bad])}"
        )
    return a


def _check_widths(width: ArrayLike, name: str = "width") -> NDArray[np.float64]:
    w = np.asarray(width, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} must be finite; got {_show(w[~np.isfinite(w)])}")
    if np.any(w < 0):
        raise ValueError(f"{name} must be >= 0 (a student's hidden width); got {_show(w[w < 0])}")
    return w


def _show(bad: NDArray[Any]) -> str:
    """A short rendering of the offending values for an error message."""
    flat = np.ravel(bad)
    shown = ", ".join(repr(float(v)) for v in flat[:3])
    return shown + (f", … ({flat.size} values)" if flat.size > 3 else "")


@overload
def capacity(alpha: Scalar, *, dense: DenseMode = "clamp") -> float: ...
@overload
def capacity(alpha: Array, *, dense: DenseMode = "clamp") -> NDArray[np.float64]: ...
def capacity(alpha: ArrayLike, *, dense: DenseMode = "clamp") -> float | NDArray[np.float64]:
    """Features a student can hold per hidden dimension at sparsity α.

    g(α) = 1 / ((1 − α) · ln(1 / (1 − α)))   (natural log)

    g has its minimum g = e at α = 1 − 1/e ≈ 0.632 and grows without bound on both sides. The
    rise towards α → 0 is outside the sparse (compressed-sensing) regime the bound comes from — it
    would credit a dense teacher with a huge capacity — so for α < 1 − 1/e pyfloor **clamps** g to
    its minimum e (``dense="clamp"``, the default: capacity is then non-decreasing in α), or raises
    ``ValueError`` with ``dense="raise"``.

    Parameters
    ----------
    alpha:
        Sparsity in the open interval (0, 1); a scalar or an array.
    dense:
        What to do below α = 1 − 1/e: ``"clamp"`` (g = e) or ``"raise"``.

    Returns
    -------
    float or ndarray of float64
        g(α) features per hidden dimension: a float for a scalar α, else an array of α's shape.

    Raises
    ------
    ValueError
        If α lies outside (0, 1), or below 1 − 1/e with ``dense="raise"``.
    """
    a = _check_alpha(alpha)
    if dense not in ("clamp", "raise"):
        raise ValueError(f"dense must be 'clamp' or 'raise'; got {dense!r}")
    below = a < SPARSE_REGIME_ALPHA
    if dense == "raise" and np.any(below):
        raise ValueError(
            f"alpha = {_show(a[below])} is below 1 − 1/e ≈ {SPARSE_REGIME_ALPHA:.4f}, outside the "
            "sparse regime where g(α) holds (g would grow again as features get denser); "
            "use dense='clamp' to take g = e there"
        )
    a = np.maximum(a, SPARSE_REGIME_ALPHA)
    g = 1.0 / ((1.0 - a) * -np.log1p(-a))
    # At α = 1 − 1/e the formula is e up to rounding; make the clamp land on e exactly.
    g = np.where(a == SPARSE_REGIME_ALPHA, MIN_CAPACITY, g)
    result: float | NDArray[np.float64] = _scalar_or_array(g)
    return result


def sparsity_for_capacity(g: float) -> float:
    """The sparsity α ≥ 1 − 1/e at which g(α) equals ``g`` (the inverse of :func:`capacity`).

    ``g`` must be at least e, the smallest capacity; the result lies in [1 − 1/e, 1). Used to read
    α from a published capacity or critical width.

    Returns
    -------
    float
        α in [1 − 1/e, 1).

    Raises
    ------
    ValueError
        If ``g`` is not finite or below e.
    """
    gv = float(g)
    if not math.isfinite(gv) or gv < MIN_CAPACITY:
        raise ValueError(f"a capacity g(α) must be a finite number >= e ≈ {MIN_CAPACITY:.4f}; got {g!r}")
    # g = 1 / (u · ln(1/u)) with u = 1 − α falls monotonically on u ∈ (0, 1/e]: bisect on ln u
    lo, hi = -745.0, -1.0  # ln u; g(e^-745) overflows to far beyond any capacity
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if -1.0 / (math.exp(mid) * mid) > gv:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-16 * abs(lo):
            break
    return 1.0 - math.exp(0.5 * (lo + hi))


def _effective_capacity(alpha: ArrayLike, a: float, b: float) -> NDArray[np.float64]:
    """Packing-law capacity ĝ(α) = a · g(α)^b (a = b = 1 gives the paper's g)."""
    a = _checks.number(a, "a", low=0.0, low_open=True)
    b = _checks.number(b, "b", low=0.0, low_open=True)
    return a * capacity(np.asarray(alpha, dtype=np.float64)) ** b


@overload
def feature_budget(width: Scalar, alpha: float, n_features: int, *, a: float = 1.0, b: float = 1.0) -> int: ...
@overload
def feature_budget(
    width: Array, alpha: float, n_features: int, *, a: float = 1.0, b: float = 1.0
) -> NDArray[np.int64]: ...
def feature_budget(
    width: ArrayLike, alpha: float, n_features: int, *, a: float = 1.0, b: float = 1.0
) -> int | NDArray[np.int64]:
    """Number of teacher features a student of width ``d_S`` keeps.

    F_S = min(⌊d_S · ĝ(α)⌋, F),  ĝ(α) = a · g(α)^b   (a = b = 1: the paper's budget d_S·g(α))

    Vectorized over ``width``; returns int64.

    Parameters
    ----------
    width:
        Student hidden width(s) d_S ≥ 0.
    alpha:
        Sparsity in (0, 1).
    n_features:
        F, the teacher's feature count.
    a, b:
        Packing-law parameters (> 0).

    Returns
    -------
    int or ndarray of int64
        F_S, features kept: an int for a scalar width, else an array of the widths' shape.

    Raises
    ------
    ValueError
        For a negative or non-finite width, α outside (0, 1), a negative F, or a, b ≤ 0.
    """
    w = _check_widths(width)
    f = _checks.count(n_features, "n_features")
    budget = np.minimum(np.floor(w * _effective_capacity(alpha, a, b)), f).astype(np.int64)
    result: int | NDArray[np.int64] = _scalar_or_array(budget)
    return result


def critical_width(n_features: int, alpha: float, *, a: float = 1.0, b: float = 1.0) -> float:
    """Smallest student width that can hold every feature: d* = F / ĝ(α) (a = b = 1: F / g(α)).

    Below d* some features must be dropped, so the distillation floor is non-zero.

    Returns
    -------
    float
        d*, in hidden dimensions (not rounded).

    Raises
    ------
    ValueError
        For a negative F, α outside (0, 1), or a, b ≤ 0.
    """
    f = _checks.count(n_features, "n_features")
    return f / float(_effective_capacity(alpha, a, b))


def check_importances(importances: ArrayLike, name: str = "importances") -> NDArray[np.float64]:
    """Validate per-feature importances: 1-D, finite, non-negative and sorted descending.

    Returns them as a float64 array.
    """
    imp = np.asarray(importances, dtype=np.float64)
    if imp.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (one value per feature); got shape {imp.shape}")
    if not np.all(np.isfinite(imp)):
        raise ValueError(f"{name} must be finite; {int(np.sum(~np.isfinite(imp)))} entries are NaN or ±Inf")
    if np.any(imp < 0):
        first = int(np.argmax(imp < 0))
        raise ValueError(f"{name} must be >= 0; entry {first} is {imp[first]!r}")
    if imp.size > 1 and np.any(np.diff(imp) > 0):
        first = int(np.argmax(np.diff(imp) > 0))
        raise ValueError(
            f"{name} must be sorted descending (most important feature first); entry {first + 1} "
            f"({imp[first + 1]!r}) exceeds entry {first} ({imp[first]!r}); sort with "
            "np.sort(x)[::-1]"
        )
    return imp


def tail_sums(importances: ArrayLike) -> NDArray[np.float64]:
    """Suffix sums of descending importances: ``S[k] = Σ_{i ≥ k} I_i`` for k = 0 … F (``S[F] = 0``).

    Summed from the smallest value up, so the floors of long, steep tails keep full float64 accuracy.

    Returns
    -------
    ndarray of float64, shape (F + 1,)
        S[k] = Σ_{i ≥ k} I_i (0-based), with S[F] = 0.

    Raises
    ------
    ValueError
        If the importances are not a finite, non-negative, descending 1-D array.
    """
    imp = check_importances(importances)
    out = np.zeros(imp.size + 1, dtype=np.float64)
    out[:-1] = np.cumsum(imp[::-1])[::-1]
    return out


@overload
def uniform_floor(width: Scalar, alpha: float, n_features: int, total: float = 1.0) -> float: ...
@overload
def uniform_floor(width: Array, alpha: float, n_features: int, total: float = 1.0) -> NDArray[np.float64]: ...
def uniform_floor(width: ArrayLike, alpha: float, n_features: int, total: float = 1.0) -> float | NDArray[np.float64]:
    """Floor when every feature matters equally ("naive" predictor).

    L(d_S) = ε∞ · max(0, 1 − d_S · g(α) / F)

    ``total`` is ε∞, the loss with no feature kept (the summed importance of all F features);
    with the default 1 the result is the fraction of features lost.

    Returns
    -------
    float or ndarray of float64
        The floor in the units of ``total``: a float for a scalar width, else an array.

    Raises
    ------
    ValueError
        For F = 0, a negative or non-finite ``total``, or a bad width or α.
    """
    w = _check_widths(width)
    f = _checks.count(n_features, "n_features")
    if f == 0:
        raise ValueError("n_features must be > 0 for the uniform floor")
    total = float(total)
    if not math.isfinite(total) or total < 0:
        raise ValueError(f"total (ε∞, the loss with no feature kept) must be finite and >= 0; got {total!r}")
    lost = np.maximum(0.0, 1.0 - w * capacity(float(alpha)) / f)
    result: float | NDArray[np.float64] = _scalar_or_array(total * lost)
    return result


@overload
def importance_floor(
    width: Scalar, alpha: float, importances: ArrayLike, *, a: float = 1.0, b: float = 1.0
) -> float: ...
@overload
def importance_floor(
    width: Array, alpha: float, importances: ArrayLike, *, a: float = 1.0, b: float = 1.0
) -> NDArray[np.float64]: ...
def importance_floor(
    width: ArrayLike, alpha: float, importances: ArrayLike, *, a: float = 1.0, b: float = 1.0
) -> float | NDArray[np.float64]:
    """Importance-weighted floor: the summed importance of the features beyond the budget.

    L*(d_S) = Σ_{i > F_S} I_i,   F_S = min(⌊d_S · a · g(α)^b⌋, F)

    With a = b = 1 this is the paper's Eq. 2; other (a, b) give the packing-law predictor
    (see :func:`fit_packing_law`). ``importances`` are the per-feature loss contributions sorted
    descending (for an SAE measurement E[z_i²]; for the toy model I_i · E[x_i²]); F is their count.

    Returns
    -------
    float or ndarray of float64
        L*(d_S) in the units of the importances: a float for a scalar width, else an array.

    Raises
    ------
    ValueError
        For importances that are not finite, non-negative and descending, or a bad width, α, a or b.
    """
    tails = tail_sums(importances)
    budget = np.asarray(feature_budget(np.asarray(width, dtype=np.float64), alpha, tails.size - 1, a=a, b=b))
    result: float | NDArray[np.float64] = _scalar_or_array(tails[budget])
    return result


@overload
def effective_budget(observed: Scalar, importances: ArrayLike) -> float: ...
@overload
def effective_budget(observed: Array, importances: ArrayLike) -> NDArray[np.float64]: ...
def effective_budget(observed: ArrayLike, importances: ArrayLike) -> float | NDArray[np.float64]:
    """Invert the importance floor: how many features a student with floor ``observed`` kept.

    Returns the continuous k with Σ_{i ≥ k} I_i = observed, interpolating linearly inside the
    feature that is partly lost. ``observed ≥ Σ I`` gives 0, ``observed ≤ 0`` gives F.
    """
    tails = tail_sums(importances)
    obs = np.asarray(observed, dtype=np.float64)
    if not np.all(np.isfinite(obs)):
        raise ValueError("observed floors must be finite")
    n = tails.size - 1
    ascending = tails[::-1]  # ascending[j] = S[F - j]
    j = np.searchsorted(ascending, obs, side="left")
    k = n - j  # the largest k with S[k] >= observed
    inside = (k >= 0) & (k < n)
    kk = np.clip(k, 0, max(n - 1, 0))
    width_k = tails[kk] - tails[np.minimum(kk + 1, n)]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(width_k > 0, (tails[kk] - obs) / width_k, 0.0)
    budgets = np.where(inside, kk + frac, np.where(k < 0, 0.0, float(n)))
    result: float | NDArray[np.float64] = _scalar_or_array(budgets)
    return result


@overload
def continuous_floor(budget: Scalar, importances: ArrayLike) -> float: ...
@overload
def continuous_floor(budget: Array, importances: ArrayLike) -> NDArray[np.float64]: ...
def continuous_floor(budget: ArrayLike, importances: ArrayLike) -> float | NDArray[np.float64]:
    """Σ of descending importances beyond a continuous budget k, the partly kept feature pro rata:
    S[⌊k⌋] − (k − ⌊k⌋) · I_⌊k⌋ (k clipped to [0, F]). The inverse of :func:`effective_budget`.

    Returns
    -------
    float or ndarray of float64
        The floor in the units of the importances, shaped like ``budget``.
    """
    tails = tail_sums(importances)
    n = tails.size - 1
    k = np.clip(np.asarray(budget, dtype=np.float64), 0.0, n)
    i = np.floor(k).astype(np.int64)
    result: float | NDArray[np.float64] = _scalar_or_array(
        tails[i] - (k - i) * (tails[i] - tails[np.minimum(i + 1, n)])
    )
    return result


class Calibration(NamedTuple):
    """Affine calibration ``observed ≈ slope · predicted + intercept`` and its fit quality."""

    slope: float
    intercept: float
    r2: float
    n_points: int

    @overload
    def apply(self, predicted: Scalar) -> float: ...
    @overload
    def apply(self, predicted: Array) -> NDArray[np.float64]: ...
    def apply(self, predicted: ArrayLike) -> float | NDArray[np.float64]:
        """Calibrated prediction C · predicted + B (same shape as ``predicted``)."""
        p = np.asarray(predicted, dtype=np.float64)
        result: float | NDArray[np.float64] = _scalar_or_array(self.slope * p + self.intercept)
        return result


def _finite_pairs(
    x: ArrayLike, y: ArrayLike, names: tuple[str, str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length; got {xa.size} and {ya.size}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError(f"{names[0]} and {names[1]} must be finite")
    return xa, ya


def _r_squared(y: NDArray[np.float64], fitted: NDArray[np.float64]) -> float:
    ss_res = float(np.sum((y - fitted) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else float("nan")
    return 1.0 - ss_res / ss_tot


def fit_calibration(predicted: ArrayLike, observed: ArrayLike) -> Calibration:
    """Least-squares fit of observed = C · predicted + B.

    C scales the geometric term; B is the width-independent architectural baseline. The paper
    reports R² = 0.993 for this fit on Pythia-410M students.

    Returns
    -------
    Calibration
        slope C, intercept B, R² of the fit and the number of points.

    Raises
    ------
    ValueError
        For inputs of different lengths, non-finite values, fewer than two points or no spread in ``predicted``.
    """
    p, o = _finite_pairs(predicted, observed, ("predicted", "observed"))
    if p.size < 2:
        raise ValueError(f"fit_calibration needs at least 2 (predicted, observed) pairs; got {p.size}")
    if np.ptp(p) == 0:
        raise ValueError("predicted floors are all equal; a slope cannot be fitted")
    slope, intercept = np.polyfit(p, o, 1)
    return Calibration(float(slope), float(intercept), _r_squared(o, slope * p + intercept), int(p.size))


class PackingLaw(NamedTuple):
    """A fitted law for the features a trained student keeps.

    Paper-style (``c`` None): ĝ(α) = a · g(α)^b features per dimension, budget ⌊d · ĝ(α)⌋.
    Width-aware (``c`` set): a continuous budget k = a · d^c · g(α)^b, for students whose kept
    count grows faster or slower than their width.
    """

    a: float
    b: float
    r2: float
    n_points: int
    c: float | None = None

    @overload
    def capacity(self, alpha: Scalar) -> float: ...
    @overload
    def capacity(self, alpha: Array) -> NDArray[np.float64]: ...
    def capacity(self, alpha: ArrayLike) -> float | NDArray[np.float64]:
        """ĝ(α) = a · g(α)^b."""
        result: float | NDArray[np.float64] = _scalar_or_array(_effective_capacity(alpha, self.a, self.b))
        return result

    @overload
    def budget(self, width: Scalar, alpha: float) -> float: ...
    @overload
    def budget(self, width: Array, alpha: float) -> NDArray[np.float64]: ...
    def budget(self, width: ArrayLike, alpha: float) -> float | NDArray[np.float64]:
        """The continuous budget a · d^c · g(α)^b (c = 1 for the paper-style law)."""
        w = _check_widths(width)
        result: float | NDArray[np.float64] = _scalar_or_array(
            self.a * w ** (1.0 if self.c is None else self.c) * capacity(float(alpha)) ** self.b
        )
        return result

    @overload
    def floor(self, width: Scalar, alpha: float, importances: ArrayLike) -> float: ...
    @overload
    def floor(self, width: Array, alpha: float, importances: ArrayLike) -> NDArray[np.float64]: ...
    def floor(self, width: ArrayLike, alpha: float, importances: ArrayLike) -> float | NDArray[np.float64]:
        """Importance floor beyond the budget: ⌊d · ĝ(α)⌋ whole features (paper-style), or the
        continuous budget with the partly kept feature counted pro rata (width-aware)."""
        w = np.asarray(width, dtype=np.float64)
        if self.c is None:
            floors = importance_floor(w, alpha, importances, a=self.a, b=self.b)
        else:
            floors = continuous_floor(self.budget(w, alpha), importances)
        result: float | NDArray[np.float64] = _scalar_or_array(floors)
        return result


def fit_budget_law(
    widths: ArrayLike,
    alphas: ArrayLike,
    budgets: ArrayLike,
    *,
    n_features: ArrayLike | None = None,
    width_aware: bool = False,
    b: float | None = None,
) -> PackingLaw:
    """Fit a :class:`PackingLaw` to the budgets k_i (features kept) of students of width d_i at α_i.

    Paper-style: log(k/d) = log a + b · log g(α) by least squares. ``width_aware``:
    log k = log a + b · log g(α) + c · log d. Pass ``b`` to fix the exponent of g (paper-style
    only). Students with k ≤ 0 or d ≤ 0, and with ``n_features`` (the features each student could
    keep) those with k ≥ n_features, carry no information and are left out; raises ValueError
    when the rest cannot determine the law (too few, one capacity only, or b ≤ 0).

    Returns
    -------
    PackingLaw
        a, b (and c for the width-aware law), R² in log space, and the number of students used.

    Raises
    ------
    ValueError
        If too few informative students remain, the sparsities (or widths) do not vary, or b ≤ 0.
    """
    w = _check_widths(widths, "widths").ravel()
    al = _check_alpha(alphas).ravel()
    k = np.asarray(budgets, dtype=np.float64).ravel()
    if not (w.size == al.size == k.size):
        raise ValueError(
            f"widths, alphas and budgets must have one entry per student; got {w.size}, {al.size}, {k.size}"
        )
    if width_aware and b is not None:
        raise ValueError("b can be fixed for the paper-style law only")
    use = (w > 0) & (k > 0) & np.isfinite(k)
    if n_features is not None:
        use &= k < np.broadcast_to(np.asarray(n_features, dtype=np.float64).ravel(), k.shape)
    needed = 1 if b is not None else 3 if width_aware else 2
    if int(use.sum()) < needed:
        raise ValueError(
            f"only {int(use.sum())} students kept some but not all features; the law needs at least {needed}"
        )
    log_g = np.log(np.asarray(capacity(al[use]), dtype=np.float64))
    log_d, log_k = np.log(w[use]), np.log(k[use])
    if b is not None:
        b = _checks.number(b, "b", low=0.0, low_open=True)
        log_a = float(np.mean(log_k - log_d - b * log_g))
        fitted = log_a + b * log_g
        return PackingLaw(math.exp(log_a), b, _r_squared(log_k - log_d, fitted), int(log_k.size))
    columns = [np.ones_like(log_g), log_g] + ([log_d] if width_aware else [])
    X = np.stack(columns, axis=1)
    y = log_k if width_aware else log_k - log_d
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(
            "the students do not determine the law: all share one capacity g(α)"
            + (" or one width" if width_aware else "; fix the exponent with b=... to fit a alone")
        )
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if coef[1] <= 0 and not width_aware:
        raise ValueError(f"fitted exponent b = {coef[1]:.3g} is not positive; the data do not follow a packing law")
    return PackingLaw(
        float(math.exp(coef[0])),
        float(coef[1]),
        _r_squared(y, X @ coef),
        int(y.size),
        float(coef[2]) if width_aware else None,
    )


def fit_packing_law(
    widths: ArrayLike,
    alphas: ArrayLike,
    observed: ArrayLike,
    importances: ArrayLike | Sequence[ArrayLike],
    *,
    b: float | None = None,
) -> PackingLaw:
    """Fit the paper-style packing law ĝ(α) = a · g(α)^b to observed floors of trained students.

    Each student i (width ``widths[i]``, sparsity ``alphas[i]``, floor ``observed[i]``) is turned
    into the number of features it effectively kept, k_i = :func:`effective_budget`, and
    :func:`fit_budget_law` fits log(k_i / d_i) = log a + b · log g(α_i). Students that kept nothing
    or everything carry no information on the budget and are left out.

    ``importances`` is one descending array shared by all students or a sequence with one per
    student. Pass ``b`` to fix the exponent and fit only ``a`` (needed when all α are equal).

    Returns
    -------
    PackingLaw
        The paper-style law (``c`` None) fitted on the students that kept some but not all features.

    Raises
    ------
    ValueError
        As :func:`fit_budget_law`, or for importance arrays that do not match the students.
    """
    obs = np.asarray(observed, dtype=np.float64).ravel()
    if not isinstance(importances, (list, tuple)) or np.ndim(importances[0]) == 0:  # one array for all
        shared = np.asarray(importances, dtype=np.float64)
        k = effective_budget(obs, shared)
        n_feat = np.full(obs.size, shared.size)
    else:
        per_student: Sequence[ArrayLike] = importances
        if len(per_student) != obs.size:
            raise ValueError(f"got {len(per_student)} importance arrays for {obs.size} students")
        k = np.array([effective_budget(float(o), imp) for o, imp in zip(obs, per_student)], dtype=np.float64)
        n_feat = np.array([np.asarray(imp).size for imp in per_student])
    return fit_budget_law(widths, alphas, k, n_features=n_feat, b=b)
