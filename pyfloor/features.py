"""Counting a teacher's features from an SAE: the paper's definition and a truth-blind estimator.

The paper (Sarkar & Deka 2026) counts every alive latent as a feature (F = #latents firing on more
than ``alive_threshold`` of the tokens) and takes α = 1 − L0/F. On a teacher whose features are
known (the toy model, docs/toy-model.md) that count is the SAE's dictionary size, not the teacher's
feature count: an SAE wider than the teacher's feature set splits features over several latents and
fills the rest with rarely used, low-importance latents. The ``"merged"`` estimator counts what an
SAE agrees on with itself:

1. **merge**: alive latents whose unit decoder directions have cosine > ``cosine`` are one feature
   (connected components of that graph: a feature split over several latents is counted once);
2. **mass cut**: features sorted by importance (the summed E[z²] of their latents); the count is the
   fewest features holding ``mass`` of the total importance (the long tail of near-dead latents is
   not counted);
3. **α over the counted features**: each counted feature's frequency is that of its most important
   latent, corrected for the activations its cut removes (:meth:`pyfloor.sae.SAE.margins`): the
   density of the latent's magnitude just above the cut, over a band as wide as the cut itself,
   is taken to continue flat down to zero, which adds the band's count (``margin_count``) to the
   fire count. α = 1 − Σ freq / F over the same features F counts.

Both estimators are functions of per-latent sums (fire counts, Σz², margin counts, token count)
and, for ``"merged"``, of the SAE's decoder, so the measurement loop's bootstrap replicates give
their intervals. An :class:`Estimator` says which and with what settings; :meth:`Estimator.bind`
fixes it to an SAE (precomputing the decoder's near-parallel pairs once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from . import _checks
from .sae import SAE, Activation
from .stats import DEFAULT_ALIVE_THRESHOLD, Estimate, FeatureStats, Measurement, estimate

__all__ = [
    "ESTIMATORS",
    "EstimatorName",
    "Estimator",
    "BoundEstimator",
    "DecoderPairs",
    "decoder_pairs",
    "feature_groups",
    "count_features",
    "SAEHealth",
    "HEALTH_LIMITS",
    "sae_health",
]

EstimatorName = Literal["paper", "merged"]
ESTIMATORS: tuple[EstimatorName, ...] = ("paper", "merged")


@dataclass(frozen=True)
class Estimator:
    """Which estimator counts the teacher's features, and its settings.

    ``name``: ``"paper"`` (alive latents; α = 1 − L0/F) or ``"merged"`` (see the module docstring).
    ``cosine``: decoder cosine above which two latents are one feature; ``mass``: fraction of the
    total importance the counted features hold; ``margin``: correct frequencies with the margin
    counts where the statistics hold them. ``alive_threshold`` applies to both.
    """

    name: EstimatorName = "merged"
    alive_threshold: float = DEFAULT_ALIVE_THRESHOLD
    cosine: float = 0.9
    mass: float = 0.99
    margin: bool = True

    def __post_init__(self) -> None:
        _checks.one_of(self.name, "estimator", ESTIMATORS)
        _checks.fraction(self.alive_threshold, "alive_threshold")
        _checks.number(self.cosine, "cosine", low=0.0, high=1.0, high_open=True)
        _checks.number(self.mass, "mass", low=0.0, high=1.0, low_open=True)

    def describe(self) -> str:
        """One line naming the estimator and its settings."""
        if self.name == "paper":
            return f"paper: alive latents (freq > {self.alive_threshold:g}), α = 1 − L0/F"
        corr = "margin-corrected" if self.margin else "uncorrected"
        return (
            f"merged: decoder cosine > {self.cosine:g} merged, {self.mass:.0%} of the importance, "
            f"{corr} frequencies (freq > {self.alive_threshold:g})"
        )

    def settings(self) -> dict[str, object]:
        """The settings as a JSON-ready dict."""
        return {
            "name": self.name,
            "alive_threshold": self.alive_threshold,
            "cosine": self.cosine,
            "mass": self.mass,
            "margin": self.margin,
        }

    def bind(
        self, sae: SAE, activation: Activation | None = None, *, pairs: DecoderPairs | None = None
    ) -> BoundEstimator:
        """This estimator fixed to ``sae`` (encoded with ``activation``, default its own).

        ``pairs``: the SAE's :func:`decoder_pairs` at a cosine no higher than this estimator's, to
        reuse (they are computed otherwise).
        """
        if self.name != "merged":
            linked = np.zeros((0, 2), np.int64)
        else:
            linked = (pairs or decoder_pairs(sae, self.cosine)).above(self.cosine)
        return BoundEstimator(self, sae.n_latents, linked, sae.margins(activation) is not None)


@dataclass(frozen=True)
class BoundEstimator:
    """An :class:`Estimator` fixed to one SAE: ``pairs`` int64 [E, 2] are its latents whose decoder
    cosine exceeds ``estimator.cosine`` (i < j), ``has_band`` whether its encode has margin bands."""

    estimator: Estimator
    n_latents: int
    pairs: NDArray[np.int64]
    has_band: bool

    def estimate(
        self,
        n_tokens: float,
        fire_count: NDArray[np.int64],
        sq_sum: NDArray[np.float64],
        margin_count: NDArray[np.int64] | None,
    ) -> Estimate:
        """Counted features (their representative latents, most important first), their importances,
        L0 = Σ frequencies and α from (possibly bootstrap-weighted) per-latent sums.

        Raises ValueError where undefined: no tokens, no alive latent, or α ≤ 0.
        """
        est = self.estimator
        if est.name == "paper":
            return estimate(n_tokens, fire_count, sq_sum, est.alive_threshold)
        if n_tokens <= 0:
            raise ValueError("no tokens have been counted; nothing to measure")
        fire = np.asarray(fire_count, dtype=np.float64)
        alive = fire / n_tokens > est.alive_threshold
        if not alive.any():
            raise ValueError(f"no latent fires on more than a fraction {est.alive_threshold:g} of the tokens; F = 0")
        imp = np.asarray(sq_sum, dtype=np.float64) / n_tokens
        label = feature_groups(self.n_latents, self.pairs, alive)
        members = np.flatnonzero(alive)
        groups, inverse = np.unique(label[members], return_inverse=True)
        group_imp = np.bincount(inverse, weights=imp[members], minlength=groups.size).astype(np.float64)
        # each group's representative: its most important latent (lowest index among ties)
        order = np.lexsort((members, -imp[members], inverse))
        first = np.ones(order.size, bool)
        first[1:] = inverse[order][1:] != inverse[order][:-1]
        heads = members[order[first]]
        rank = np.argsort(-group_imp, kind="stable")
        total = group_imp.sum()
        if total <= 0:
            raise ValueError("the alive latents carry no importance (Σ E[z²] = 0); nothing to count")
        cum = np.cumsum(group_imp[rank])
        kept = rank[: int(np.searchsorted(cum, est.mass * total * (1 - 1e-12))) + 1]
        ids = heads[kept]
        counts = fire[ids]
        if est.margin and self.has_band and margin_count is not None:
            counts = counts + np.asarray(margin_count, dtype=np.float64)[ids]
        l0 = float(np.minimum(counts, n_tokens).sum() / n_tokens)
        f = int(ids.size)
        if l0 >= f:
            raise ValueError(f"the {f} counted features are active on every token (L0 = {l0:.4g}): α = 0")
        return Estimate(ids.astype(np.int64), group_imp[kept], l0, 1.0 - l0 / f)

    def measurement(self, stats: FeatureStats, source: str = "") -> Measurement:
        """The :class:`pyfloor.stats.Measurement` of ``stats`` by this estimator."""
        if stats.n_latents != self.n_latents:
            raise ValueError(f"statistics of {stats.n_latents} latents for an SAE of {self.n_latents}")
        if stats.n_tokens == 0:
            raise ValueError("the statistics hold no tokens; nothing to measure")
        est = self.estimate(stats.n_tokens, stats.fire_count, stats.act_sq_sum, stats.margin_count)
        notes = [self.estimator.describe()]
        if self.estimator.name == "merged" and self.estimator.margin and self.has_band and stats.margin_count is None:
            notes.append("the statistics hold no margin counts: frequencies are not corrected")
        return Measurement.from_estimate(est, stats, self.estimator.alive_threshold, source, tuple(notes))


class DecoderPairs(NamedTuple):
    """Latent pairs (i < j) int64 [E, 2] whose decoder cosine (float64 [E]) exceeds ``threshold``."""

    pairs: NDArray[np.int64]
    cosines: NDArray[np.float64]
    threshold: float

    def above(self, cosine: float) -> NDArray[np.int64]:
        """The pairs whose cosine exceeds ``cosine`` (at least ``threshold``): the same pairs
        :func:`decoder_pairs` finds at ``cosine``, since every stored cosine is the float64 one."""
        if cosine < self.threshold:
            raise ValueError(f"pairs found above cosine {self.threshold:g} cannot serve cosine {cosine:g}")
        return self.pairs[self.cosines > cosine]


def decoder_pairs(sae: SAE, cosine: float, *, block: int = 1024) -> DecoderPairs:
    """Latent pairs (i < j) whose unit decoder rows have cosine > ``cosine``, sorted, with their cosines.

    Candidates are screened blockwise in float32 on the SAE's device (memory O(block × m), cosine
    > ``cosine`` − 1e-4); each candidate's cosine is then recomputed in float64, so the decision (at
    ``cosine`` or, through :meth:`DecoderPairs.above`, any higher one) does not depend on the
    machine's float32 summation order.
    """
    with torch.no_grad():
        w64 = sae.W_dec.detach().double()
        u64 = w64 / w64.norm(dim=1, keepdim=True).clamp_min(1e-300)
        unit = u64.float()
        m = unit.shape[0]
        found: list[NDArray[np.int64]] = []
        values: list[NDArray[np.float64]] = []
        for start in range(0, m, block):
            c = unit[start : start + block] @ unit.T
            i, j = torch.nonzero(c > cosine - 1e-4, as_tuple=True)
            i = i + start
            keep = j > i
            i, j = i[keep], j[keep]
            value = (u64[i] * u64[j]).sum(1)
            ok = value > cosine
            found.append(torch.stack([i[ok], j[ok]], 1).cpu().numpy().astype(np.int64))
            values.append(value[ok].cpu().numpy())
    pairs = np.concatenate(found).reshape(-1, 2)
    cos = np.concatenate(values)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return DecoderPairs(pairs[order], cos[order], float(cosine))


def feature_groups(
    n_latents: int, pairs: NDArray[np.int64], alive: NDArray[np.bool_] | None = None
) -> NDArray[np.int64]:
    """Connected-component label of each latent (the smallest latent index in its component) in the
    graph of ``pairs`` restricted to the ``alive`` latents (every latent if None); int64 [n_latents]."""
    label = np.arange(n_latents, dtype=np.int64)
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if alive is not None:
        p = p[alive[p[:, 0]] & alive[p[:, 1]]]
    if p.size == 0:
        return label
    a, b = p[:, 0], p[:, 1]
    while True:
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        label = label[label]  # pointer jumping: follow each label to its own label
        if np.array_equal(label, before):
            return label


def count_features(
    stats: FeatureStats,
    sae: SAE,
    estimators: Sequence[Estimator] | Estimator = Estimator(),
    *,
    activation: Activation | None = None,
    source: str = "",
) -> dict[str, Measurement]:
    """The measurement of ``stats`` (accumulated with ``sae``) by each estimator, keyed by name.

    >>> m = count_features(stats, sae)["merged"]
    >>> m.n_features, m.alpha, m.critical_width
    """
    chosen = [estimators] if isinstance(estimators, Estimator) else list(estimators)
    names = [e.name for e in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators must have distinct names; got {names}")
    return {e.name: e.bind(sae, activation).measurement(stats, source) for e in chosen}


class SAEHealth(NamedTuple):
    """Whether an SAE is trained well enough for its features to be counted (:func:`sae_health`).

    ``dead``: latents that never fired on the measured tokens; ``duplicates``: latent pairs whose
    decoder cosine exceeds 0.99; ``fvu_trend``: relative fall of the training FVU over the last
    fifth of the steps (None without a training history); ``resolved``: whether the tokens suffice
    to resolve the alive threshold (≥ 10 / threshold); ``warnings``: one sentence per failed check.
    """

    n_latents: int
    dead: int
    duplicates: int
    fvu_trend: float | None
    resolved: bool
    warnings: list[str]

    @property
    def ok(self) -> bool:
        """No check failed."""
        return not self.warnings


#: Thresholds of :func:`sae_health`: dead fraction, duplicate cosine, duplicate fraction, FVU fall.
HEALTH_LIMITS = {"dead": 0.5, "duplicate_cosine": 0.99, "duplicates": 0.05, "fvu_trend": 0.05}


def sae_health(
    sae: SAE,
    stats: FeatureStats,
    *,
    fvu_history: Sequence[float] | None = None,
    alive_threshold: float = DEFAULT_ALIVE_THRESHOLD,
    pairs: DecoderPairs | None = None,
) -> SAEHealth:
    """Check an SAE against the signs of too little training (limits in :data:`HEALTH_LIMITS`):
    more than half its latents dead, more than 5 % of its latents with a near-copy (decoder cosine
    > 0.99), a training FVU still falling by more than 5 % over the last fifth of ``fvu_history``,
    or fewer tokens than 10 / ``alive_threshold``. ``pairs``: the SAE's :func:`decoder_pairs` at a
    cosine of at most 0.99, to reuse (they are computed otherwise)."""
    if stats.n_latents != sae.n_latents:
        raise ValueError(f"statistics of {stats.n_latents} latents for an SAE of {sae.n_latents}")
    m = sae.n_latents
    dead = int(np.count_nonzero(stats.fire_count == 0))
    near_copy = HEALTH_LIMITS["duplicate_cosine"]
    dup_pairs = (pairs or decoder_pairs(sae, near_copy)).above(near_copy)
    duplicates = int(np.unique(dup_pairs).size)  # latents with a near-copy
    trend = None
    if fvu_history is not None and len(fvu_history) >= 10:
        tail = np.asarray(fvu_history[-(len(fvu_history) // 5) :], dtype=np.float64)
        head = float(np.mean(tail[: max(1, tail.size // 4)]))
        last = float(np.mean(tail[-max(1, tail.size // 4) :]))
        trend = (head - last) / head if head > 0 else 0.0
    resolved = stats.n_tokens >= 10 / alive_threshold
    warnings = []
    if dead > HEALTH_LIMITS["dead"] * m:
        warnings.append(f"{dead:,} of {m:,} latents never fired: the SAE is mostly dead")
    if duplicates > HEALTH_LIMITS["duplicates"] * m:
        warnings.append(f"{duplicates:,} of {m:,} latents have a near-copy (decoder cosine > 0.99)")
    if trend is not None and trend > HEALTH_LIMITS["fvu_trend"]:
        warnings.append(f"the training FVU still fell by {trend:.0%} over the last fifth of the steps: train longer")
    if not resolved:
        warnings.append(
            f"{stats.n_tokens:,} tokens cannot resolve the alive threshold {alive_threshold:g} "
            f"(needs ≥ {10 / alive_threshold:,.0f})"
        )
    return SAEHealth(m, dead, duplicates, trend, resolved, warnings)
