"""Device functions and small kernels shared by the fused encode kernels (:mod:`.sweep`, :mod:`.flat`,
:mod:`.select`).

* constants: the MODE of each activation, the CODES modes of the sweep kernel, the empty-slot key;
* :func:`_finite_rows` and :func:`_row_flags_kernel`: which token rows hold only finite values;
* top-k candidate entries and their sort keys (:func:`_entry`, :func:`_key`, inverses);
* the per-latent totals: atomic counts and maxima, float sums added atomically or reduced from
  per-tile partials in tile order (:func:`_reduce_partials_kernel`);
* :func:`_fold_bias_kernel`: b_enc − b_dec @ W_enc for the 16-bit dot;
* :func:`_halves` of a tile and :func:`_publish_counts` of per-row candidate counts.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pyfloor.sae import Activation

#: The kernels' MODE constexpr of each activation.
MODES: dict[Activation, int] = {"relu": 0, "jumprelu": 1, "topk": 2}
_JUMPRELU, _TOPK = tl.constexpr(MODES["jumprelu"]), tl.constexpr(MODES["topk"])
_NO_CODES, _COUNT_ROWS, _WRITE_CODES = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
_SENTINEL = tl.constexpr(-(2**63))  # key of an empty candidate slot, below every real key


@triton.jit
def _finite_rows(x_ptr, rows, N, D, stride_xn, BLOCK_K: tl.constexpr):
    """True for the rows of the tile that exist (< N) and hold only finite values."""
    ok = rows < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + ks[None, :], mask=ok[:, None] & (ks < D)[None, :], other=0.0).to(tl.float32)
        finite = (a == a) & (tl.abs(a) < float("inf"))
        ok = ok & (tl.min(finite.to(tl.int32), axis=1) > 0)
    return ok


@triton.jit
def _row_flags_kernel(x_ptr, ok_ptr, nonfinite_ptr, N, D, stride_xn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """ok [N] (int8): 1 for the rows of x [N, D] that hold only finite values; adds the others' number into
    ``nonfinite_ptr`` (int64)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = _finite_rows(x_ptr, rows, N, D, stride_xn, BLOCK_K)
    tl.store(ok_ptr + rows, ok.to(tl.int8), mask=rows < N)
    tl.atomic_add(nonfinite_ptr, tl.sum(((rows < N) & ~ok).to(tl.int64), axis=0), sem="relaxed")


@triton.jit
def _entry(v, idx):
    """A candidate as one int64: latent index in the high word, the bits of its value in the low word."""
    return (idx.to(tl.int64) << 32) | v.to(tl.int32, bitcast=True).to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def _entry_parts(e):
    """(value float32, index int32) of an :func:`_entry`."""
    return e.to(tl.int32).to(tl.float32, bitcast=True), (e >> 32).to(tl.int32)


@triton.jit
def _ordered_bits(v):
    """int32 ordered like the float32 ``v`` as signed integers (−0 taken as +0, so that it ties with +0
    as in torch): the bits, with a negative value's magnitude bits flipped."""
    bits = tl.where(v == 0.0, 0.0, v).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _ordered_value(bits):
    """The float32 of :func:`_ordered_bits` (its inverse)."""
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.float32, bitcast=True)


@triton.jit
def _sort_key(v, idx):
    """int64 ordered like (value descending, index ascending): :func:`_ordered_bits` of the value in the
    high word, ~index in the low word, so the lower index wins a tie."""
    return (_ordered_bits(v).to(tl.int64) << 32) | (~idx).to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def _key_parts(key):
    """(value float32, index int32) of a :func:`_sort_key` (its inverse)."""
    return _ordered_value((key >> 32).to(tl.int32)), ~key.to(tl.int32)


@triton.jit
def _key(e):
    """:func:`_sort_key` of an :func:`_entry`."""
    v, idx = _entry_parts(e)
    return _sort_key(v, idx)


@triton.jit
def _key_entry(key):
    """The entry a key was made from (inverse of :func:`_key`)."""
    v, idx = _key_parts(key)
    return _entry(v, idx)


@triton.jit
def _add_counts(fire_ptr, max_ptr, idx, n_fired, z_max, mask):
    """Atomically add counts (int64) and take maxima (float32) at ``idx``: both independent of the order."""
    tl.atomic_add(fire_ptr + idx, n_fired.to(tl.int64), mask=mask, sem="relaxed")
    tl.atomic_max(max_ptr + idx, z_max, mask=mask, sem="relaxed")


@triton.jit
def _add_sums(sum_ptr, sq_ptr, idx, z_sum, z_sq, mask):
    """ATOMIC_SUMS: atomically add float sums into the float64 totals, rounded in arrival order."""
    tl.atomic_add(sum_ptr + idx, z_sum.to(tl.float64), mask=mask, sem="relaxed")
    tl.atomic_add(sq_ptr + idx, z_sq.to(tl.float64), mask=mask, sem="relaxed")


@triton.jit
def _halves(tile):
    """The two halves of a 2-d ``tile`` along its last axis (columns [0, C/2) and [C/2, C)), as a pair."""
    R: tl.constexpr = tile.shape[0]
    C: tl.constexpr = tile.shape[1]
    return tl.split(tl.permute(tl.reshape(tile, (R, 2, C // 2)), (0, 2, 1)))


@triton.jit
def _publish_counts(cnt_ptr, row_base, cnt):
    """Store a program's per-row candidate counts ``cnt`` at ``cnt_ptr + row_base``, between barriers: every
    earlier read of them is done before, and every thread's candidate stores and counts are visible after."""
    tl.debug_barrier()
    tl.store(cnt_ptr + row_base + tl.arange(0, cnt.shape[0]), cnt)
    tl.debug_barrier()


@triton.jit
def _add_row_sums(part_sum, part_sq, idx, z, fired):
    """Add one token's selected values z (at latents ``idx``, where ``fired``) into fp32 partials [M]: plain
    loads and stores, so the caller orders the rows (a token selects a latent at most once)."""
    s = tl.load(part_sum + idx, mask=fired, other=0.0)
    q = tl.load(part_sq + idx, mask=fired, other=0.0)
    tl.store(part_sum + idx, s + z, mask=fired)
    tl.store(part_sq + idx, q + z * z, mask=fired)


@triton.jit
def _reduce_partials_kernel(
    part_sum_ptr, part_sq_ptr, sum_ptr, sq_ptr, T, M, BLOCK: tl.constexpr, UNROLL: tl.constexpr
):
    """Add the per-tile partials [T, M] (fp32) into the float64 totals [M], tile 0 first, one tile at a time.

    Each latent's total is one program's running sum in token-tile order: the rounding is the same
    on every run, and launching the tiles in several chunks (each continuing the running sum) or on
    another grid does not change it. UNROLL tiles are loaded at a time (loads in flight; the adds
    stay in order, and the +0.0 of a masked load changes no sum).
    """
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < M
    acc_sum = tl.load(sum_ptr + cols, mask=ok, other=0.0)
    acc_sq = tl.load(sq_ptr + cols, mask=ok, other=0.0)
    p_sum = part_sum_ptr + cols
    p_sq = part_sq_ptr + cols
    for t0 in range(0, T, UNROLL):
        for i in tl.static_range(UNROLL):
            here = ok & (tl.zeros([BLOCK], dtype=tl.int32) + (t0 + i) < T)
            acc_sum += tl.load(p_sum + i * M, mask=here, other=0.0).to(tl.float64)
            acc_sq += tl.load(p_sq + i * M, mask=here, other=0.0).to(tl.float64)
        p_sum += UNROLL * M
        p_sq += UNROLL * M
    tl.store(sum_ptr + cols, acc_sum, mask=ok)
    tl.store(sq_ptr + cols, acc_sq, mask=ok)


@triton.jit
def _fold_bias_kernel(w_ptr, b_enc_ptr, b_dec_ptr, out_ptr, D, M, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """out = b_enc − b_dec @ W_enc for BLOCK_M latents, accumulated in float64, stored as float32."""
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = cols < M
    ks = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_M], dtype=tl.float64)
    w_ptrs = w_ptr + ks[:, None] * M + cols[None, :]
    for k0 in range(0, D, BLOCK_D):
        k_ok = ks < D - k0
        w = tl.load(w_ptrs, mask=k_ok[:, None] & ok[None, :], other=0.0).to(tl.float32).to(tl.float64)
        b = tl.load(b_dec_ptr + k0 + ks, mask=k_ok, other=0.0).to(tl.float32).to(tl.float64)
        acc += tl.sum(w * b[:, None], axis=0)
        w_ptrs += BLOCK_D * M
    b_enc = tl.load(b_enc_ptr + cols, mask=ok, other=0.0).to(tl.float32).to(tl.float64)
    tl.store(out_ptr + cols, (b_enc - acc).to(tl.float32), mask=ok)
