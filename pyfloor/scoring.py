"""How well predicted floors match observed ones: Pearson r, R², median accuracy, strata by d/d*.

The paper scores its toy-model predictions by *median accuracy*: for each student,
accuracy = max(0, 1 − |predicted − observed| / observed), and the median over students. A floor
predicted as 0 where a small positive loss was observed scores 0, however small the loss.

numpy only; no torch.
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable, NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Scores",
    "accuracy",
    "median_accuracy",
    "pearson_r",
    "r_squared",
    "score",
    "score_groups",
    "WIDTH_STRATA",
    "width_stratum",
]

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
