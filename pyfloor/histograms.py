"""Streaming, exact, mergeable log-binned histograms of activations (the face of ``pyfloor._hist``).

Binning
-------
A :class:`Binning` ``(mantissa_bits=p, lo, hi)`` keeps p mantissa bits of each float: the positive
log bins are ``[2^e·(1 + j/2^p), 2^e·(1 + (j+1)/2^p))`` for ``e`` in ``[lo, hi)`` and ``j`` in
``[0, 2^p)``, so no bin is wider than ``2^-p`` of its lower edge, at any magnitude (what keeps heavy
tails accurate). Negative values get the mirror-image bins by magnitude. The C++ core finds a bin
from the float's bits (exponent and top mantissa bits), with no logarithm. Besides the log bins,
exact counters hold zero (+0 and -0), NaN, ±inf, and per sign the underflow ``0 < |x| < 2^lo``
(denormals included) and overflow ``2^hi <= |x| < inf``. The counters of a histogram, in value
order (``n_log = (hi - lo)·2^p`` log bins per sign)::

    -inf | -overflow | negative log bins (largest magnitude first) | -underflow | zero
         | +underflow | positive log bins (smallest first) | +overflow | +inf | NaN

``n_bins = 2·n_log + 8`` int64 counters. :meth:`Binning.bin_bounds` gives each counter's interval.

Quantiles
---------
``quantile(q)`` is the value of rank ``max(1, ceil(q·n))`` among the ``n`` non-NaN values (numpy's
``method="inverted_cdf"``), estimated as the middle of its log bin: the relative error is at most
half the bin width, ``2^-(p+1)`` (0.78 % at p = 6, 6.25 % at p = 3). Zero and ±inf come out exact.
A quantile that falls in an underflow or overflow counter is only known to lie beyond the range;
it is reported as the range's edge (±2^lo or ±2^hi), and ``quantile_interval`` gives the exact
interval for every case.

Exactness and merging
---------------------
Counts are int64 and exact: ``merge(fill(a), fill(b)) == fill(a ∪ b)`` for any split of the data,
across batches, processes and resumed runs. ``to_dict`` gives plain numpy arrays (``counts`` can be
summed by ``torch.distributed.all_reduce``; ``binning`` must be equal on every rank) and pickling
round-trips exactly.

Inputs and threads
------------------
Values are float32, float16 or bfloat16 numpy arrays or CPU torch tensors, read in place (never
converted or copied); bfloat16 comes as a torch bfloat16 tensor, an ``ml_dtypes`` bfloat16 array, or
uint16 bits with ``bfloat16=True``. Arrays must be C-contiguous, aligned and in native byte order.
``threads`` (default 1) std::threads fill private histograms that are added at the end, with the
GIL released. Bad input raises TypeError (dtype) or ValueError (shape, layout, index out of range)
before anything is counted.

Instruction sets
----------------
The fills' vectorised passes are compiled for AVX-512 (``x86-64-v4``), AVX2 (``x86-64-v3``) and the
baseline, and run at the best level the CPU supports; every level gives the same counts. The
environment variable ``PYFLOOR_SIMD`` (read when ``pyfloor._hist`` is first imported) or
:func:`at_simd_level` runs them at a lower level, so each path can be tested and timed on one machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks
from .render import figure_path, finish_figure, new_axes
from .stats import DEFAULT_ALIVE_THRESHOLD, FeatureStats

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from matplotlib.axes import Axes

    class _CoreCounts(Protocol):
        """What both C++ histogram classes of ``pyfloor._hist`` (csrc/binding.cpp) share."""

        @property
        def counts(self) -> NDArray[np.int64]: ...
        @property
        def mantissa_bits(self) -> int: ...
        @property
        def lo(self) -> int: ...
        @property
        def hi(self) -> int: ...
        def add(self, other: _CoreCounts) -> None: ...

    class _CoreHistogram(_CoreCounts, Protocol):
        """``pyfloor._hist.Histogram``."""

        def fill(self, values: NDArray[Any], *, bfloat16: bool = False, threads: int = 1) -> None: ...

    class _CoreFeatureHistograms(_CoreCounts, Protocol):
        """``pyfloor._hist.FeatureHistograms``."""

        @property
        def n_features(self) -> int: ...
        def fill_sparse(
            self, indices: NDArray[Any], values: NDArray[Any], *, bfloat16: bool = False, threads: int = 1
        ) -> None: ...
        def fill_dense(self, values: NDArray[Any], *, bfloat16: bool = False, threads: int = 1) -> None: ...

    class _CoreModule(Protocol):
        """The C++ extension ``pyfloor._hist``, which ships no stub: the part this module calls."""

        def build_info(self) -> dict[str, int | str]: ...
        def set_simd_level(self, level: str) -> None: ...
        def Histogram(self, mantissa_bits: int, lo: int, hi: int) -> _CoreHistogram: ...
        def FeatureHistograms(
            self, n_features: int, mantissa_bits: int, lo: int, hi: int
        ) -> _CoreFeatureHistograms: ...

    _hist: _CoreModule
else:
    from . import _hist

__all__ = [
    "Binning",
    "Histogram",
    "FeatureHistograms",
    "FiringDensity",
    "firing_density",
    "DENSE_BINNING",
    "FEATURE_BINNING",
    "SIMD_LEVELS",
    "simd_levels",
    "simd_level",
    "at_simd_level",
]

#: The instruction-set levels the fill kernels are compiled for, lowest first.
SIMD_LEVELS: tuple[str, ...] = ("baseline", "x86-64-v3", "x86-64-v4")


def simd_levels() -> tuple[str, ...]:
    """The levels of :data:`SIMD_LEVELS` this CPU (and this build) can run, lowest first."""
    best = str(_hist.build_info()["simd_supported"])
    return SIMD_LEVELS[: SIMD_LEVELS.index(best) + 1]


def simd_level() -> str:
    """The level the fill kernels run at now."""
    return str(_hist.build_info()["simd"])


@contextlib.contextmanager
def at_simd_level(level: str) -> Iterator[None]:
    """Run the fill kernels at ``level`` (one of :func:`simd_levels`) inside the ``with`` block.

    The level is process-wide: fills on other threads meanwhile run at it too. ValueError for a
    level this CPU cannot run.
    """
    previous = simd_level()
    _hist.set_simd_level(level)
    try:
        yield
    finally:
        _hist.set_simd_level(previous)


class Binning(NamedTuple):
    """Log binning with relative bin width ``2^-mantissa_bits`` over magnitudes ``[2^lo, 2^hi)``.

    ``0 <= mantissa_bits <= 10`` and ``-126 <= lo < hi <= 128``.
    """

    mantissa_bits: int
    lo: int
    hi: int

    @property
    def relative_width(self) -> float:
        """Largest bin width relative to the bin's lower edge, ``2^-p``."""
        return 2.0**-self.mantissa_bits

    @property
    def n_log(self) -> int:
        """Log bins per sign, ``(hi - lo)·2^p``."""
        return (self.hi - self.lo) << self.mantissa_bits

    @property
    def n_bins(self) -> int:
        """Counters per histogram, ``2·n_log + 8``."""
        return 2 * self.n_log + 8

    @property
    def zero(self) -> int:
        """Index of the zero counter (the layout is symmetric about it)."""
        return self.n_log + 3

    @property
    def nan(self) -> int:
        """Index of the NaN counter (the last)."""
        return self.n_bins - 1

    @property
    def positive(self) -> slice:
        """The positive log bins, smallest first."""
        return slice(self.zero + 2, self.zero + 2 + self.n_log)

    @property
    def negative(self) -> slice:
        """The negative log bins, smallest magnitude first (a reversed view of the layout)."""
        return slice(self.zero - 2, 1, -1)

    def edges(self) -> NDArray[np.float64]:
        """The ``n_log + 1`` edges of the positive log bins, ``2^lo`` … ``2^hi`` (exact)."""
        p = self.mantissa_bits
        j = np.arange(self.n_log + 1, dtype=np.int64)
        return np.ldexp(1.0 + (j % (1 << p)) / (1 << p), (self.lo + (j >> p)).astype(np.int32))

    def bin_bounds(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(lower, upper)`` of every counter: its values ``x`` satisfy ``lower <= x <= upper``.

        Log bins are half-open by magnitude (``[a, b)`` for positive, ``(-b, -a]`` for negative),
        so ``upper`` (``lower`` for negative bins) is itself not reached; NaN gets ``(nan, nan)``.
        """
        e = self.edges()
        tiny, big = 2.0**self.lo, 2.0**self.hi
        lower = np.concatenate([[-np.inf, -np.inf], -e[:0:-1], [-tiny, 0.0, 0.0], e[:-1], [big, np.inf, np.nan]])
        upper = np.concatenate([[-np.inf, -big], -e[-2::-1], [0.0, 0.0, tiny], e[1:], [np.inf, np.inf, np.nan]])
        return lower, upper

    def bin_values(self) -> NDArray[np.float64]:
        """The value that stands for each counter: a log bin's middle, 0, ±inf, the range edge
        for under- and overflow (±2^lo, ±2^hi), NaN for NaN."""
        lower, upper = self.bin_bounds()
        mid = (lower + upper) / 2
        mid[[0, self.nan - 1]] = -np.inf, np.inf
        mid[[1, self.nan - 2]] = -(2.0**self.hi), 2.0**self.hi
        mid[[self.zero - 1, self.zero + 1]] = -(2.0**self.lo), 2.0**self.lo
        mid[self.zero] = 0.0
        return mid

    def to_array(self) -> NDArray[np.int64]:
        """``[mantissa_bits, lo, hi]`` as int64 (the form :meth:`to_dict` methods store)."""
        return np.array(self, dtype=np.int64)

    @classmethod
    def from_array(cls, a: ArrayLike) -> Binning:
        """Inverse of :meth:`to_array`."""
        v = np.asarray(a).ravel()
        if v.size != 3 or not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"binning must be 3 integers [mantissa_bits, lo, hi]; got {v!r}")
        p, lo, hi = (int(x) for x in v)
        if not (0 <= p <= 10 and -126 <= lo < hi <= 128):
            raise ValueError(
                f"binning [mantissa_bits, lo, hi] = [{p}, {lo}, {hi}] needs 0 <= mantissa_bits <= 10 and "
                "-126 <= lo < hi <= 128"
            )
        return cls(p, lo, hi)


#: Default for :class:`Histogram`: 1.6 % bins (quantiles within 0.78 %) over every normal float32;
#: 32,520 counters, 254 KiB.
DENSE_BINNING = Binning(mantissa_bits=6, lo=-126, hi=128)
#: Default for :class:`FeatureHistograms`: 12.5 % bins (quantiles within 6.25 %) over
#: [2^-10, 2^10) ≈ [0.001, 1024); 328 counters = 2,624 bytes per feature (86 MB at 32,768
#: features, 344 MB at 131,072).
FEATURE_BINNING = Binning(mantissa_bits=3, lo=-10, hi=10)


# -- inputs -------------------------------------------------------------------------------------


def _as_array(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """``x`` as a numpy array sharing its memory, and whether it holds bfloat16 bits."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise TypeError(f"{name} is on {x.device}; histograms read CPU memory (use tensor.cpu())")
        x = x.detach()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy(), True
        return x.numpy(), False
    arr = np.asarray(x)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return arr.view(np.uint16), True
    return arr, False


def _values(x: Any, bfloat16: bool) -> tuple[np.ndarray, bool]:
    arr, is_bf16 = _as_array(x, "values")
    return arr, bfloat16 or is_bf16


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# -- quantiles ----------------------------------------------------------------------------------


_QUANTILE_ROWS = 4096  # rows of counts whose cumulative sums are held at once


def _quantile_bins(counts: NDArray[np.int64], q: NDArray[np.float64]) -> NDArray[np.int64]:
    """Counter holding the rank-``max(1, ceil(q·n))`` non-NaN value of each row of ``counts``
    ([rows, n_bins]); shape ``q.shape + (rows,)``, -1 where a row has no non-NaN value."""
    if np.any(~((q >= 0) & (q <= 1))):
        raise ValueError(f"quantiles must lie in [0, 1]; got {q}")
    out = np.empty(q.shape + (counts.shape[0],), dtype=np.int64)
    flat_q = q.reshape(-1)
    for start in range(0, counts.shape[0], _QUANTILE_ROWS):
        cum = np.cumsum(counts[start : start + _QUANTILE_ROWS, :-1], axis=1)  # the last counter is NaN
        n = cum[:, -1]
        for k, qk in enumerate(flat_q):
            rank = np.maximum(np.ceil(qk * n), 1)
            found = np.argmax(cum >= rank[:, None], axis=1)
            out.reshape(flat_q.size, -1)[k, start : start + cum.shape[0]] = np.where(n > 0, found, -1)
    return out


def _lookup(table: NDArray[np.float64], bins: NDArray[np.int64]) -> NDArray[np.float64]:
    """``table[bins]`` with NaN where ``bins`` is -1."""
    return np.where(bins >= 0, table[np.maximum(bins, 0)], np.nan)


# -- plotting -----------------------------------------------------------------------------------


def _display_bins_per_octave(binning: Binning, counts: NDArray[np.int64], bins_per_octave: int | None) -> int:
    """Bins per octave to draw: ``bins_per_octave`` (a power of two up to the binning's ``2^p``),
    or by default the finest whose bins hold about 200 values on average over the occupied octaves,
    so that a short run does not draw mostly empty, spiky bins."""
    native = 1 << binning.mantissa_bits
    if bins_per_octave is not None:
        b = int(bins_per_octave)
        if b < 1 or b > native or b & (b - 1):
            raise ValueError(f"bins_per_octave must be a power of two from 1 to {native}; got {bins_per_octave!r}")
        return b
    logs = counts[binning.positive] + counts[binning.negative]
    octaves = int(np.count_nonzero(logs.reshape(-1, native).sum(axis=1)))
    if octaves == 0:
        return native
    target = int(logs.sum()) / (200.0 * octaves)
    return int(min(native, max(1, 2 ** math.floor(math.log2(target))))) if target >= 1 else 1


def _plot_magnitudes(
    ax: Axes, binning: Binning, counts: NDArray[np.int64], label: str, bins_per_octave: int | None = None
) -> None:
    """Step plot of the density of log10|x| (share of all values per decade), positive and
    negative values apart, at :func:`_display_bins_per_octave`; the x axis spans the occupied bins."""
    group = (1 << binning.mantissa_bits) // _display_bins_per_octave(binning, counts, bins_per_octave)
    e = binning.edges()[::group]
    per_decade = 1.0 / (max(int(counts.sum()), 1) * np.log10(e[1:] / e[:-1]))
    occupied: list[float] = []
    for sign, part in (("+", binning.positive), ("−", binning.negative)):
        c = counts[part].reshape(-1, group).sum(axis=1)
        if c.any():
            density = c * per_decade
            ax.stairs(np.where(c > 0, density, np.nan), e, label=f"{label} {sign}".strip(), lw=1.2)
            nz = np.flatnonzero(c)
            occupied += [e[nz[0]], e[nz[-1] + 1]]
    if occupied:
        ax.set_xlim(min(occupied) / 2, max(occupied) * 2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|value|")
    ax.set_ylabel("share of values per decade of |value|")


def _legend(ax: Axes, title: str | None = None) -> None:
    """The Axes' legend at its best place, with ``title`` (a block of counts) left-aligned; a
    title an earlier call put there stays, above the new one."""
    previous = ax.get_legend()
    old = previous.get_title().get_text() if previous is not None else ""
    if title and old and title not in old:
        title = f"{old}\n{title}"
    elif not title:
        title = old or None
    if ax.get_legend_handles_labels()[0] or title:
        ax.legend(title=title, fontsize=8, title_fontsize=8, alignment="left", loc="best", framealpha=0.9)


# -- histograms ---------------------------------------------------------------------------------


_C = TypeVar("_C", bound="_Counts")


class _Counts:
    """What both histogram kinds share: an int64 count array in a C++ object ``_h``, its binning,
    and merging, equality and plain-data round-trips."""

    _h: _CoreCounts

    @property
    def binning(self) -> Binning:
        """The :class:`Binning`."""
        return Binning(self._h.mantissa_bits, self._h.lo, self._h.hi)

    def _check_compatible(self, other: _Counts) -> None:
        """Raise ValueError unless ``other`` has the same shape and binning."""
        if other._h.counts.shape != self._h.counts.shape or other.binning != self.binning:
            raise ValueError(f"cannot merge {self!r} and {other!r}: shapes or binnings differ")

    @property
    def counts(self) -> NDArray[np.int64]:
        """Read-only int64 view of the counters: [n_bins] (layout in the module docstring), or
        [n_features, n_bins]."""
        return _readonly(self._h.counts)

    def copy(self: _C) -> _C:
        """A deep copy."""
        out = type(self)._empty_like(self.binning, self._h.counts)
        out._h.add(self._h)
        return out

    def merge(self: _C, *others: _C) -> _C:
        """The histogram(s) of all values filled into this object and ``others`` (same shape and binning)."""
        out = self.copy()
        for other in others:
            out += other
        return out

    def __add__(self: _C, other: _C) -> _C:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.merge(other)

    def __iadd__(self: _C, other: _C) -> _C:
        if not isinstance(other, type(self)):
            return NotImplemented
        self._check_compatible(other)
        self._h.add(other._h)
        return self

    def __eq__(self, other: object) -> bool:
        """Same shape, binning and every count equal."""
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.binning == other.binning and np.array_equal(self._h.counts, other._h.counts)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, NDArray[np.int64]]:
        """``{"counts": int64 copy of the counters, "binning": int64 [mantissa_bits, lo, hi]}``:
        plain arrays, e.g. to all-reduce with torch.distributed (sum the counts)."""
        return {"counts": self._h.counts.copy(), "binning": self.binning.to_array()}

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, ArrayLike]) -> _C:
        """Inverse of :meth:`to_dict` (numpy arrays or anything ``np.asarray`` takes)."""
        binning, counts = _unpack(d, cls.__name__)
        out = cls._empty_like(binning, counts)
        _set_counts(out._h.counts, counts, cls.__name__)
        return out

    @classmethod
    def _empty_like(cls: type[_C], binning: Binning, counts: np.ndarray) -> _C:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, NDArray[np.int64]]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, NDArray[np.int64]]) -> None:
        self._h = type(self).from_dict(state)._h


class Histogram(_Counts):
    """One log-binned histogram over all values filled (see the module docstring).

    ``Histogram()`` uses :data:`DENSE_BINNING` (254 KiB). Memory is ``n_bins × 8`` bytes, plus,
    during a fill of more than ``4·n_bins`` values, ``n_bins × 24`` bytes per thread.
    """

    _h: _CoreHistogram

    def __init__(
        self, mantissa_bits: int = DENSE_BINNING.mantissa_bits, lo: int = DENSE_BINNING.lo, hi: int = DENSE_BINNING.hi
    ) -> None:
        self._h = _hist.Histogram(mantissa_bits, lo, hi)

    @property
    def total(self) -> int:
        """Values counted, NaN included."""
        return int(self._h.counts.sum())

    def counters(self) -> dict[str, int]:
        """The exact counts outside the log bins: zero, NaN, ±inf, under- and overflow."""
        c, b = self._h.counts, self.binning
        return {
            "-inf": int(c[0]),
            "-overflow": int(c[1]),
            "-underflow": int(c[b.zero - 1]),
            "zero": int(c[b.zero]),
            "+underflow": int(c[b.zero + 1]),
            "+overflow": int(c[b.nan - 2]),
            "+inf": int(c[b.nan - 1]),
            "nan": int(c[b.nan]),
        }

    def fill(self, values: ArrayLike, *, bfloat16: bool = False, threads: int = 1) -> Histogram:
        """Count every value of ``values`` (any shape; float32/float16/bfloat16); returns self."""
        arr, bf16 = _values(values, bfloat16)
        self._h.fill(arr, bfloat16=bf16, threads=threads)
        return self

    # -- statistics -----------------------------------------------------------------------------
    def quantile(self, q: ArrayLike) -> float | NDArray[np.float64]:
        """Quantile(s) ``q`` in [0, 1] of the non-NaN values, within relative error ``2^-(p+1)``."""
        return self._quantile(q, self.binning.bin_values())[0]

    def quantile_interval(self, q: ArrayLike) -> tuple[float | NDArray[np.float64], float | NDArray[np.float64]]:
        """``(lower, upper)``: the exact bounds of quantile(s) ``q`` (those of its counter)."""
        lower, upper = self._quantile(q, *self.binning.bin_bounds())
        return lower, upper

    def _quantile(self, q: ArrayLike, *tables: NDArray[np.float64]) -> tuple[float | NDArray[np.float64], ...]:
        """Each table's entry at the bin of quantile(s) ``q`` (a float for a scalar ``q``)."""
        qa = np.asarray(q, dtype=np.float64)
        bins = _quantile_bins(self._h.counts[None, :], qa)[..., 0]
        if np.any(bins < 0):
            raise ValueError("the histogram holds no non-NaN values")
        return tuple(float(t[bins]) if qa.ndim == 0 else t[bins] for t in tables)

    def __repr__(self) -> str:
        b = self.binning
        return f"Histogram(mantissa_bits={b.mantissa_bits}, lo={b.lo}, hi={b.hi}, total={self.total:,})"

    @classmethod
    def _empty_like(cls, binning: Binning, counts: np.ndarray) -> Histogram:
        return cls(*binning)

    # -- plot -----------------------------------------------------------------------------------
    def counters_text(self, label: str = "") -> str:
        """The exact counters outside the log bins as a few lines of text: values counted, zero,
        NaN and ±inf always, under- and overflow where any."""
        c = self.counters()
        lines = [
            f"{label or 'values'}: {self.total:,}",
            f"zero: {c['zero']:,}   NaN: {c['nan']:,}",
            f"+inf: {c['+inf']:,}   −inf: {c['-inf']:,}",
        ]
        b = self.binning
        under, over = c["+underflow"] + c["-underflow"], c["+overflow"] + c["-overflow"]
        if under:
            lines.append(f"|value| < 2^{b.lo}: {under:,}")
        if over:
            lines.append(f"|value| ≥ 2^{b.hi}: {over:,}")
        return "\n".join(lines)

    def plot(
        self,
        ax: Axes | None = None,
        *,
        label: str = "",
        title: str | None = None,
        bins_per_octave: int | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> Axes:
        """Log-log step plot of the density of log10|value| (positive and negative values apart).

        Draws into ``ax`` (else a new figure) and returns that Axes. The exact counters (zero, NaN,
        ±inf, under/overflow: :meth:`counters_text`) head the legend, so a ``title`` (default: the
        number of values) never hides them. ``bins_per_octave``: a power of two up to
        ``2^mantissa_bits`` (default: coarser bins for few values). ``path`` saves the figure,
        its format from the suffix (``.png``, ``.pdf``, ``.svg``)."""
        out = figure_path(path)
        ax, created = new_axes(ax)
        _plot_magnitudes(ax, self.binning, self._h.counts, label, bins_per_octave)
        ax.set_title(f"{self.total:,} values" if title is None else title)
        _legend(ax, self.counters_text(label))
        return finish_figure(ax, out, created)


class FeatureHistograms(_Counts):
    """One log-binned histogram per feature, from sparse codes or dense [N, m] arrays.

    ``FeatureHistograms(m)`` uses :data:`FEATURE_BINNING`: 328 counters, 2,624 bytes per feature
    (86 MB at m = 32,768; 344 MB at m = 131,072). Memory is ``m × n_bins × 8`` bytes (tables of
    2 MiB or more on huge pages, rounded up to 2 MiB). A sparse fill of at least ``m × n_bins``
    pairs, or on more than one thread, counts into one-byte tables first (``m × n_bins`` bytes per
    thread for the call; a counter that wraps past 255 is logged and added back exactly), and starts
    ``t`` threads only for calls of at least ``t × max(65,536, m × n_bins / 8)`` pairs; a dense fill
    splits the features between threads and needs no copies.
    """

    _h: _CoreFeatureHistograms

    def __init__(
        self,
        n_features: int,
        mantissa_bits: int = FEATURE_BINNING.mantissa_bits,
        lo: int = FEATURE_BINNING.lo,
        hi: int = FEATURE_BINNING.hi,
    ) -> None:
        self._h = _hist.FeatureHistograms(_checks.count(n_features, "n_features", minimum=1), mantissa_bits, lo, hi)

    @property
    def n_features(self) -> int:
        """Number of features m."""
        return int(self._h.n_features)

    @property
    def n_values(self) -> NDArray[np.int64]:
        """Values counted per feature, NaN included."""
        n: NDArray[np.int64] = self._h.counts.sum(axis=1)
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of counters."""
        return int(self._h.counts.nbytes)

    def fill(
        self, indices: ArrayLike, values: ArrayLike, *, bfloat16: bool = False, threads: int = 1
    ) -> FeatureHistograms:
        """Count sparse codes: ``values[n, j]`` into feature ``indices[n, j]``; returns self.

        ``indices`` is int32/int64 [N, k] with entries in ``[0, n_features)``; ``values`` has the
        same shape. Only the listed pairs are counted (for a top-k SAE: the k selected latents of
        each token). An index out of range raises ValueError naming it and counts nothing.
        """
        idx, _ = _as_array(indices, "indices")
        arr, bf16 = _values(values, bfloat16)
        self._h.fill_sparse(idx, arr, bfloat16=bf16, threads=threads)
        return self

    def fill_dense(self, values: ArrayLike, *, bfloat16: bool = False, threads: int = 1) -> FeatureHistograms:
        """Count a dense [N, n_features] array, column j into feature j; returns self."""
        arr, bf16 = _values(values, bfloat16)
        self._h.fill_dense(arr, bfloat16=bf16, threads=threads)
        return self

    # -- statistics -----------------------------------------------------------------------------
    def quantile(self, q: ArrayLike) -> NDArray[np.float64]:
        """Per-feature quantile(s) ``q`` of the non-NaN values, shape ``q.shape + (n_features,)``,
        within relative error ``2^-(p+1)``; NaN for a feature with no non-NaN value."""
        return _lookup(self.binning.bin_values(), _quantile_bins(self._h.counts, np.asarray(q, dtype=np.float64)))

    def quantile_interval(self, q: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(lower, upper)`` exact bounds of the per-feature quantile(s) ``q``."""
        bins = _quantile_bins(self._h.counts, np.asarray(q, dtype=np.float64))
        lower, upper = self.binning.bin_bounds()
        return _lookup(lower, bins), _lookup(upper, bins)

    def feature(self, i: int) -> Histogram:
        """A :class:`Histogram` holding a copy of feature ``i``'s counts."""
        if not 0 <= int(i) < self.n_features:
            raise IndexError(f"feature {i} is outside [0, {self.n_features})")
        return Histogram.from_dict({"counts": self._h.counts[int(i)], "binning": self.binning.to_array()})

    def __repr__(self) -> str:
        b = self.binning
        return (
            f"FeatureHistograms(n_features={self.n_features}, mantissa_bits={b.mantissa_bits}, lo={b.lo}, "
            f"hi={b.hi}, {self.nbytes / 2**20:,.1f} MiB)"
        )

    @classmethod
    def _empty_like(cls, binning: Binning, counts: np.ndarray) -> FeatureHistograms:
        if counts.ndim != 2:
            raise ValueError(f"FeatureHistograms counts must be 2-D [n_features, n_bins]; got shape {counts.shape}")
        if counts.shape[1] != binning.n_bins:  # checked before allocating n_features rows
            raise ValueError(
                f"FeatureHistograms counts have shape {counts.shape}; the binning needs (n_features, {binning.n_bins})"
            )
        return cls(counts.shape[0], *binning)

    # -- plot -----------------------------------------------------------------------------------
    def plot(
        self,
        features: Sequence[int],
        ax: Axes | None = None,
        *,
        title: str | None = None,
        bins_per_octave: int | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> Axes:
        """Overlay the value densities of the given features (see :meth:`Histogram.plot`); draws
        into ``ax`` (else a new figure), saves to ``path`` (format from its suffix) if given, and
        returns the Axes."""
        out = figure_path(path)
        ax, created = new_axes(ax)
        for i in features:
            _plot_magnitudes(ax, self.binning, self.feature(i)._h.counts, f"feature {i}", bins_per_octave)
        if title is not None:
            ax.set_title(title)
        _legend(ax)
        return finish_figure(ax, out, created)


def _unpack(d: Mapping[str, ArrayLike], kind: str) -> tuple[Binning, np.ndarray]:
    """The binning and counts of a ``to_dict`` dict, checked."""
    if not isinstance(d, Mapping):
        raise TypeError(f"{kind}.from_dict needs a mapping with counts and binning; got {type(d).__name__}")
    missing = [k for k in ("counts", "binning") if k not in d]
    if missing:
        raise ValueError(f"{kind} dict lacks {', '.join(missing)}")
    counts = np.asarray(d["counts"])
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"{kind} counts must be integers; got dtype {counts.dtype}")
    return Binning.from_array(d["binning"]), counts


def _set_counts(dst: np.ndarray, counts: np.ndarray, kind: str) -> None:
    if counts.shape != dst.shape:
        raise ValueError(f"{kind} counts have shape {counts.shape}; the binning needs {dst.shape}")
    if counts.size and counts.min() < 0:
        raise ValueError(f"{kind} counts must be non-negative")
    if counts.size and counts.max() > np.iinfo(np.int64).max:  # uint64 beyond int64 would wrap to negative
        raise ValueError(f"{kind} counts must fit int64; got {counts.max()}")
    dst[...] = counts


# -- firing density -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FiringDensity:
    """Histogram of log10 firing frequency over features: the plot that tells dead from rare.

    Attributes
    ----------
    edges:
        float64 [n + 1]: bin edges in log10(frequency), from ``floor(log10(1/n_tokens))`` to 0.
    counts:
        int64 [n]: features whose log10 frequency falls in each bin (the last bin includes 0).
    n_dead:
        Features that never fired (frequency 0), counted apart.
    n_alive:
        Features with frequency above ``alive_threshold`` (the paper's F).
    n_tokens, alive_threshold:
        Provenance.
    """

    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    n_dead: int
    n_alive: int
    n_tokens: int
    alive_threshold: float

    @property
    def n_features(self) -> int:
        """Features counted (dead included)."""
        return int(self.counts.sum()) + self.n_dead

    def plot(
        self, ax: Axes | None = None, *, title: str | None = None, path: str | os.PathLike[str] | None = None
    ) -> Axes:
        """Bar plot of the features per log10-frequency bin with the alive threshold as a dashed
        line; the feature, token, alive and dead counts head the legend (a ``title``, default
        "Firing frequency of SAE latents", never hides them). Draws into ``ax`` (else a new
        figure), saves to ``path`` (format from its suffix) if given, and returns the Axes."""
        out = figure_path(path)
        ax, created = new_axes(ax)
        ax.stairs(self.counts, self.edges, fill=True, alpha=0.7, color="C0", label="features per bin")
        ax.axvline(
            math.log10(self.alive_threshold),
            color="k",
            linestyle="--",
            linewidth=1,
            label=f"alive threshold {self.alive_threshold:g}",
        )
        ax.set_xlabel("log10 firing frequency (share of tokens where z > 0)")
        ax.set_ylabel("features per bin")
        ax.set_title("Firing frequency of SAE latents" if title is None else title)
        _legend(
            ax,
            f"{self.n_features:,} features, {self.n_tokens:,} tokens\n"
            f"{self.n_alive:,} alive, {self.n_dead:,} dead (never fired, not drawn)",
        )
        return finish_figure(ax, out, created)


def firing_density(
    stats: FeatureStats, *, bins_per_decade: int = 10, alive_threshold: float = DEFAULT_ALIVE_THRESHOLD
) -> FiringDensity:
    """The :class:`FiringDensity` of ``stats``: log10(fire_count / n_tokens) of every feature that
    fired, in ``bins_per_decade`` bins per decade; features that never fired go to ``n_dead``.
    TypeError unless ``stats`` is a FeatureStats; ValueError for statistics of no tokens."""
    if not isinstance(stats, FeatureStats):
        raise TypeError(f"stats must be a FeatureStats; got {type(stats).__name__}")
    _checks.count(bins_per_decade, "bins_per_decade", minimum=1)
    _checks.fraction(alive_threshold, "alive_threshold")
    if stats.n_tokens == 0:
        raise ValueError("the statistics hold no tokens; firing frequencies are undefined")
    fired = stats.fire_count > 0
    decades = max(1, math.ceil(math.log10(stats.n_tokens)))
    edges = np.linspace(-decades, 0.0, decades * int(bins_per_decade) + 1)
    log_freq = np.clip(np.log10(stats.frequency[fired]), edges[0], 0.0)  # 1/n_tokens may round below
    counts, _ = np.histogram(log_freq, bins=edges)
    return FiringDensity(
        edges=edges,
        counts=counts.astype(np.int64),
        n_dead=int(np.count_nonzero(~fired)),
        n_alive=int(np.count_nonzero(stats.frequency > alive_threshold)),
        n_tokens=stats.n_tokens,
        alive_threshold=float(alive_threshold),
    )
