"""The sweep kernel: each persistent program takes whole token tiles and sweeps all m latents for each.

It computes every activation's statistics, the top-k codes and the ReLU/JumpReLU codes in CSR form
(see :func:`_encode_stats_kernel`); its K loop is pipelined with cp.async and drains at every
latent tile. ``benchmarks/KERNELS.md`` §2 describes it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bitonic import topk_desc
from .tiles import (
    _COUNT_ROWS,
    _JUMPRELU,
    _NO_CODES,
    _SENTINEL,
    _TOPK,
    _WRITE_CODES,
    _add_counts,
    _add_row_sums,
    _add_sums,
    _entry,
    _entry_parts,
    _finite_rows,
    _key,
    _key_entry,
    _publish_counts,
)


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
    _publish_counts(row_cnt_ptr, row_base, cnt)
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
        _add_row_sums(part_sum, part_sq, idx, z, z > 0.0)
        tl.debug_barrier()


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
