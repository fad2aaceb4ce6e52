"""The floor predictors of the toy experiment, and how well they match the observed floors.

:func:`predict_floors` forms every predictor of :data:`PREDICTORS` for every configuration of a run
(:class:`pyfloor.toy.ConfigResult`); the fitted ones see only the other configurations (leave one
configuration out). They are scored against the observed losses of :data:`TARGETS`.

Scores: the paper scores its toy-model predictions by *median accuracy*: for each student,
accuracy = max(0, 1 − |predicted − observed| / observed), and the median over students. A floor
predicted as 0 where a small positive loss was observed scores 0, however small the loss. Beside it:
Pearson r, R², and strata by student width relative to d*. The metrics themselves (:func:`score`
and the functions it calls) take numpy arrays and use numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import theory
from ..features import EstimatorName
from ..stats import Measurement
from .experiment import ConfigResult, TeacherFacts

__all__ = [
    "TARGETS",
    "PREDICTORS",
    "predict_floors",
    "predict_with_fits",
    "fit_pooled_budget_law",
    "LocoFits",
    "Scores",
    "accuracy",
    "median_accuracy",
    "pearson_r",
    "r_squared",
    "score",
    "score_groups",
    "WIDTH_STRATA",
    "width_stratum",
    "summarize_scores",
]

#: What the predictors are scored against (the observed losses of the distilled students).
TARGETS: dict[str, str] = {
    "distill": "(a) distillation loss against the teacher's output",
    "excess": "(b) excess task loss over the teacher's own",
    "task": "(c) raw task loss",
}

#: The floor predictors, in the order reports show them, with what each one uses.
PREDICTORS: dict[str, str] = {
    "eq2": "Eq. 2 with the true inputs: F = n, α, w_i = I_i·(1−α)/3, budget ⌊d·g(α)⌋",
    "eq2_sae": (
        "Eq. 2 with the SAE measurement of the teacher (ReLU+L1 family, member by the saturation rule), features "
        "counted by the merged estimator (pyfloor.features): F̂, α̂ and importances rescaled to sum to the "
        "width-0 distillation loss Σ_i I_i·Var(x̂_T,i)"
    ),
    "eq2_sae_paper": ("as eq2_sae, features counted by the paper's definition (every alive latent; α̂ = 1 − L0/F̂)"),
    "sae_width_packing_loco": (
        "as width_packing_loco, but from SAE measurements only: the merged estimator's F̂, α̂ and rescaled "
        "importances of each configuration, the law fitted on the other configurations' effective budgets "
        "against their own SAE importances (leave one configuration out)"
    ),
    "eq2_teacher": (
        "Eq. 2 over the features the teacher represents (‖W_T,i‖² > 0.5), each weighted by what the "
        "teacher's output carries of it, I_i·Var(x̂_T,i); budget ⌊d·g(α)⌋"
    ),
    "teacher_density": (
        "as eq2_teacher, but the student keeps features as densely as the teacher did: "
        "budget ⌊d·F_T/d_T⌋ (no fit, no student seen)"
    ),
    "packing_loco": (
        "as eq2_teacher with the packing law ĝ = a·g(α)^b fitted on the other configurations' "
        "distillation losses (leave one configuration out, same importance profile)"
    ),
    "width_packing_loco": (
        "as eq2_teacher with a width-aware packing law: the student keeps k = a·d^c·g(α)^b features "
        "(continuous k: the partly kept feature counts pro rata), (a, b, c) fitted by least squares on "
        "the other configurations' effective budgets (leave one configuration out, same importance profile)"
    ),
    "calibrated_loco": (
        "affine calibration C·eq2 + B fitted on the other configurations' distillation losses "
        "(leave one configuration out, same importance profile)"
    ),
}


# -- scores ------------------------------------------------------------------------------------
#: Student width relative to the critical width d*: (label, lower bound, upper bound), half-open [lo, hi).
WIDTH_STRATA: tuple[tuple[str, float, float], ...] = (
    ("d/d* < 0.8", 0.0, 0.8),
    ("0.8 ≤ d/d* < 1.2", 0.8, 1.2),
    ("d/d* ≥ 1.2", 1.2, math.inf),
)


class Scores(NamedTuple):
    """Agreement of predicted with observed floors over ``n_points`` students."""

    n_points: int
    pearson_r: float
    r2: float
    median_accuracy: float

    def to_dict(self) -> dict[str, float | int]:
        return self._asdict()


def _pairs(predicted: ArrayLike, observed: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    p = np.asarray(predicted, dtype=np.float64).ravel()
    o = np.asarray(observed, dtype=np.float64).ravel()
    if p.shape != o.shape:
        raise ValueError(f"predicted and observed must have the same length; got {p.size} and {o.size}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(o))):
        raise ValueError("predicted and observed floors must be finite")
    return p, o


def accuracy(predicted: ArrayLike, observed: ArrayLike) -> NDArray[np.float64]:
    """Per-student accuracy max(0, 1 − |predicted − observed| / |observed|).

    An observed value of exactly 0 scores 1 if predicted exactly, else 0. (Observed floors are
    losses, ≥ 0; an excess loss over the teacher's can come out a hair below 0, hence |observed|.)
    """
    p, o = _pairs(predicted, observed)
    scale = np.abs(o)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, np.abs(p - o) / np.where(scale > 0, scale, 1.0), np.where(p == o, 0.0, np.inf))
    return np.maximum(0.0, 1.0 - rel)


def median_accuracy(predicted: ArrayLike, observed: ArrayLike) -> float:
    """Median of :func:`accuracy` (NaN for no students)."""
    acc = accuracy(predicted, observed)
    return float(np.median(acc)) if acc.size else math.nan


def pearson_r(predicted: ArrayLike, observed: ArrayLike) -> float:
    """Pearson correlation; NaN when either side is constant or has fewer than 2 points."""
    p, o = _pairs(predicted, observed)
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(o) == 0:
        return math.nan
    pc, oc = p - p.mean(), o - o.mean()
    return float(np.sum(pc * oc) / math.sqrt(float(np.sum(pc * pc)) * float(np.sum(oc * oc))))


def r_squared(predicted: ArrayLike, observed: ArrayLike) -> float:
    """R² of the predictions taken as they are (no fitted line): 1 − Σ(o − p)² / Σ(o − ō)².

    Negative when the predictions do worse than the mean of the observations; NaN when the
    observations are constant or fewer than 2.
    """
    p, o = _pairs(predicted, observed)
    ss_tot = float(np.sum((o - o.mean()) ** 2))
    if p.size < 2 or ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((o - p) ** 2)) / ss_tot


def score(predicted: ArrayLike, observed: ArrayLike) -> Scores:
    """Pearson r, R² and median accuracy of ``predicted`` against ``observed``."""
    p, o = _pairs(predicted, observed)
    return Scores(int(p.size), pearson_r(p, o), r_squared(p, o), median_accuracy(p, o))


def score_groups(
    predicted: ArrayLike, observed: ArrayLike, keys: Sequence[Hashable] | Iterable[Hashable]
) -> dict[Hashable, Scores]:
    """:func:`score` within each group of students sharing a key, in order of first appearance."""
    p, o = _pairs(predicted, observed)
    keys = list(keys)
    if len(keys) != p.size:
        raise ValueError(f"got {len(keys)} keys for {p.size} students")
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {k: score(p[idx], o[idx]) for k, idx in groups.items()}


def width_stratum(width: ArrayLike, critical_width: ArrayLike) -> list[str]:
    """The :data:`WIDTH_STRATA` label of each student, from its width d and the critical width d*."""
    ratio = np.atleast_1d(np.asarray(width, dtype=np.float64) / np.asarray(critical_width, dtype=np.float64))
    if np.any(~np.isfinite(ratio)) or np.any(ratio < 0):
        raise ValueError("widths and critical widths must give finite, non-negative ratios d/d*")
    labels = []
    for r in ratio.ravel():
        labels.append(next(label for label, lo, hi in WIDTH_STRATA if lo <= r < hi))
    return labels


# -- predicting ----------------------------------------------------------------------------------
def _sae_profile(result: ConfigResult, estimator: EstimatorName) -> tuple[Measurement, NDArray[np.float64]] | None:
    """The picked ReLU SAE's measurement by ``estimator`` and its importances rescaled to sum to the
    width-0 distillation loss (None without an SAE measurement)."""
    if result.sae is None or estimator not in result.sae.measurements.get("relu", {}):
        return None
    m = result.sae.measurements["relu"][estimator]
    if not m.total_importance or m.importances is None:
        return None
    return m, m.importances * (result.teachers[0].width0_loss / m.total_importance)


def _sae_floor(result: ConfigResult, estimator: EstimatorName) -> NDArray[np.float64] | None:
    """Eq. 2 from the picked ReLU SAE counted by ``estimator``, importances rescaled to the width-0 loss."""
    profile = _sae_profile(result, estimator)
    if profile is None:
        return None
    m, imp = profile
    floor = np.asarray(theory.importance_floor(np.asarray(result.config.widths), m.alpha, imp), dtype=np.float64)
    per_seed: NDArray[np.float64] = np.broadcast_to(floor, (len(result.seeds), len(result.config.widths))).copy()
    return per_seed


def _teacher_floor(result: ConfigResult, budget: Callable[[TeacherFacts], NDArray[np.int64]]) -> NDArray[np.float64]:
    """Σ of the teacher's represented-feature weights beyond ``budget(teacher)``, per seed and width."""
    rows = []
    for t in result.teachers:
        tails = theory.tail_sums(t.represented_weights())
        rows.append(tails[np.minimum(budget(t), tails.size - 1)])
    return np.asarray(rows, dtype=np.float64)


def _own_predictors(result: ConfigResult) -> dict[str, NDArray[np.float64] | None]:
    """The predictors that need nothing but this configuration's teacher (or nothing at all)."""
    c = result.config
    w = np.asarray(c.widths)
    s = len(result.seeds)
    eq2 = np.asarray(theory.importance_floor(w, c.alpha, c.task.feature_weights), dtype=np.float64)
    return {
        "eq2": np.broadcast_to(eq2, (s, w.size)).copy(),
        "eq2_sae": _sae_floor(result, "merged"),
        "eq2_sae_paper": _sae_floor(result, "paper"),
        "eq2_teacher": _teacher_floor(result, lambda t: np.floor(w * theory.capacity(c.alpha)).astype(np.int64)),
        "teacher_density": _teacher_floor(
            result, lambda t: np.floor(w * t.represented.size / c.d_teacher + 1e-9).astype(np.int64)
        ),
    }


class _BudgetPoints(NamedTuple):
    """Widths, sparsities and effective budgets k of the students of one configuration, with the
    number of features each could keep (its teacher's F_T)."""

    widths: NDArray[np.float64]
    alphas: NDArray[np.float64]
    budgets: NDArray[np.float64]
    n_features: NDArray[np.float64]


def _budget_points(r: ConfigResult) -> _BudgetPoints:
    """Effective budgets (:func:`pyfloor.theory.effective_budget`) of r's distilled students,
    each against its own seed's teacher features weighted by I_i·Var(x̂_T,i)."""
    widths, budgets, n_features = [], [], []
    for si, t in enumerate(r.teachers):
        imp = t.represented_weights()
        if imp.size == 0:
            continue
        k = np.atleast_1d(theory.effective_budget(r.distilled.distill[si], imp))
        widths.append(np.asarray(r.config.widths, dtype=np.float64))
        budgets.append(k)
        n_features.append(np.full(k.size, float(imp.size)))
    w = np.concatenate(widths) if widths else np.zeros(0)
    return _BudgetPoints(
        w, np.full(w.size, r.config.alpha), *(np.concatenate(c) if c else np.zeros(0) for c in (budgets, n_features))
    )


def _sae_budget_points(r: ConfigResult) -> _BudgetPoints | None:
    """Effective budgets of r's first-seed students (the seed whose teacher the SAE measured) against
    the merged estimator's rescaled SAE importances, at its α̂ (None without an SAE measurement)."""
    profile = _sae_profile(r, "merged")
    if profile is None:
        return None
    m, imp = profile
    k = np.atleast_1d(theory.effective_budget(r.distilled.distill[0], imp))
    w = np.asarray(r.config.widths, dtype=np.float64)
    return _BudgetPoints(w, np.full(w.size, m.alpha), k, np.full(w.size, float(imp.size)))


def fit_pooled_budget_law(points: Sequence[_BudgetPoints], *, width_aware: bool) -> theory.PackingLaw | None:
    """:func:`pyfloor.theory.fit_budget_law` over several configurations' students; None when they
    cannot determine the law (too few, one sparsity or one width only, or b ≤ 0)."""
    if not points:
        return None
    try:
        widths, alphas, budgets, n_features = (np.concatenate(col) for col in zip(*points))
        return theory.fit_budget_law(widths, alphas, budgets, n_features=n_features, width_aware=width_aware)
    except ValueError:
        return None


class LocoFits(NamedTuple):
    """The laws fitted for one configuration on all the others (None: could not be fitted)."""

    packing: theory.PackingLaw | None
    width_packing: theory.PackingLaw | None
    calibration: theory.Calibration | None
    sae_width_packing: theory.PackingLaw | None

    def to_dict(self) -> dict[str, Any]:
        return {k: None if v is None else v._asdict() for k, v in self._asdict().items()}


def _loco_fits(results: Sequence[ConfigResult], eq2: Sequence[NDArray[np.float64]]) -> list[LocoFits]:
    """For each configuration, the laws fitted on the other configurations of its importance profile."""
    points = [_budget_points(r) for r in results]
    sae_points = [_sae_budget_points(r) for r in results]
    fits = []
    for i, r in enumerate(results):
        others = [
            j
            for j, q in enumerate(results)
            if j != i and (q.config.importance, q.config.ratio) == (r.config.importance, r.config.ratio)
        ]
        fits.append(
            LocoFits(
                fit_pooled_budget_law([points[j] for j in others], width_aware=False),
                fit_pooled_budget_law([points[j] for j in others], width_aware=True),
                _fit_calibration([eq2[j] for j in others], [results[j] for j in others]),
                fit_pooled_budget_law([p for j in others if (p := sae_points[j]) is not None], width_aware=True),
            )
        )
    return fits


def _fit_calibration(eq2: Sequence[NDArray[np.float64]], others: Sequence[ConfigResult]) -> theory.Calibration | None:
    """observed ≈ C·eq2 + B over ``others`` (seed means); None without two distinct predictions."""
    if not others:
        return None
    try:
        return theory.fit_calibration(
            np.concatenate([p.mean(0) for p in eq2]), np.concatenate([q.distilled.distill.mean(0) for q in others])
        )
    except ValueError:
        return None


def _apply_fits(r: ConfigResult, fits: LocoFits, eq2: NDArray[np.float64]) -> dict[str, NDArray[np.float64] | None]:
    """packing_loco, width_packing_loco and calibrated_loco of one configuration from its fits."""
    w = np.asarray(r.config.widths, dtype=np.float64)
    packing, width_law, cal, sae_law = fits
    profile = _sae_profile(r, "merged")
    return {
        # the paper-style law keeps whole features: F_S = ⌊d·a·g^b⌋
        "packing_loco": (
            None
            if packing is None
            else _teacher_floor(r, lambda t: np.floor(packing.budget(w, r.config.alpha)).astype(np.int64))
        ),
        "width_packing_loco": (
            None
            if width_law is None
            else np.asarray([width_law.floor(w, r.config.alpha, t.represented_weights()) for t in r.teachers])
        ),
        "calibrated_loco": None if cal is None else np.asarray(cal.apply(eq2), dtype=np.float64),
        "sae_width_packing_loco": (
            None
            if sae_law is None or profile is None
            else np.broadcast_to(
                np.asarray(sae_law.floor(w, profile[0].alpha, profile[1]), dtype=np.float64), (len(r.seeds), w.size)
            ).copy()
        ),
    }


def _required(prediction: NDArray[np.float64] | None) -> NDArray[np.float64]:
    if prediction is None:
        raise ValueError("a predictor every configuration has is missing")
    return prediction


def predict_with_fits(
    results: Sequence[ConfigResult],
) -> tuple[list[dict[str, NDArray[np.float64] | None]], list[LocoFits]]:
    """:func:`predict_floors`, and the laws fitted for each configuration on the others."""
    own = [_own_predictors(r) for r in results]
    eq2 = [_required(o["eq2"]) for o in own]  # Eq. 2 from the truth exists for every configuration
    fits = _loco_fits(results, eq2)
    preds = [{**o, **_apply_fits(r, f, e)} for r, o, f, e in zip(results, own, fits, eq2)]
    return [{name: p[name] for name in PREDICTORS} for p in preds], fits


def predict_floors(results: Sequence[ConfigResult]) -> list[dict[str, NDArray[np.float64] | None]]:
    """Every predictor of :data:`PREDICTORS` for every configuration: arrays [seeds, widths], or
    ``None`` where a predictor cannot be formed (no SAE measurement; no other configurations to fit on).

    No prediction uses the observed losses of the configuration it predicts: the fitted predictors
    see only the other configurations (leave one configuration out).
    """
    return predict_with_fits(results)[0]


# -- scoring the predictors over a run ----------------------------------------------------------
def _pooled(
    results: Sequence[ConfigResult], preds: Sequence[dict[str, NDArray[np.float64] | None]], name: str, target: str
) -> tuple[NDArray[np.float64], NDArray[np.float64], list[float], list[str], list[int]] | None:
    """Seed-mean (predicted, observed) of every student of every configuration, with its α, stratum, config index."""
    p, o, alphas, strata, cfg = [], [], [], [], []
    for i, (r, pr) in enumerate(zip(results, preds)):
        prediction = pr[name]
        if prediction is None:
            return None
        p.append(prediction.mean(0))
        o.append(getattr(r.distilled, target).mean(0))
        alphas += [r.config.alpha] * len(r.config.widths)
        strata += width_stratum(np.asarray(r.config.widths), r.config.critical_width)
        cfg += [i] * len(r.config.widths)
    return np.concatenate(p), np.concatenate(o), alphas, strata, cfg


def summarize_scores(
    results: Sequence[ConfigResult], preds: Sequence[dict[str, NDArray[np.float64] | None]]
) -> dict[str, Any]:
    """Per predictor and target: pooled scores, by sparsity, by d/d* stratum, and per-configuration r
    (JSON-ready; ``"best"``: the best predictor on (a)). ``preds``: :func:`predict_floors` of ``results``."""
    out: dict[str, Any] = {}
    for target in TARGETS:
        out[target] = {}
        for name in PREDICTORS:
            pooled = _pooled(results, preds, name, target)
            if pooled is None:
                out[target][name] = None
                continue
            p, o, alphas, strata, cfg = pooled
            per_config = score_groups(p, o, cfg)
            rs = np.array([s.pearson_r for s in per_config.values()], dtype=np.float64)
            accs = np.array([s.median_accuracy for s in per_config.values()])
            out[target][name] = {
                "overall": score(p, o).to_dict(),
                "by_sparsity": {f"{a:g}": s.to_dict() for a, s in sorted(score_groups(p, o, alphas).items())},
                "by_stratum": {k: v.to_dict() for k, v in score_groups(p, o, strata).items()},
                "per_config": {
                    "pearson_r_median": float(np.nanmedian(rs)) if np.any(np.isfinite(rs)) else math.nan,
                    "pearson_r_min": float(np.nanmin(rs)) if np.any(np.isfinite(rs)) else math.nan,
                    "fraction_r_at_least_0.98": float(np.mean(rs >= 0.98)),
                    "median_accuracy_median": float(np.median(accs)),
                },
            }
    out["best"] = _best(out["distill"])
    return out


def _best(scores: dict[str, Any]) -> str | None:
    """The predictor whose worst per-sparsity median accuracy on (a) is highest (ties: higher mean r)."""
    ranked = [
        (min(s["median_accuracy"] for s in v["by_sparsity"].values()), v["per_config"]["pearson_r_median"], k)
        for k, v in scores.items()
        if v is not None
    ]
    return max(ranked, key=lambda t: (t[0], np.nan_to_num(t[1], nan=-1.0)))[2] if ranked else None
