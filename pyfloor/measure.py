"""The measurement loop: activation source → SAE encode + statistics → checkpoints → Measurement.

Statistics accumulate on the device batch by batch in a fixed order, so on the CPU path a run
resumed from a checkpoint gives bit-identical statistics to an uninterrupted one (the CUDA kernels
add float sums with atomics, so there they agree to rounding). Uncertainty comes from a
Poisson bootstrap over batches: replicate r weighs batch b by w_rb ~ Poisson(1), drawn from a
generator seeded by (seed, b), so replicates are sums too — mergeable across ranks and resumed
runs. F, L0, α, g and d* get percentile intervals; the floors get bias-corrected basic intervals
(see :func:`_intervals`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from . import _checks, theory
from ._io import load_tagged, save_tagged
from ._version import __version__
from .checkpoints import prepare_checkpoint, rank_path
from .distributed import all_reduce_, all_reduce_arrays, all_reduce_max_, rank_and_world
from .encode import StatsAccumulator
from .encode_types import BatchStats, SparseCodes
from .features import (
    ESTIMATORS,
    BoundEstimator,
    DecoderPairs,
    Estimator,
    EstimatorName,
    SAEHealth,
    decoder_pairs,
    sae_health,
)
from .floors import default_widths, prediction_summary
from .histograms import FeatureHistograms, Histogram
from .interop import SAELike, as_sae
from .sae import SAE, Activation, sae_sha256
from .sources import ActivationSource, ArraySource, Batch, SequenceSource
from .stats import DEFAULT_ALIVE_THRESHOLD, CheckpointError, FeatureStats, Measurement

__all__ = [
    "MeasureConfig",
    "MeasureResult",
    "measure",
    "measure_family",
    "measure_layers",
    "versions",
    "EstimatorResult",
    "MergedSensitivityRow",
    "bootstrap_weights",
    "SENSITIVITY_THRESHOLDS",
    "Interval",
    "FloorInterval",
    "Intervals",
    "SensitivityRow",
]

CHECKPOINT_FORMAT = "pyfloor.MeasureCheckpoint"
CHECKPOINT_VERSION = 3  # 2: the measuring time so far ("seconds"); 3: margin counts (older: unknown)
SENSITIVITY_THRESHOLDS = (1e-5, 1e-6, 1e-7)
#: (decoder cosine, importance mass) settings of the merged estimator's sensitivity table
MERGED_SENSITIVITY = tuple((c, q) for c in (0.8, 0.9, 0.95, 0.99) for q in (0.95, 0.99, 0.999))
#: The lowest decoder cosine the sensitivity table needs (the health check's 0.99 for near-copies lies above it)
_LOWEST_COSINE = min(c for c, _ in MERGED_SENSITIVITY)


class Interval(TypedDict):
    """A percentile bootstrap interval [low, high] around a point ``estimate`` (units of the quantity)."""

    estimate: float
    low: float
    high: float


class FloorInterval(TypedDict):
    """The Eq. 2 floor at student ``width``: its estimate, basic bootstrap interval [low, high]
    (clipped at 0; it need not contain the estimate) and ``bias`` = mean of the replicates − estimate."""

    width: int
    estimate: float
    low: float
    high: float
    bias: float


class Intervals(TypedDict, total=False):
    """:attr:`MeasureResult.intervals`: bootstrap intervals at level ``confidence`` from ``replicates``
    usable replicates.

    Empty without bootstrap replicates (or without a point estimate); only ``confidence`` and
    ``replicates`` with fewer than 2 usable replicates; otherwise every key. ``floors`` has one
    entry per tabulated width, in order.
    """

    confidence: float
    replicates: int
    n_features: Interval  #: F
    mean_l0: Interval  #: L0, active latents per token
    alpha: Interval  #: α = 1 − L0 / F
    capacity: Interval  #: g(α)
    critical_width: Interval  #: d* = F / g(α)
    floors: list[FloorInterval]


class SensitivityRow(TypedDict):
    """F, α and d* at one alive threshold (None where undefined), and whether the run had enough tokens
    (10 / threshold) to resolve a latent firing at exactly that frequency."""

    alive_threshold: float
    n_features: int | None
    alpha: float | None
    critical_width: float | None
    resolved: bool


class MergedSensitivityRow(TypedDict):
    """F, α and d* of the merged estimator at one decoder cosine and importance mass (None where undefined)."""

    cosine: float
    mass: float
    n_features: int | None
    alpha: float | None
    critical_width: float | None


class EstimatorResult(TypedDict):
    """One estimator's measurement of a run: its settings, the measurement, its bootstrap intervals
    and its sensitivity table (alive thresholds for ``paper``, cosine × mass for ``merged``)."""

    estimator: dict[str, object]
    measurement: Measurement
    intervals: Intervals
    sensitivity: list[SensitivityRow] | list[MergedSensitivityRow]


class _Estimates(TypedDict):
    """Point estimates from (weighted) sums: F, L0, α, g(α), d* and the Eq. 2 floors at the widths asked for."""

    n_features: int
    mean_l0: float
    alpha: float
    capacity: float
    critical_width: float
    floors: NDArray[np.float64]


_PointKey = Literal["n_features", "mean_l0", "alpha", "capacity", "critical_width"]
_POINT_KEYS: tuple[_PointKey, ...] = ("n_features", "mean_l0", "alpha", "capacity", "critical_width")


class _ProgressBar(Protocol):
    """The part of a tqdm progress bar the loop uses."""

    def update(self, n: int) -> object: ...
    def set_postfix(self, **kwargs: object) -> object: ...
    def close(self) -> object: ...


@dataclass
class MeasureConfig:
    """How long to measure, how often to checkpoint, and how to estimate uncertainty.

    ``max_tokens`` counts the positions fed to the teacher (BOS and padding included), rounded up
    to whole batches. ``until_stable``: stop once the bootstrap interval of d* is narrower than
    this fraction of d* (checked every ``check_every`` rounds of batches, not before
    ``min_tokens``). ``checkpoint`` is written every ``checkpoint_every`` tokens; an existing file
    there is refused unless ``resume`` (continue it) or ``overwrite`` (start over, replacing it only
    if it is a measure checkpoint). ``bootstrap`` replicates give intervals at level ``confidence``; 0 disables them.
    ``histograms``: per-feature histograms of the active latents' values and a histogram of the
    teacher's activations, filled from every ``histogram_every``-th batch (by global index, so
    any number of ranks fills the same batches) with ``histogram_threads`` CPU threads.
    """

    max_tokens: int | None = None
    until_stable: float | None = None
    min_tokens: int = 0
    check_every: int = 10
    checkpoint: str | os.PathLike[str] | None = None
    checkpoint_every: int = 10_000_000
    resume: bool = False
    overwrite: bool = False
    alive_threshold: float = DEFAULT_ALIVE_THRESHOLD
    estimator: EstimatorName = "merged"
    cosine: float = 0.9
    mass: float = 0.99
    bootstrap: int = 32
    confidence: float = 0.95
    seed: int = 0
    widths: Sequence[int] | None = None
    activation: Activation | None = None
    k: int | None = None
    histograms: bool = True
    histogram_every: int = 1
    histogram_threads: int = min(4, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _checks.count(self.max_tokens, "max_tokens", minimum=1)
        if self.until_stable is not None:  # a relative interval width
            _checks.number(self.until_stable, "until_stable", low=0.0, high=1.0, low_open=True, high_open=True)
        if self.until_stable is not None and self.bootstrap < 2:
            raise ValueError("until_stable needs bootstrap replicates (bootstrap >= 2)")
        _checks.number(self.confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
        _checks.count(self.bootstrap, "bootstrap")
        for name in ("check_every", "checkpoint_every", "histogram_every", "histogram_threads"):
            _checks.count(getattr(self, name), name, minimum=1)
        _checks.resume_flags(self.resume, self.overwrite, self.checkpoint)
        _checks.fraction(self.alive_threshold, "alive_threshold")
        _checks.one_of(self.estimator, "estimator", ESTIMATORS)
        self.estimators()  # checks cosine and mass
        _checks.count(self.min_tokens, "min_tokens")
        if self.widths is not None:
            if len(self.widths) == 0:
                raise ValueError("widths must hold at least one width")
            for w in self.widths:
                _checks.count(w, "widths")

    def estimators(self) -> dict[EstimatorName, Estimator]:
        """Every estimator this run reports (:mod:`pyfloor.features`), the lead one (``estimator``) first."""
        both: dict[EstimatorName, Estimator] = {
            "paper": Estimator("paper", self.alive_threshold),
            "merged": Estimator("merged", self.alive_threshold, self.cosine, self.mass),
        }
        return {self.estimator: both[self.estimator], **both}


@dataclass
class MeasureResult:
    """Everything a measurement run produced.

    ``seconds`` is the wall time spent measuring, summed over a run and the runs it resumed (NaN
    where a resumed checkpoint predates time-keeping). ``intervals`` holds intervals only where 2 or
    more bootstrap replicates were usable (see :class:`Intervals`); the floors at the tabulated widths
    (``config["widths"]``) are in :meth:`to_dict` either way. ``sensitivity`` has one row per
    threshold of :data:`SENSITIVITY_THRESHOLDS` (the paper's definition). ``measurement`` and
    ``intervals`` are the lead estimator's (``config["estimator"]``); ``estimators`` holds every
    estimator's measurement, intervals and sensitivity table by name. ``stopped`` says why the loop
    ended; ``health`` is :func:`pyfloor.features.sae_health` of the SAE on the run's statistics;
    ``config`` is the :class:`MeasureConfig` as a dict (paths as strings) with the tabulated
    ``widths`` and the ``world_size``; ``provenance`` says where the activations and the SAE came
    from (teacher, revision, layer, tokens; SAE digest, architecture and :attr:`SAE.metadata`), how
    far the stream was read (its position, for a streamed corpus) and the library versions.
    """

    stats: FeatureStats
    measurement: Measurement
    intervals: Intervals
    sensitivity: list[SensitivityRow]
    n_batches: int
    seconds: float
    stopped: str
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    feature_histograms: FeatureHistograms | None = None
    activation_histogram: Histogram | None = None
    estimators: dict[str, EstimatorResult] = field(default_factory=dict)
    health: SAEHealth | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        """Counted tokens (of every resumed run) per second of measuring time (NaN where that is unknown)."""
        return self.stats.n_tokens / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the measurement (without per-feature arrays), the Eq. 2 floors at the
        tabulated widths (``config["widths"]``, else the default widths around d*), intervals, provenance.
        Non-finite numbers stay floats here; :func:`pyfloor.report.write_measurement_report` writes them as null."""
        summary = prediction_summary(self.measurement, self.config.get("widths"))
        return {
            "pyfloor_version": __version__,
            "torch_version": torch.__version__,
            "source": self.source,
            "config": self.config,
            "stopped": self.stopped,
            "n_batches": self.n_batches,
            "n_tokens": self.stats.n_tokens,
            "n_nonfinite": self.stats.n_nonfinite,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "measurement": summary["measurement"],
            "floors": summary["floors"],
            "intervals": self.intervals,
            "alive_threshold_sensitivity": self.sensitivity,
            "sae_health": None if self.health is None else {**self.health._asdict(), "ok": self.health.ok},
            "provenance": self.provenance,
            "estimator": self.config.get("estimator"),
            "estimators": {
                name: {
                    "estimator": r["estimator"],
                    "measurement": prediction_summary(r["measurement"], self.config.get("widths"))["measurement"],
                    "intervals": r["intervals"],
                    "sensitivity": r["sensitivity"],
                }
                for name, r in self.estimators.items()
            },
        }


def bootstrap_weights(seed: int, index: int, replicates: int) -> NDArray[np.int64]:
    """Poisson(1) weights of batch ``index`` in each bootstrap replicate: int64 [replicates],
    drawn from a generator seeded by (seed, index), so the same on every rank and run."""
    return np.random.default_rng([seed, index]).poisson(1.0, replicates).astype(np.int64)


class _State:
    """Running sums on the device: totals, bootstrap replicates, histograms, the stream position
    (``next_index``: the next batch this rank reads; ``rounds``: loop rounds done, the same on every rank)
    and ``seconds``, this rank's measuring time so far (NaN: not recorded by a version-1 checkpoint)."""

    COUNTERS = ("rows", "nonfinite", "next_index", "n_batches", "rounds")

    def __init__(self, m: int, replicates: int, device: torch.device, histograms: bool = False) -> None:
        def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.rows = self.next_index = self.n_batches = self.rounds = 0
        self.seconds = 0.0
        self.sums = BatchStats.zeros(m, device)
        self.boot_n = zeros((replicates,), torch.int64)
        self.boot_fire = zeros((replicates, m), torch.int64)
        self.boot_s2 = zeros((replicates, m), torch.float64)
        self.boot_margin = zeros((replicates, m), torch.int64)
        self.margin_known = True  # False after resuming a checkpoint that predates margin counts
        self.features = FeatureHistograms(m) if histograms else None
        self.acts = Histogram() if histograms else None

    _TOTALS = (
        "fire_count",
        "act_sum",
        "act_sq_sum",
        "act_max",
        "margin_count",
    )  # fields of ``sums`` a checkpoint holds
    _BOOT = ("boot_n", "boot_fire", "boot_s2", "boot_margin")
    _SINCE = {"seconds": 2, "margin_count": 3, "boot_margin": 3}  # checkpoint entries and the version that added them
    _HISTOGRAMS = (("features", FeatureHistograms), ("acts", Histogram))

    def add(self, b: BatchStats, rows: int, weights: Tensor | None) -> None:
        """Add one batch's sums (and, with bootstrap ``weights``, its weighted sums per replicate)."""
        self.rows += rows
        self.sums = self.sums + b
        if weights is not None:
            self.boot_n += weights * (rows - b.n_nonfinite)
            self.boot_fire += weights[:, None] * b.fire_count[None, :]
            self.boot_s2 += weights[:, None].double() * b.act_sq_sum[None, :]
            self.boot_margin += weights[:, None] * b.margin_count[None, :]
        self.n_batches += 1

    def _arrays(self) -> dict[str, Tensor]:
        """The totals and bootstrap sums by their checkpoint names."""
        return {**{k: getattr(self.sums, k) for k in self._TOTALS}, **{k: getattr(self, k) for k in self._BOOT}}

    def fill_histograms(self, codes: SparseCodes, x: Tensor, threads: int) -> None:
        """Add the active latents' values (per latent) and every activation value to the histograms."""
        keep = (codes.indices >= 0) & (codes.values > 0)
        idx = codes.indices[keep].to(torch.int32).reshape(-1, 1).cpu().numpy()
        val = codes.values[keep].float().reshape(-1, 1).cpu().numpy()
        if self.features is None or self.acts is None:
            raise RuntimeError("this measurement fills no histograms (histograms=False)")
        self.features.fill(idx, val, threads=threads)
        self.acts.fill(x.detach().float().contiguous().cpu().numpy(), threads=threads)

    # -- checkpoints --------------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """Everything a checkpoint holds, as CPU tensors."""
        out = {k: v.detach().cpu().contiguous() for k, v in self._arrays().items()}
        out["counters"] = torch.tensor(
            [self.rows, int(self.sums.n_nonfinite), self.next_index, self.n_batches, self.rounds]
        )
        out["seconds"] = torch.tensor(self.seconds, dtype=torch.float64)
        out["margin_known"] = torch.tensor(self.margin_known)
        for name, _ in self._HISTOGRAMS:
            hist = getattr(self, name)
            if hist is not None:
                out.update({f"hist_{name}.{k}": torch.from_numpy(v) for k, v in hist.to_dict().items()})
        return out

    def load(self, t: dict[str, Tensor], version: int = CHECKPOINT_VERSION) -> None:
        """Restore from :meth:`tensors` of a checkpoint of this ``version``; raises CheckpointError for
        anything inconsistent. A version-1 checkpoint has no ``seconds``: the time so far becomes NaN;
        one before version 3 has no margin counts: they stay unknown (``margin_known`` False)."""
        since = {**self._SINCE, "margin_known": 3}
        mine = {k: v for k, v in self._arrays().items() if since.get(k, 1) <= version}
        wanted = {*mine, "counters", *(k for k in ("seconds", "margin_known") if since[k] <= version)}
        missing = sorted(wanted - t.keys())
        if missing:
            raise CheckpointError(f"checkpoint lacks {', '.join(missing)}")
        flag = t.get("margin_known")
        if flag is not None and (flag.shape != () or flag.dtype != torch.bool):
            raise CheckpointError(
                f"checkpoint margin_known must be a bool scalar; got {tuple(flag.shape)} {flag.dtype}"
            )
        known = bool(flag) if version >= 3 and flag is not None else False
        for name, array in mine.items():
            if t[name].shape != array.shape or t[name].dtype != array.dtype:
                raise CheckpointError(
                    f"checkpoint array {name} is {tuple(t[name].shape)} {t[name].dtype}, "
                    f"expected {tuple(array.shape)} {array.dtype}"
                )
        counters = t["counters"]
        if counters.shape != (len(self.COUNTERS),) or counters.dtype != torch.int64:
            raise CheckpointError(
                f"checkpoint counters must be int64 [{len(self.COUNTERS)}]; got {tuple(counters.shape)}"
            )
        rows, nonfinite, next_index, n_batches, rounds = (int(v) for v in counters)
        if "seconds" in t and (t["seconds"].shape != () or t["seconds"].dtype != torch.float64):
            raise CheckpointError(
                f"checkpoint seconds must be a float64 scalar; got {tuple(t['seconds'].shape)} {t['seconds'].dtype}"
            )
        seconds = float(t["seconds"]) if "seconds" in t else math.nan
        if not (math.isnan(seconds) or 0 <= seconds < math.inf):
            raise CheckpointError(f"checkpoint seconds must be finite and >= 0 (or NaN: not recorded); got {seconds}")
        try:  # FeatureStats checks counts against tokens, finite non-negative sums
            FeatureStats(
                rows - nonfinite,
                t["fire_count"].numpy(),
                t["act_sum"].numpy(),
                t["act_sq_sum"].numpy(),
                t["act_max"].double().numpy(),
                nonfinite,
                t["margin_count"].numpy() if "margin_count" in mine else None,
            )
        except ValueError as exc:
            raise CheckpointError(f"inconsistent totals ({exc})") from exc
        boots = [t[k] for k in self._BOOT if k in mine]
        if any((b < 0).any() or not torch.isfinite(b.double()).all() for b in boots):
            raise CheckpointError("bootstrap sums must be finite and >= 0")
        if min(n_batches, rounds) < 0 or n_batches > next_index:
            raise CheckpointError(f"inconsistent position: {n_batches} batches read, next batch {next_index}")
        hists = {}
        for name, cls in self._HISTOGRAMS:
            if getattr(self, name) is None:
                continue
            d = {k: t[f"hist_{name}.{k}"] for k in ("counts", "binning") if f"hist_{name}.{k}" in t}
            if len(d) != 2:
                raise CheckpointError(f"checkpoint has no {name} histogram but this run fills one")
            if any(v.dtype != torch.int64 for v in d.values()):
                raise CheckpointError(
                    f"bad {name} histogram (counts and binning must be int64; got "
                    f"{d['counts'].dtype}, {d['binning'].dtype})"
                )
            try:
                hists[name] = cls.from_dict({k: v.numpy() for k, v in d.items()})
            except ValueError as exc:
                raise CheckpointError(f"bad {name} histogram ({exc})") from exc
            filled = getattr(self, name)
            if hists[name].binning != filled.binning or hists[name].counts.shape != filled.counts.shape:
                raise CheckpointError(f"bad {name} histogram ({hists[name]!r}; this run fills {filled!r})")
        for name, array in mine.items():
            array.copy_(t[name])
        self.sums.n_nonfinite.fill_(nonfinite)
        self.rows, self.next_index, self.n_batches, self.rounds = rows, next_index, n_batches, rounds
        self.seconds = seconds
        self.margin_known = known
        for name, hist in hists.items():
            setattr(self, name, hist)

    # -- across ranks -------------------------------------------------------------------------------
    def reduced(self, *, histograms: bool = True) -> _State:
        """A copy holding the sums of every rank (sum; max for act_max), histograms if asked."""
        out = _State.__new__(_State)
        mine = self.sums
        out.sums = BatchStats(
            mine.fire_count.clone(),
            mine.act_sum.clone(),
            mine.act_sq_sum.clone(),
            mine.act_max.clone(),
            mine.margin_count.clone(),
            mine.n_nonfinite.clone(),
            None,
        )
        out.margin_known = self.margin_known  # the same on every rank: they resume checkpoints of one run
        for name in self._BOOT:
            setattr(out, name, getattr(self, name).clone())
        counts = torch.tensor([self.rows, self.n_batches], dtype=torch.int64, device=out.sums.fire_count.device)
        s = out.sums
        all_reduce_(
            [
                s.fire_count,
                s.act_sum,
                s.act_sq_sum,
                s.margin_count,
                s.n_nonfinite,
                *(getattr(out, n) for n in self._BOOT),
                counts,
            ]
        )
        all_reduce_max_(s.act_max)
        out.rows, out.n_batches = (int(v) for v in counts)
        out.next_index, out.rounds = self.next_index, self.rounds
        for name, cls in self._HISTOGRAMS:
            hist = getattr(self, name) if histograms else None
            setattr(
                out,
                name,
                None if hist is None else cls.from_dict(all_reduce_arrays(hist.to_dict(), max_keys=("binning",))),
            )
        return out

    # -- estimates ----------------------------------------------------------------------------------
    def _margins(self, counts: Tensor) -> NDArray[np.int64] | None:
        return counts.cpu().numpy() if self.margin_known else None

    def estimates(self, counter: BoundEstimator, widths: NDArray[np.int64] | None = None) -> _Estimates | None:
        """Point estimates from the totals (None where undefined), with floors at ``widths`` if given."""
        n = self.rows - int(self.sums.n_nonfinite)
        at = np.zeros(0, np.int64) if widths is None else widths
        s = self.sums
        return _estimates(
            counter, n, s.fire_count.cpu().numpy(), s.act_sq_sum.cpu().numpy(), self._margins(s.margin_count), at
        )

    def intervals(self, counter: BoundEstimator, widths: NDArray[np.int64], confidence: float) -> Intervals:
        """Point estimates with bootstrap percentile intervals."""
        point = self.estimates(counter, widths)
        if point is None:
            return {}
        margins = self._margins(self.boot_margin)
        replicates = [
            _estimates(
                counter,
                float(self.boot_n[r]),
                self.boot_fire[r].cpu().numpy(),
                self.boot_s2[r].cpu().numpy(),
                None if margins is None else margins[r],
                widths,
            )
            for r in range(self.boot_n.numel())
        ]
        return _intervals(replicates, widths, confidence, point)

    def stats(self) -> FeatureStats:
        """The totals as FeatureStats."""
        s = self.sums
        nonfinite = int(s.n_nonfinite)
        return FeatureStats(
            self.rows - nonfinite,
            s.fire_count.cpu().numpy().copy(),
            s.act_sum.cpu().numpy().copy(),
            s.act_sq_sum.cpu().numpy().copy(),
            s.act_max.cpu().numpy().astype(np.float64),
            nonfinite,
            self._margins(s.margin_count),
        )


def _source_settings(source: ActivationSource) -> dict[str, Any]:
    """What changes a source's activations but not its description: a teacher's sequence length,
    whether it leaves out a leading BOS, and its parameters' dtype; the dtype activations are cast to
    (None where a source has no such setting)."""
    settings: dict[str, Any] = {"seq_len": None, "leading_bos": None, "teacher_dtype": None, "activation_dtype": None}
    if isinstance(source, SequenceSource):
        param = next(source.model.parameters(), None)
        settings.update(
            seq_len=source.sequences.seq_len,
            leading_bos=source.sequences.leading_bos,
            teacher_dtype=None if param is None else str(param.dtype),
        )
    if isinstance(source, (SequenceSource, ArraySource)) and source.dtype is not None:
        settings["activation_dtype"] = str(source.dtype)
    return settings


def _fingerprint(
    source: ActivationSource, layer: str | None, sae: SAE, config: MeasureConfig, rank: int, world: int
) -> dict[str, Any]:
    """What must match for a checkpoint of ``sae`` reading ``layer`` of ``source`` to be resumed."""
    return {
        "source": source.describe(layer),
        "batch_tokens": source.batch_tokens,
        **_source_settings(source),
        "sae_sha256": sae_sha256(sae),
        "activation": config.activation,
        "k": config.k,
        "bootstrap": config.bootstrap,
        "seed": config.seed,
        "rank": rank,
        "world": world,
    }


def _sae_provenance(sae: SAE, sha256: str) -> dict[str, Any]:
    """The SAE measured: digest, architecture and the provenance it carries (:attr:`SAE.metadata`)."""
    return {
        "sha256": sha256,
        "activation": sae.activation,
        "k": sae.k,
        "d_in": sae.d_in,
        "n_latents": sae.n_latents,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "metadata": sae.metadata,
    }


#: Libraries whose version a report records when the run imported them
_RECORDED_LIBRARIES = ("numpy", "transformers", "accelerate", "datasets", "triton", "sae_lens", "sparsify")


def versions() -> dict[str, str]:
    """The versions of Python, pyfloor, torch and the libraries of :data:`_RECORDED_LIBRARIES` this process imported."""
    found = {"python": platform.python_version(), "pyfloor": __version__, "torch": torch.__version__}
    for name in _RECORDED_LIBRARIES:
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "unknown"))
    return found


def _save_checkpoint(
    path: Path, state: _State, fingerprint: dict[str, Any], position: dict[str, int] | None = None
) -> None:
    """Write the state atomically: a temporary file renamed over the previous checkpoint; ``position``
    is where the source's next batch starts in its stream (for a streamed corpus)."""
    save_tagged(
        path,
        state.tensors(),
        kind=CHECKPOINT_FORMAT,
        version=CHECKPOINT_VERSION,
        metadata={"fingerprint": json.dumps(fingerprint), "position": json.dumps(position)},
        framework="pt",
    )


def _load_checkpoint(path: Path, state: _State, fingerprint: dict[str, Any]) -> dict[str, int] | None:
    """Restore ``state`` from ``path`` and return the stream position it recorded (None if none);
    refuse (leaving the file alone) anything that does not fit, including a checkpoint that does not
    record a setting this run has."""
    tensors, meta = load_tagged(
        path, kind=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, what="measurement checkpoint", framework="pt"
    )
    try:
        theirs = json.loads(meta.get("fingerprint", "{}"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from exc
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (the fingerprint is not a JSON object)")
    diff = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
    if diff:
        detail = "; ".join(
            f"{k}: checkpoint {theirs[k]!r} vs now {fingerprint[k]!r}"
            if k in theirs
            else f"{k}: not recorded in the checkpoint (an older pyfloor) vs now {fingerprint[k]!r}"
            for k in diff
        )
        raise CheckpointError(f"{path}: checkpoint belongs to a different run ({detail})")
    try:
        state.load(tensors, int(meta.get("version", 0)))
        position = json.loads(meta.get("position", "null"))
    except (CheckpointError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if position is not None and not isinstance(position, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (the stream position is not a JSON object)")
    return position


# -- estimates from sums ------------------------------------------------------------------------------
def _estimates(
    counter: BoundEstimator,
    n: float,
    fire: NDArray[np.int64],
    s2: NDArray[np.float64],
    margin: NDArray[np.int64] | None,
    widths: NDArray[np.int64],
) -> _Estimates | None:
    """F, L0, α, g, d* and the Eq. 2 floors of ``counter``'s estimator from (weighted) sums; None where undefined."""
    try:
        est = counter.estimate(n, fire, s2, margin)
    except ValueError:
        return None
    f = int(est.feature_ids.size)
    return {
        "n_features": f,
        "mean_l0": est.mean_l0,
        "alpha": est.alpha,
        "capacity": float(theory.capacity(est.alpha)),
        "critical_width": theory.critical_width(f, est.alpha),
        "floors": np.asarray(theory.importance_floor(widths, est.alpha, est.importances), dtype=np.float64),
    }


def _intervals(
    every: list[_Estimates | None], widths: NDArray[np.int64], confidence: float, point: _Estimates
) -> Intervals:
    """Bootstrap intervals at level ``confidence`` from the replicates' estimates (replicates where an
    estimate is undefined, None, are left out; fewer than 2 usable ones give no intervals).

    F, L0, α, g and d* get percentile intervals [q_lo, q_hi] of the replicates θ*. A floor is the
    summed importance beyond the budget after sorting; each replicate re-sorts noisy importances,
    which moves features across the cut and biases the tail sum low — in the replicates relative
    to θ̂ as in θ̂ relative to the truth — so percentile intervals of the floors can lie wholly below
    θ̂. Floors therefore get basic bootstrap intervals, the replicates reflected around θ̂, which
    corrects that first-order bias: low = max(0, 2θ̂ − q_hi), high = max(0, 2θ̂ − q_lo); each
    floor also carries ``bias`` = mean(θ*) − θ̂, the bootstrap estimate of the point estimate's bias.
    Such an interval need not contain θ̂.
    """
    reps = [r for r in every if r is not None]
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out: Intervals = {"confidence": confidence, "replicates": len(reps)}
    if len(reps) < 2:
        return out
    for key in _POINT_KEYS:
        values = np.array([r[key] for r in reps], dtype=np.float64)
        out[key] = {
            "estimate": float(point[key]),
            "low": float(np.percentile(values, lo_q)),
            "high": float(np.percentile(values, hi_q)),
        }
    floors = np.stack([r["floors"] for r in reps])
    q_lo, q_hi = np.percentile(floors, [lo_q, hi_q], axis=0)
    out["floors"] = [
        {
            "width": int(w),
            "estimate": float(est),
            "low": max(0.0, float(2 * est - q_hi[i])),
            "high": max(0.0, float(2 * est - q_lo[i])),
            "bias": float(floors[:, i].mean() - est),
        }
        for i, (w, est) in enumerate(zip(widths, point["floors"]))
    ]
    return out


def _stats_estimates(counter: BoundEstimator, stats: FeatureStats) -> _Estimates | None:
    """:func:`_estimates` of accumulated statistics, without floors."""
    none = np.zeros(0, np.int64)
    return _estimates(counter, stats.n_tokens, stats.fire_count, stats.act_sq_sum, stats.margin_count, none)


def _sensitivity(stats: FeatureStats, sae: SAE, activation: Activation | None) -> list[SensitivityRow]:
    """The paper's F, α and d* at each alive threshold, and whether the run had enough tokens to resolve it."""
    rows: list[SensitivityRow] = []
    for thr in SENSITIVITY_THRESHOLDS:
        est = _stats_estimates(Estimator("paper", thr).bind(sae, activation), stats)
        rows.append(
            {
                "alive_threshold": thr,
                "n_features": None if est is None else est["n_features"],
                "alpha": None if est is None else est["alpha"],
                "critical_width": None if est is None else est["critical_width"],
                # a latent at exactly this frequency fires ~10 times in 10/thr tokens
                "resolved": stats.n_tokens >= 10 / thr,
            }
        )
    return rows


def _merged_sensitivity(
    stats: FeatureStats, sae: SAE, config: MeasureConfig, pairs: DecoderPairs
) -> list[MergedSensitivityRow]:
    """The merged estimator's F, α and d* at each (cosine, mass) of :data:`MERGED_SENSITIVITY`
    (``pairs``: the SAE's decoder pairs at a cosine of at most the lowest there)."""
    rows: list[MergedSensitivityRow] = []
    for cosine, mass in MERGED_SENSITIVITY:
        counter = Estimator("merged", config.alive_threshold, cosine, mass).bind(sae, config.activation, pairs=pairs)
        est = _stats_estimates(counter, stats)
        rows.append(
            {
                "cosine": cosine,
                "mass": mass,
                "n_features": None if est is None else est["n_features"],
                "alpha": None if est is None else est["alpha"],
                "critical_width": None if est is None else est["critical_width"],
            }
        )
    return rows


# -- the loop -------------------------------------------------------------------------------------------
class _Member:
    """One SAE of a measurement: the layer it reads (None: the source's only stream), its encoder,
    running sums, estimators, decoder pairs (found once, at the lowest cosine any estimator,
    sensitivity row or health check uses), checkpoint and training curve (for the health check;
    None if unknown)."""

    def __init__(
        self,
        sae: SAE,
        layer: str | None,
        config: MeasureConfig,
        source: ActivationSource,
        rank: int,
        world: int,
        path: Path | None,
        fvu_history: Sequence[float] | None = None,
    ) -> None:
        self.sae, self.layer = sae, layer
        self.source = source.describe(layer)
        self.origin = source
        self.acc = StatsAccumulator(sae, activation=config.activation, k=config.k)
        self.state = _State(sae.n_latents, config.bootstrap, sae.W_enc.device, histograms=config.histograms)
        self.pairs = decoder_pairs(sae, min(config.cosine, _LOWEST_COSINE))
        self.counters = {
            name: est.bind(sae, config.activation, pairs=self.pairs) for name, est in config.estimators().items()
        }
        self.lead = self.counters[config.estimator]
        self.fingerprint = _fingerprint(source, layer, sae, config, rank, world)
        self.ckpt = path
        self.fvu_history = fvu_history

    def stable(self, config: MeasureConfig, world: int) -> tuple[_Estimates | None, bool]:
        """The lead estimates (None where no display is due) and whether d* is stable to ``until_stable``."""
        if config.until_stable is not None:
            merged: _State | None = self.state.reduced(histograms=False)
        elif world == 1:
            merged = self.state
        else:
            merged = None  # no collective just for the progress display
        est = None if merged is None else merged.estimates(self.lead)
        if config.until_stable is None or merged is None or est is None:
            return est, False
        d = merged.intervals(self.lead, np.zeros(0, np.int64), config.confidence).get("critical_width")
        return est, d is not None and d["high"] - d["low"] <= config.until_stable * est["critical_width"]

    def result(self, config: MeasureConfig, world: int, stopped: str) -> MeasureResult:
        """The member's :class:`MeasureResult` from the sums of every rank."""
        merged = self.state.reduced()
        stats = merged.stats()
        if stats.n_tokens == 0:
            raise ValueError(
                f"{self.source}: the stream held no usable tokens"
                + (f" ({stats.n_nonfinite:,} were non-finite)" if stats.n_nonfinite else "")
            )
        measurements = {name: c.measurement(stats, self.source) for name, c in self.counters.items()}
        measurement = measurements[config.estimator]
        if config.widths is not None:
            widths = np.asarray(config.widths, dtype=np.int64)
        else:
            widths = np.asarray(default_widths(measurement.critical_width), dtype=np.int64)
        paper_rows = _sensitivity(stats, self.sae, config.activation)
        results: dict[str, EstimatorResult] = {
            name: {
                "estimator": c.estimator.settings(),
                "measurement": measurements[name],
                "intervals": merged.intervals(c, widths, config.confidence) if config.bootstrap else {},
                "sensitivity": (
                    paper_rows if name == "paper" else _merged_sensitivity(stats, self.sae, config, self.pairs)
                ),
            }
            for name, c in self.counters.items()
        }
        cfg = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(config).items()}
        cfg.update(widths=widths.tolist(), world_size=world)
        return MeasureResult(
            stats,
            measurement,
            results[config.estimator]["intervals"],
            paper_rows,
            merged.n_batches,
            self.state.seconds,
            stopped,
            self.source,
            cfg,
            merged.features,
            merged.acts,
            results,
            sae_health(
                self.sae,
                stats,
                fvu_history=self.fvu_history,
                alive_threshold=config.alive_threshold,
                pairs=self.pairs,
            ),
            self.provenance(merged.n_batches, stats.n_tokens),
        )

    def provenance(self, n_batches: int, n_tokens: int) -> dict[str, Any]:
        """Where the measured activations and SAE came from, how far the stream was read, and the versions."""
        next_batch = self.state.next_index
        return {
            "source": self.origin.provenance(self.layer),
            "sae": _sae_provenance(self.sae, self.fingerprint["sae_sha256"]),
            "stream": {
                "n_batches": n_batches,
                "n_tokens": n_tokens,
                "next_batch": next_batch,
                "position": self.origin.position(next_batch),
            },
            "versions": versions(),
        }


def _member_path(path: Path, index: int, members: int) -> Path:
    return path if members == 1 else path.with_name(f"{path.stem}.sae{index}{path.suffix}")


def measure(
    source: ActivationSource,
    sae: SAELike,
    config: MeasureConfig | None = None,
    *,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> MeasureResult:
    """Stream ``source`` through ``sae`` and measure F, α, d*, importances and floors with intervals.

    Under ``torch.distributed`` each rank reads batches ``index ≡ rank (mod world)`` and the sums
    are all-reduced, so N processes give the counts and maxima of one, and its sums up to float64
    summation order. ``max_tokens`` is rounded up to whole batches (batches with index < ⌈max_tokens / batch_tokens⌉), the same for any number of
    ranks and for resumed runs. ``on_batch(index, rows_so_far_on_this_rank)`` runs after each batch.
    """
    return measure_family(source, [sae], config, progress=progress, on_batch=on_batch)[0]


def measure_family(
    source: ActivationSource,
    saes: Sequence[SAELike],
    config: MeasureConfig | None = None,
    *,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    fvu_histories: Sequence[Sequence[float] | None] | None = None,
    layers: Sequence[str | None] | None = None,
) -> list[MeasureResult]:
    """:func:`measure` for several SAEs from one pass over ``source``: each batch is read (one
    teacher forward) once and encoded by every SAE, each accumulating its own statistics; member i
    gives what ``measure(source, saes[i], config)`` gives. ``layers[i]`` names the layer SAE i reads
    (one of ``source.layer_names``, for a source read at several layers; None: ``Batch.acts``), and
    member i then gives what a source read at that layer alone gives. With several SAEs, member i's
    checkpoint is ``config.checkpoint`` with ``.sae{i}`` before its suffix; ``until_stable`` stops
    once every member's d* is stable. All SAEs must be on one device. ``fvu_histories``: each SAE's
    training FVU curve (or None), for the health check's "FVU still falling".
    """
    config = config or MeasureConfig()
    if not saes:
        raise ValueError("measure_family needs at least one SAE")
    models = [as_sae(sae) for sae in saes]
    histories = list(fvu_histories) if fvu_histories is not None else [None] * len(models)
    if len(histories) != len(models):
        raise ValueError(f"fvu_histories has {len(histories)} entries for {len(models)} SAEs")
    reads = list(layers) if layers is not None else [None] * len(models)
    if len(reads) != len(models):
        raise ValueError(f"layers has {len(reads)} entries for {len(models)} SAEs")
    rank, world = rank_and_world()
    for sae, layer in zip(models, reads):
        d = source.width(layer)
        if d != sae.d_in:
            at = "" if layer is None else f" at {layer}"
            raise ValueError(f"the source yields activations of width {d}{at} but the SAE expects d_in = {sae.d_in}")
    device = models[0].W_enc.device
    if any(sae.W_enc.device != device for sae in models):
        raise ValueError(
            f"the SAEs of one measurement must be on one device; found {sorted({str(s.W_enc.device) for s in models})}"
        )
    base = None if config.checkpoint is None else rank_path(Path(config.checkpoint), rank, world)
    members = [
        _Member(
            sae, layer, config, source, rank, world, None if base is None else _member_path(base, i, len(models)), h
        )
        for i, (sae, layer, h) in enumerate(zip(models, reads, histories))
    ]
    stream_positions = [
        prepare_checkpoint(
            m.ckpt,
            resume=config.resume,
            overwrite=config.overwrite,
            kind=CHECKPOINT_FORMAT,
            what="measure checkpoint",
            load=functools.partial(_load_checkpoint, state=m.state, fingerprint=m.fingerprint),
            device=device,
        )
        for m in members
    ]
    positions = {(m.state.next_index, m.state.rounds) for m in members}
    if len(positions) > 1:
        raise CheckpointError(
            f"the members' checkpoints stopped at different batches ({sorted(positions)}); resume each alone"
        )
    first = members[0].state
    if stream_positions[0] is not None:
        source.seek(first.next_index, stream_positions[0])
    max_batches = None if config.max_tokens is None else -(-config.max_tokens // source.batch_tokens)

    total = first.reduced(histograms=False).rows
    bar = _progress(progress and rank == 0, config.max_tokens)
    bar.update(total)
    start_time = time.perf_counter()
    seconds_before = [m.state.seconds for m in members]
    since_checkpoint = 0
    stopped = "source exhausted"
    batches = source.batches(start=first.next_index, rank=rank, world=world)
    while True:
        batch = next(batches, None)
        at_limit = batch is not None and max_batches is not None and batch.index >= max_batches
        rows = 0
        if batch is not None and not at_limit:
            xs = {layer: _batch_acts(batch, layer, source).to(device) for layer in dict.fromkeys(reads)}
            rows = xs[reads[0]].shape[0]
            weights = (
                torch.from_numpy(bootstrap_weights(config.seed, batch.index, config.bootstrap)).to(device)
                if config.bootstrap
                else None
            )
            fill = config.histograms and batch.index % config.histogram_every == 0
            for m in members:
                x = xs[m.layer]
                batch_stats = m.acc.batch(x, want_codes=fill)
                m.state.add(batch_stats, rows, weights)
                if fill:
                    if batch_stats.codes is None:  # asked for with want_codes=fill
                        raise RuntimeError(f"batch {batch.index}: the encode returned no codes for the histograms")
                    m.state.fill_histograms(batch_stats.codes, x, config.histogram_threads)
                m.state.next_index = batch.index + 1
            since_checkpoint += rows
            if on_batch is not None:
                on_batch(batch.index, first.rows)
        # One small collective per round keeps the ranks in step: who read a batch, how many
        # tokens, and whether anyone stopped at max_tokens.
        flags = torch.tensor([int(batch is not None and not at_limit), rows, int(at_limit)], device=device)
        all_reduce_([flags])
        if int(flags[0]) == 0:
            stopped = f"reached max_tokens ({config.max_tokens:,})" if int(flags[2]) else "source exhausted"
            break
        for m in members:
            m.state.rounds += 1
        total += int(flags[1])
        bar.update(int(flags[1]))
        if base is not None and since_checkpoint >= config.checkpoint_every:
            for m, before in zip(members, seconds_before):
                m.state.seconds = before + time.perf_counter() - start_time
                if m.ckpt is not None:
                    _save_checkpoint(m.ckpt, m.state, m.fingerprint, source.position(m.state.next_index))
            since_checkpoint = 0
        if first.rounds % config.check_every:
            continue
        # Every rank takes the same branch here: the decision depends on reduced sums only.
        checks = [m.stable(config, world) for m in members]
        est = checks[0][0]
        if est is not None:
            bar.set_postfix(F=est["n_features"], alpha=f"{est['alpha']:.5f}", d_star=f"{est['critical_width']:.1f}")
        if config.until_stable is not None and total >= config.min_tokens and all(ok for _, ok in checks):
            stopped = f"d* stable within {config.until_stable:.2%}" + (
                f" for all {len(members)} SAEs" if len(members) > 1 else ""
            )
            break
    bar.close()
    for m, before in zip(members, seconds_before):
        m.state.seconds = before + time.perf_counter() - start_time
        if m.ckpt is not None:
            _save_checkpoint(m.ckpt, m.state, m.fingerprint, source.position(m.state.next_index))
    return [m.result(config, world, stopped) for m in members]


def _batch_acts(batch: Batch, layer: str | None, source: ActivationSource) -> Tensor:
    """The [tokens, d] activations of ``layer`` (``acts`` if None) in ``batch``; ValueError for another shape."""
    if layer is None:
        x = batch.acts
    elif batch.layers is None or layer not in batch.layers:
        raise ValueError(f"batch {batch.index}: the source yielded no activations of layer {layer!r}")
    else:
        x = batch.layers[layer]
    d = source.width(layer)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(
            f"batch {batch.index}: a source must yield [tokens, {d}] activations; got shape {tuple(x.shape)}"
        )
    return x


def measure_layers(
    source: ActivationSource,
    saes: Mapping[str, SAELike | Sequence[SAELike]],
    config: MeasureConfig | None = None,
    *,
    progress: bool = True,
    fvu_histories: Mapping[str, Sequence[Sequence[float] | None]] | None = None,
) -> dict[str, list[MeasureResult]]:
    """Several layers measured from one pass over a source read at several layers (e.g.
    ``TeacherSource(model, [8, 12, 16], …)``, one forward stopped after the deepest): ``saes`` maps
    each layer name (of ``source.layer_names``) to its SAE or SAE family; the results, by layer, are
    what measuring each layer alone gives (:func:`measure_family`; checkpoints are numbered over all
    SAEs in the order given)."""
    unknown = [name for name in saes if name not in source.layer_names]
    if unknown:
        raise ValueError(
            f"the source reads {', '.join(source.layer_names) or 'no named layers'}; no SAE can read {', '.join(unknown)}"
        )
    groups = {name: list(s) if isinstance(s, (list, tuple)) else [s] for name, s in saes.items()}
    flat = [(name, sae) for name, group in groups.items() for sae in group]
    histories = None
    if fvu_histories is not None:
        histories = [h for name, group in groups.items() for h in fvu_histories.get(name, [None] * len(group))]
    results = measure_family(
        source,
        [sae for _, sae in flat],
        config,
        progress=progress,
        fvu_histories=histories,
        layers=[name for name, _ in flat],
    )
    out: dict[str, list[MeasureResult]] = {name: [] for name in groups}
    for (name, _), result in zip(flat, results):
        out[name].append(result)
    return out


def _progress(enabled: bool, total: int | None) -> _ProgressBar:
    """A tqdm bar counting tokens towards ``total`` (unknown if None), hidden unless ``enabled``."""
    from tqdm.auto import tqdm

    bar: _ProgressBar = tqdm(
        total=total, unit="tok", unit_scale=True, disable=not enabled, dynamic_ncols=True, smoothing=0.1
    )
    return bar
