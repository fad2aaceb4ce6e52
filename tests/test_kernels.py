"""pyfloor.kernels: the fused Triton encode + statistics against the torch reference.

The kernels run in Triton's interpreter here (conftest.py sets TRITON_INTERPRET=1). Most inputs are
dyadic rationals (small multiples of powers of two), so every pre-activation is exact in float32
whatever the summation order: kernel and reference then agree bit for bit, exact ties abound
(the top-k tie-break is exercised on every test), and exact zeros test "active means z > 0". Tests
on continuous random data check their own margins first. Blocks are small and ragged against the
shapes so that every mask is exercised.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language

from pyfloor.encode import StatsAccumulator, reference_batch_stats
from pyfloor.encode import encode_stats as encode_dispatch
from pyfloor.encode_types import BatchStats, EncodeSpec
from pyfloor.kernels import MAX_K, fused_batch_stats
from pyfloor.kernels.bitonic import topk_desc
from pyfloor.sae import SAE

# The flat kernel multiplies non-finite rows as they are (and drops them after): numpy's matmul warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")

# Interpreter-friendly blocks that do not divide the shapes below (N=150, d=70, m=200).
BLOCKS = dict(block_n=32, block_m=64, block_k=32)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dyadic(shape, denom: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """Uniform random multiples of 1/denom in [lo, hi]."""
    return torch.randint(int(lo * denom), int(hi * denom) + 1, shape, generator=gen).float() / denom


def make_sae(d=70, m=200, activation="relu", k=None, dtype=torch.float32, seed=0) -> SAE:
    """An SAE with dyadic weights: every pre-activation of dyadic x is exact in float32."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, m, activation, k=k)
    with torch.no_grad():
        sae.W_enc.copy_(dyadic((d, m), 16, -1, 1, g))
        sae.b_enc.copy_(dyadic((m,), 32, -2, 2, g))
        sae.b_dec.copy_(dyadic((d,), 8, -1, 1, g))
        if sae.threshold is not None:
            sae.threshold.copy_(dyadic((m,), 4, 0, 2, g))
    return sae.to(dtype)


def make_x(n=150, d=70, dtype=torch.float32, seed=1) -> torch.Tensor:
    return dyadic((n, d), 8, -4, 4, torch.Generator().manual_seed(seed)).to(dtype)


def reference(x, sae, activation, k=None, want_codes=True) -> BatchStats:
    return reference_batch_stats(x, sae, EncodeSpec.resolve(sae, activation, k), want_codes=want_codes, chunk_tokens=64)


def assert_batch_equal(got: BatchStats, ref: BatchStats, rtol: float = 1e-6, exact_values: bool = True) -> None:
    """Counts and code indices exactly; sums to ``rtol`` (fp32 partials against float64).

    Maxima and code values exactly where the pre-activations are exact (dyadic data), else to 1e-5.
    """
    value_tol = dict(rtol=0, atol=0) if exact_values else dict(rtol=1e-5, atol=1e-6)
    assert got.fire_count.dtype == torch.int64 and got.act_sum.dtype == torch.float64
    assert got.act_sq_sum.dtype == torch.float64 and got.act_max.dtype == torch.float32
    assert got.n_nonfinite.dtype == torch.int64 and got.n_nonfinite.ndim == 0
    assert int(got.n_nonfinite) == int(ref.n_nonfinite)
    torch.testing.assert_close(got.fire_count, ref.fire_count, rtol=0, atol=0)
    assert got.margin_count.dtype == torch.int64
    if exact_values:  # the band's upper edge is a decision too: exact only where pre-activations are
        torch.testing.assert_close(got.margin_count, ref.margin_count, rtol=0, atol=0)
    else:
        assert (got.margin_count - ref.margin_count).abs().max() <= 1
    torch.testing.assert_close(got.act_max, ref.act_max, **value_tol)
    torch.testing.assert_close(got.act_sum, ref.act_sum, rtol=rtol, atol=1e-9)
    torch.testing.assert_close(got.act_sq_sum, ref.act_sq_sum, rtol=rtol, atol=1e-9)
    assert (got.codes is None) == (ref.codes is None)
    if ref.codes is not None:
        torch.testing.assert_close(got.codes.offsets, ref.codes.offsets, rtol=0, atol=0)
        torch.testing.assert_close(got.codes.indices, ref.codes.indices, rtol=0, atol=0)
        torch.testing.assert_close(got.codes.values, ref.codes.values, **value_tol)


MODES = [("relu", None), ("jumprelu", None), ("topk", 5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("activation, k", MODES)
def test_kernel_equals_reference(activation, k, dtype):
    sae = make_sae(activation="jumprelu" if activation == "jumprelu" else "relu", dtype=dtype)
    x = make_x(dtype=dtype)
    got = fused_batch_stats(x, sae, activation, k, want_codes=True, **BLOCKS)
    assert_batch_equal(got, reference(x, sae, activation, k))
    assert got.fire_count.sum() > 0
    assert (got.margin_count.sum() > 0) == (activation != "topk")


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)])
def test_mixed_dtypes_match_the_reference(x_dtype, w_dtype):
    sae = make_sae(dtype=w_dtype)
    x = make_x(dtype=x_dtype)
    for activation, k in [("relu", None), ("topk", 9)]:
        assert_batch_equal(
            fused_batch_stats(x, sae, activation, k, want_codes=True, **BLOCKS), reference(x, sae, activation, k)
        )


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_16bit_activations_multiply_fp32_weights_rounded_to_their_dtype(x_dtype):
    """16-bit x with fp32 W_enc: the kernel multiplies W_enc rounded to x's dtype (tensor cores).

    Weights off the 16-bit grid (dyadic + 2**-12): the result is the reference's on the SAE with
    W_enc rounded, exactly (every pre-activation is exact in fp32), which differs from the unrounded one.
    """
    sae = make_sae()
    with torch.no_grad():
        sae.W_enc.add_(2.0**-12)
    rounded = make_sae()
    with torch.no_grad():
        rounded.W_enc.copy_(sae.W_enc.to(x_dtype))
    x = make_x(dtype=x_dtype)
    for activation, k in [("relu", None), ("topk", 9)]:
        got = fused_batch_stats(x, sae, activation, k, want_codes=True, **BLOCKS)
        assert_batch_equal(got, reference(x, rounded, activation, k))
    assert not torch.equal(reference(x, rounded, "relu").act_sum, reference(x, sae, "relu").act_sum)


def continuous_case(activation, k, n=90, d=37, m=150, seed=7, scale_rows=None, scale=1.0):
    """Gaussian SAE and activations (rows ``scale_rows`` multiplied by ``scale``), checked to stay
    clear of every decision boundary (zero, the JumpReLU threshold, the k-th/(k+1)-th gap)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, m, "jumprelu" if activation == "jumprelu" else "relu")
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(m, generator=g) * 0.3)
    x = torch.randn(n, d, generator=g)
    if scale_rows is not None:
        x[scale_rows] *= scale
    with torch.no_grad():
        pre = sae.pre_activations(x.double())
    edges = [pre, pre - sae.threshold.detach().double()] if activation == "jumprelu" else [pre]
    if activation == "topk":
        top = pre.sort(dim=1, descending=True).values
        edges.append(top[:, k - 1] - top[:, k])
    assert min(float(e.abs().min()) for e in edges) > 1e-5, "test data too close to a boundary"
    return sae, x


@pytest.mark.parametrize("activation, k", MODES)
def test_continuous_random_inputs(activation, k):
    """Gaussian data, no exact ties: pre-activations are checked to stay clear of every boundary."""
    sae, x = continuous_case(activation, k)
    got = fused_batch_stats(x, sae, activation, k, want_codes=True, block_n=16, block_m=32, block_k=16)
    assert_batch_equal(got, reference(x, sae, activation, k), rtol=1e-6, exact_values=False)


@pytest.mark.parametrize(
    "activation, k, kernel",
    [("relu", None, "flat"), ("relu", None, "sweep"), ("jumprelu", None, "flat"), ("topk", 5, "auto")],
)
def test_sums_are_bit_identical_whatever_order_the_tiles_finish_in(activation, k, kernel, monkeypatch):
    """Float sums must not depend on the order programs add them (on a GPU: scheduling).

    In the interpreter programs run one after another, so the grid size sets that order: with one
    program the 5 token tiles arrive 0, 1, 2, 3, 4; with two, 0, 2, 4, 1, 3. The last tile's rows are
    scaled by 2**16, so its sums dwarf the others' by ~2**32 and float64 additions round differently
    in another order. Chunking the token tiles (a partial-sum budget of one wave) must not matter either.
    """
    from pyfloor.kernels import fused_encode

    sae, x = continuous_case(activation, k, n=150, scale_rows=slice(128, None), scale=2.0**16)
    ref = reference(x, sae, activation, k, want_codes=False)
    first = fused_batch_stats(x, sae, activation, k, num_programs=1, kernel=kernel, **BLOCKS)
    assert_batch_equal(first, ref, rtol=1e-6, exact_values=False)

    def assert_same_bits(num_programs: int) -> None:
        run = fused_batch_stats(x, sae, activation, k, num_programs=num_programs, kernel=kernel, **BLOCKS)
        for field in ("fire_count", "act_sum", "act_sq_sum", "act_max", "margin_count", "n_nonfinite"):
            assert torch.equal(getattr(run, field), getattr(first, field)), field

    for num_programs in (1, 2, 3, 7):
        assert_same_bits(num_programs)
    monkeypatch.setattr(fused_encode, "PARTIAL_BYTES", 1)  # chunks of one wave of token tiles
    for num_programs in (1, 2):
        assert_same_bits(num_programs)


# -- the flat kernel (ReLU/JumpReLU statistics) ------------------------------------------------------
# d = 72, m = 200: 16-byte aligned rows in 16-bit and fp32 (TMA descriptors); d = 70: pointer loads.
@pytest.mark.parametrize("d", [72, 70], ids=["tma", "pointers"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_flat_kernel_equals_reference(activation, dtype, d):
    from pyfloor.kernels import fused_encode

    sae = make_sae(d=d, activation=activation, dtype=dtype, seed=d)
    x = make_x(d=d, dtype=dtype)
    x[[0, 63, 149], [1, 2, 3]] = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)
    enc = fused_encode._prepare(x, sae, activation, None, dict(BLOCKS, kernel="flat"))
    assert enc.design == "flat" and enc.launch["TMA"] == (d == 72)
    got = fused_batch_stats(x, sae, activation, kernel="flat", **BLOCKS)
    assert int(got.n_nonfinite) == 3 and got.codes is None
    assert_batch_equal(got, reference(x, sae, activation, want_codes=False))


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_flat_and_sweep_kernels_agree_on_continuous_inputs(activation):
    sae, x = continuous_case(activation, None, n=150, d=40, m=150, seed=11)
    ref = reference(x, sae, activation, want_codes=False)
    for kernel in ("flat", "sweep"):
        got = fused_batch_stats(x, sae, activation, kernel=kernel, block_n=32, block_m=32, block_k=16)
        assert_batch_equal(got, ref, rtol=1e-6, exact_values=False)


def test_broadcast_rows_take_the_pointer_path():
    """Rows that are one row repeated (stride 0) are no TMA descriptor's operand; they still encode right."""
    from pyfloor.kernels.fused_encode import _tma_ready

    sae = make_sae(d=72, dtype=torch.float16)
    x = make_x(n=1, d=72, dtype=torch.float16).expand(40, 72)
    assert not _tma_ready(x) and _tma_ready(x.contiguous())
    for activation, k in [("relu", None), ("topk", 5)]:
        got = fused_batch_stats(x, sae, activation, k, **BLOCKS)
        assert_batch_equal(got, reference(x.contiguous(), sae, activation, k, want_codes=False))


def test_auto_takes_flat_for_relu_statistics_select_for_topk_and_sweep_for_relu_codes():
    from pyfloor.kernels.fused_encode import _design

    assert _design("auto", "relu", False) == _design("auto", "jumprelu", False) == "flat"
    assert _design("auto", "relu", True) == _design("auto", "jumprelu", True) == "sweep"
    assert _design("auto", "topk", False) == _design("auto", "topk", True) == "select"
    assert _design("sweep", "topk", True) == "sweep" and _design("flat", "jumprelu", False) == "flat"


@pytest.mark.parametrize(
    "m, k, extra",
    [
        (200, 1, {}),
        (200, 64, dict(buffer_slots=128, compact_rows=8)),  # smallest buffer: a compaction every tile
        (200, 128, {}),
        (300, MAX_K, {}),
        (100, 100, {}),  # k = m, not a power of two
        (96, 96, dict(block_m=32)),  # k = m over three tiles
    ],
)
@pytest.mark.parametrize("kernel", ["select", "sweep"])
def test_topk_k_at_its_bounds(m, k, extra, kernel):
    if kernel == "sweep" and k > 128:
        pytest.skip("the sweep kernel stops at k = 128")
    sae = make_sae(m=m, seed=m + k)
    x = make_x(n=70, seed=k)
    got = fused_batch_stats(x, sae, "topk", k, want_codes=True, kernel=kernel, **{**BLOCKS, **extra})
    assert_batch_equal(got, reference(x, sae, "topk", k))


@pytest.mark.parametrize("kernel", ["select", "sweep"])
def test_topk_ties_go_to_the_lowest_index(kernel):
    """Latents in groups of identical columns: every value is tied several times over."""
    sae = make_sae(m=160, seed=3)
    with torch.no_grad():
        sae.W_enc.copy_(sae.W_enc[:, torch.arange(160) % 7])
        sae.b_enc.copy_(sae.b_enc[torch.arange(160) % 7])
    x = make_x(n=40)
    got = fused_batch_stats(x, sae, "topk", 30, want_codes=True, kernel=kernel, **BLOCKS)
    assert_batch_equal(got, reference(x, sae, "topk", 30))
    idx, val = got.codes.rows(30)
    tied = val[:, 1:] == val[:, :-1]
    assert tied.any() and torch.all(idx[:, 1:][tied] > idx[:, :-1][tied])


@pytest.mark.parametrize("activation, k", MODES)
def test_all_negative_rows_fire_nothing(activation, k):
    sae = make_sae(activation="jumprelu" if activation == "jumprelu" else "relu")
    with torch.no_grad():
        sae.b_enc.sub_(1000.0)
    x = make_x()
    got = fused_batch_stats(x, sae, activation, k, want_codes=True, **BLOCKS)
    assert_batch_equal(got, reference(x, sae, activation, k))
    assert got.fire_count.sum() == 0 and torch.all(got.act_max == 0)
    if activation == "topk":  # still the k largest (negative) pre-activations, reported as 0
        idx, val = got.codes.rows(k)
        assert torch.all(idx >= 0) and torch.all(val == 0)
    else:
        assert got.codes.indices.numel() == 0 and torch.all(got.codes.offsets == 0)


@pytest.mark.parametrize("activation, k", MODES)
def test_nonfinite_rows_are_counted_and_excluded(activation, k):
    sae = make_sae(activation="jumprelu" if activation == "jumprelu" else "relu")
    x = make_x()
    bad_rows = [0, 31, 32, 77, 149]  # tile edges and the last, ragged tile
    for r, v in zip(bad_rows, [float("nan"), float("inf"), float("-inf"), float("nan"), float("inf")]):
        x[r, r % 70] = v
    got = fused_batch_stats(x, sae, activation, k, want_codes=True, **BLOCKS)
    assert int(got.n_nonfinite) == len(bad_rows)
    assert_batch_equal(got, reference(x, sae, activation, k))
    keep = torch.ones(150, dtype=torch.bool)
    keep[bad_rows] = False
    clean = fused_batch_stats(x[keep], sae, activation, k, **BLOCKS)
    torch.testing.assert_close(got.fire_count, clean.fire_count, rtol=0, atol=0)
    assert torch.isfinite(got.act_sum).all() and torch.isfinite(got.act_sq_sum).all()
    if activation == "topk":
        idx, val = got.codes.rows(k)
        assert torch.all(idx[~keep] == -1) and torch.all(val[~keep] == 0) and torch.all(idx[keep] >= 0)
    else:
        assert torch.all(got.codes.offsets.diff()[~keep] == 0)


@pytest.mark.parametrize("activation, k", [("relu", None), ("topk", 8)])
def test_accumulated_batches_equal_the_reference(activation, k):
    """StatsAccumulator over many batches (any leading dims): kernel vs torch backend."""
    g = torch.Generator().manual_seed(11)
    sae = make_sae(d=24, m=72, seed=5)
    batches = [make_x(n=n, d=24, seed=s).reshape(-1, n // 3, 24) for s, n in enumerate([45, 96, 3, 60])]
    batches.append(torch.randn(2, 5, 24, generator=g))
    results = {}
    for backend in ("triton", "torch"):
        options = dict(block_n=16, block_m=32, block_k=16) if backend == "triton" else None
        acc = StatsAccumulator(sae, activation=activation, k=k, backend=backend, kernel_options=options)
        for b in batches:
            acc.update(b)
        results[backend] = acc.result()
    t, r = results["triton"], results["torch"]
    assert t.n_tokens == r.n_tokens == 45 + 96 + 3 + 60 + 10
    np.testing.assert_array_equal(t.fire_count, r.fire_count)
    np.testing.assert_allclose(t.act_sum, r.act_sum, rtol=1e-6)
    np.testing.assert_allclose(t.act_sq_sum, r.act_sq_sum, rtol=1e-6)
    np.testing.assert_allclose(t.act_max, r.act_max, rtol=1e-6)


@pytest.mark.parametrize("activation, k", [("relu", None), ("topk", 5)])
def test_public_encode_stats_dispatches_to_the_kernel(activation, k):
    """pyfloor.encode.encode_stats with backend='triton' on [..., d]: same stats and codes as torch."""
    sae = make_sae(d=24, m=72)
    x = make_x(n=60, d=24).reshape(3, 20, 24)
    got_stats, got_codes = encode_dispatch(x, sae, activation=activation, k=k, want_codes=True, backend="triton")
    ref_stats, ref_codes = encode_dispatch(x, sae, activation=activation, k=k, want_codes=True, backend="torch")
    np.testing.assert_array_equal(got_stats.fire_count, ref_stats.fire_count)
    np.testing.assert_allclose(got_stats.act_sq_sum, ref_stats.act_sq_sum, rtol=1e-6)
    for a, b in zip(got_codes, ref_codes):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_csr_write_pass_stays_within_each_rows_offsets(activation):
    """Offsets that undercount (one entry fewer per active row than the count pass found): each row
    writes only its first entries into [offsets[r], offsets[r + 1]) and nothing lands in the guard beyond."""
    from pyfloor.kernels import fused_encode

    sae = make_sae(activation=activation)
    x = make_x()
    ref = reference(x, sae, activation).codes
    counts = ref.offsets.diff()
    assert (counts > 1).all(), "every row needs entries to cut"
    short = torch.zeros_like(ref.offsets)
    torch.cumsum(counts - 1, 0, out=short[1:])
    nnz, guard = int(short[-1]), x.shape[0]
    idx = torch.full((nnz + guard,), -7, dtype=torch.int64)
    val = torch.full((nnz + guard,), -7.0)
    enc = fused_encode._prepare(x, sae, activation, None, BLOCKS, want_codes=True)
    fused_encode._write_csr(enc, x, short, idx, val)
    assert torch.all(idx[nnz:] == -7) and torch.all(val[nnz:] == -7.0), "writes past the last row's range"
    for r in range(x.shape[0]):
        lo, n_r = int(ref.offsets[r]), int(counts[r]) - 1
        assert torch.equal(idx[short[r] : short[r + 1]], ref.indices[lo : lo + n_r]), r
        assert torch.equal(val[short[r] : short[r + 1]], ref.values[lo : lo + n_r]), r


def test_jumprelu_with_negative_thresholds_keeps_negative_latents_in_the_sums():
    """z = pre where pre > θ: with θ < 0 some z are negative; they are summed but never 'active'."""
    sae = make_sae(activation="jumprelu")
    with torch.no_grad():
        sae.threshold.sub_(1.5)
    x = make_x()
    got = fused_batch_stats(x, sae, "jumprelu", want_codes=True, **BLOCKS)
    assert_batch_equal(got, reference(x, sae, "jumprelu"))
    assert (sae.threshold < 0).any()


@pytest.mark.parametrize("num_programs", [1, 3])
def test_persistent_grid_sizes_agree(num_programs):
    sae = make_sae()
    x = make_x()
    for activation, k in [("relu", None), ("topk", 6)]:
        got = fused_batch_stats(x, sae, activation, k, want_codes=True, num_programs=num_programs, **BLOCKS)
        assert_batch_equal(got, reference(x, sae, activation, k))


def test_stats_only_returns_no_codes_and_empty_batch():
    sae = make_sae()
    x = make_x()
    for activation, k in [("relu", None), ("topk", 4)]:
        got = fused_batch_stats(x, sae, activation, k, **BLOCKS)
        assert got.codes is None
        assert_batch_equal(got, reference(x, sae, activation, k, want_codes=False))
        empty = fused_batch_stats(x[:0], sae, activation, k, want_codes=True)
        assert empty.fire_count.sum() == 0 and empty.codes.offsets.tolist() == [0]


def test_an_integral_float_k_is_the_same_k():
    sae, x = make_sae(), make_x()
    assert_batch_equal(fused_batch_stats(x, sae, "topk", 4.0, want_codes=True, **BLOCKS), reference(x, sae, "topk", 4))


def test_rows_with_a_stride_are_read_in_place():
    sae = make_sae()
    wide = make_x(d=90)
    x = wide[:, 5:75]  # row stride 90, unit stride along d
    assert not x.is_contiguous()
    assert_batch_equal(fused_batch_stats(x, sae, "topk", 5, want_codes=True, **BLOCKS), reference(x, sae, "topk", 5))


@pytest.mark.parametrize("through_data", [False, True], ids=["in_place", "through_data"])
def test_folded_bias_follows_in_place_weight_updates(through_data):
    """fp16 inputs take the folded-bias path; changing b_dec or W_enc in place must not reuse a stale fold.

    An update through ``.data`` changes neither the tensor's data_ptr nor its ``_version``.
    """
    sae = make_sae(dtype=torch.float16)
    x = make_x(dtype=torch.float16)
    assert_batch_equal(fused_batch_stats(x, sae, "relu", **BLOCKS), reference(x, sae, "relu", want_codes=False))
    for p, step in ((sae.b_dec, 0.5), (sae.W_enc, 0.25)):
        if through_data:
            p.data.add_(step)
        else:
            with torch.no_grad():
                p.add_(step)
        got = fused_batch_stats(x, sae, "relu", **BLOCKS)
        assert_batch_equal(got, reference(x, sae, "relu", want_codes=False))


def _transposed_w_enc(sae: SAE) -> SAE:
    sae.W_enc = torch.nn.Parameter(sae.W_enc.detach().T.contiguous().T)
    return sae


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda s: fused_batch_stats(make_x(d=69), s, "relu"), ValueError, "d_in = 70"),
        (lambda s: fused_batch_stats(make_x().reshape(3, 50, 70), s, "relu"), ValueError, r"\[N, d\]"),
        (lambda s: fused_batch_stats(make_x().double(), s, "relu"), ValueError, "float32, float16 or bfloat16"),
        (lambda s: fused_batch_stats(make_x(), s.double(), "relu"), ValueError, "SAE weights must be"),
        (lambda s: fused_batch_stats(make_x(), s, "topk", 201), ValueError, "k <= n_latents"),
        (lambda s: fused_batch_stats(make_x(), s, "topk", 0), ValueError, "k <= n_latents"),
        (lambda s: fused_batch_stats(make_x(), make_sae(m=300), "topk", MAX_K + 1), ValueError, f"k <= {MAX_K}"),
        (lambda s: fused_batch_stats(make_x(), make_sae(m=300), "topk", 129, kernel="sweep"), ValueError, "k <= 128"),
        (lambda s: fused_batch_stats(make_x(), s, "relu", 3), ValueError, "only meaningful for the top-k"),
        (lambda s: fused_batch_stats(make_x(), s, "gelu"), ValueError, "activation must be"),
        (lambda s: fused_batch_stats(make_x(), s, "jumprelu"), ValueError, "thresholds"),
        (lambda s: fused_batch_stats(make_x().T.contiguous().T, s, "relu"), ValueError, "contiguous along d"),
        (
            lambda s: fused_batch_stats(make_x(n=70, d=3)[:, 0].unsqueeze(0), s, "relu"),
            ValueError,
            "contiguous along d",
        ),
        (lambda s: fused_batch_stats(make_x(), _transposed_w_enc(s), "relu"), ValueError, "contiguous SAE.W_enc"),
        (lambda s: fused_batch_stats(make_x(), s, "relu", block_m=48), ValueError, "block_m must be a power of two"),
        (lambda s: fused_batch_stats(make_x(), s, "topk", 64, buffer_slots=64), ValueError, "buffer_slots"),
        (lambda s: fused_batch_stats(make_x(), s, "relu", input_precision="bf16"), ValueError, "input_precision"),
        (lambda s: fused_batch_stats(make_x().numpy(), s, "relu"), TypeError, "torch.Tensor"),
        (lambda s: fused_batch_stats(make_x(), s, "relu", kernel="fast"), ValueError, "kernel must be"),
        (lambda s: fused_batch_stats(make_x(), s, "topk", 5, kernel="flat"), ValueError, "statistics only"),
        (
            lambda s: fused_batch_stats(make_x(), s, "relu", want_codes=True, kernel="flat"),
            ValueError,
            "statistics only",
        ),
    ],
)
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call(make_sae())


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    from pyfloor.kernels import fused_encode as module

    monkeypatch.setattr(module, "_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        module.fused_batch_stats(make_x(), make_sae(), "relu")


def test_importing_pyfloor_does_not_import_triton():
    code = "import sys, pyfloor, pyfloor.encode, pyfloor.sae; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@triton.jit
def _topk_probe(x_ptr, y_ptr, R: tl.constexpr, C: tl.constexpr, K: tl.constexpr):
    r = tl.arange(0, R)
    v = tl.load(x_ptr + r[:, None] * C + tl.arange(0, C)[None, :])
    tl.store(y_ptr + r[:, None] * K + tl.arange(0, K)[None, :], topk_desc(v, K))


@pytest.mark.parametrize("rows, cols, k", [(1, 2, 1), (1, 16, 16), (4, 64, 8), (8, 256, 128), (2, 512, 1)])
def test_bitonic_topk_of_int64_keys(rows, cols, k):
    g = torch.Generator().manual_seed(cols + k)
    x = torch.randint(-(2**63), 2**63 - 1, (rows, cols), dtype=torch.int64, generator=g)
    x[0, : cols // 2] = -(2**63)  # empty slots, and sums that wrap around
    x[-1, -1] = 2**63 - 1
    x[-1, 0] = x[-1, 1]  # duplicates
    y = torch.empty(rows, k, dtype=torch.int64)
    _topk_probe[(1,)](x, y, rows, cols, k)
    torch.testing.assert_close(y, x.topk(k, dim=1).values, rtol=0, atol=0)
