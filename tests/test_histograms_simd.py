"""The histogram fills' instruction-set paths: every level this CPU runs gives the same counts as the
numpy reference, and a level it cannot run is refused by name. (``.ci/run`` also runs the whole
histogram suite once per level through ``PYFLOOR_SIMD``.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_histograms import reference_bins, reference_counts

from pyfloor.histograms import (
    FEATURE_BINNING,
    SIMD_LEVELS,
    FeatureHistograms,
    Histogram,
    at_simd_level,
    simd_level,
    simd_levels,
)


def _values(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Heavy-tailed values with zeros, ±inf, NaN, subnormals and huge magnitudes sprinkled in."""
    x = torch.randn(n) / torch.rand(n).clamp_min(1e-6) ** 2
    x[::97] = 0.0
    x[5::389] = float("inf")
    x[7::401] = float("-inf")
    x[11::409] = float("nan")
    x[13::211] = 1e-40
    return x.to(dtype)


@pytest.mark.parametrize("level", simd_levels())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_fills_at_every_level_match_reference(level, dtype):
    x = _values(3 * 2048 + 17, dtype)  # ragged: not a multiple of the block or of any vector width
    with at_simd_level(level):
        assert simd_level() == level
        h = Histogram().fill(x, threads=2)
    np.testing.assert_array_equal(h.counts, reference_counts(x.float().numpy(), h.binning))


@pytest.mark.parametrize("level", simd_levels())
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_feature_fills_at_every_level_match_reference(level, index_dtype):
    m, n, k = 37, 301, 5
    values = _values(n * k, torch.float32).reshape(n, k)
    indices = torch.randint(0, m, (n, k), dtype=index_dtype)
    dense = _values(n * m, torch.bfloat16).reshape(n, m)
    with at_simd_level(level):
        sparse = FeatureHistograms(m).fill(indices, values)
        rows = FeatureHistograms(m).fill_dense(dense)
    expected = np.zeros((m, FEATURE_BINNING.n_bins), dtype=np.int64)
    np.add.at(expected, (indices.numpy().ravel(), reference_bins(values.numpy().ravel(), FEATURE_BINNING)), 1)
    np.testing.assert_array_equal(sparse.counts, expected)
    expected = np.stack([reference_counts(col, FEATURE_BINNING) for col in dense.float().numpy().T])
    np.testing.assert_array_equal(rows.counts, expected)


def test_the_level_comes_back_after_the_block():
    before = simd_level()
    with pytest.raises(RuntimeError), at_simd_level("baseline"):
        raise RuntimeError
    assert simd_level() == before


@pytest.mark.parametrize("level", ["avx", "x86-64-v5", ""])
def test_unknown_levels_are_refused(level):
    with pytest.raises(ValueError, match="expected baseline, x86-64-v3 or x86-64-v4"):
        with at_simd_level(level):
            pass


@pytest.mark.skipif(len(simd_levels()) == len(SIMD_LEVELS), reason="this CPU runs every level")
def test_a_level_above_the_cpu_is_refused():
    with pytest.raises(ValueError, match="not supported by this CPU"):
        with at_simd_level(SIMD_LEVELS[-1]):
            pass


def _import_with(level: str) -> subprocess.CompletedProcess:
    code = "import pyfloor.histograms as h; print(h.simd_level())"
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYFLOOR_SIMD": level}, capture_output=True, text=True
    )


def test_the_environment_variable_picks_the_level():
    for level in simd_levels():
        run = _import_with(level)
        assert run.returncode == 0 and run.stdout.strip() == level, run.stderr
    run = _import_with("avx2")
    assert run.returncode != 0 and "PYFLOOR_SIMD=avx2: unknown SIMD level" in run.stderr
