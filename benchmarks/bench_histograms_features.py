"""Per-feature fill throughput: sparse top-k codes at N·k = 1e8 (index, value) pairs, and dense
[N, m] arrays of 1e8 values, into :class:`~pyfloor.histograms.FeatureHistograms` (default binning,
328 counters per feature).

The sparse codes have k = 64 per token and SAE-like features: firing frequencies spread over
decades (feature ids drawn with P(rank r) ∝ 1/r, then shuffled) and values exponential with a
log-normal scale per feature. Each pair increments one counter of an m × 328 int64 table, so
beyond a few thousand features the fill waits on cache misses, not on arithmetic.

As a script it prints a best-of-N table in G pairs/s::

    python benchmarks/bench_histograms_features.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pyfloor.histograms import SIMD_LEVELS, FeatureHistograms, at_simd_level, simd_levels

N_PAIRS = 100_000_000
K = 64


def sae_codes(
    n_features: int, n_pairs: int = N_PAIRS, k: int = K, seed: int = 0, chunk: int = 10_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """int32 indices and float32 values [n_pairs // k, k] of SAE-like sparse codes (see above)."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n_features).astype(np.int32)
    scale = rng.lognormal(0.0, 1.0, n_features).astype(np.float32)
    rows = n_pairs // k
    indices = np.empty(rows * k, dtype=np.int32)
    values = np.empty(rows * k, dtype=np.float32)
    for start in range(0, indices.size, chunk):
        size = min(chunk, indices.size - start)
        rank = np.minimum(np.float64(n_features) ** rng.random(size), n_features).astype(np.int64) - 1
        indices[start : start + size] = ids[rank]
        values[start : start + size] = rng.exponential(size=size).astype(np.float32) * scale[ids[rank]]
    return indices.reshape(rows, k), values.reshape(rows, k)


_CODES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def codes(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark codes for ``n_features``, made once per process."""
    if n_features not in _CODES:
        _CODES.clear()
        _CODES[n_features] = sae_codes(n_features)
    return _CODES[n_features]


class _OneShot:
    """asv settings of a fill that takes seconds: one call per sample, three samples, no warm-up."""

    param_names = ["n_features", "threads"]
    number = 1
    repeat = 3
    rounds = 1
    warmup_time = 0


class SparseFeatureFill(_OneShot):
    """Seconds to count 1e8 (index, value) pairs; G pairs/s = 0.1 / seconds."""

    params = ([1_024, 32_768, 131_072], [1, 2])
    timeout = 900

    def setup(self, n_features: int, threads: int) -> None:
        self.indices, self.values = codes(n_features)
        self.hist = FeatureHistograms(n_features)

    def time_fill(self, n_features: int, threads: int) -> None:
        self.hist.fill(self.indices, self.values, threads=threads)


class SparseFeatureFillAtLevel(_OneShot):
    """Seconds to count 1e8 pairs over 32,768 features on one thread, at each SIMD level of the fills."""

    params = [list(SIMD_LEVELS)]
    param_names = ["simd"]
    timeout = 900

    def setup(self, simd: str) -> None:
        if simd not in simd_levels():
            raise NotImplementedError(f"this CPU does not run {simd}")
        self.indices, self.values = codes(32_768)
        self.hist = FeatureHistograms(32_768)

    def time_fill(self, simd: str) -> None:
        with at_simd_level(simd):
            self.hist.fill(self.indices, self.values)


class DenseFeatureFill(_OneShot):
    """Seconds to count a dense [N, m] float32 array of ~1e8 values (Student-t, df = 2)."""

    params = ([1_024, 16_384], [1, 2])
    timeout = 600

    def setup(self, n_features: int, threads: int) -> None:
        rng = np.random.default_rng(0)
        self.values = rng.standard_t(2, (N_PAIRS // n_features, n_features)).astype(np.float32)
        self.hist = FeatureHistograms(n_features)

    def time_fill_dense(self, n_features: int, threads: int) -> None:
        self.hist.fill_dense(self.values, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts")
    args = parser.parse_args()
    for n_features in SparseFeatureFill.params[0]:
        indices, values = codes(n_features)
        for threads in SparseFeatureFill.params[1]:
            hist = FeatureHistograms(n_features)
            best = min(_seconds(lambda: hist.fill(indices, values, threads=threads)) for _ in range(args.repeat))
            print(
                f"sparse m={n_features:>7,} threads={threads}: {indices.size / best / 1e9:5.3f} G pairs/s "
                f"({hist.nbytes / 2**20:,.0f} MiB of counts)",
                flush=True,
            )


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
