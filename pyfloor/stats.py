"""Per-feature activation statistics of SAE latents, and the measurement derived from them.

:class:`FeatureStats` holds exact, mergeable sums over tokens (int64 counts, float64 sums); one
process, many GPUs or a resumed run give the same counts and maxima for the same tokens, and the same
float64 sums up to their order of addition.
:class:`Measurement` turns them into the paper's quantities (F, L0, α, g, d*, importances) with the
definitions of Sarkar & Deka (2026):

=============  ===============================================================
active         z_i > 0 (SAE latent after its activation function)
freq_i         (#tokens with z_i > 0) / n_tokens
alive          freq_i > alive_threshold (default 1e-5)
F              number of alive features
L0             Σ_i fire_count_i / n_tokens
α              1 − L0 / F
importance I_i E[z_i²] over all tokens (zeros included)
=============  ===============================================================

numpy only; no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks, theory
from ._io import CheckpointError, load_tagged, save_tagged
from .theory import Array, Scalar

__all__ = [
    "FeatureStats",
    "Measurement",
    "Estimate",
    "estimate",
    "CheckpointError",
    "load_measurement",
    "precise_alpha",
    "DEFAULT_ALIVE_THRESHOLD",
]

DEFAULT_ALIVE_THRESHOLD = 1e-5
STATS_FORMAT = "pyfloor.FeatureStats"
STATS_VERSION = 1
MEASUREMENT_FORMAT = "pyfloor.Measurement"
MEASUREMENT_VERSION = 1


_ARRAYS = {"fire_count": np.int64, "act_sum": np.float64, "act_sq_sum": np.float64, "act_max": np.float64}


@dataclass(eq=False)
class FeatureStats:
    """Exact per-latent sums over a stream of tokens.

    Attributes
    ----------
    n_tokens:
        Tokens counted (tokens excluded for non-finite activations are not among them).
    fire_count:
        int64 [m]: tokens on which latent i was active (z_i > 0).
    act_sum, act_sq_sum:
        float64 [m]: Σ z_i and Σ z_i² over the counted tokens.
    act_max:
        float64 [m]: max z_i over the counted tokens (0 where never active).
    n_nonfinite:
        Tokens left out because their activations held NaN or ±Inf.
    margin_count:
        int64 [m]: tokens on which latent i was active within its margin band, just above its cut
        (:meth:`pyfloor.sae.SAE.margins`; zeros where an encode has no fixed cut, as top-k), or
        None where not recorded. It lets :mod:`pyfloor.features` correct firing frequencies for
        the activations a latent's cut removes.
    """

    n_tokens: int
    fire_count: NDArray[np.int64]
    act_sum: NDArray[np.float64]
    act_sq_sum: NDArray[np.float64]
    act_max: NDArray[np.float64]
    n_nonfinite: int = 0
    margin_count: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        for name, dtype in _ARRAYS.items():
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1:
                raise ValueError(f"FeatureStats.{name} must be 1-D; got shape {arr.shape}")
            if arr.dtype != dtype:
                if dtype is np.int64 and not np.issubdtype(arr.dtype, np.integer):
                    raise ValueError(f"FeatureStats.{name} must hold integers; got dtype {arr.dtype}")
                arr = arr.astype(dtype)
            setattr(self, name, arr)
        m = self.fire_count.size
        for name in _ARRAYS:
            if getattr(self, name).size != m:
                raise ValueError(
                    f"FeatureStats arrays must have one entry per latent; fire_count has {m}, "
                    f"{name} has {getattr(self, name).size}"
                )
        for name in ("n_tokens", "n_nonfinite"):
            setattr(self, name, _checks.count(getattr(self, name), f"FeatureStats.{name}"))
        if m and (self.fire_count.min() < 0 or self.fire_count.max() > self.n_tokens):
            raise ValueError(f"FeatureStats.fire_count must lie in [0, n_tokens={self.n_tokens}]")
        if self.margin_count is not None:
            band = np.asarray(self.margin_count)
            if band.shape != (m,) or not np.issubdtype(band.dtype, np.integer):
                raise ValueError(f"FeatureStats.margin_count must be integers [{m}]; got {band.dtype} {band.shape}")
            band = band.astype(np.int64)
            if m and (band.min() < 0 or np.any(band > self.fire_count)):
                raise ValueError("FeatureStats.margin_count must lie in [0, fire_count] (band tokens are active)")
            self.margin_count = band
        for name in ("act_sum", "act_sq_sum", "act_max"):
            arr = getattr(self, name)
            if m and not (np.all(np.isfinite(arr)) and arr.min() >= 0):
                raise ValueError(f"FeatureStats.{name} must be finite and >= 0 (latents are non-negative)")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, n_latents: int) -> FeatureStats:
        """Statistics of zero tokens over ``n_latents`` latents (the identity of :meth:`merge`)."""
        m = _checks.count(n_latents, "n_latents")
        return cls(0, np.zeros(m, np.int64), np.zeros(m), np.zeros(m), np.zeros(m))

    @classmethod
    def from_activations(cls, z: ArrayLike, margins: ArrayLike | None = None) -> FeatureStats:
        """Statistics of dense latents ``z`` of shape [..., m] (the numpy reference).

        Latents must be non-negative (outputs of ReLU, JumpReLU or top-k). Tokens whose row holds
        NaN or ±Inf are counted in ``n_nonfinite`` and left out of every sum. With ``margins``
        [m] (the upper ends of the latents' margin bands) the margin counts are recorded too.

        Raises
        ------
        ValueError
            If ``z`` is a scalar, not numeric, or holds negative values.
        """
        arr = np.asarray(z)
        if arr.ndim == 0:
            raise ValueError("z must have a last dimension of latents; got a scalar")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"z must be numeric; got dtype {arr.dtype}")
        rows = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
        finite = np.all(np.isfinite(rows), axis=1)
        rows = rows[finite]
        if np.any(rows < 0):
            raise ValueError("latents must be non-negative (outputs of ReLU, JumpReLU or top-k); found negatives")
        m = arr.shape[-1]
        band = None if margins is None else np.count_nonzero((rows > 0) & (rows <= np.asarray(margins)), axis=0)
        return cls(
            n_tokens=rows.shape[0],
            fire_count=np.count_nonzero(rows > 0, axis=0).astype(np.int64),
            act_sum=rows.sum(axis=0),
            act_sq_sum=np.square(rows).sum(axis=0),
            act_max=rows.max(axis=0) if rows.shape[0] else np.zeros(m),
            n_nonfinite=int(np.count_nonzero(~finite)),
            margin_count=None if band is None else band.astype(np.int64),
        )

    # -- algebra ------------------------------------------------------------------------------
    @property
    def n_latents(self) -> int:
        """Number of latents m."""
        return int(self.fire_count.size)

    def merge(self, *others: FeatureStats) -> FeatureStats:
        """Statistics of the union of the token streams: counts and sums add, maxima take the max
        (margin counts add where every part recorded them, else they are None).

        Raises
        ------
        TypeError
            If an argument is not a FeatureStats.
        ValueError
            If the statistics hold different numbers of latents.
        """
        out = self.copy()
        for other in others:
            if not isinstance(other, FeatureStats):
                raise TypeError(f"can only merge FeatureStats; got {type(other).__name__}")
            if other.n_latents != self.n_latents:
                raise ValueError(f"cannot merge statistics of {self.n_latents} and {other.n_latents} latents")
            out.n_tokens += other.n_tokens
            out.n_nonfinite += other.n_nonfinite
            out.fire_count += other.fire_count
            out.act_sum += other.act_sum
            out.act_sq_sum += other.act_sq_sum
            np.maximum(out.act_max, other.act_max, out=out.act_max)
            out.margin_count = (
                None
                if out.margin_count is None or other.margin_count is None
                else out.margin_count + other.margin_count
            )
        return out

    def __add__(self, other: FeatureStats) -> FeatureStats:
        if not isinstance(other, FeatureStats):
            return NotImplemented
        return self.merge(other)

    def copy(self) -> FeatureStats:
        """A deep copy."""
        return FeatureStats(
            self.n_tokens,
            self.fire_count.copy(),
            self.act_sum.copy(),
            self.act_sq_sum.copy(),
            self.act_max.copy(),
            self.n_nonfinite,
            None if self.margin_count is None else self.margin_count.copy(),
        )

    def __eq__(self, other: object) -> bool:
        """Bit-exact equality of every count, sum and maximum."""
        if not isinstance(other, FeatureStats):
            return NotImplemented
        return (
            self.n_tokens == other.n_tokens
            and self.n_nonfinite == other.n_nonfinite
            and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in _ARRAYS)
            and (
                np.array_equal(self.margin_count, other.margin_count)
                if self.margin_count is not None and other.margin_count is not None
                else self.margin_count is other.margin_count
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FeatureStats(n_latents={self.n_latents}, n_tokens={self.n_tokens:,}, n_nonfinite={self.n_nonfinite:,})"

    # -- derived per-latent quantities ---------------------------------------------------------
    def _per_token(self, values: NDArray[Any]) -> NDArray[np.float64]:
        if self.n_tokens == 0:
            raise ValueError("no tokens have been counted yet")
        return values / self.n_tokens

    @property
    def frequency(self) -> NDArray[np.float64]:
        """Firing frequency freq_i = fire_count_i / n_tokens."""
        return self._per_token(self.fire_count.astype(np.float64))

    @property
    def mean(self) -> NDArray[np.float64]:
        """E[z_i] over all counted tokens."""
        return self._per_token(self.act_sum)

    @property
    def importance(self) -> NDArray[np.float64]:
        """Importance I_i = E[z_i²] over all counted tokens (zeros included)."""
        return self._per_token(self.act_sq_sum)

    # -- plain dicts and files ----------------------------------------------------------------
    def to_dict(self) -> dict[str, NDArray[Any]]:
        """Plain numpy arrays (``counters`` = int64 [n_tokens, n_nonfinite]; ``margin_count`` where
        recorded), e.g. for all-reduce."""
        d: dict[str, NDArray[Any]] = {k: getattr(self, k) for k in _ARRAYS}
        d["counters"] = np.array([self.n_tokens, self.n_nonfinite], dtype=np.int64)
        if self.margin_count is not None:
            d["margin_count"] = self.margin_count
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureStats:
        """Inverse of :meth:`to_dict` (accepts numpy arrays or anything ``np.asarray`` takes)."""
        missing = [k for k in (*_ARRAYS, "counters") if k not in d]
        if missing:
            raise ValueError(f"FeatureStats dict lacks {', '.join(missing)}")
        counters = np.asarray(d["counters"]).ravel()
        if counters.size != 2:
            raise ValueError(f"FeatureStats 'counters' must hold [n_tokens, n_nonfinite]; got {counters.size} values")
        if (
            not np.issubdtype(counters.dtype, np.integer)
            or counters.min() < 0
            or (counters.max() > np.iinfo(np.int64).max)
        ):
            raise ValueError(
                f"FeatureStats 'counters' must be non-negative int64 [n_tokens, n_nonfinite]; got {counters}"
            )
        arrays = {k: np.asarray(d[k]) for k in _ARRAYS}
        band = np.asarray(d["margin_count"]) if "margin_count" in d else None
        return cls(int(counters[0]), n_nonfinite=int(counters[1]), margin_count=band, **arrays)

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
        """Write to a safetensors file atomically (a temporary file renamed into place).

        ``metadata`` adds string key/value pairs (kept apart from pyfloor's own keys).
        """
        arrays = {k: np.ascontiguousarray(v) for k, v in self.to_dict().items()}
        user = {f"user.{key}": str(value) for key, value in (metadata or {}).items()}
        save_tagged(path, arrays, kind=STATS_FORMAT, version=STATS_VERSION, metadata=user)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        """Read a file written by :meth:`save`; anything else raises :class:`CheckpointError`.

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        CheckpointError
            For a file that is not a pyfloor FeatureStats file, is from a newer pyfloor, or is corrupt.
        """
        return cls.load_with_metadata(path)[0]

    @classmethod
    def load_with_metadata(cls, path: str | os.PathLike[str]) -> tuple[FeatureStats, dict[str, str]]:
        """Like :meth:`load`, also returning the user metadata given to :meth:`save`."""
        data, meta = load_tagged(path, kind=STATS_FORMAT, version=STATS_VERSION, what="FeatureStats file")
        try:
            stats = cls.from_dict(data)
        except ValueError as exc:
            raise CheckpointError(f"{path}: inconsistent statistics ({exc})") from exc
        user = {k[len("user.") :]: v for k, v in meta.items() if k.startswith("user.")}
        return stats, user


class Estimate(NamedTuple):
    """The paper's estimators from per-latent sums (see the module docstring)."""

    feature_ids: NDArray[np.int64]  # alive latents, most important first
    importances: NDArray[np.float64]  # their E[z²], descending
    mean_l0: float
    alpha: float


def estimate(n_tokens: float, fire_count: ArrayLike, sq_sum: ArrayLike, alive_threshold: float) -> Estimate:
    """Alive latents, importances, L0 and α from token count, fire counts and Σz².

    ``n_tokens`` may be a (bootstrap-)weighted count. Raises ValueError where the measurement is
    undefined: no tokens, no alive latent, or L0 ≥ F (α ≤ 0).
    """
    if n_tokens <= 0:
        raise ValueError("no tokens have been counted; nothing to measure")
    fire = np.asarray(fire_count)
    alive = np.flatnonzero(fire / n_tokens > alive_threshold)
    if alive.size == 0:
        raise ValueError(
            f"no latent fires on more than a fraction {alive_threshold:g} of the {n_tokens:,} tokens; F = 0"
        )
    l0 = float(fire.sum()) / n_tokens
    if l0 >= alive.size:
        raise ValueError(
            f"mean L0 = {l0:.4g} is not below F = {alive.size} alive features: α = 1 − L0/F would be "
            "≤ 0 (raise alive_threshold or check the SAE)"
        )
    imp = np.asarray(sq_sum, dtype=np.float64)[alive] / n_tokens
    order = np.argsort(-imp, kind="stable")
    return Estimate(alive[order].astype(np.int64), imp[order], l0, 1.0 - l0 / alive.size)


@dataclass(frozen=True, eq=False)
class Measurement:
    """A teacher's superposition measurement and the floor it predicts.

    Attributes
    ----------
    n_features:
        F, the number of alive features.
    mean_l0:
        L0, the mean number of active latents per token.
    alpha:
        α = 1 − L0 / F.
    importances:
        Alive features' importances E[z_i²], sorted descending (``None`` for a summary given
        only as F and L0).
    feature_ids:
        Latent index of each entry of ``importances`` (``None`` where unknown).
    n_tokens, n_latents, alive_threshold:
        Provenance, where known.
    source:
        Where the measurement came from (a path or a description).
    notes:
        How the numbers were read, where a reader should know (e.g. which published field gave α).
    """

    n_features: int
    mean_l0: float
    alpha: float
    importances: NDArray[np.float64] | None = None
    feature_ids: NDArray[np.int64] | None = None
    n_tokens: int | None = None
    n_latents: int | None = None
    alive_threshold: float | None = None
    source: str = ""
    notes: tuple[str, ...] = ()
    _tails: NDArray[np.float64] | None = field(default=None, repr=False, init=False)

    def __post_init__(self) -> None:
        if _checks.count(self.n_features, "n_features") == 0:
            raise ValueError("n_features must be > 0")
        theory._check_alpha(self.alpha)
        if not math.isclose(1.0 - self.mean_l0 / self.n_features, self.alpha, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"inconsistent measurement: α = {self.alpha!r} but 1 − L0/F = 1 − {self.mean_l0!r}/{self.n_features}"
            )
        if (
            self.feature_ids is not None
            and self.importances is not None
            and (np.asarray(self.feature_ids).shape != np.asarray(self.importances).shape)
        ):
            raise ValueError(
                f"feature_ids has {np.asarray(self.feature_ids).size} entries for {np.asarray(self.importances).size} importances"
            )
        if self.feature_ids is not None and np.asarray(self.feature_ids).shape != (self.n_features,):
            raise ValueError(
                f"feature_ids has shape {np.asarray(self.feature_ids).shape}; expected one id per "
                f"feature ({self.n_features},)"
            )
        if self.importances is not None:
            tails = theory.tail_sums(self.importances)
            object.__setattr__(self, "importances", np.asarray(self.importances, dtype=np.float64))
            object.__setattr__(self, "_tails", tails)
            if tails.size - 1 != self.n_features:
                raise ValueError(f"importances has {tails.size - 1} entries but n_features is {self.n_features}")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_summary(
        cls, n_features: int, *, mean_l0: float | None = None, alpha: float | None = None, source: str = ""
    ) -> Measurement:
        """A measurement known only by F and L0 (or F and α), as papers publish it."""
        f = _checks.count(n_features, "n_features")
        if f == 0:
            raise ValueError("n_features must be > 0")
        l0, a = _l0_and_alpha(f, mean_l0, alpha)
        return cls(n_features=f, mean_l0=l0, alpha=a, source=source)

    @classmethod
    def from_importances(
        cls,
        importances: ArrayLike,
        *,
        mean_l0: float | None = None,
        alpha: float | None = None,
        feature_ids: ArrayLike | None = None,
        source: str = "",
    ) -> Measurement:
        """A measurement from the alive features' importances (any order) and L0 or α.

        F is the number of importances. Published measurements such as the paper's layer-12
        summary come in this form.

        Returns
        -------
        Measurement
            With F = the number of importances, sorted descending.

        Raises
        ------
        ValueError
            For an empty or non-1-D importance array, negative or non-finite importances, or a bad L0 or α.
        """
        imp = np.asarray(importances, dtype=np.float64)
        if imp.ndim != 1 or imp.size == 0:
            raise ValueError(f"importances must be a non-empty 1-D array; got shape {imp.shape}")
        order = np.argsort(-imp, kind="stable")
        ids = None if feature_ids is None else np.asarray(feature_ids, dtype=np.int64)
        if ids is not None and ids.shape != imp.shape:
            raise ValueError(f"feature_ids has {ids.size} entries for {imp.size} importances")
        ids = None if ids is None else ids[order]
        l0, a = _l0_and_alpha(imp.size, mean_l0, alpha)
        return cls(
            n_features=int(imp.size),
            mean_l0=l0,
            alpha=a,
            importances=theory.check_importances(imp[order]),
            feature_ids=ids,
            source=source,
        )

    @classmethod
    def from_stats(
        cls, stats: FeatureStats, *, alive_threshold: float = DEFAULT_ALIVE_THRESHOLD, source: str = ""
    ) -> Measurement:
        """The paper's measurement from accumulated statistics (definitions in the module docstring).

        Returns
        -------
        Measurement
            F alive latents, their importances E[z²] (SAE units²) sorted descending with their latent ids, L0 and α.

        Raises
        ------
        ValueError
            If the statistics hold no tokens, no latent is alive, or ``alive_threshold`` lies outside [0, 1).
        """
        thr = _checks.fraction(alive_threshold, "alive_threshold")
        if stats.n_tokens == 0:
            raise ValueError("the statistics hold no tokens; nothing to measure")
        return cls.from_estimate(estimate(stats.n_tokens, stats.fire_count, stats.act_sq_sum, thr), stats, thr, source)

    @classmethod
    def from_estimate(
        cls, est: Estimate, stats: FeatureStats, alive_threshold: float, source: str = "", notes: tuple[str, ...] = ()
    ) -> Measurement:
        """The measurement of an :class:`Estimate` made from ``stats`` (any estimator's counted features)."""
        return cls(
            n_features=int(est.feature_ids.size),
            mean_l0=est.mean_l0,
            alpha=est.alpha,
            importances=est.importances,
            feature_ids=est.feature_ids,
            n_tokens=stats.n_tokens,
            n_latents=stats.n_latents,
            alive_threshold=alive_threshold,
            source=source,
            notes=notes,
        )

    # -- the paper's quantities ---------------------------------------------------------------
    @property
    def capacity(self) -> float:
        """g(α)."""
        return float(theory.capacity(self.alpha))

    @property
    def critical_width(self) -> float:
        """d* = F / g(α)."""
        return theory.critical_width(self.n_features, self.alpha)

    @property
    def total_importance(self) -> float | None:
        """Σ I_i over alive features: the floor of a student that keeps nothing."""
        return None if self._tails is None else float(self._tails[0])

    @property
    def in_sparse_regime(self) -> bool:
        """Whether α ≥ 1 − 1/e, where g(α) holds (below it capacity is clamped to e)."""
        return self.alpha >= theory.SPARSE_REGIME_ALPHA

    @overload
    def budget(self, widths: Scalar, *, a: float = 1.0, b: float = 1.0) -> int: ...
    @overload
    def budget(self, widths: Array, *, a: float = 1.0, b: float = 1.0) -> NDArray[np.int64]: ...
    def budget(self, widths: ArrayLike, *, a: float = 1.0, b: float = 1.0) -> int | NDArray[np.int64]:
        """Features kept at each student width d_S: F_S = min(⌊d_S · a·g(α)^b⌋, F).

        Returns an int for a scalar width, else an int64 array of the widths' shape.
        """
        kept: int | NDArray[np.int64] = theory._scalar_or_array(
            theory.feature_budget(np.asarray(widths, dtype=np.float64), self.alpha, self.n_features, a=a, b=b)
        )
        return kept

    @overload
    def floor(self, widths: Scalar, *, a: float = 1.0, b: float = 1.0) -> float: ...
    @overload
    def floor(self, widths: Array, *, a: float = 1.0, b: float = 1.0) -> NDArray[np.float64]: ...
    def floor(self, widths: ArrayLike, *, a: float = 1.0, b: float = 1.0) -> float | NDArray[np.float64]:
        """Eq. 2 floor at each student width: Σ of the importances E[z²] ranked below F_S (SAE units²).

        For other ``a``, ``b`` the packing-law floor with ĝ = a·g(α)^b. Returns a float for a scalar
        width, else an array of the widths' shape.

        Raises
        ------
        ValueError
            If the measurement has no importances (only F and L0).
        """
        if self._tails is None:
            raise ValueError(
                "this measurement has no importances (only F and L0); use uniform_floor() for the "
                "fraction of features lost"
            )
        budget = np.asarray(self.budget(np.asarray(widths, dtype=np.float64), a=a, b=b))
        floors: float | NDArray[np.float64] = theory._scalar_or_array(self._tails[budget])
        return floors

    @overload
    def uniform_floor(self, widths: Scalar) -> float: ...
    @overload
    def uniform_floor(self, widths: Array) -> NDArray[np.float64]: ...
    def uniform_floor(self, widths: ArrayLike) -> float | NDArray[np.float64]:
        """Naive floor ε∞·max(0, 1 − d_S·g/F); ε∞ = Σ I_i, or 1 (the fraction of features lost)
        without importances. A float for a scalar width, else an array."""
        total = 1.0 if self._tails is None else float(self._tails[0])
        floors: float | NDArray[np.float64] = theory._scalar_or_array(
            theory.uniform_floor(np.asarray(widths, dtype=np.float64), self.alpha, self.n_features, total)
        )
        return floors

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every quantity (importances as a list)."""
        return {
            "format": MEASUREMENT_FORMAT,
            "version": MEASUREMENT_VERSION,
            "source": self.source,
            "n_features": self.n_features,
            "mean_l0": self.mean_l0,
            "alpha": self.alpha,
            "capacity": self.capacity,
            "critical_width": self.critical_width,
            "in_sparse_regime": self.in_sparse_regime,
            "n_tokens": self.n_tokens,
            "n_latents": self.n_latents,
            "alive_threshold": self.alive_threshold,
            "total_importance": self.total_importance,
            "importances": None if self.importances is None else self.importances.tolist(),
            "feature_ids": None if self.feature_ids is None else self.feature_ids.tolist(),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping):
            raise TypeError(f"Measurement.from_dict needs a mapping; got {type(d).__name__}")
        if d.get("format") != MEASUREMENT_FORMAT:
            raise ValueError(f"not a pyfloor Measurement (format is {d.get('format')!r})")
        if (_dict_number(d, "version", int, optional=True) or 0) > MEASUREMENT_VERSION:
            raise ValueError(f"Measurement written by a newer pyfloor (version {d.get('version')})")
        threshold = _dict_number(d, "alive_threshold", float, optional=True)
        notes = d.get("notes", ())
        if not isinstance(notes, (list, tuple)):
            raise ValueError(f"Measurement notes must be a list of strings; got {type(notes).__name__}")
        return cls(
            n_features=_dict_number(d, "n_features", int),
            mean_l0=_dict_number(d, "mean_l0", float),
            alpha=_dict_number(d, "alpha", float),
            importances=_dict_array(d, "importances", np.float64),
            feature_ids=_dict_array(d, "feature_ids", np.int64),
            n_tokens=_dict_number(d, "n_tokens", int, optional=True),
            n_latents=_dict_number(d, "n_latents", int, optional=True),
            alive_threshold=None if threshold is None else _checks.fraction(threshold, "alive_threshold"),
            source=str(d.get("source", "")),
            notes=tuple(str(n) for n in notes),
        )

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def _dict_number(d: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """``d[key]`` of a Measurement dict as a finite float or a non-negative int64 (None where ``optional``
    and absent or null); ValueError naming the key for anything else."""
    value = d.get(key)
    if value is None:
        if optional:
            return None
        raise ValueError(f"Measurement dict lacks {key}" if key not in d else f"Measurement {key} is null")
    name = f"Measurement {key}"
    if kind is not int:
        return _checks.number(value, name)
    n = _checks.count(value, name)
    if n >= 2**63:
        raise ValueError(f"{name} must be a non-negative int64; got {value!r}")
    return n


def _dict_array(d: Mapping[str, Any], key: str, dtype: type) -> NDArray[Any] | None:
    """``d[key]`` of a Measurement dict as a 1-D array of numbers (int64: non-negative integers), or None."""
    value = d.get(key)
    if value is None:
        return None
    try:
        arr = np.asarray(value)
        ok = arr.ndim == 1 and (
            arr.size == 0
            or (np.issubdtype(arr.dtype, np.integer) if dtype is np.int64 else np.issubdtype(arr.dtype, np.number))
        )
    except (TypeError, ValueError):  # ragged or odd nesting
        ok = False
    if not ok:
        what = "non-negative integers" if dtype is np.int64 else "numbers"
        raise ValueError(f"Measurement {key} must be a flat list of {what}")
    if dtype is np.int64 and arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int64).max):
        raise ValueError(f"Measurement {key} must be non-negative int64 latent indices")
    return arr.astype(dtype)


def _l0_and_alpha(n_features: int, mean_l0: float | None, alpha: float | None) -> tuple[float, float]:
    """Complete (L0, α) from whichever one is given, with α = 1 − L0/F."""
    if (mean_l0 is None) == (alpha is None):
        raise ValueError("give exactly one of mean_l0 and alpha")
    if mean_l0 is not None:
        l0 = float(mean_l0)
        if not math.isfinite(l0) or l0 <= 0:
            raise ValueError(f"mean_l0 must be a finite number > 0; got {mean_l0!r}")
        if l0 >= n_features:
            raise ValueError(f"mean_l0 ({l0:g}) must be below n_features ({n_features}): α = 1 − L0/F would be ≤ 0")
        return l0, 1.0 - l0 / n_features
    a = float(theory._check_alpha(np.asarray(alpha, dtype=np.float64)))
    return (1.0 - a) * n_features, a


class AlphaReading(NamedTuple):
    """α as one field of a published measurement gives it, and how far its printed rounding leaves α open."""

    field: str
    alpha: float
    uncertainty: float  # half a unit in the last printed digit, carried over to α


def _half_unit(value: float) -> float:
    """Half a unit in the last decimal of ``value`` as printed (its shortest round-trip form)."""
    exponent = Decimal(repr(float(value))).as_tuple().exponent
    return 0.5 * 10.0 ** int(exponent)


def _number(d: Mapping[str, Any], key: str, source: str) -> float | None:
    """``d[key]`` of a published file as a finite float, or None where absent."""
    value = d.get(key)
    return None if value is None else _checks.number(value, f"{source}: {key}")


def _alpha_readings(d: Mapping[str, Any], n_features: int, source: str) -> list[AlphaReading]:
    """Every reading of α a published file offers: alpha itself, 1 − avg_active/F, g_alpha, and F/d_star_S."""
    readings = []
    alpha = _number(d, "alpha", source)
    if alpha is not None:
        readings.append(AlphaReading("alpha", float(theory._check_alpha(alpha)), _half_unit(alpha)))
    l0 = _number(d, "avg_active", source)
    if l0 is not None:
        a = _l0_and_alpha(n_features, l0, None)[1]
        readings.append(AlphaReading("avg_active", a, _half_unit(l0) / n_features))
    for key in ("g_alpha", "d_star_S"):
        value = _number(d, key, source)
        if value is None or value <= 0:
            continue
        # g = g_alpha, or F / d*; the rounding of the printed value carried over to g
        if key == "g_alpha":
            g, dg = value, _half_unit(value)
        else:
            g, dg = n_features / value, n_features * _half_unit(value) / value**2
        if g < theory.MIN_CAPACITY:
            raise ValueError(f"{source}: {key} = {value!r} gives g(α) = {g:.4g}, below its minimum e")
        a = theory.sparsity_for_capacity(g)
        u = 1.0 - a
        slope = abs(math.log(u) + 1.0) / (u * math.log(u)) ** 2  # |dg/dα|
        readings.append(AlphaReading(key, a, dg / slope if slope > 0 else math.inf))
    return readings


def precise_alpha(d: Mapping[str, Any], n_features: int, source: str = "") -> tuple[float, list[str]]:
    """The most precise α a published measurement gives, and notes on how it was read.

    Each of ``alpha``, ``avg_active`` (α = 1 − L0/F), ``g_alpha`` and ``d_star_S`` (g = F/d*) that
    the mapping holds fixes α up to the rounding of its printed digits; the reading with the
    smallest such uncertainty wins. A note names the field used, and one more note names every
    other reading that disagrees with it by more than the two roundings allow.
    """
    readings = _alpha_readings(d, n_features, source)
    if not readings:
        raise ValueError(f"{source}: no alpha or avg_active to read the sparsity from")
    best = min(readings, key=lambda r: r.uncertainty)
    notes = [f"α = {best.alpha:.10g} read from {best.field} (± {best.uncertainty:.2g} from its printed digits)"]
    for r in readings:
        if r is not best and abs(r.alpha - best.alpha) > r.uncertainty + best.uncertainty + 1e-15:
            notes.append(
                f"the file's {r.field} gives α = {r.alpha:.10g}, which disagrees with {best.field} by "
                f"{abs(r.alpha - best.alpha):.2g}, more than their rounding (± {r.uncertainty + best.uncertainty:.2g})"
            )
    return best.alpha, notes


def _from_published_json(d: Mapping[str, Any], source: str) -> Measurement:
    """The layout of the paper's published measurement (F_alive, avg_active or alpha, sorted_importance)."""
    raw = d["sorted_importance"]
    if not isinstance(raw, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raise ValueError(f"{source}: sorted_importance must be a list of numbers")
    try:
        imp = np.asarray(raw, dtype=np.float64)
    except OverflowError as exc:  # a JSON integer beyond float64
        raise ValueError(f"{source}: sorted_importance holds a number beyond float64 ({exc})") from exc
    f_alive = d.get("F_alive", imp.size)
    if isinstance(f_alive, bool) or not isinstance(f_alive, int) or f_alive != imp.size:
        raise ValueError(f"{source}: F_alive = {f_alive!r} but sorted_importance has {imp.size} entries")
    if imp.size == 0:
        raise ValueError(f"{source}: sorted_importance is empty")
    alpha, notes = precise_alpha(d, imp.size, source)
    m = Measurement.from_importances(imp, alpha=alpha, source=source)
    return dataclasses.replace(m, notes=tuple(notes))


def load_measurement(path: str | os.PathLike[str], *, alive_threshold: float | None = None) -> Measurement:
    """Load a measurement from a FeatureStats file (``.safetensors``; latents alive above
    ``alive_threshold``, default :data:`DEFAULT_ALIVE_THRESHOLD`), a pyfloor Measurement JSON, or a
    published measurement JSON with ``F_alive``, ``avg_active`` and ``sorted_importance``. A JSON
    measurement is already thresholded: asking it for another threshold is a ValueError.

    Returns
    -------
    Measurement

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        For a file that is none of the three kinds, a bad field (named), or a threshold asked of a JSON measurement.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        threshold = DEFAULT_ALIVE_THRESHOLD if alive_threshold is None else alive_threshold
        return Measurement.from_stats(FeatureStats.load(path), alive_threshold=threshold, source=str(path))
    measurement = _load_measurement_json(path)
    if alive_threshold is not None and alive_threshold != measurement.alive_threshold:
        made = (
            "at an unrecorded threshold"
            if measurement.alive_threshold is None
            else (f"at {measurement.alive_threshold:g}")
        )
        raise ValueError(
            f"{path}: a JSON measurement counts its alive latents once, {made}; a different alive threshold "
            "needs the statistics file (stats.safetensors)"
        )
    return measurement


def _load_measurement_json(path: Path) -> Measurement:
    """A pyfloor Measurement JSON or a published measurement JSON."""
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ValueError(f"{path}: neither a .safetensors statistics file nor JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if d.get("format") == MEASUREMENT_FORMAT:
        return Measurement.from_dict(d)
    if "sorted_importance" in d and ({"avg_active", "alpha"} & d.keys()):
        return _from_published_json(d, str(path))
    raise ValueError(
        f"{path}: unrecognised JSON; expected a pyfloor Measurement or a published measurement with "
        "'F_alive', 'avg_active' (or 'alpha') and 'sorted_importance'"
    )
