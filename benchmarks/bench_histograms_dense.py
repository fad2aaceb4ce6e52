"""Dense fill throughput: one histogram over 1e8 heavy-tailed float32 values (Student-t, df = 2).

Every method reads the same array: pyfloor's :class:`~pyfloor.histograms.Histogram` (default
binning, 1.6 % log bins over all float32) on 1 and 2 threads, and on 1 thread at each lower SIMD
level this CPU runs (``pyfloor-1@x86-64-v3``, ``pyfloor-1@baseline``); numpy computing the same log-bin
index from the bits and counting it with ``np.bincount``; ``np.bincount`` alone on precomputed
indices; boost-histogram (``threads=1``) and fast-histogram with 100 regular bins on [-10, 10)
(their fastest axis); ``np.sum`` over the array; and ``np.max``, the memory-read limit (a pure read:
``np.sum``'s pairwise float32 summation is slower than memory).

As a script it prints a best-of-N table in G values/s, all methods in one run::

    python benchmarks/bench_histograms_dense.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from pyfloor.histograms import DENSE_BINNING, SIMD_LEVELS, Histogram, at_simd_level, simd_levels

N_VALUES = 100_000_000


def student_t2(n: int, seed: int = 0, chunk: int = 10_000_000) -> np.ndarray:
    """float32 Student-t (df = 2) samples by its inverse CDF, (2u - 1) / sqrt(2u(1 - u))."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        u = np.maximum(rng.random(min(chunk, n - start), dtype=np.float32), np.float32(2**-25))  # u > 0
        np.divide(2 * u - 1, np.sqrt(2 * u * (1 - u)), out=out[start : start + u.size])
    return out


def numpy_log_bin_index(x: np.ndarray, mantissa_bits: int = DENSE_BINNING.mantissa_bits) -> np.ndarray:
    """pyfloor's log-bin index of finite float32 values, in numpy (sign, exponent and top mantissa
    bits; under/overflow, zero, inf and NaN are left out, as the benchmark data has none)."""
    bits = x.view(np.uint32)
    key = (bits & np.uint32(0x7FFFFFFF)) >> np.uint32(23 - mantissa_bits)
    return np.where(bits >> np.uint32(31), -key.astype(np.int64), key.astype(np.int64)) + (1 << (mantissa_bits + 8))


def methods() -> dict[str, Callable[[], Callable[[np.ndarray], object]]]:
    """Method name → factory of a fill function; a factory raises NotImplementedError when its
    package is missing (asv's skip)."""

    def pyfloor(threads: int) -> Callable[[], Callable[[np.ndarray], object]]:
        return lambda: lambda x: Histogram().fill(x, threads=threads)

    def pyfloor_at(level: str) -> Callable[[], Callable[[np.ndarray], object]]:
        def factory() -> Callable[[np.ndarray], object]:
            if level not in simd_levels():
                raise NotImplementedError(f"this CPU does not run {level}")

            def fill(x: np.ndarray) -> object:
                with at_simd_level(level):
                    return Histogram().fill(x)

            return fill

        return factory

    def boost() -> Callable[[np.ndarray], object]:
        try:
            import boost_histogram as bh
        except ImportError as exc:
            raise NotImplementedError("boost-histogram is not installed") from exc
        return lambda x: bh.Histogram(bh.axis.Regular(100, -10.0, 10.0)).fill(x, threads=1)

    def fast() -> Callable[[np.ndarray], object]:
        try:
            from fast_histogram import histogram1d
        except ImportError as exc:
            raise NotImplementedError("fast-histogram is not installed") from exc
        return lambda x: histogram1d(x, bins=100, range=(-10.0, 10.0))

    def bincount_only() -> Callable[[np.ndarray], object]:
        index: dict[int, np.ndarray] = {}  # the array's indices, computed on the first (untimed) call

        def fill(x: np.ndarray) -> object:
            if id(x) not in index:
                index[id(x)] = numpy_log_bin_index(x)
            return np.bincount(index[id(x)])

        return fill

    return {
        "pyfloor-1": pyfloor(1),
        "pyfloor-2": pyfloor(2),
        **{f"pyfloor-1@{level}": pyfloor_at(level) for level in SIMD_LEVELS[:-1]},
        "numpy-index+bincount": lambda: lambda x: np.bincount(numpy_log_bin_index(x)),
        "numpy-bincount-only": bincount_only,
        "boost-histogram-1": boost,
        "fast-histogram": fast,
        "numpy-sum": lambda: np.sum,
        "numpy-max": lambda: np.max,
    }


_DATA: dict[int, np.ndarray] = {}


def data(n: int = N_VALUES) -> np.ndarray:
    """The benchmark array, made once per process."""
    if n not in _DATA:
        _DATA.clear()
        _DATA[n] = student_t2(n)
    return _DATA[n]


class DenseFill:
    """Seconds to count 1e8 Student-t (df = 2) float32 values; G values/s = 0.1 / seconds."""

    params = [list(methods())]
    param_names = ["method"]
    number = 1
    repeat = 3
    rounds = 1
    warmup_time = 0
    timeout = 600

    def setup(self, method: str) -> None:
        self.fill = methods()[method]()
        self.x = data()
        if method == "numpy-bincount-only":
            self.fill(self.x)  # precompute the indices outside the timing

    def time_fill(self, method: str) -> None:
        self.fill(self.x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per method; the best counts")
    parser.add_argument("--n", type=int, default=N_VALUES, help="values in the array")
    args = parser.parse_args()
    x = data(args.n)
    print(f"{x.size:,} float32 Student-t (df = 2) values; best of {args.repeat}; pyfloor._hist {_simd()}")
    speed: dict[str, float] = {}
    for name, factory in methods().items():
        try:
            fill = factory()
        except NotImplementedError as exc:
            print(f"{name:24s} skipped: {exc}")
            continue
        if name == "numpy-bincount-only":
            fill(x)
        best = min(_seconds(fill, x) for _ in range(args.repeat))
        speed[name] = x.size / best / 1e9
        print(f"{name:24s} {speed[name]:6.2f} G values/s", flush=True)
    for threads in (1, 2):
        ours = speed[f"pyfloor-{threads}"]
        ratios = ", ".join(f"{ours / speed[k]:.1f}× {k}" for k in ("boost-histogram-1", "fast-histogram") if k in speed)
        print(f"pyfloor-{threads}: {ours / speed['numpy-max']:.0%} of the memory-read limit; {ratios}")


def _seconds(fill: Callable[[np.ndarray], object], x: np.ndarray) -> float:
    start = time.perf_counter()
    fill(x)
    return time.perf_counter() - start


def _simd() -> str:
    from pyfloor import _hist

    return str(_hist.build_info()["simd"])


if __name__ == "__main__":
    main()
