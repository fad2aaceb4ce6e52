"""Log-binned histograms (pyfloor.histograms over the C++ core): every count against a numpy reference
that derives bins from np.frexp, independently of the core's bit arithmetic."""

import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyfloor.histograms import FEATURE_BINNING, Binning, FeatureHistograms, Histogram

# -- the reference ------------------------------------------------------------------------------


def reference_bins(values, binning: Binning) -> np.ndarray:
    """Counter index of each value, from the documented layout: |v| = f·2^E (np.frexp), e = E - 1,
    log bin (e - lo)·2^p + floor((2f - 1)·2^p) for lo <= e < hi."""
    p, lo, hi = binning
    v = np.asarray(values, dtype=np.float64)
    n_log = (hi - lo) << p
    zero = n_log + 3
    mag = np.abs(v)
    with np.errstate(invalid="ignore"):
        f, big_e = np.frexp(np.where(np.isfinite(mag), mag, 1.0))
        e = big_e.astype(np.int64) - 1
        j = np.floor((2 * f - 1) * 2**p).astype(np.int64)
    c = np.where(e < lo, 1, np.where(e >= hi, n_log + 2, 2 + (e - lo) * 2**p + j))
    c = np.where(mag == 0, 0, c)
    c = np.where(np.isinf(mag), n_log + 3, c)
    out = np.where(np.signbit(v), zero - c, zero + c)
    return np.where(np.isnan(v), 2 * n_log + 7, out)


def reference_counts(values, binning: Binning) -> np.ndarray:
    return np.bincount(reference_bins(values, binning).ravel(), minlength=binning.n_bins)


def reference_feature_counts(indices, values, n_features: int, binning: Binning) -> np.ndarray:
    keys = np.asarray(indices, dtype=np.int64) * binning.n_bins + reference_bins(values, binning)
    return np.bincount(keys.ravel(), minlength=n_features * binning.n_bins).reshape(n_features, -1)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of bfloat16 bit patterns, converted by torch."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).double().numpy()


@st.composite
def binnings(draw, max_bits: int = 10) -> Binning:
    p = draw(st.integers(0, max_bits))
    lo = draw(st.integers(-126, 127))
    hi = draw(st.integers(lo + 1, min(128, lo + 40)))
    return Binning(p, lo, hi)


def edge_values(binning: Binning) -> list[float]:
    """Values on and one float32 ulp either side of some bin edges, and the range ends."""
    e = binning.edges()
    picks = np.concatenate([e[:3], e[len(e) // 2 : len(e) // 2 + 2], e[-3:]])
    picks = picks[picks < 2.0**128].astype(np.float32)
    near = np.concatenate([picks, np.nextafter(picks, np.float32(0)), np.nextafter(picks, np.float32(np.inf))])
    return [float(v) for v in np.concatenate([near, -near]) if np.isfinite(v)]


def float32_elements(binning: Binning):
    """Any float32, or one on a bin edge, a zero, the smallest denormal, ±inf or NaN."""
    return st.one_of(
        st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
        st.sampled_from(edge_values(binning) + [0.0, -0.0, 1e-45, -1e-45, float("inf"), float("-inf"), float("nan")]),
    )


def float32_arrays(binning: Binning, max_size: int = 300):
    return hnp.arrays(np.float32, st.integers(0, max_size), elements=float32_elements(binning))


def heavy_tailed(n: int, seed: int = 0) -> np.ndarray:
    """Student-t (df = 2) float32 with zeros, denormals, ±inf and NaN mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2, n).astype(np.float32)
    special = np.array([0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 3e38, -3e38], np.float32)
    x[rng.integers(0, n, n // 50)] = rng.choice(special, n // 50)
    return x


# -- dense fills ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_float32_counts_match_reference(data):
    binning = data.draw(binnings())
    x = data.draw(float32_arrays(binning))
    h = Histogram(*binning).fill(x)
    np.testing.assert_array_equal(h.counts, reference_counts(x, binning))


@settings(max_examples=80, deadline=None)
@given(binnings(), hnp.arrays(np.float16, st.integers(0, 300), elements=st.floats(width=16)))
def test_float16_counts_match_reference(binning, x):
    np.testing.assert_array_equal(Histogram(*binning).fill(x).counts, reference_counts(x, binning))


@settings(max_examples=80, deadline=None)
@given(binnings(), hnp.arrays(np.uint16, st.integers(0, 300)))
def test_bfloat16_bits_match_reference(binning, bits):
    h = Histogram(*binning).fill(bits, bfloat16=True)
    np.testing.assert_array_equal(h.counts, reference_counts(bfloat16_values(bits), binning))


@pytest.mark.parametrize("binning", [Binning(10, -126, 128), Binning(3, -20, 10), Binning(0, -14, 16)])
def test_every_16_bit_pattern(binning):
    """All 65,536 float16 and bfloat16 values: zeros, denormals, infinities, NaN payloads."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f16 = bits.view(np.float16)
    np.testing.assert_array_equal(Histogram(*binning).fill(f16).counts, reference_counts(f16, binning))
    np.testing.assert_array_equal(
        Histogram(*binning).fill(bits, bfloat16=True).counts, reference_counts(bfloat16_values(bits), binning)
    )


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("binning", [Binning(6, -126, 128), Binning(3, -10, 10), Binning(0, -1, 1)])
def test_large_fills_on_threads_match_reference(binning, threads):
    x = heavy_tailed(400_000)
    h = Histogram(*binning).fill(x.reshape(400, 1000), threads=threads)
    np.testing.assert_array_equal(h.counts, reference_counts(x, binning))


def test_torch_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    x = heavy_tailed(10_000)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.from_numpy(x).to(dtype)
        expected = reference_counts(t.double().numpy(), Histogram().binning)
        np.testing.assert_array_equal(Histogram().fill(t).counts, expected)
    with pytest.raises(ValueError, match="C-contiguous"):
        Histogram().fill(torch.from_numpy(x.reshape(100, 100)).t())


def test_ml_dtypes_bfloat16_arrays():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bits = np.arange(0, 1 << 16, 7, dtype=np.uint32).astype(np.uint16)
    arr = bits.view(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(Histogram().fill(arr).counts, Histogram().fill(bits, bfloat16=True).counts)


def test_bins_hold_their_values():
    """Each value lands in a counter whose bin_bounds contain it, at and around every kind of edge."""
    binning = Binning(3, -4, 4)
    lower, upper = binning.bin_bounds()
    values = np.array(edge_values(binning) + [0.0, 1e-40, -1e-40, 1e30, -1e30, np.inf, -np.inf], np.float32)
    middle = binning.bin_values()
    for v in values:
        (b,) = np.flatnonzero(Histogram(*binning).fill(np.array([v])).counts)
        assert lower[b] <= v <= upper[b], (v, b, lower[b], upper[b])
        if 2.0**binning.lo <= abs(v) < 2.0**binning.hi:
            assert abs(middle[b] - v) <= binning.relative_width / 2 * abs(v)


def test_layout_names():
    b = Binning(2, -1, 1)
    h = Histogram(*b).fill(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-3, -1e-3, 5.0, -5.0, 1.5], np.float32))
    assert h.counters() == {
        "-inf": 1,
        "-overflow": 1,
        "-underflow": 1,
        "zero": 2,
        "+underflow": 1,
        "+overflow": 1,
        "+inf": 1,
        "nan": 1,
    }
    assert h.counts[b.positive].sum() == 1 and h.counts[b.negative].sum() == 0
    assert h.total == 10
    assert b.n_bins == 2 * 8 + 8 and len(b.edges()) == b.n_log + 1
    np.testing.assert_array_equal(b.edges(), [0.5, 0.625, 0.75, 0.875, 1, 1.25, 1.5, 1.75, 2])


# -- merging and serialisation --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_merge_equals_fill_of_union(data):
    binning = data.draw(binnings(max_bits=6))
    x = data.draw(float32_arrays(binning))
    cut = data.draw(st.integers(0, x.size))
    a, b = Histogram(*binning).fill(x[:cut]), Histogram(*binning).fill(x[cut:])
    whole = Histogram(*binning).fill(x)
    assert a.merge(b) == whole and a + b == whole
    a += b
    assert a == whole
    assert Histogram(*binning).merge(Histogram(*binning).fill(x), Histogram(*binning)) == whole


def test_pickle_and_dict_round_trips_are_exact():
    h = Histogram().fill(heavy_tailed(50_000))
    for copy in (pickle.loads(pickle.dumps(h)), Histogram.from_dict(h.to_dict()), h.copy()):
        assert copy == h and copy is not h
    d = h.to_dict()
    assert set(d) == {"counts", "binning"} and d["counts"].dtype == np.int64 and d["binning"].dtype == np.int64
    f = FeatureHistograms(7).fill(np.arange(70, dtype=np.int64).reshape(10, 7) % 7, heavy_tailed(70).reshape(10, 7))
    for copy in (pickle.loads(pickle.dumps(f)), FeatureHistograms.from_dict(f.to_dict()), f.copy()):
        assert copy == f


def test_merge_refuses_other_binnings_and_types():
    with pytest.raises(ValueError, match="binnings"):
        Histogram(6) + Histogram(5)
    with pytest.raises(ValueError, match=r"cannot merge FeatureHistograms\(n_features=3.*n_features=4"):
        FeatureHistograms(3) + FeatureHistograms(4)
    with pytest.raises(TypeError):
        Histogram() + FeatureHistograms(3)  # type: ignore[operator]


@pytest.mark.parametrize(
    "d, match",
    [
        ({"counts": np.zeros(3, np.int64)}, "lacks binning"),
        ({"counts": np.zeros(3, np.int64), "binning": np.array([6, -126, 128])}, "shape"),
        ({"counts": np.zeros(24), "binning": np.array([2, -1, 1])}, "integers"),
        ({"counts": -np.ones(24, np.int64), "binning": np.array([2, -1, 1])}, "non-negative"),
        ({"counts": np.zeros(24, np.int64), "binning": np.array([2.0, -1, 1])}, "3 integers"),
    ],
)
def test_from_dict_rejects_corrupt_dicts(d, match):
    with pytest.raises(ValueError, match=match):
        Histogram.from_dict(d)


def test_counts_views_are_read_only():
    h = Histogram()
    with pytest.raises(ValueError):
        h.counts[0] = 1
    assert h.total == 0


def test_concurrent_fills_of_one_histogram_serialise():
    h = Histogram()
    x = heavy_tailed(200_000)
    workers = [threading.Thread(target=h.fill, args=(x,), kwargs={"threads": 2}) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    np.testing.assert_array_equal(h.counts, 4 * reference_counts(x, h.binning))


# -- quantiles --------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_quantiles_within_half_a_bin(data):
    binning = data.draw(binnings(max_bits=8))
    x = data.draw(float32_arrays(binning, max_size=200))
    x = x[~np.isnan(x)]
    if x.size == 0:
        return
    q = np.array(data.draw(st.lists(st.floats(0, 1), min_size=1, max_size=5)))
    h = Histogram(*binning).fill(x)
    truth = np.quantile(x.astype(np.float64), q, method="inverted_cdf")
    lower, upper = h.quantile_interval(q)
    assert np.all((lower <= truth) & (truth <= upper))
    in_log_bins = (2.0**binning.lo <= np.abs(truth)) & (np.abs(truth) < 2.0**binning.hi)
    err = np.abs(h.quantile(q)[in_log_bins] - truth[in_log_bins])
    assert np.all(err <= 2.0 ** -(binning.mantissa_bits + 1) * np.abs(truth[in_log_bins]))


def test_quantile_details():
    h = Histogram().fill(np.array([np.nan, 1.0, 2.0, 3.0, np.inf], np.float32))
    assert h.quantile(0) == pytest.approx(1.0, rel=2**-7) and h.quantile(1) == np.inf  # NaN left out, inf exact
    assert Histogram().fill(np.zeros(3, np.float32)).quantile(0.5) == 0.0
    assert isinstance(h.quantile(0.5), float) and h.quantile([0.5, 0.9]).shape == (2,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        h.quantile(1.5)
    with pytest.raises(ValueError, match="no non-NaN"):
        Histogram().fill(np.array([np.nan], np.float32)).quantile(0.5)


# -- per-feature histograms -------------------------------------------------------------------------


@st.composite
def sparse_codes(draw):
    binning = draw(binnings(max_bits=4))
    m = draw(st.integers(1, 40))
    n, k = draw(st.integers(0, 30)), draw(st.integers(1, 8))
    idx_dtype = draw(st.sampled_from([np.int32, np.int64]))
    indices = draw(hnp.arrays(idx_dtype, (n, k), elements=st.integers(0, m - 1)))
    values = draw(hnp.arrays(np.float32, (n, k), elements=float32_elements(binning)))
    return binning, m, indices, values


@settings(max_examples=100, deadline=None)
@given(sparse_codes())
def test_sparse_fill_matches_reference(codes):
    binning, m, indices, values = codes
    f = FeatureHistograms(m, *binning).fill(indices, values)
    np.testing.assert_array_equal(f.counts, reference_feature_counts(indices, values, m, binning))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n_features", [3, 700])
def test_large_sparse_fills_count_past_one_byte_exactly(threads, n_features):
    """Fills of at least m × n_bins pairs count in one-byte tables: bins hit hundreds of thousands of
    times must wrap and be added back exactly, on any number of threads."""
    rng = np.random.default_rng(threads * 1000 + n_features)
    n = 3 * max(65_536, n_features * FEATURE_BINNING.n_bins)  # enough for every thread to start
    indices = np.where(rng.random((n, 2)) < 0.5, 0, rng.integers(0, n_features, (n, 2))).astype(np.int32)
    values = np.where(rng.random((n, 2)) < 0.5, np.float32(1.0), rng.standard_t(2, (n, 2))).astype(np.float32)
    f = FeatureHistograms(n_features).fill(indices, values, threads=threads)
    expected = reference_feature_counts(indices, values, n_features, FEATURE_BINNING)
    assert expected.max() > 100_000  # the one bin (feature 0, value 1.0) wraps many times
    np.testing.assert_array_equal(f.counts, expected)
    bad = indices.copy()
    bad[-1, 1] = n_features
    with pytest.raises(ValueError, match="outside"):
        f.fill(bad, values, threads=threads)
    np.testing.assert_array_equal(f.counts, expected)  # nothing counted by the failed fill


@settings(max_examples=60, deadline=None)
@given(
    binnings(max_bits=4), st.integers(1, 40), st.integers(0, 30), st.sampled_from([np.float32, np.float16]), st.data()
)
def test_dense_feature_fill_matches_reference(binning, m, n, dtype, data):
    values = data.draw(hnp.arrays(dtype, (n, m), elements=st.floats(width=32 if dtype == np.float32 else 16)))
    f = FeatureHistograms(m, *binning).fill_dense(values)
    indices = np.broadcast_to(np.arange(m), (n, m))
    np.testing.assert_array_equal(f.counts, reference_feature_counts(indices, values, m, binning))


@pytest.mark.parametrize("threads", [1, 2])
def test_large_feature_fills_on_threads(threads):
    rng = np.random.default_rng(3)
    m, n, k = 1000, 2000, 64
    binning = FEATURE_BINNING
    indices = rng.integers(0, m, (n, k)).astype(np.int32)
    values = heavy_tailed(n * k, seed=4).reshape(n, k)
    f = FeatureHistograms(m).fill(indices, values, threads=threads)
    np.testing.assert_array_equal(f.counts, reference_feature_counts(indices, values, m, binning))
    dense = heavy_tailed(300 * m, seed=5).reshape(300, m)
    g = FeatureHistograms(m).fill_dense(dense, threads=threads)
    np.testing.assert_array_equal(
        g.counts, reference_feature_counts(np.broadcast_to(np.arange(m), dense.shape), dense, m, binning)
    )
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 by truncation
    as_float32 = (bits.astype(np.uint32) << 16).view(np.float32)
    assert FeatureHistograms(m).fill(indices, bits, bfloat16=True, threads=threads) == FeatureHistograms(m).fill(
        indices, as_float32
    )


def test_feature_quantiles():
    rng = np.random.default_rng(6)
    m = 5
    indices = rng.integers(0, m - 1, (500, 3))  # the last feature stays empty
    values = rng.exponential(size=(500, 3)).astype(np.float32) + np.float32(0.01)
    f = FeatureHistograms(m).fill(indices, values)
    q = np.array([0.5, 0.99, 1.0])
    est = f.quantile(q)
    lower, upper = f.quantile_interval(q)
    assert est.shape == (3, m) and np.all(np.isnan(est[:, -1]))
    for i in range(m - 1):
        truth = np.quantile(values[indices == i].astype(np.float64), q, method="inverted_cdf")
        assert np.all((lower[:, i] <= truth) & (truth <= upper[:, i]))
        np.testing.assert_allclose(est[:, i], truth, rtol=2.0 ** -(f.binning.mantissa_bits + 1))
        assert f.feature(i).quantile(0.5) == est[0, i]
    np.testing.assert_array_equal(f.n_values, np.bincount(indices.ravel(), minlength=m))


# -- bad input ----------------------------------------------------------------------------------------

X = np.linspace(-3, 3, 24, dtype=np.float32)


@pytest.mark.parametrize(
    "values, kwargs, error, match",
    [
        (X.astype(np.float64), {}, TypeError, "float32, float16"),
        (X.astype(np.int32), {}, TypeError, "float32, float16"),
        (X.view(np.uint16), {}, TypeError, "bfloat16=True"),
        (X, {"bfloat16": True}, TypeError, "uint16 or int16"),
        (X.astype(">f4"), {}, TypeError, "byte order"),
        (X[::2], {}, ValueError, "C-contiguous"),
        (X.reshape(4, 6).T, {}, ValueError, "C-contiguous"),
        (np.frombuffer(b"\0" + X.tobytes(), np.float32, 5, offset=1), {}, ValueError, "aligned"),
        ([1.0, 2.0], {}, TypeError, "float32"),
        (X, {"threads": 0}, ValueError, "threads"),
    ],
)
def test_dense_fill_rejects_bad_input(values, kwargs, error, match):
    h = Histogram().fill(X)
    before = h.counts.copy()
    with pytest.raises(error, match=match):
        h.fill(values, **kwargs)
    np.testing.assert_array_equal(h.counts, before)


IDX = np.arange(12, dtype=np.int64).reshape(4, 3) % 5
VAL = np.ones((4, 3), np.float32)


@pytest.mark.parametrize(
    "indices, values, match",
    [
        (IDX.astype(np.float32), VAL, "indices must be int32 or int64"),
        (IDX.astype(np.uint32), VAL, "indices must be int32 or int64"),
        (IDX, VAL.astype(np.float64), "values must be float32"),
        (IDX.ravel(), VAL.ravel(), "2-D"),
        (IDX[None], VAL[None], "2-D"),
        (IDX, np.ones((4, 2), np.float32), "shape of indices"),
        (IDX, VAL.T.copy(), "shape of indices"),
        (IDX[:, ::2], VAL[:, ::2], "C-contiguous"),
        (IDX, np.asfortranarray(VAL), "C-contiguous"),
        (np.where(IDX == 4, 5, IDX), VAL, r"indices\[1, 1\] = 5 is outside \[0, 5\)"),
        (np.where(IDX == 4, -1, IDX), VAL, r"indices\[1, 1\] = -1 is outside"),
        (np.where(IDX == 4, 2**32 + 1, IDX), VAL, r"= 4294967297 is outside"),
        (np.where(IDX == 4, -1, IDX).astype(np.int32), VAL, r"= -1 is outside"),
    ],
)
def test_sparse_fill_rejects_bad_input(indices, values, match):
    f = FeatureHistograms(5).fill(IDX, VAL)
    before = f.counts.copy()
    with pytest.raises((TypeError, ValueError), match=match):
        f.fill(indices, values)
    np.testing.assert_array_equal(f.counts, before)


@pytest.mark.parametrize("bad_at", [0, 70_000, 262_143])
@pytest.mark.parametrize("threads", [1, 2])
def test_bad_index_in_a_large_fill_leaves_counts_unchanged(bad_at, threads):
    rng = np.random.default_rng(7)
    indices = rng.integers(0, 100, (4096, 64)).astype(np.int32)
    values = heavy_tailed(indices.size, seed=8).reshape(indices.shape)
    f = FeatureHistograms(100).fill(indices[:10], values[:10])
    before = f.counts.copy()
    indices.ravel()[bad_at] = 100
    with pytest.raises(ValueError, match=rf"indices\[{bad_at // 64}, {bad_at % 64}\] = 100"):
        f.fill(indices, values, threads=threads)
    np.testing.assert_array_equal(f.counts, before)


def test_dense_feature_fill_rejects_bad_shapes():
    f = FeatureHistograms(4)
    for bad in (np.ones(4, np.float32), np.ones((2, 5), np.float32), np.ones((2, 2, 4), np.float32)):
        with pytest.raises(ValueError, match=r"2-D \[N, 4\]"):
            f.fill_dense(bad)
    with pytest.raises(ValueError, match="C-contiguous"):
        f.fill_dense(np.ones((8, 8), np.float32)[:, :4])
    assert f.n_values.sum() == 0


@pytest.mark.parametrize(
    "args, match",
    [((11, 0, 1), "mantissa_bits"), ((3, -127, 1), "lo < hi"), ((3, 5, 5), "lo < hi"), ((3, 0, 129), "lo < hi")],
)
def test_bad_binnings(args, match):
    with pytest.raises(ValueError, match=match):
        Histogram(*args)
    with pytest.raises(ValueError, match=match):
        FeatureHistograms(3, *args)


def test_feature_histograms_too_large_or_empty():
    with pytest.raises(ValueError, match="exceeds 2\\^32"):
        FeatureHistograms(2**31, 3, -10, 10)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_features"):
            FeatureHistograms(bad)


def test_cuda_tensors_are_refused():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(TypeError, match="cuda"):
        Histogram().fill(torch.ones(4, device="cuda"))
