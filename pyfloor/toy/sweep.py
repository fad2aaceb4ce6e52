"""Measuring a toy teacher with a sweep of SAEs, through the pipeline real teachers use.

Every SAE of the sweep is trained by :func:`pyfloor.sae.train_sae` on the teacher's hidden
activations h = W_T x, its statistics accumulated through :class:`pyfloor.encode.StatsAccumulator`
and counted by each estimator of :mod:`pyfloor.features` (the paper's definition and the merged
estimator); a rule that needs no knowledge of the truth picks one SAE per activation
(:class:`SAESettings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .. import _checks
from ..encode import StatsAccumulator
from ..family import Candidate, select_member
from ..features import Estimator, EstimatorName
from ..sae import SAE, TrainConfig, train_sae
from ..stats import Measurement
from .models import ToyTask, stable_seed

__all__ = ["SAESettings", "SweepPoint", "TeacherMeasurement", "measure_teacher"]


@dataclass(frozen=True)
class SAESettings:
    """How a toy teacher is measured: a family of SAEs on its hidden activations h = W_T x.

    The family is every dictionary size ``expansion · d_T`` (for each of ``expansions``, set from
    the teacher's width, never from the true feature count) × every penalty: ReLU SAEs (the paper's
    recipe) over ``l1_grid``, top-k SAEs over ``k_grid``. Each is trained by
    :func:`pyfloor.sae.train_sae` on one stream of fresh samples and measured on ``measure_tokens``
    further fresh samples, counted by the paper's definition and by ``estimator``.

    Selection rule (needs no knowledge of the truth), per activation: :func:`pyfloor.family.select_member`
    with ``fvu_tolerance`` and ``saturation`` (FVU on the measurement stream, the lead estimator's F̂):
    the sparsest penalty (largest L1, smallest k) whose F̂ has stopped growing with the dictionary.
    """

    expansions: tuple[int, ...] = (4, 8)
    l1_grid: tuple[float, ...] = (0.1, 0.3, 1.0)
    k_grid: tuple[int, ...] = (1, 2, 3)
    steps: int = 800
    batch_size: int = 1024
    lr: float = 1e-2
    measure_tokens: int = 65536
    fvu_tolerance: float = 0.5
    saturation: float = 0.1
    alive_threshold: float = 1e-5
    estimator: Estimator = Estimator()

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "measure_tokens"):
            _checks.count(getattr(self, name), name, minimum=1)
        if not self.expansions:
            raise ValueError("an SAE family needs at least one dictionary size (expansions)")
        for e in self.expansions:
            _checks.count(e, "expansions", minimum=1)
        if not self.l1_grid and not self.k_grid:
            raise ValueError("an SAE sweep needs at least one L1 coefficient (l1_grid) or k (k_grid)")
        for v in self.l1_grid:
            _checks.number(v, "l1_grid", low=0.0)
        for k in self.k_grid:
            _checks.count(k, "k_grid", minimum=1)
        _checks.number(self.lr, "lr", low=0.0, low_open=True)
        _checks.number(self.fvu_tolerance, "fvu_tolerance", low=0.0)
        _checks.number(self.saturation, "saturation", low=0.0)
        _checks.fraction(self.alive_threshold, "alive_threshold")
        if self.estimator.name == "paper":
            raise ValueError("the lead estimator of an SAE family must not be 'paper' (it is always reported beside)")

    def sweep(self) -> list[tuple[Literal["relu", "topk"], int, float]]:
        """(activation, expansion, penalty) of every SAE, sparsest penalty first within each
        activation, smallest dictionary first within each penalty."""
        relu = [("relu", e, float(v)) for v in sorted(self.l1_grid, reverse=True) for e in sorted(self.expansions)]
        topk = [("topk", e, int(k)) for k in sorted(self.k_grid) for e in sorted(self.expansions)]
        return [*relu, *topk]  # type: ignore[list-item]

    def estimators(self) -> dict[EstimatorName, Estimator]:
        """The paper's definition and the lead estimator, with this family's alive threshold."""
        lead = Estimator(**{**self.estimator.settings(), "alive_threshold": self.alive_threshold})  # type: ignore[arg-type]
        return {"paper": Estimator("paper", alive_threshold=self.alive_threshold), lead.name: lead}

    @property
    def total_steps(self) -> int:
        return self.steps * len(self.expansions) * (len(self.l1_grid) + len(self.k_grid))


class SweepPoint(NamedTuple):
    """One SAE of the family and what each estimator makes of it."""

    activation: str
    n_latents: int
    penalty: float  # L1 coefficient (relu) or k (topk)
    fvu: float  # unexplained variance fraction on the measurement stream
    mean_l0: float  # active latents per token
    n_features: int  # the paper's F̂: alive latents
    alpha: float  # the paper's α̂ = 1 − L0 / F̂
    merged_features: int  # F̂ of the lead (merged) estimator
    merged_alpha: float  # its α̂ over the same features


class TeacherMeasurement(NamedTuple):
    """An SAE family on one teacher, the points the rule picked, and their measurements."""

    points: list[SweepPoint]
    selected: dict[str, int]  # activation → index into ``points``
    measurements: dict[str, dict[EstimatorName, Measurement]]  # activation → estimator → measurement


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


def _measure_sae(
    sae: SAE, batches: list[Tensor], total: float, settings: SAESettings
) -> tuple[dict[EstimatorName, Measurement], float]:
    """Encode the measurement ``batches``: FeatureStats counted by each estimator, and the FVU
    (``total``: its denominator)."""
    acc = StatsAccumulator(sae)
    err = 0.0
    with torch.no_grad():
        for h in batches:
            acc.update(h)
            err += float((h - sae(h).x_hat).double().square().sum())
    stats = acc.result()
    out = {
        name: est.bind(sae).measurement(stats, source="toy teacher SAE") for name, est in settings.estimators().items()
    }
    return out, err / max(total, 1e-300)


def _select(points: list[SweepPoint], tolerance: float, saturation: float) -> dict[str, int]:
    """The selection rule of :class:`SAESettings` (:func:`pyfloor.family.select_member`), per activation."""
    chosen: dict[str, int] = {}
    for act in dict.fromkeys(p.activation for p in points):
        idx = [i for i, p in enumerate(points) if p.activation == act]
        penalties = sorted({points[i].penalty for i in idx}, reverse=act == "relu")  # sparsest first
        candidates = [
            Candidate(penalties.index(points[i].penalty), points[i].n_latents, points[i].merged_features, points[i].fvu)
            for i in idx
        ]
        chosen[act] = idx[select_member(candidates, fvu_tolerance=tolerance, saturation=saturation)[0]]
    return chosen


def measure_teacher(
    W: Tensor,
    task: ToyTask,
    settings: SAESettings = SAESettings(),
    *,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> TeacherMeasurement:
    """Train and measure an SAE family on a teacher's hidden layer (``W`` [d_T, n], unpadded).

    Every SAE of the family trains on the same activation stream and is measured on the same fresh
    stream, so the points differ only by their dictionary size and penalty. ``on_step`` is called
    once per SAE training step.
    """
    W = W.detach()
    d = W.shape[0]
    points: list[SweepPoint] = []
    measured: list[dict[EstimatorName, Measurement]] = []
    callback = None if on_step is None else (lambda rec: on_step(rec.step))
    batches, total = _measurement_batches(W, task, settings.measure_tokens, stable_seed("sae-measure", seed))
    lead = settings.estimator.name
    for act, expansion, penalty in settings.sweep():
        config = TrainConfig(
            n_latents=expansion * d,
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
        paper, merged = m["paper"], m[lead]
        points.append(
            SweepPoint(
                act,
                expansion * d,
                float(penalty),
                fvu,
                paper.mean_l0,
                paper.n_features,
                paper.alpha,
                merged.n_features,
                merged.alpha,
            )
        )
        measured.append(m)
    selected = _select(points, settings.fvu_tolerance, settings.saturation)
    return TeacherMeasurement(points, selected, {a: measured[i] for a, i in selected.items()})
