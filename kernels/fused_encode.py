"""Fused SAE encode + per-latent statistics: one Triton kernel and its launcher.

For activations x [N, d] and an SAE (W_enc [d, m], b_enc [m], b_dec [d], threshold [m]) the kernel
computes z = act((x − b_dec) @ W_enc + b_enc) tile by tile and folds each tile straight into

* per-latent statistics: fire count (z > 0), Σz, Σz², max z and, for ReLU/JumpReLU, the count of
  active values within the latent's margin band (z ≤ ``SAE.margins()``) — int32/fp32 partials
  over a token tile; counts and maxima added atomically into int64 (max: float32) totals (exact
  in any order), Σz and Σz² stored at the tile's slot and added into float64 totals in tile order
  by a second small kernel, so that a result has the same bits on every run;
* optionally the sparse codes: top-k indices/values [N, k], or ReLU/JumpReLU codes in CSR form.

The dense N × m pre-activation matrix is never written. Top-k keeps, per token, a candidate buffer
in a small per-program scratch area: a pre-activation enters it only if it beats the token's
current k-th best value, and the buffer is compacted to its best k by a bitonic top-k over packed
(value, index) int64 keys whenever it could overflow (see ``benchmarks/KERNELS.md``).

Rows of x holding NaN or ±Inf are counted in ``n_nonfinite`` and left out of everything; their
top-k codes are index −1, value 0 and their CSR rows are empty, as in the torch reference
(:func:`pyfloor.encode.reference_batch_stats`), which this kernel reproduces: the same counts, sums
to float rounding, the same codes in the same order (top-k: descending value, ties to the lowest
latent index).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from pyfloor.encode_types import (
    SUPPORTED_DTYPES,
    BatchStats,
    EncodeSpec,
    InputPrecision,
    KernelOptions,
    Reduction,
    SparseCodes,
    check_activations,
)
from pyfloor.sae import SAE, Activation

from .bitonic import topk_desc

__all__ = ["fused_batch_stats", "MAX_K", "MODES", "PARTIAL_BYTES", "Reduction"]

#: Largest k the top-k kernel handles (the sort width and scratch grow with it).
MAX_K = 128
#: The kernel's MODE constexpr of each activation.
MODES: dict[Activation, int] = {"relu": 0, "jumprelu": 1, "topk": 2}
_JUMPRELU, _TOPK = tl.constexpr(MODES["jumprelu"]), tl.constexpr(MODES["topk"])
_NO_CODES, _COUNT_ROWS, _WRITE_CODES = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
_SENTINEL = tl.constexpr(-(2**63))  # key of an empty candidate slot, below every real key
_HALF = (torch.float16, torch.bfloat16)


# -- device functions ------------------------------------------------------------------------------
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
def _pre_tile(
    x_ptr,
    w_ptr,
    b_dec_ptr,
    bias_ptr,
    rows,
    ok,
    cols,
    D,
    M,
    stride_xn,
    HALF_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    LATENT_MAJOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pre-activations of BLOCK_N tokens × BLOCK_M latents in float32.

    The tile is [BLOCK_N, BLOCK_M] (token-major), or with LATENT_MAJOR its transpose
    [BLOCK_M, BLOCK_N], so that per-latent sums over the tokens reduce along rows, which the MMA
    accumulator layout keeps within threads and quads. 16-bit dots compute it directly as
    W_encᵀ xᵀ (transposed shared-memory operands); fp32 dots transpose the result instead (their
    FMA/tf32 paths do not take transposed operands well).
    HALF_DOT: x and W_enc share a 16-bit dtype and go to the dot as loaded (products are exact
    in fp32, accumulation fp32); b_dec is folded into ``bias`` = b_enc − b_dec @ W_enc by the
    launcher. Otherwise both are upcast right after loading and x − b_dec is formed in fp32.
    Rows that are not ``ok`` read as zeros.
    """
    TRANS_DOT: tl.constexpr = LATENT_MAJOR and HALF_DOT
    if TRANS_DOT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    ks = tl.arange(0, BLOCK_K)
    col_ok = cols < M
    a_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xn + ks[None, :]
    w_ptrs = w_ptr + ks[:, None] * M + cols[None, :]
    for k0 in range(0, D, BLOCK_K):
        k_ok = ks < D - k0
        a = tl.load(a_ptrs, mask=ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if not HALF_DOT:
            a = a.to(tl.float32) - tl.load(b_dec_ptr + k0 + ks, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            w = w.to(tl.float32)
        if TRANS_DOT:
            acc = tl.dot(tl.trans(w), tl.trans(a), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * M
    if LATENT_MAJOR and not TRANS_DOT:
        acc = tl.trans(acc)
    bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if LATENT_MAJOR:
        acc += bias[:, None]
    else:
        acc += bias[None, :]
    return acc


@triton.jit
def _entry(v, idx):
    """A candidate as one int64: latent index in the high word, the bits of its value in the low word."""
    return (idx.to(tl.int64) << 32) | v.to(tl.int32, bitcast=True).to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def _entry_parts(e):
    """(value float32, index int32) of an :func:`_entry`."""
    return e.to(tl.int32).to(tl.float32, bitcast=True), (e >> 32).to(tl.int32)


@triton.jit
def _key(e):
    """Sort key of an entry: int64 ordered like (value descending, index ascending).

    High word: the value's bits made order-preserving as a signed integer (−0 taken as +0, so that
    it ties with +0 as in torch); low word: ~index, so the lower index wins a tie.
    """
    v, idx = _entry_parts(e)
    bits = tl.where(v == 0.0, 0.0, v).to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(tl.int64) << 32) | (~idx).to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def _key_entry(key):
    """The entry a key was made from (inverse of :func:`_key`)."""
    bits = (key >> 32).to(tl.int32)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return _entry(bits.to(tl.float32, bitcast=True), ~key.to(tl.int32))


@triton.jit
def _compact(
    cand_ptr,
    row_cnt_ptr,
    row_tau_ptr,
    slot_base,
    row_base,
    cnt,
    ok,
    BLOCK_N: tl.constexpr,
    KP: tl.constexpr,
    CAP: tl.constexpr,
    COMPACT_ROWS: tl.constexpr,
):
    """Shrink every row's candidate buffer to its best KP entries, sorted, in slots [0, KP).

    Returns the new per-row candidate counts and thresholds (the KP-th best value once a row holds
    KP candidates, −inf before; +inf for rows that are not ``ok``). Rows are sorted COMPACT_ROWS
    at a time to bound registers; counts and thresholds go through scratch because a register
    tensor cannot be updated one row chunk at a time.
    """
    local = tl.arange(0, BLOCK_N)
    slots = tl.arange(0, CAP)
    top = tl.arange(0, KP)
    tl.debug_barrier()  # reads of the counts from the last compaction are done
    tl.store(row_cnt_ptr + row_base + local, cnt)
    tl.debug_barrier()  # candidate stores and counts of every thread are visible
    for r0 in range(0, BLOCK_N, COMPACT_ROWS):
        r = r0 + tl.arange(0, COMPACT_ROWS)
        n = tl.load(row_cnt_ptr + row_base + r)
        held = slots[None, :] < n[:, None]
        entries = tl.load(cand_ptr + slot_base + r[:, None] * CAP + slots[None, :], mask=held, other=0)
        best = topk_desc(tl.where(held, _key(entries), _SENTINEL), KP)
        tl.debug_barrier()  # every load of these rows is done before slots [0, KP) are overwritten
        tl.store(cand_ptr + slot_base + r[:, None] * CAP + top[None, :], _key_entry(best))
        kept = tl.minimum(n, KP)
        kth, _ = _entry_parts(_key_entry(tl.min(best, axis=1)))
        tl.store(row_tau_ptr + row_base + r, tl.where(kept >= KP, kth, float("-inf")))
        tl.store(row_cnt_ptr + row_base + r, kept)
    tl.debug_barrier()
    cnt = tl.load(row_cnt_ptr + row_base + local)
    tau = tl.where(ok, tl.load(row_tau_ptr + row_base + local), float("inf"))
    return cnt, tau


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
def _tile_sums_by_row(
    cand_ptr, slot_base, part_sum, part_sq, BLOCK_N: tl.constexpr, KP: tl.constexpr, CAP: tl.constexpr
):
    """Top-k: add each row's selected (index, z) entries (slots [0, KP) of its buffer) into the tile's
    fp32 partials [M] at ``part_sum``/``part_sq``, one row after another, so always in row order.

    A row selects each latent at most once, so one row's adds never collide; the barrier after each
    row orders them against the next row's.
    """
    j = tl.arange(0, KP)
    for r in range(0, BLOCK_N):
        z, idx = _entry_parts(tl.load(cand_ptr + slot_base + r * CAP + j))
        fired = z > 0.0
        s = tl.load(part_sum + idx, mask=fired, other=0.0)
        q = tl.load(part_sq + idx, mask=fired, other=0.0)
        tl.store(part_sum + idx, s + z, mask=fired)
        tl.store(part_sq + idx, q + z * z, mask=fired)
        tl.debug_barrier()


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


@triton.jit
def _encode_stats_kernel(
    x_ptr,
    w_ptr,
    b_dec_ptr,
    bias_ptr,
    thr_ptr,
    fire_ptr,
    sum_ptr,
    sq_ptr,
    part_sum_ptr,
    part_sq_ptr,
    max_ptr,
    margin_ptr,
    margin_count_ptr,
    nonfinite_ptr,
    row_ptr,
    code_idx_ptr,
    code_val_ptr,
    cand_ptr,
    row_cnt_ptr,
    row_tau_ptr,
    N,
    D,
    M,
    K,
    stride_xn,
    MODE: tl.constexpr,
    STATS: tl.constexpr,
    ATOMIC_SUMS: tl.constexpr,
    CODES: tl.constexpr,
    HALF_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KP: tl.constexpr,
    CAP: tl.constexpr,
    COMPACT_ROWS: tl.constexpr,
):
    """Persistent program: for each BLOCK_N-token tile it owns, sweep all m latents in BLOCK_M tiles.

    Per token tile, one program computes the [BLOCK_N, BLOCK_M] pre-activation tiles with tl.dot
    (fp32 accumulation) and, in the same sweep:

    * MODE relu/jumprelu: z = act(pre) on latent-major tiles; with STATS, per-latent partials over
      the token tile (int32 counts, fp32 Σz, Σz², max);
      CODES = 1 stores each row's number of active latents in ``row_ptr`` [N]; CODES = 2 writes
      the active (index, value) pairs at the CSR offsets ``row_ptr`` [N + 1] (a second launch),
      never outside the row's range [row_ptr[r], row_ptr[r + 1]).
    * MODE topk: pre-activations above the row's threshold go to the row's candidate buffer
      (CAP slots of scratch), compacted to the best KP ≥ K by :func:`_compact` before it could
      overflow; after the sweep the best K give the codes [N, K] (CODES = 2) and, with STATS,
      the tile's per-latent partials (:func:`_tile_sums_by_row`).

    Counts are added atomically into int64 totals and maxima into float32 ones (both exact in
    any order). The fp32 Σz and Σz² of token tile t go to row t of ``part_sum_ptr``/``part_sq_ptr``
    [T, M] (top-k: rows zeroed by the launcher), which :func:`_reduce_partials_kernel` adds up in
    tile order; with ATOMIC_SUMS they are added atomically into the float64 totals instead, whose
    last bits then depend on the order the programs get there.
    With STATS, also adds the number of non-finite rows into ``nonfinite_ptr``.
    """
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    local = tl.arange(0, BLOCK_N)
    slot_base = pid * BLOCK_N * CAP  # this program's candidate buffers (int32: the launcher checks)
    row_base = pid * BLOCK_N
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        rows = tile * BLOCK_N + local
        ok = _finite_rows(x_ptr, rows, N, D, stride_xn, BLOCK_K)
        if STATS:
            tl.atomic_add(nonfinite_ptr, tl.sum(((rows < N) & ~ok).to(tl.int64), axis=0), sem="relaxed")
        if MODE == _TOPK:
            cnt = tl.zeros([BLOCK_N], dtype=tl.int32)
            tau = tl.where(ok, float("-inf"), float("inf"))
        else:
            nnz = tl.zeros([BLOCK_N], dtype=tl.int32)
            if CODES == _WRITE_CODES:
                start = tl.load(row_ptr + rows, mask=rows < N, other=0)
                room = (tl.load(row_ptr + rows + 1, mask=rows < N, other=0) - start).to(tl.int32)
        for m0 in range(0, M, BLOCK_M):
            cols = m0 + tl.arange(0, BLOCK_M)
            pre = _pre_tile(
                x_ptr,
                w_ptr,
                b_dec_ptr,
                bias_ptr,
                rows,
                ok,
                cols,
                D,
                M,
                stride_xn,
                HALF_DOT,
                INPUT_PRECISION,
                MODE != _TOPK,
                BLOCK_N,
                BLOCK_M,
                BLOCK_K,
            )
            if MODE == _TOPK:  # pre: [BLOCK_N tokens, BLOCK_M latents]
                cand = (pre > tau[:, None]) & (cols < M)[None, :]
                pos = cnt[:, None] + tl.cumsum(cand.to(tl.int32), axis=1) - 1
                tl.store(cand_ptr + slot_base + local[:, None] * CAP + pos, _entry(pre, cols[None, :]), mask=cand)
                cnt += tl.sum(cand.to(tl.int32), axis=1)
                if tl.max(cnt, axis=0) > CAP - BLOCK_M:  # the next tile could overflow some row
                    cnt, tau = _compact(
                        cand_ptr,
                        row_cnt_ptr,
                        row_tau_ptr,
                        slot_base,
                        row_base,
                        cnt,
                        ok,
                        BLOCK_N,
                        KP,
                        CAP,
                        COMPACT_ROWS,
                    )
            else:  # pre: [BLOCK_M latents, BLOCK_N tokens]
                if MODE == _JUMPRELU:
                    thr = tl.load(thr_ptr + cols, mask=cols < M, other=0.0).to(tl.float32)
                    z = tl.where(pre > thr[:, None], pre, 0.0)
                else:
                    z = tl.maximum(pre, 0.0)
                z = tl.where((cols < M)[:, None] & ok[None, :], z, 0.0)
                fired = z > 0.0
                if STATS:  # int32/fp32 partials over the token tile, one atomic per latent
                    margin = tl.load(margin_ptr + cols, mask=cols < M, other=0.0).to(tl.float32)
                    in_band = fired & (z <= margin[:, None])
                    tl.atomic_add(
                        margin_count_ptr + cols,
                        tl.sum(in_band.to(tl.int32), axis=1).to(tl.int64),
                        mask=cols < M,
                        sem="relaxed",
                    )
                    _add_counts(
                        fire_ptr, max_ptr, cols, tl.sum(fired.to(tl.int32), axis=1), tl.max(z, axis=1), cols < M
                    )
                    if ATOMIC_SUMS:
                        _add_sums(sum_ptr, sq_ptr, cols, tl.sum(z, axis=1), tl.sum(z * z, axis=1), cols < M)
                    else:
                        tl.store(part_sum_ptr + tile * M + cols, tl.sum(z, axis=1), mask=cols < M)
                        tl.store(part_sq_ptr + tile * M + cols, tl.sum(z * z, axis=1), mask=cols < M)
                if CODES == _WRITE_CODES:
                    rank = nnz[None, :] + tl.cumsum(fired.to(tl.int32), axis=0) - 1
                    pos = start[None, :] + rank.to(tl.int64)
                    in_row = fired & (rank < room[None, :])  # a row never writes past its own range
                    tl.store(
                        code_idx_ptr + pos, tl.broadcast_to(cols.to(tl.int64)[:, None], [BLOCK_M, BLOCK_N]), mask=in_row
                    )
                    tl.store(code_val_ptr + pos, z, mask=in_row)
                if CODES != _NO_CODES:
                    nnz += tl.sum(fired.to(tl.int32), axis=0)
        if MODE == _TOPK:
            cnt, _ = _compact(
                cand_ptr,
                row_cnt_ptr,
                row_tau_ptr,
                slot_base,
                row_base,
                cnt,
                ok,
                BLOCK_N,
                KP,
                CAP,
                COMPACT_ROWS,
            )
            j = tl.arange(0, KP)
            slots = cand_ptr + slot_base + local[:, None] * CAP + j[None, :]
            val, idx = _entry_parts(tl.load(slots))
            tl.debug_barrier()  # read before the buffers are overwritten (below, or by the next token tile)
            sel = ok[:, None] & (j[None, :] < K) & (j[None, :] < cnt[:, None])
            z = tl.where(sel, tl.maximum(val, 0.0), 0.0)
            if STATS:
                fired = z > 0.0
                _add_counts(fire_ptr, max_ptr, idx, fired, z, fired)
                if ATOMIC_SUMS:
                    _add_sums(sum_ptr, sq_ptr, idx, z, z * z, fired)
                else:
                    tl.store(slots, _entry(z, idx))
                    tl.debug_barrier()  # every row's selection is in its slots
                    _tile_sums_by_row(
                        cand_ptr, slot_base, part_sum_ptr + tile * M, part_sq_ptr + tile * M, BLOCK_N, KP, CAP
                    )
            if CODES == _WRITE_CODES:
                out = rows.to(tl.int64)[:, None] * K + j[None, :]
                in_range = (rows < N)[:, None] & (j[None, :] < K)
                tl.store(code_idx_ptr + out, tl.where(sel, idx.to(tl.int64), -1), mask=in_range)
                tl.store(code_val_ptr + out, z, mask=in_range)
        elif CODES == _COUNT_ROWS:
            tl.store(row_ptr + rows, nnz.to(tl.int64), mask=rows < N)


# -- launcher --------------------------------------------------------------------------------------
#: Most bytes of per-tile partial sums (fp32 Σz and Σz², per token tile and latent) one launch holds;
#: a batch that needs more runs in chunks of whole waves of token tiles, each reduced after its launch.
PARTIAL_BYTES = 64 << 20


class _Encode(NamedTuple):
    """What every launch of one encode shares: the operands as the kernel reads them, the totals it
    adds into, the top-k scratch, the persistent grid size and the launch's constexprs and options."""

    w: Tensor  # W_enc as multiplied (see _encoder_weights)
    b_dec: Tensor
    bias: Tensor  # b_enc, or with HALF_DOT b_enc − b_dec @ w
    thr: Tensor
    margin: Tensor
    out: BatchStats
    scratch: tuple[Tensor, Tensor, Tensor]  # top-k candidates, counts, thresholds
    k: int
    nprog: int
    launch: dict[str, Any]


def _encoder_weights(x: Tensor, sae: SAE, interp: bool) -> tuple[Tensor, bool]:
    """W_enc as the kernel multiplies it, and whether x and it go to the dot as loaded (HALF_DOT).

    16-bit activations with float32 weights: W_enc rounded to the activations' dtype, afresh on each
    call (no cache can go stale; see :func:`fused_batch_stats`). bf16 dots are wrong in Triton's
    interpreter, so there bf16 takes the upcast path, with the same rounded weights.
    """
    w = sae.W_enc.detach()
    if x.dtype in _HALF and w.dtype == torch.float32:
        w = w.to(x.dtype)
    return w, w.dtype == x.dtype and x.dtype in _HALF and not (interp and x.dtype == torch.bfloat16)


def _folded_bias(w: Tensor, sae: SAE) -> Tensor:
    """b_enc − b_dec @ w as float32, accumulated in float64 (one read of w), on every call."""
    d, m = w.shape
    out = torch.empty(m, dtype=torch.float32, device=w.device)
    block_m = 128
    _fold_bias_kernel[(triton.cdiv(m, block_m),)](
        w, sae.b_enc.detach(), sae.b_dec.detach(), out, d, m, BLOCK_D=32, BLOCK_M=block_m, num_warps=4
    )
    return out


def _interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (TRITON_INTERPRET=1 when this module was imported)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_encode_stats_kernel, InterpretedFunction)


def _pow2_at_least(n: int, floor: int = 16) -> int:
    """The smallest power of two >= n, and at least ``floor``."""
    return max(floor, int(triton.next_power_of_2(max(1, n))))


def _check_pow2(name: str, value: int, lo: int = 16) -> int:
    """``value`` as an int; ValueError unless it is a power of two >= ``lo``."""
    if int(value) != value or value < lo or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {lo}; got {value!r}")
    return int(value)


def _validate(x: Tensor, sae: SAE, activation: Activation, k: int | None) -> int | None:
    """Raise unless the kernel can encode ``x`` with ``sae`` in ``activation``; returns k as an int (None but in top-k)."""
    check_activations(x, sae)
    if x.ndim != 2:
        raise ValueError(f"the kernel takes activations [N, d]; got shape {tuple(x.shape)} (reshape(-1, d) first)")
    if sae.W_enc.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"SAE weights must be float32, float16 or bfloat16; got {sae.W_enc.dtype}")
    k = EncodeSpec.checked(sae, activation, k).k
    if k is not None and k > MAX_K:
        raise ValueError(f"the Triton top-k kernel supports k <= {MAX_K}; got k={k}")
    named: dict[str, Tensor] = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    if activation == "jumprelu":
        named["threshold"] = sae.jumprelu_threshold()
    for name, p in named.items():
        if p.device != x.device:
            raise ValueError(f"activations are on {x.device} but the SAE's {name} is on {p.device}")
        if not p.is_contiguous():
            raise ValueError(
                f"the kernel needs a contiguous SAE.{name} (strides {p.stride()}); call .contiguous() on it"
            )
    if x.shape[0] > 1 and x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"the kernel needs activations contiguous along d (strides {x.stride()}); pass x.contiguous()")
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "the Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 before pyfloor.kernels is "
            "imported (or use the torch reference, backend='torch')"
        )
    return k


def _prepare(
    x: Tensor, sae: SAE, activation: Activation, k: int | None, knobs: KernelOptions, reduction: Reduction = "fixed"
) -> _Encode:
    """Operands, scratch, zeroed totals and launch settings of one encode of x [N > 0, d] (validated)
    with the tuning ``knobs`` of :func:`fused_batch_stats` (absent or None: the defaults)."""
    n, d = x.shape
    m, dev = sae.n_latents, x.device
    interp = _interpreting()
    topk = activation == "topk"
    bn = _check_pow2("block_n", knobs.get("block_n") or (64 if interp else 128))
    bm = _check_pow2("block_m", knobs.get("block_m") or 128)
    bk = _check_pow2("block_k", knobs.get("block_k") or 64)
    bn, bm, bk = min(bn, _pow2_at_least(n)), min(bm, _pow2_at_least(m)), min(bk, _pow2_at_least(d))
    kp = triton.next_power_of_2(k) if topk else 1
    slots = knobs.get("buffer_slots") or triton.next_power_of_2(kp + 2 * bm)
    cap = _check_pow2("buffer_slots", slots, lo=kp + bm) if topk else 1
    rows_per_sort = min(bn, _check_pow2("compact_rows", knobs.get("compact_rows") or (bn if interp else 16), lo=1))
    num_programs = knobs.get("num_programs")
    if num_programs is None:
        num_programs = 4 if interp else torch.cuda.get_device_properties(dev).multi_processor_count
    nprog = max(1, min(int(num_programs), triton.cdiv(n, bn)))

    w, half = _encoder_weights(x, sae, interp)
    bias = _folded_bias(w, sae) if half else sae.b_enc.detach()
    thr = sae.jumprelu_threshold().detach() if activation == "jumprelu" else bias
    margins = sae.margins(activation)
    margin = bias if margins is None else margins.contiguous()  # top-k: unused
    out = BatchStats.zeros(m, dev)
    if topk:
        if nprog * bn * cap >= 2**31:
            raise ValueError(f"top-k scratch of {nprog} programs × {bn} rows × {cap} slots overflows int32 offsets")
        scratch = (
            torch.empty(nprog * bn * cap, dtype=torch.int64, device=dev),
            torch.empty(nprog * bn, dtype=torch.int32, device=dev),
            torch.empty(nprog * bn, dtype=torch.float32, device=dev),
        )
    else:
        scratch = (out.fire_count, out.fire_count, out.act_max)  # unused
    launch: dict[str, Any] = dict(BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, KP=kp, CAP=cap, COMPACT_ROWS=rows_per_sort)
    launch.update(MODE=MODES[activation], ATOMIC_SUMS=reduction == "atomic", HALF_DOT=half)
    launch["INPUT_PRECISION"] = knobs.get("input_precision", "ieee")
    launch["num_warps"] = knobs.get("num_warps") or (8 if bn * bm >= 128 * 128 else 4)
    launch["num_stages"] = knobs.get("num_stages") or 3
    return _Encode(w, sae.b_dec.detach(), bias, thr, margin, out, scratch, k or 0, nprog, launch)


def _launch(
    enc: _Encode,
    x: Tensor,
    *,
    stats: bool,
    codes: int,
    row: Tensor,
    idx: Tensor,
    val: Tensor,
    part: tuple[Tensor, Tensor] | None = None,
) -> None:
    """One launch of the encode kernel over the rows of x (``part``: the [T, m] fp32 tile partials)."""
    o = enc.out
    part_sum, part_sq = part or (o.act_max, o.act_max)  # unused without STATS or with ATOMIC_SUMS
    n, d = x.shape
    grid = (max(1, min(enc.nprog, triton.cdiv(n, enc.launch["BLOCK_N"]))),)
    _encode_stats_kernel[grid](
        x,
        enc.w,
        enc.b_dec,
        enc.bias,
        enc.thr,
        o.fire_count,
        o.act_sum,
        o.act_sq_sum,
        part_sum,
        part_sq,
        o.act_max,
        enc.margin,
        o.margin_count,
        o.n_nonfinite,
        row,
        idx,
        val,
        *enc.scratch,
        n,
        d,
        enc.w.shape[1],
        enc.k,
        x.stride(0),
        STATS=stats,
        CODES=codes,
        **enc.launch,
    )


def _write_csr(enc: _Encode, x: Tensor, offsets: Tensor, idx: Tensor, val: Tensor) -> None:
    """ReLU/JumpReLU codes of x into idx/val at the CSR ``offsets`` [N + 1]: row r writes only [offsets[r], offsets[r + 1])."""
    _launch(enc, x, stats=False, codes=_WRITE_CODES.value, row=offsets, idx=idx, val=val)


def fused_batch_stats(
    x: Tensor,
    sae: SAE,
    activation: Activation,
    k: int | None = None,
    *,
    want_codes: bool = False,
    block_n: int | None = None,
    block_m: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    num_programs: int | None = None,
    buffer_slots: int | None = None,
    compact_rows: int | None = None,
    input_precision: InputPrecision = "ieee",
    reduction: Reduction = "fixed",
) -> BatchStats:
    """Per-latent statistics (and optionally codes) of activations x [N, d] in one fused pass.

    ``activation`` is 'relu', 'jumprelu' or 'topk' (with 1 <= k <= min(m, 128)). Returns the
    :class:`pyfloor.encode.BatchStats` that the torch reference returns: int64 fire counts, float64
    Σz and Σz², float32 max, int64 margin-band counts (zeros for top-k), the number of non-finite
    rows, and with ``want_codes`` the codes (top-k: k per token; ReLU/JumpReLU: CSR, found by a
    counting launch and a writing launch).

    Tuning knobs (defaults suit an H100; blocks are clamped to the problem): ``block_n`` tokens ×
    ``block_m`` latents per tile, ``block_k`` the reduction step over d, ``num_programs`` the
    persistent grid (default: one per SM), ``buffer_slots`` the per-token top-k candidate buffer
    (a power of two >= KP + block_m, KP = k rounded up to a power of two; default the one >=
    KP + 2·block_m), ``compact_rows`` rows sorted at a time.
    ``input_precision`` of fp32 dots: 'ieee' (exact fp32, the default) or 'tf32' (faster on GPUs).

    Dtypes: 16-bit x and W_enc of the same dtype are multiplied as they are (fp32 accumulation),
    with b_dec folded into the bias (b_enc − b_dec @ W_enc, float64, recomputed on every call).
    16-bit x with float32 weights: W_enc is rounded to x's dtype (on every call) and multiplied
    so, on tensor cores; the result is the reference's on the SAE with W_enc so rounded. Other
    mixtures upcast both operands to float32.

    Reproducibility (``reduction="fixed"``, the default): counts and maxima are exact in any order;
    Σz and Σz² are fp32 partials per token tile, stored at the tile's slot and added in tile
    order, so the same inputs and knobs give the same bits on every run, for any ``num_programs``.
    Partials of at most :data:`PARTIAL_BYTES` (or one wave of tiles) are held at a time.
    ``reduction="atomic"`` adds them with float64 atomics in arrival order instead.

    Raises
    ------
    ValueError
        For activations that are not [N, d_in] float32/float16/bfloat16 contiguous along d, SAE
        weights of another dtype or device or not contiguous, an activation/k the SAE cannot use
        or k > 128, a tuning knob that is not a power of two in range, an unknown
        ``input_precision`` or ``reduction``, or top-k scratch that would overflow int32 offsets.
    RuntimeError
        For CPU tensors outside Triton's interpreter.
    """
    k = _validate(x, sae, activation, k)
    if input_precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"input_precision must be 'ieee', 'tf32' or 'tf32x3'; got {input_precision!r}")
    if reduction not in ("fixed", "atomic"):
        raise ValueError(f"reduction must be 'fixed' or 'atomic'; got {reduction!r}")
    n, m, dev = x.shape[0], sae.n_latents, x.device
    topk = activation == "topk"
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        codes = SparseCodes(empty, empty.float(), torch.zeros(1, dtype=torch.int64, device=dev)) if want_codes else None
        return BatchStats.zeros(m, dev)._replace(codes=codes)
    knobs = KernelOptions(
        block_n=block_n,
        block_m=block_m,
        block_k=block_k,
        num_warps=num_warps,
        num_stages=num_stages,
        num_programs=num_programs,
        buffer_slots=buffer_slots,
        compact_rows=compact_rows,
        input_precision=input_precision,
    )
    enc = _prepare(x, sae, activation, k, knobs, reduction)
    out, bn, placeholder = enc.out, enc.launch["BLOCK_N"], enc.out.fire_count
    topk_codes = want_codes and k is not None  # top-k (_validate gives an int k exactly then)
    if topk_codes:
        code_idx = torch.empty(n * enc.k, dtype=torch.int64, device=dev)
        code_val = torch.empty(n * enc.k, dtype=torch.float32, device=dev)
    row = torch.empty(n, dtype=torch.int64, device=dev) if want_codes and not topk else placeholder

    tiles = triton.cdiv(n, bn)
    chunk = tiles if reduction == "atomic" else enc.nprog * max(1, PARTIAL_BYTES // (enc.nprog * m * 8))
    partials = None if reduction == "atomic" else torch.empty(2, min(chunk, tiles), m, dtype=torch.float32, device=dev)
    codes_mode = _WRITE_CODES if topk_codes else (_COUNT_ROWS if want_codes else _NO_CODES)
    for lo in range(0, n, chunk * bn):
        hi = min(n, lo + chunk * bn)
        part = None
        if partials is not None:
            t = triton.cdiv(hi - lo, bn)
            part = (partials[0, :t], partials[1, :t])
            if topk:
                partials[:, :t].zero_()
        _launch(
            enc,
            x[lo:hi],
            stats=True,
            codes=codes_mode.value,
            row=row[lo:hi] if row is not placeholder else row,
            idx=code_idx[lo * enc.k :] if topk_codes else placeholder,
            val=code_val[lo * enc.k :] if topk_codes else out.act_max,
            part=part,
        )
        if part is not None:
            _reduce_partials_kernel[(triton.cdiv(m, 256),)](
                part[0], part[1], out.act_sum, out.act_sq_sum, part[0].shape[0], m, BLOCK=256, UNROLL=8, num_warps=2
            )
    codes = None
    if topk_codes:
        codes = SparseCodes(code_idx, code_val, torch.arange(n + 1, dtype=torch.int64, device=dev) * enc.k)
    elif want_codes:
        offsets = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        torch.cumsum(row, 0, out=offsets[1:])
        nnz = int(offsets[-1])
        code_idx = torch.empty(nnz, dtype=torch.int64, device=dev)
        code_val = torch.empty(nnz, dtype=torch.float32, device=dev)
        if nnz:
            _write_csr(enc, x, offsets, code_idx, code_val)
        codes = SparseCodes(code_idx, code_val, offsets)
    return out._replace(codes=codes)
