"""Measuring a toy teacher with a sweep of SAEs, through the pipeline real teachers use.

Every SAE of the sweep is trained by :func:`pyfloor.sae.train_sae` on the teacher's hidden
activations h = W_T x and measured through :class:`pyfloor.encode.StatsAccumulator` and
:meth:`pyfloor.stats.Measurement.from_stats`, with the paper's definitions; a penalty rule that
needs no knowledge of the truth picks one SAE per activation (:class:`SAESettings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .. import _checks
from ..encode import StatsAccumulator
from ..sae import SAE, TrainConfig, train_sae
from ..stats import Measurement
from .models import ToyTask, stable_seed

__all__ = ["SAESettings", "SweepPoint", "TeacherMeasurement", "measure_teacher"]


@dataclass(frozen=True)
class SAESettings:
    """How a toy teacher is measured: a sweep of SAEs on its hidden activations h = W_T x.

    Each SAE has ``expansion · d_T`` latents (set from the teacher's width, never from the true
    feature count), is trained by :func:`pyfloor.sae.train_sae` on fresh samples, and is measured on
    ``measure_tokens`` further fresh samples through :class:`pyfloor.encode.StatsAccumulator` and
    :meth:`pyfloor.stats.Measurement.from_stats` with the paper's definitions. ReLU SAEs (the
    paper's recipe) are swept over ``l1_grid``, top-k SAEs over ``k_grid``.

    Penalty rule (needs no knowledge of the truth): per activation, take the sparsest SAE
    (largest L1, smallest k) whose FVU on the measurement stream is at most ``fvu_tolerance``;
    if none is, the one with the lowest FVU.
    """

    expansion: int = 8
    l1_grid: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    k_grid: tuple[int, ...] = (1, 2, 3, 4)
    steps: int = 800
    batch_size: int = 1024
    lr: float = 1e-2
    measure_tokens: int = 65536
    fvu_tolerance: float = 0.1
    alive_threshold: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("expansion", "steps", "batch_size", "measure_tokens"):
            _checks.count(getattr(self, name), name, minimum=1)
        if not self.l1_grid and not self.k_grid:
            raise ValueError("an SAE sweep needs at least one L1 coefficient (l1_grid) or k (k_grid)")
        for v in self.l1_grid:
            _checks.number(v, "l1_grid", low=0.0)
        for k in self.k_grid:
            _checks.count(k, "k_grid", minimum=1)
        _checks.number(self.lr, "lr", low=0.0, low_open=True)
        _checks.number(self.fvu_tolerance, "fvu_tolerance", low=0.0)
        _checks.fraction(self.alive_threshold, "alive_threshold")

    def sweep(self) -> list[tuple[Literal["relu", "topk"], float]]:
        """(activation, penalty) of every SAE, sparsest first within each activation."""
        return [("relu", float(v)) for v in sorted(self.l1_grid, reverse=True)] + [
            ("topk", int(k)) for k in sorted(self.k_grid)
        ]

    @property
    def total_steps(self) -> int:
        return self.steps * (len(self.l1_grid) + len(self.k_grid))


class SweepPoint(NamedTuple):
    """One SAE of the sweep and what the paper's estimators make of it."""

    activation: str
    penalty: float  # L1 coefficient (relu) or k (topk)
    fvu: float  # unexplained variance fraction on the measurement stream
    mean_l0: float
    n_features: int  # F̂: alive latents
    alpha: float  # α̂ = 1 − L0 / F̂


class TeacherMeasurement(NamedTuple):
    """An SAE sweep on one teacher, the points the rule picked, and the picked measurements."""

    n_latents: int
    points: list[SweepPoint]
    selected: dict[str, int]  # activation → index into ``points``
    measurements: dict[str, Measurement]  # activation → the measurement of the picked SAE


def _activation_stream(W: Tensor, task: ToyTask, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless batches of the teacher's hidden activations h = W x [batch, d_T] on fresh samples."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield task.sample(batch_size, g) @ W.T


def _measurement_batches(W: Tensor, task: ToyTask, n_tokens: int, seed: int) -> tuple[list[Tensor], float]:
    """``n_tokens`` fresh activations in batches, and their summed squared deviation from each
    batch's mean (the denominator of an SAE's FVU on them)."""
    stream = _activation_stream(W, task, 8192, seed)
    batches, total, done = [], 0.0, 0
    while done < n_tokens:
        h = next(stream)[: n_tokens - done]
        batches.append(h)
        total += float((h - h.mean(0)).double().square().sum())
        done += h.shape[0]
    return batches, total


def _measure_sae(sae: SAE, batches: list[Tensor], total: float, settings: SAESettings) -> tuple[Measurement, float]:
    """Encode the measurement ``batches``: FeatureStats → Measurement, and the FVU (``total``: its denominator)."""
    acc = StatsAccumulator(sae)
    err = 0.0
    with torch.no_grad():
        for h in batches:
            acc.update(h)
            err += float((h - sae(h).x_hat).double().square().sum())
    measurement = Measurement.from_stats(
        acc.result(), alive_threshold=settings.alive_threshold, source="toy teacher SAE"
    )
    return measurement, err / max(total, 1e-300)


def _select(points: list[SweepPoint], tolerance: float) -> dict[str, int]:
    """The penalty rule of :class:`SAESettings` (points are sparsest first per activation)."""
    chosen: dict[str, int] = {}
    for act in dict.fromkeys(p.activation for p in points):
        idx = [i for i, p in enumerate(points) if p.activation == act]
        ok = [i for i in idx if points[i].fvu <= tolerance]
        chosen[act] = ok[0] if ok else min(idx, key=lambda i: points[i].fvu)
    return chosen


def measure_teacher(
    W: Tensor,
    task: ToyTask,
    settings: SAESettings = SAESettings(),
    *,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> TeacherMeasurement:
    """Sweep SAEs over a teacher's hidden layer (``W`` [d_T, n], unpadded) and measure each.

    Every SAE of the sweep trains on the same activation stream and is measured on the same fresh
    stream, so the points differ only by their penalty. ``on_step`` is called once per SAE
    training step.
    """
    W = W.detach()
    d = W.shape[0]
    n_latents = settings.expansion * d
    points: list[SweepPoint] = []
    measurements: list[Measurement] = []
    callback = None if on_step is None else (lambda rec: on_step(rec.step))
    batches, total = _measurement_batches(W, task, settings.measure_tokens, stable_seed("sae-measure", seed))
    for act, penalty in settings.sweep():
        config = TrainConfig(
            n_latents=n_latents,
            activation=act,
            k=int(penalty) if act == "topk" else None,
            l1_coeff=float(penalty) if act == "relu" else 0.0,
            lr=settings.lr,
            steps=settings.steps,
            seed=stable_seed("sae-init", seed) % 2**31,
        )
        stream = _activation_stream(W, task, settings.batch_size, stable_seed("sae-train", seed))
        sae, _ = train_sae(stream, d, config, on_step=callback)
        m, fvu = _measure_sae(sae, batches, total, settings)
        points.append(SweepPoint(act, float(penalty), fvu, m.mean_l0, m.n_features, m.alpha))
        measurements.append(m)
    selected = _select(points, settings.fvu_tolerance)
    return TeacherMeasurement(n_latents, points, selected, {a: measurements[i] for a, i in selected.items()})
