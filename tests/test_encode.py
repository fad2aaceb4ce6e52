"""pyfloor.encode: the torch reference path of the fused encode + statistics."""

import numpy as np
import pytest
import torch
from rounding import assert_stats_agree, clear_inputs
from test_sae import random_sae

from pyfloor.encode import StatsAccumulator, encode_stats
from pyfloor.stats import FeatureStats

# float32 matmuls compared across batch shapes: .ci/run runs these again under other MKL code paths
pytestmark = pytest.mark.numerics


def dense_reference(x, sae, activation=None, k=None):
    """FeatureStats from the dense latents, computed in numpy."""
    if activation == "topk" and sae.activation != "topk":
        pre = sae.pre_activations(x.float())
        val, idx = torch.sort(pre, dim=-1, descending=True, stable=True)
        z = torch.zeros_like(pre).scatter_(-1, idx[..., :k], val[..., :k].clamp_min(0))
    else:
        z = sae.encode(x)
    return FeatureStats.from_activations(z.detach().reshape(-1, sae.n_latents).numpy())


def assert_stats_equal(a, b, rtol=1e-12):
    assert a.n_tokens == b.n_tokens and a.n_nonfinite == b.n_nonfinite
    np.testing.assert_array_equal(a.fire_count, b.fire_count)
    np.testing.assert_allclose(a.act_sum, b.act_sum, rtol=rtol)
    np.testing.assert_allclose(a.act_sq_sum, b.act_sq_sum, rtol=rtol)
    np.testing.assert_allclose(a.act_max, b.act_max, rtol=rtol)


@pytest.mark.parametrize("activation, k", [("relu", None), ("jumprelu", None), ("topk", 7)])
def test_reference_matches_dense_numpy(activation, k):
    sae = random_sae(activation=activation, k=k)
    x = torch.randn(3, 101, 12)
    stats, _ = encode_stats(x, sae)
    assert_stats_equal(stats, dense_reference(x, sae))


def test_chunking_changes_the_sums_only_within_float32_rounding():
    sae = random_sae(activation="topk", k=5)
    x = clear_inputs(sae, (333, 12), "topk", 5)
    whole = StatsAccumulator(sae, chunk_tokens=4096)
    whole.update(x)
    chunked = StatsAccumulator(sae, chunk_tokens=17)
    chunked.update(x)
    assert_stats_agree(chunked.result(), whole.result(), x, sae)


def test_the_same_batches_give_bit_identical_sums():
    sae = random_sae(activation="topk", k=5)
    x = torch.randn(333, 12)
    runs = []
    for _ in range(2):
        acc = StatsAccumulator(sae, chunk_tokens=17)
        for part in x.split(100):
            acc.update(part)
        runs.append(acc.result())
    assert runs[0] == runs[1]


def test_accumulating_batches_equals_one_batch():
    sae = random_sae()
    x = clear_inputs(sae, (200, 12), "relu")
    acc = StatsAccumulator(sae)
    for part in x.split(37):
        acc.update(part)
    assert_stats_agree(acc.result(), encode_stats(x, sae)[0], x, sae)


def test_topk_mode_on_relu_sae():
    sae = random_sae()
    x = torch.randn(64, 12)
    stats, codes = encode_stats(x, sae, activation="topk", k=3, want_codes=True)
    assert_stats_equal(stats, dense_reference(x, sae, activation="topk", k=3))
    idx, val = codes.rows(3)
    assert idx.shape == (64, 3)


@pytest.mark.parametrize("activation, k", [("relu", None), ("topk", 6)])
def test_codes_rebuild_the_dense_latents(activation, k):
    sae = random_sae(activation=activation, k=k)
    x = torch.randn(90, 12)
    _, codes = encode_stats(x, sae, want_codes=True)
    z = sae.encode(x)
    rebuilt = torch.zeros_like(z)
    rows = torch.repeat_interleave(torch.arange(90), codes.offsets.diff())
    rebuilt[rows, codes.indices] = codes.values
    torch.testing.assert_close(rebuilt, z)


@pytest.mark.parametrize("activation, k", [("relu", None), ("topk", 4)])
def test_nonfinite_rows_are_counted_and_excluded(activation, k):
    sae = random_sae(activation=activation, k=k)
    x = clear_inputs(sae, (50, 12), activation, k)
    bad = x.clone()
    bad[3, 0] = float("nan")
    bad[10, 5] = float("inf")
    bad[11, 2] = float("-inf")
    stats, codes = encode_stats(bad, sae, want_codes=True)
    keep = torch.ones(50, dtype=torch.bool)
    keep[[3, 10, 11]] = False
    clean, _ = encode_stats(x[keep], sae)
    assert stats.n_nonfinite == 3 and stats.n_tokens == 47
    assert_stats_agree(stats, clean, x[keep], sae)
    counts = codes.offsets.diff()
    if activation == "topk":
        idx, _ = codes.rows(4)
        assert torch.all(idx[~keep] == -1) and torch.all(idx[keep] >= 0)
    else:
        assert torch.all(counts[~keep] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_upcast(dtype):
    sae = random_sae()
    x = torch.randn(40, 12).to(dtype)
    stats, _ = encode_stats(x, sae)
    assert_stats_equal(stats, dense_reference(x.float(), sae))


def test_empty_accumulator_and_batch():
    sae = random_sae()
    acc = StatsAccumulator(sae)
    assert acc.result() == FeatureStats.empty(40)
    acc.update(torch.zeros(0, 12))
    assert acc.result().n_tokens == 0


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda s: encode_stats(torch.randn(4, 11), s), ValueError, "d_in = 12"),
        (
            lambda s: encode_stats(torch.randn(4, 12, dtype=torch.float64), s),
            ValueError,
            "float32, float16 or bfloat16",
        ),
        (lambda s: encode_stats(torch.randn(4, 12), s, activation="topk", k=41), ValueError, "k <= n_latents"),
        (lambda s: encode_stats(torch.randn(4, 12), s, activation="topk"), ValueError, "k <= n_latents"),
        (lambda s: encode_stats(torch.randn(4, 12), s, k=3), ValueError, "only meaningful for the top-k"),
        (lambda s: encode_stats(torch.randn(4, 12), s, activation="jumprelu"), ValueError, "thresholds"),
        (lambda s: encode_stats(np.zeros((4, 12), np.float32), s), TypeError, "torch.Tensor"),
        (lambda s: StatsAccumulator(s, backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call(random_sae())
