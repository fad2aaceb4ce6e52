"""Observed floors of distilled students, and how well the predicted floors match them.

A distilled student gives an eval-loss curve. :func:`fit_asymptote` fits the power law
L(t) = L∞ + A·t^(−β) to it and gives L∞ with a profile-likelihood interval and a verdict on whether
the curve has flattened enough to trust the extrapolation; :func:`paper_floor` is the paper's
definition (the mean of the last 10 % of the eval losses). :func:`calibrate` then fits each
predictor's floors to the observed ones (observed ≈ C·predicted + B, as the paper does) and says how
well they transfer to a width left out, and whether they order the widths as the students do.
:func:`predictor_table` gives the predictors pyfloor computes from a measurement alone.

numpy only (matplotlib inside the plotting function); no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks, theory
from ._io import json_ready
from .render import figure_path, finish_figure, format_number, markdown_table, new_axes
from .stats import Measurement

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BETA_RANGE",
    "FLATTENED_FRACTION",
    "MIN_FIT_POINTS",
    "Asymptote",
    "fit_asymptote",
    "paper_floor",
    "ObservedFloor",
    "observed_floor",
    "curve_floors",
    "floors_from_fits",
    "predictor_table",
    "PredictorCalibration",
    "CalibrationResult",
    "calibrate",
    "calibration_markdown",
    "plot_calibration",
    "write_calibration_report",
    "plot_eval_curves",
]

#: The fewest points of an eval curve :func:`fit_asymptote` takes (3 parameters and an error)
MIN_FIT_POINTS = 5
#: The decay exponents β the asymptote fit searches, log-spaced (β → 0 makes L∞ and A inseparable).
BETA_RANGE: tuple[float, float] = (0.01, 10.0)
#: A curve has flattened when the fitted drop still to come after its last step, L(t_last) − L∞, is at
#: most this fraction of the fitted drop from its first step, L(t_first) − L∞.
FLATTENED_FRACTION = 0.05

_BETA_GRID = np.geomspace(BETA_RANGE[0], BETA_RANGE[1], 161)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# -- the asymptote of one eval curve ------------------------------------------------------------------
@dataclass(frozen=True)
class Asymptote:
    """The power law L(t) = L∞ + A·t^(−β) fitted to an eval-loss curve.

    Attributes
    ----------
    l_inf, low, high:
        The asymptote L∞ and its profile-likelihood interval at ``confidence``; ``low`` is −inf
        (``high`` +inf) where the curve does not bound L∞ on that side.
    A, beta:
        Amplitude (≥ 0, in loss units at t = 1) and decay exponent; ``beta`` is NaN where A = 0
        (the curve does not fall and no decay can be fitted).
    rmse:
        Root mean square residual of the fit.
    n_points:
        Eval points fitted.
    confidence:
        Coverage the interval is built for.
    remaining:
        L(t_last) − L∞, the fitted drop still to come after the last step.
    flattened:
        Whether the asymptote can be trusted (the rule of :func:`fit_asymptote`): ``remaining`` is
        at most :data:`FLATTENED_FRACTION` of the fitted drop from the first step, unless the curve
        is flat within its noise; the interval is bounded; and the curve does not rise.
    warning:
        Why the asymptote cannot be trusted (None when ``flattened``).
    """

    l_inf: float
    low: float
    high: float
    A: float
    beta: float
    rmse: float
    n_points: int
    confidence: float
    remaining: float
    flattened: bool
    warning: str | None

    def curve(self, steps: ArrayLike) -> NDArray[np.float64]:
        """The fitted L(t) = L∞ + A·t^(−β) at ``steps`` (L∞ everywhere where A = 0)."""
        t = np.asarray(steps, dtype=np.float64)
        if self.A == 0.0:
            return np.full(t.shape, self.l_inf)
        return np.asarray(self.l_inf + self.A * t ** (-self.beta), dtype=np.float64)


class _Fit(NamedTuple):
    """The least-squares fit at one β: residual sum of squares, amplitude and asymptote (scaled steps)."""

    rss: float
    beta: float
    A: float
    l_inf: float


def _free_fits(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """For each row of regressors x (one per β): the fit of y = L∞ + A·x with A ≥ 0 (rss, A, L∞)."""
    x_mean = x.mean(axis=-1, keepdims=True)
    xc = x - x_mean
    yc = y - y.mean()
    sxy = xc @ yc
    amp = np.maximum(sxy / np.sum(xc * xc, axis=-1), 0.0)
    rss = np.maximum(float(yc @ yc) - amp * sxy, 0.0)
    return rss, amp, y.mean() - amp * x_mean[..., 0]


def _fixed_fits(x: NDArray[np.float64], y: NDArray[np.float64], l_inf: float) -> tuple[NDArray[np.float64], ...]:
    """For each row of regressors x (one per β): the fit of y = l_inf + A·x with A ≥ 0 (rss, A, L∞)."""
    r = y - l_inf
    sxr = x @ r
    amp = np.maximum(sxr / np.sum(x * x, axis=-1), 0.0)
    rss = np.maximum(float(r @ r) - amp * sxr, 0.0)
    return rss, amp, np.full(amp.shape, l_inf)


def _best_beta(
    log_t: NDArray[np.float64], grid_x: NDArray[np.float64], fits: Callable[[NDArray[np.float64]], tuple[Any, ...]]
) -> _Fit:
    """The β of :data:`BETA_RANGE` with the least residual: the best grid point, then a golden-section
    search in log β between its neighbours."""
    rss, amp, l_inf = fits(grid_x)
    i = int(np.argmin(rss))
    best = _Fit(float(rss[i]), float(_BETA_GRID[i]), float(amp[i]), float(l_inf[i]))
    if best.A == 0.0:
        return best
    lo, hi = math.log(_BETA_GRID[max(i - 1, 0)]), math.log(_BETA_GRID[min(i + 1, _BETA_GRID.size - 1)])

    def at(log_beta: float) -> _Fit:
        beta = math.exp(log_beta)
        r, a, l = fits(np.exp(-beta * log_t)[None, :])
        return _Fit(float(r[0]), beta, float(a[0]), float(l[0]))

    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = at(c), at(d)
    for _ in range(30):
        if fc.rss <= fd.rss:
            hi, d, fd = d, c, fc
            c = hi - _GOLDEN * (hi - lo)
            fc = at(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _GOLDEN * (hi - lo)
            fd = at(d)
    return min((best, fc, fd), key=lambda f: f.rss)


def _t_coverage(t: float, dof: int) -> float:
    """P(|T| ≤ t) for Student's t with ``dof`` degrees of freedom (the finite series of Abramowitz &
    Stegun 26.7.3–4, exact for integer dof)."""
    theta = math.atan(t / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    term, total = 1.0, 1.0
    if dof % 2:
        for k in range(1, (dof - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        series = math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0
        return 2.0 / math.pi * (theta + series)
    for k in range(1, dof // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def _t_quantile(confidence: float, dof: int) -> float:
    """The t with P(|T| ≤ t) = ``confidence`` for Student's t with ``dof`` degrees of freedom: by
    bisection on the exact distribution up to 1,000 dof, the Cornish–Fisher expansion (A&S 26.7.5,
    error below 1e-10 there) beyond."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    if dof > 1000:
        z3, z5, z7 = z**3, z**5, z**7
        return (
            z
            + (z3 + z) / (4 * dof)
            + (5 * z5 + 16 * z3 + 3 * z) / (96 * dof**2)
            + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * dof**3)
        )
    lo, hi = z, 2.0 * z
    while _t_coverage(hi, dof) < confidence:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _t_coverage(mid, dof) < confidence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _losses(losses: ArrayLike) -> NDArray[np.float64]:
    """``losses`` as a float64 array, checked: non-empty, 1-D and finite."""
    y = np.asarray(losses, dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"losses must be a non-empty 1-D array of eval losses; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"losses must be finite; {int(np.sum(~np.isfinite(y)))} entries are NaN or ±Inf")
    return y


def _curve(steps: ArrayLike, losses: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``steps`` and ``losses`` as float64 arrays, checked: 1-D, equal length, finite, steps > 0 and strictly increasing."""
    t, y = np.asarray(steps, dtype=np.float64), _losses(losses)
    if t.ndim != 1 or t.size != y.size:
        raise ValueError(f"steps and losses must be 1-D with one loss per step; got shapes {t.shape} and {y.shape}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(
            "steps must be finite and > 0 (the power law A·t^(−β) is infinite at t = 0): drop the "
            "evaluation at step 0 or count steps from 1"
        )
    if np.any(np.diff(t) <= 0):
        first = int(np.argmax(np.diff(t) <= 0))
        raise ValueError(f"steps must be strictly increasing; step {t[first + 1]!r} follows {t[first]!r}")
    return t, y


def _profile_bound(
    profile: Callable[[float], float], l_inf: float, threshold: float, start: float, limit: float, sign: float
) -> float:
    """The asymptote beyond ``l_inf`` (above for ``sign`` +1, below for −1) where the profile residual
    crosses ``threshold``: steps doubling from ``start``, then bisection; ±inf if none within ``limit``."""
    near, far = 0.0, start
    while profile(l_inf + sign * far) <= threshold:
        if far > limit:
            return sign * math.inf
        near, far = far, 2.0 * far
    for _ in range(60):
        mid = 0.5 * (near + far)
        if profile(l_inf + sign * mid) <= threshold:
            near = mid
        else:
            far = mid
        if far - near <= 1e-12 * max(abs(l_inf), start):
            break
    return l_inf + sign * 0.5 * (near + far)


def _rises(log_t: NDArray[np.float64], y: NDArray[np.float64], confidence: float) -> bool:
    """Whether y grows with log t: the least-squares slope's t statistic exceeds the two-sided quantile at ``confidence``."""
    xc, yc = log_t - log_t.mean(), y - y.mean()
    slope = float(xc @ yc) / float(xc @ xc)
    rss = max(float(yc @ yc) - slope * float(xc @ yc), 0.0)
    if slope <= 0:
        return False
    se = math.sqrt(rss / (y.size - 2) / float(xc @ xc))
    return se == 0 or slope / se > _t_quantile(confidence, y.size - 2)


def _decays(y: NDArray[np.float64], rss: float, confidence: float) -> bool:
    """Whether the power law (residual ``rss``) fits y significantly better than a constant: the
    F test of its 2 extra parameters at ``confidence``, with the closed-form F(2, n − 3) quantile."""
    dof = y.size - 3
    rss_constant = float(np.sum((y - y.mean()) ** 2))
    if rss == 0.0:
        return rss_constant > 0.0
    f_critical = dof / 2.0 * (math.pow(1.0 - confidence, -2.0 / dof) - 1.0)
    return (rss_constant - rss) / 2.0 > f_critical * rss / dof


def _flattening_problems(
    t: NDArray[np.float64],
    y: NDArray[np.float64],
    fit: _Fit,
    remaining: float,
    interval: tuple[float, float],
    confidence: float,
) -> list[str]:
    """Why the asymptote of a curve cannot be trusted (none when it can): the rule of :func:`fit_asymptote`."""
    problems = []
    if not all(map(math.isfinite, interval)):
        side = "below" if not math.isfinite(interval[0]) else "above"
        problems.append(
            f"the curve does not bound L∞ from {side} at {100 * confidence:g} % (it is nearly linear in log t)"
        )
    log_t = np.log(t / t[0])
    if fit.A == 0 and _rises(log_t, y, confidence):
        problems.append("the curve rises: a line in log t fits it significantly better than a constant")
    if fit.A == 0 or not _decays(y, fit.rss, confidence):
        return problems  # flat within its noise: nothing left to fall
    if fit.beta <= _BETA_GRID[1]:
        problems.append(
            f"the fitted decay β = {fit.beta:.3g} is at the lower end of its range {BETA_RANGE}, where L∞ and A "
            "cannot be told apart"
        )
    if remaining > FLATTENED_FRACTION * fit.A:  # fit.A: the fitted drop from the first step, L(t_first) − L∞
        problems.append(
            f"the fitted curve still falls by {remaining:.4g} after the last step {t[-1]:g} "
            f"({100 * remaining / fit.A:.3g} % of its drop from step {t[0]:g}; flattened means at most "
            f"{100 * FLATTENED_FRACTION:g} %; train longer)"
        )
    return problems


def fit_asymptote(steps: ArrayLike, losses: ArrayLike, *, confidence: float = 0.95) -> Asymptote:
    """Fit L(t) = L∞ + A·t^(−β) (A ≥ 0, β in :data:`BETA_RANGE`) to an eval-loss curve by least squares.

    For a fixed β the model is linear in L∞ and A, so the residual is profiled over β: a log-spaced
    grid of 161 exponents, then a golden-section search between the best one's neighbours. The fit
    is deterministic.

    The interval for L∞ is the profile-likelihood interval: every L∞ whose best fit (over A ≥ 0
    and β) has a residual sum of squares RSS(L∞) ≤ RSS_min · (1 + t²/(n − 3)), t the two-sided
    Student-t quantile at ``confidence`` with n − 3 degrees of freedom (the F-test form, exact for
    a linear model). It follows the asymmetry of the problem (a curve still falling bounds L∞ far
    less from below than from above) where a symmetric standard error does not, needs no random
    resampling, and is open (±inf) on a side the data cannot bound. It assumes independent
    residuals: eval losses whose noise is correlated from step to step give intervals too narrow.

    The flattening rule (:data:`FLATTENED_FRACTION` = 5 %): the curve has flattened when the fitted
    drop still to come after the last step, L(t_last) − L∞, is at most 5 % of the fitted drop from
    the first step, L(t_first) − L∞, i.e. (t_last/t_first)^β ≥ 20, and β is above the lower end of
    its range (where L∞ and A cannot be told apart). A curve whose decay is not significant (F test
    of the power law against a constant at ``confidence``) is flat within its noise and passes
    both. Beside them the interval must be bounded, and a curve that does not fall (A = 0) must not
    rise (its slope in log t significant at ``confidence``): a rising eval loss has no floor. The
    rule does not compare the remaining drop with the interval width: a wide interval would then
    excuse an unflattened curve, and a narrow one would condemn every curve that still falls
    measurably.

    Returns
    -------
    Asymptote
        L∞, its interval, A, β, the fit's RMSE, the remaining drop, and ``flattened``/``warning``.

    Raises
    ------
    ValueError
        For fewer than 5 points, steps that are not positive and strictly increasing, non-finite
        losses, or a ``confidence`` outside (0, 1).
    """
    conf = _checks.number(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
    t, y = _curve(steps, losses)
    n = t.size
    if n < MIN_FIT_POINTS:
        raise ValueError(
            f"fit_asymptote needs at least {MIN_FIT_POINTS} eval points (3 parameters and an error); got {n}"
        )
    log_t = np.log(t / t[0])  # steps scaled to t/t_first: regressors in (0, 1], A at the first step
    grid_x = np.exp(-_BETA_GRID[:, None] * log_t[None, :])
    fit = _best_beta(log_t, grid_x, lambda x: _free_fits(x, y))

    def profile(l_inf: float) -> float:
        return _best_beta(log_t, grid_x, lambda x: _fixed_fits(x, y, l_inf)).rss

    threshold = fit.rss * (1.0 + _t_quantile(conf, n - 3) ** 2 / (n - 3))
    spread = max(float(np.ptp(y)), abs(fit.l_inf) * 1e-9, 1e-300)
    start = max(math.sqrt(fit.rss / n), spread * 1e-6) * 0.01
    low = _profile_bound(profile, fit.l_inf, threshold, start, 100.0 * spread, -1.0)
    high = _profile_bound(profile, fit.l_inf, threshold, start, 100.0 * spread, 1.0)

    remaining = fit.A * math.exp(-fit.beta * float(log_t[-1])) if fit.A > 0 else 0.0
    problems = _flattening_problems(t, y, fit, remaining, (low, high), conf)
    warning = "; ".join(problems) + ": L∞ is no trustworthy floor" if problems else None
    return Asymptote(
        l_inf=fit.l_inf,
        low=low,
        high=high,
        A=_unscaled_amplitude(fit, float(t[0])),
        beta=fit.beta if fit.A > 0 else math.nan,
        rmse=math.sqrt(fit.rss / n),
        n_points=n,
        confidence=conf,
        remaining=remaining,
        flattened=not problems,
        warning=warning,
    )


def _unscaled_amplitude(fit: _Fit, first_step: float) -> float:
    """A of L∞ + A·t^(−β) in the caller's steps from the fit in steps scaled to t/t_first (inf past float64)."""
    if fit.A == 0.0:
        return 0.0
    log_a = math.log(fit.A) + fit.beta * math.log(first_step)
    return math.exp(log_a) if log_a < 709.0 else math.inf


def paper_floor(losses: ArrayLike, fraction: float = 0.1) -> float:
    """The paper's observed floor: the mean of the last ``fraction`` of the eval losses (the last
    ⌈fraction · n⌉ of n, at least one).

    Raises
    ------
    ValueError
        For an empty or non-1-D ``losses``, non-finite losses, or a ``fraction`` outside (0, 1].
    """
    frac = _checks.number(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    y = _losses(losses)
    k = max(1, math.ceil(frac * y.size - 1e-9))
    return float(np.mean(y[-k:]))


class ObservedFloor(NamedTuple):
    """A student's observed floor both ways: the paper's tail mean and the fitted asymptote."""

    paper: float
    asymptote: Asymptote


def observed_floor(
    steps: ArrayLike, losses: ArrayLike, *, fraction: float = 0.1, confidence: float = 0.95
) -> ObservedFloor:
    """:func:`paper_floor` and :func:`fit_asymptote` of one eval curve (errors as theirs)."""
    return ObservedFloor(paper_floor(losses, fraction), fit_asymptote(steps, losses, confidence=confidence))


def curve_floors(
    curves: Mapping[int, Sequence[tuple[int, float]]], *, fraction: float = 0.1, confidence: float = 0.95
) -> dict[int, ObservedFloor]:
    """:func:`observed_floor` of each width's eval curve, (step, loss) pairs, from its points after
    step 0 (the untrained student's loss is no point of the decay)."""
    return {
        w: observed_floor(
            [s for s, _ in curve if s > 0], [v for s, v in curve if s > 0], fraction=fraction, confidence=confidence
        )
        for w, curve in curves.items()
    }


def floors_from_fits(
    fits: Mapping[int, Asymptote],
) -> tuple[dict[int, float], dict[int, tuple[float, float]]]:
    """The asymptotes of students by width as :func:`calibrate` takes them: ``(observed, intervals)``.

    Raises
    ------
    ValueError
        If some asymptote's interval is open (its curve does not bound L∞), naming the width.
    """
    open_ = [w for w, f in fits.items() if not (math.isfinite(f.low) and math.isfinite(f.high))]
    if open_:
        raise ValueError(f"the asymptotes at widths {open_} have open intervals; their curves do not bound L∞")
    return {w: f.l_inf for w, f in fits.items()}, {w: (f.low, f.high) for w, f in fits.items()}


# -- predictors ---------------------------------------------------------------------------------------
def predictor_table(
    measurement: Measurement, widths: Sequence[int], *, packing_law: theory.PackingLaw | None = None, prefix: str = ""
) -> dict[str, dict[int, float]]:
    """Every floor pyfloor predicts from ``measurement`` alone, by name and student width.

    - ``eq2``: the paper's Eq. 2, Σ of the importances beyond ⌊d·g(α)⌋ (:meth:`Measurement.floor`;
      only with importances);
    - ``uniform``: every feature equally important, ε∞·max(0, 1 − d·g(α)/F) (ε∞ = Σ I_i, or 1
      without importances: the fraction of features lost);
    - ``packing`` (a paper-style law, ĝ = a·g(α)^b) or ``width_packing`` (a width-aware law,
      k = a·d^c·g(α)^b): the importances beyond the budget of ``packing_law``, fitted elsewhere
      (e.g. on the toy model) and applied here.

    Names carry ``prefix`` (e.g. ``"layer12/"``), so that the tables of several measurements can be
    merged into one dict for :func:`calibrate`.

    Raises
    ------
    ValueError
        For widths that are not distinct integers ≥ 1, or a ``packing_law`` for a measurement without importances.
    """
    ws = [_checks.count(w, "widths", minimum=1) for w in widths]
    if not ws or len(set(ws)) != len(ws):
        raise ValueError(f"widths must be distinct integers >= 1, at least one; got {list(widths)!r}")
    if packing_law is not None and measurement.importances is None:
        raise ValueError("packing_law needs a measurement with importances (this one has only F and L0)")
    w = np.asarray(ws, dtype=np.float64)
    floors: dict[str, NDArray[np.float64]] = {}
    if measurement.importances is not None:
        floors["eq2"] = np.asarray(measurement.floor(w))
    floors["uniform"] = np.asarray(measurement.uniform_floor(w))
    if packing_law is not None and measurement.importances is not None:
        name = "packing" if packing_law.c is None else "width_packing"
        floors[name] = np.asarray(packing_law.floor(w, measurement.alpha, measurement.importances))
    return {f"{prefix}{name}": {wi: float(v) for wi, v in zip(ws, values)} for name, values in floors.items()}


# -- calibration --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictorCalibration:
    """How one predictor's floors match the observed ones over the widths both have.

    Attributes
    ----------
    widths, predicted, observed:
        The common widths (ascending) and both floors at each.
    fit:
        observed ≈ C·predicted + B on all of them (:func:`pyfloor.theory.fit_calibration`).
    lowo_folds:
        Widths whose leave-one-width-out fit could be made (the others' predictions must differ).
    lowo_mean_abs, lowo_max_abs, lowo_mean_rel, lowo_max_rel:
        |C₋ᵢ·pᵢ + B₋ᵢ − oᵢ| with (C₋ᵢ, B₋ᵢ) fitted without width i: mean and max, absolute and
        relative to |oᵢ| (relative over the widths with oᵢ ≠ 0); None without folds.
    spearman:
        Rank correlation of predicted and observed floors (ties get their mean rank); None where
        either side has all floors equal.
    kendall_tau:
        Kendall's τ_b over the pairs of widths (None where either side is all ties).
    concordant, discordant, tied:
        Pairs of widths the two order alike, oppositely, or with a tie on either side.
    order_holds:
        No discordant pair: the predictor never puts two floors in the wrong order.
    """

    widths: tuple[int, ...]
    predicted: tuple[float, ...]
    observed: tuple[float, ...]
    fit: theory.Calibration
    lowo_folds: int
    lowo_mean_abs: float | None
    lowo_max_abs: float | None
    lowo_mean_rel: float | None
    lowo_max_rel: float | None
    spearman: float | None
    kendall_tau: float | None
    concordant: int
    discordant: int
    tied: int
    order_holds: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field, the fit as ``slope``, ``intercept``, ``r2``, ``n_points``."""
        d = asdict(self)
        d["fit"] = self.fit._asdict()
        return d


@dataclass(frozen=True)
class CalibrationResult:
    """:func:`calibrate`'s verdict on every predictor.

    Attributes
    ----------
    predictors:
        Name → :class:`PredictorCalibration`, in the order given.
    skipped:
        Name → why it could not be calibrated (its floors are equal at every common width).
    observed, observed_intervals:
        The observed floors by width, and their intervals where given.
    """

    predictors: dict[str, PredictorCalibration]
    skipped: dict[str, str]
    observed: dict[int, float]
    observed_intervals: dict[int, tuple[float, float]] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no NaN or ±Inf: undefined values are None)."""
        d = {
            "observed": self.observed,
            "observed_intervals": self.observed_intervals,
            "predictors": {name: p.to_dict() for name, p in self.predictors.items()},
            "skipped": self.skipped,
        }
        ready: dict[str, Any] = json_ready(d)
        return ready


def _ranks(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Ranks 1 … n of ``x``, tied values sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1, dtype=np.float64)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return np.asarray(sums[inverse] / np.bincount(inverse)[inverse], dtype=np.float64)


def _spearman(p: NDArray[np.float64], o: NDArray[np.float64]) -> float | None:
    """Spearman's ρ: the Pearson correlation of the ranks (None where either side has no spread)."""
    rp, ro = _ranks(p) - (p.size + 1) / 2, _ranks(o) - (o.size + 1) / 2
    denom = math.sqrt(float(rp @ rp) * float(ro @ ro))
    return None if denom == 0 else float(rp @ ro) / denom


def _pair_order(p: NDArray[np.float64], o: NDArray[np.float64]) -> tuple[int, int, int, float | None]:
    """Concordant, discordant and tied pairs of (p, o), and Kendall's τ_b."""
    i, j = np.triu_indices(p.size, k=1)
    sp, so = np.sign(p[i] - p[j]), np.sign(o[i] - o[j])
    concordant, discordant = int(np.sum(sp * so > 0)), int(np.sum(sp * so < 0))
    untied_p, untied_o = int(np.count_nonzero(sp)), int(np.count_nonzero(so))
    tau = None if untied_p == 0 or untied_o == 0 else (concordant - discordant) / math.sqrt(untied_p * untied_o)
    return concordant, discordant, i.size - concordant - discordant, tau


def _leave_one_out(p: NDArray[np.float64], o: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Absolute and relative errors at each width predicted by the affine fit on the other widths
    (widths whose others all share one prediction are left out; relative only where oᵢ ≠ 0)."""
    errors = []
    for i in range(p.size):
        rest = np.arange(p.size) != i
        if np.ptp(p[rest]) > 0:
            errors.append((abs(theory.fit_calibration(p[rest], o[rest]).apply(float(p[i])) - o[i]), o[i]))
    err = np.array([e for e, _ in errors], dtype=np.float64)
    obs = np.array([v for _, v in errors], dtype=np.float64)
    return err, err[obs != 0] / np.abs(obs[obs != 0])


def _mean_max(x: NDArray[np.float64]) -> tuple[float | None, float | None]:
    return (float(np.mean(x)), float(np.max(x))) if x.size else (None, None)


def _check_floors(values: Mapping[int, float], name: str) -> dict[int, float]:
    """``values`` as {int width: finite float}, ValueError naming ``name`` and the bad width otherwise."""
    out = {}
    for w, v in values.items():
        width = _checks.count(w, f"{name} width", minimum=1)
        out[width] = _checks.number(v, f"{name}[{width}]")
    return out


def calibrate(
    predictions: Mapping[str, Mapping[int, float]],
    observed: Mapping[int, float],
    *,
    observed_intervals: Mapping[int, tuple[float, float]] | None = None,
) -> CalibrationResult:
    """Fit each predictor's floors to the observed floors and measure how well they transfer.

    For every predictor (name → width → predicted floor, e.g. :func:`predictor_table`), over the
    widths it shares with ``observed``: the affine fit observed ≈ C·predicted + B with its R²
    (:func:`pyfloor.theory.fit_calibration`); the leave-one-width-out error (refit without each
    width, predict it); Spearman's ρ and Kendall's τ_b of predicted against observed floors, and
    whether any pair of widths is ordered the wrong way. ``observed_intervals`` (width →
    (low, high), e.g. from :func:`floors_from_fits`) are carried into the report.

    At least 3 common widths are needed: through 2 points the affine fit is exact (R² = 1 says
    nothing) and no width can be left out. A predictor whose floors are equal at every common width
    (e.g. the uniform floor above d*) cannot be fitted; it is listed in ``skipped`` with the reason.

    Raises
    ------
    ValueError
        For a predictor with fewer than 3 widths in common with ``observed`` (naming it and them),
        non-finite floors, widths that are not integers ≥ 1, intervals that are not finite with
        low ≤ observed ≤ high, or no predictor left to calibrate.
    """
    obs = _check_floors(observed, "observed")
    intervals = None
    if observed_intervals is not None:
        intervals = {}
        for w, bounds in observed_intervals.items():
            width = _checks.count(w, "observed_intervals width", minimum=1)
            lo, hi = (_checks.number(b, f"observed_intervals[{width}]") for b in bounds)
            if width not in obs:
                raise ValueError(f"observed_intervals has width {width}, which observed lacks")
            if not lo <= obs[width] <= hi:
                raise ValueError(
                    f"observed_intervals[{width}] = ({lo!r}, {hi!r}) must contain the observed floor at that width "
                    f"({obs[width]!r})"
                )
            intervals[width] = (lo, hi)
    if not predictions:
        raise ValueError("predictions is empty; give at least one predictor (name → width → floor)")
    results, skipped = {}, {}
    for name, table in predictions.items():
        pred = _check_floors(table, f"predictions[{name!r}]")
        widths = tuple(sorted(set(pred) & set(obs)))
        if len(widths) < 3:
            raise ValueError(
                f"predictor {name!r} shares {len(widths)} widths with observed ({list(widths)}); calibrating "
                "needs at least 3 (through 2 the affine fit is exact and none can be left out)"
            )
        p = np.array([pred[w] for w in widths], dtype=np.float64)
        o = np.array([obs[w] for w in widths], dtype=np.float64)
        if np.ptp(p) == 0:
            skipped[name] = f"predicts {p[0]:.6g} at every width ({', '.join(map(str, widths))}); no slope to fit"
            continue
        abs_err, rel_err = _leave_one_out(p, o)
        concordant, discordant, tied, tau = _pair_order(p, o)
        (mean_abs, max_abs), (mean_rel, max_rel) = _mean_max(abs_err), _mean_max(rel_err)
        results[name] = PredictorCalibration(
            widths=widths,
            predicted=tuple(p.tolist()),
            observed=tuple(o.tolist()),
            fit=theory.fit_calibration(p, o),
            lowo_folds=int(abs_err.size),
            lowo_mean_abs=mean_abs,
            lowo_max_abs=max_abs,
            lowo_mean_rel=mean_rel,
            lowo_max_rel=max_rel,
            spearman=_spearman(p, o),
            kendall_tau=tau,
            concordant=concordant,
            discordant=discordant,
            tied=tied,
            order_holds=discordant == 0,
        )
    if not results:
        raise ValueError("no predictor could be calibrated: " + "; ".join(f"{k} {v}" for k, v in skipped.items()))
    return CalibrationResult(results, skipped, obs, intervals)


# -- output -------------------------------------------------------------------------------------------
def calibration_markdown(result: CalibrationResult) -> str:
    """The calibration as Markdown: one row per predictor (fit, leave-one-width-out error, rank
    agreement), then the observed floors beside each predictor's calibrated prediction."""
    rows = []
    for name, p in result.predictors.items():
        rows.append(
            [
                name,
                str(len(p.widths)),
                f"{p.fit.slope:.4g}",
                f"{p.fit.intercept:.4g}",
                format_number(p.fit.r2 if math.isfinite(p.fit.r2) else None, ".4f"),
                format_number(p.lowo_mean_abs, ".3g"),
                format_number(p.lowo_max_abs, ".3g"),
                format_number(None if p.lowo_mean_rel is None else 100 * p.lowo_mean_rel, ".3g"),
                format_number(p.spearman, ".3f"),
                format_number(p.kendall_tau, ".3f"),
                f"{'yes' if p.order_holds else 'no'} ({p.concordant}/{p.discordant}/{p.tied})",
            ]
        )
    lines = [
        "# pyfloor calibration of predicted floors",
        "",
        "Each predictor is fitted as observed ≈ C·predicted + B over the widths it shares with the observed floors. "
        "LOWO: the error at each width predicted by the fit on the other widths (mean, max; relative in %). "
        "Order: whether no pair of widths is ordered the wrong way (concordant/discordant/tied pairs).",
        "",
        markdown_table(
            [
                "predictor",
                "widths",
                "C",
                "B",
                "R²",
                "LOWO mean",
                "LOWO max",
                "LOWO mean %",
                "Spearman ρ",
                "Kendall τ_b",
                "order holds",
            ],
            rows,
        ),
    ]
    if result.skipped:
        lines += ["", "Not calibrated: " + "; ".join(f"{k} {v}" for k, v in result.skipped.items()) + "."]
    widths = sorted(result.observed)
    intervals = result.observed_intervals or {}
    body = []
    for w in widths:
        cells = [f"{w:,}", f"{result.observed[w]:.6g}"]
        cells.append(f"[{intervals[w][0]:.6g}, {intervals[w][1]:.6g}]" if w in intervals else "—")
        for p in result.predictors.values():
            cells.append(f"{p.fit.apply(p.predicted[p.widths.index(w)]):.6g}" if w in p.widths else "—")
        body.append(cells)
    lines += [
        "",
        "## Observed floors and calibrated predictions C·predicted + B",
        "",
        markdown_table(["width", "observed", "interval", *result.predictors], body),
    ]
    return "\n".join(lines) + "\n"


def plot_calibration(result: CalibrationResult, path: str | Path | None = None) -> Figure:
    """One panel per predictor: observed against predicted floors, the observed intervals as error
    bars, and the fitted line C·predicted + B with its R² and Spearman ρ. Saved to ``path`` (PNG,
    PDF or SVG by its suffix) if given."""
    import matplotlib.pyplot as plt

    out = figure_path(path)
    n = len(result.predictors)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.4 * rows), layout="constrained", squeeze=False)
    intervals = result.observed_intervals or {}
    for ax, (name, p) in zip(axes.flat, result.predictors.items()):
        x, y = np.array(p.predicted), np.array(p.observed)
        lo = np.array([intervals.get(w, (v, v))[0] for w, v in zip(p.widths, p.observed)])
        hi = np.array([intervals.get(w, (v, v))[1] for w, v in zip(p.widths, p.observed)])
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o", color="C0", ms=4.5, capsize=2, label="observed")
        for xi, yi, w in zip(x, y, p.widths):
            ax.annotate(f"{w:,}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.35")
        line = np.linspace(float(x.min()), float(x.max()), 2)
        ax.plot(
            line,
            p.fit.apply(line),
            color="C3",
            lw=1.2,
            label=f"{p.fit.slope:.3g}·x {'−' if p.fit.intercept < 0 else '+'} {abs(p.fit.intercept):.3g}",
        )
        ax.set_title(f"{name}: R² = {p.fit.r2:.3f}, ρ = {format_number(p.spearman, '.2f')}", fontsize=9)
        ax.set_xlabel("predicted floor", fontsize=8)
        ax.set_ylabel("observed floor", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle("Observed against predicted floors (labels: student width)", fontsize=10)
    finish_figure(axes.flat[0], out, created=True)
    return fig


def plot_eval_curves(
    curves: Mapping[int, Sequence[tuple[int, float]]],
    fits: Mapping[int, Asymptote],
    path: str | Path | None = None,
) -> Axes:
    """Each student's eval loss against training step (log-log), its fitted L∞ + A·t^(−β) dashed and
    L∞ with its interval as a band, one colour a width. Saved to ``path`` if given."""
    ax, created = new_axes(figsize=(6.8, 4.4))
    for i, (width, curve) in enumerate(sorted(curves.items())):
        color = f"C{i % 10}"
        steps = np.array([s for s, _ in curve if s > 0], dtype=np.float64)
        losses = np.array([v for s, v in curve if s > 0], dtype=np.float64)
        ax.plot(steps, losses, "o", ms=3, color=color, label=f"d_S = {width:,}")
        fit = fits.get(width)
        if fit is not None and steps.size:
            ax.plot(steps, fit.curve(steps), "--", lw=1, color=color)
            if math.isfinite(fit.low) and math.isfinite(fit.high):
                ax.axhspan(fit.low, fit.high, color=color, alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("eval loss: per-token KL·T²")
    ax.set_title("Distilled students: eval curves and fitted floors (bands: L∞ interval)", fontsize=10)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(True, which="both", alpha=0.3)
    return finish_figure(ax, figure_path(path), created)


def write_calibration_report(result: CalibrationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``calibration.json`` (:meth:`CalibrationResult.to_dict`), ``calibration.md``
    (:func:`calibration_markdown`) and ``calibration.png`` (:func:`plot_calibration`) into ``out_dir``
    (created if missing). Returns their paths by kind (``json``, ``markdown``, ``plot``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "calibration.json", "markdown": out / "calibration.md", "plot": out / "calibration.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")
    paths["markdown"].write_text(calibration_markdown(result))
    plot_calibration(result, paths["plot"])
    return paths
