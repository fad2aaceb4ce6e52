"""The select kernel: top-k statistics and codes with per-row candidate buffers refreshed by selection.

Each persistent program takes whole token tiles and sweeps all m latents for each (token-major
tiles [BLOCK_N tokens, BLOCK_M latents], x and W_enc through TMA descriptors where their rows
allow it). A pre-activation enters its token's buffer (values and latent indices in two arrays)
only if it beats the token's threshold τ; a tile's epilogue works in two halves of latents so that
its candidate positions (a scan along the row) fit in registers. When some buffer could overflow
on the next tile it is cut to its best k by selection (an exact bitwise search for the k-th best
value, ties broken to the lower latent index), which also gives the new τ. After the sweep the same
selection leaves exactly the best k of each token; only the codes sort them, k entries a token,
and statistics-only runs never sort. ``benchmarks/KERNELS.md`` §9 has the numbers.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bitonic import topk_desc
from .flat import _load_operands
from .tiles import (
    _SENTINEL,
    _add_counts,
    _add_row_sums,
    _add_sums,
    _halves,
    _key_parts,
    _ordered_bits,
    _ordered_value,
    _publish_counts,
    _sort_key,
)

_INT_MIN = tl.constexpr(-(2**31))


@triton.jit
def _kth_key(key, valid, K):
    """Per row of ``key`` [R, C] (int32), the largest t with at least K valid entries >= t: the K-th
    largest valid key (INT_MIN where a row holds fewer than K), found bit by bit from the sign down."""
    t = tl.where(tl.sum((valid & (key >= 0)).to(tl.int32), axis=1) >= K, 0, _INT_MIN).to(tl.int32)
    for b in tl.static_range(31):
        trial = t | (1 << (30 - b))
        t = tl.where(tl.sum((valid & (key >= trial[:, None])).to(tl.int32), axis=1) >= K, trial, t)
    return t


@triton.jit
def _best_k(v, idx, valid, K):
    """The best K valid entries of each row of (value v, latent idx) [R, C] as a mask — by value, ties to
    the lower index; every valid entry where a row holds fewer — and the K-th best value of each row."""
    key = _ordered_bits(v)
    t = _kth_key(key, valid, K)
    above = valid & (key > t[:, None])
    tied = valid & (key == t[:, None])
    need = K - tl.sum(above.to(tl.int32), axis=1)
    sel = above | tied
    if tl.max(tl.sum(tied.to(tl.int32), axis=1) - need, axis=0) > 0:  # more ties than places: lowest indices
        lim = tl.zeros_like(need)
        for b in tl.static_range(31):  # the largest lim with fewer than `need` tied indices below it
            trial = lim | (1 << (30 - b))
            below = tl.sum((tied & (idx < trial[:, None])).to(tl.int32), axis=1)
            lim = tl.where(below < need, trial, lim)
        sel = above | (tied & (idx <= lim[:, None]))
    return sel, _ordered_value(t)


@triton.jit
def _keep_best(
    val_ptr,
    idx_ptr,
    cnt_ptr,
    tau_ptr,
    slot_base,
    row_base,
    cnt,
    ok,
    K,
    BLOCK_N: tl.constexpr,
    CAP: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Cut every row's buffer (``cnt`` entries a row) to its best K entries (:func:`_best_k`), moved to slots [0, kept).

    Returns kept = min(count, K) and the new thresholds: the K-th best value (−inf for rows holding
    fewer than K; +inf for rows not ``ok``). Works ROWS rows at a time; counts and thresholds go
    through scratch (a register tensor cannot be updated a row chunk at a time), with barriers.
    """
    local = tl.arange(0, BLOCK_N)
    slots = tl.arange(0, CAP)
    _publish_counts(cnt_ptr, row_base, cnt)
    for r0 in range(0, BLOCK_N, ROWS):
        r = r0 + tl.arange(0, ROWS)
        n = tl.load(cnt_ptr + row_base + r)
        valid = slots[None, :] < n[:, None]
        at = slot_base + r[:, None] * CAP + slots[None, :]
        v = tl.load(val_ptr + at, mask=valid, other=0.0)
        idx = tl.load(idx_ptr + at, mask=valid, other=0)
        sel, kth = _best_k(v, idx, valid, K)
        dst = slot_base + r[:, None] * CAP + tl.cumsum(sel.to(tl.int32), axis=1) - 1
        tl.debug_barrier()  # these rows are read before their slots are rewritten
        tl.store(val_ptr + dst, v, mask=sel)
        tl.store(idx_ptr + dst, idx, mask=sel)
        tl.store(cnt_ptr + row_base + r, tl.sum(sel.to(tl.int32), axis=1))
        tl.store(tau_ptr + row_base + r, tl.where(n >= K, kth, float("-inf")))
    tl.debug_barrier()
    cnt = tl.load(cnt_ptr + row_base + local)
    return cnt, tl.where(ok, tl.load(tau_ptr + row_base + local), float("inf"))


@triton.jit
def _select_kernel(
    x_ptr,
    w_ptr,
    b_dec_ptr,
    bias_ptr,
    ok_ptr,
    fire_ptr,
    max_ptr,
    part_sum_ptr,
    part_sq_ptr,
    sum_ptr,
    sq_ptr,
    code_idx_ptr,
    code_val_ptr,
    val_ptr,
    idx_ptr,
    cnt_ptr,
    tau_ptr,
    N,
    D,
    M,
    K,
    stride_xn,
    ATOMIC_SUMS: tl.constexpr,
    CODES: tl.constexpr,
    HALF_DOT: tl.constexpr,
    TMA: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KP: tl.constexpr,
    CAP: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Top-k statistics (and with CODES the codes [N, K]) of x [N, D], each program sweeping its token tiles.

    Scratch of this program: CAP candidate slots a row (values ``val_ptr`` fp32, latents ``idx_ptr``
    int32), per-row counters ``cnt_ptr`` and thresholds ``tau_ptr``. Rows without ``ok_ptr`` set take
    no candidate (τ = +inf): codes index −1, value 0. Counts and maxima go atomically into the
    totals; Σz and Σz² of token tile t are added row after row into row t of ``part_sum_ptr``/
    ``part_sq_ptr`` [T, M] (zeroed by the launcher), or with ATOMIC_SUMS atomically into the float64 totals.
    """
    pid = tl.program_id(0)
    n_t = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(D, BLOCK_K)
    local = tl.arange(0, BLOCK_N)
    slot_base = pid * BLOCK_N * CAP  # int32: the launcher checks
    row_base = pid * BLOCK_N
    HALF_M: tl.constexpr = BLOCK_M // 2
    for tile in range(pid, n_t, tl.num_programs(0)):
        tl.debug_barrier()  # the last token tile's reads of this program's buffers are done
        rows = tile * BLOCK_N + local
        ok = tl.load(ok_ptr + rows, mask=rows < N, other=0) != 0
        tau = tl.where(ok, float("-inf"), float("inf"))
        cnt = tl.zeros([BLOCK_N], dtype=tl.int32)
        m0 = 0
        while m0 < M:  # segments of latent tiles, each ended by a cut (the last one: the final selection)
            more = m0 < M
            while more:  # the next tile cannot overflow any row
                acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
                for ki in range(k_tiles):
                    a, w = _load_operands(
                        x_ptr,
                        w_ptr,
                        b_dec_ptr,
                        tile,
                        m0 // BLOCK_M,
                        ki,
                        N,
                        D,
                        M,
                        stride_xn,
                        HALF_DOT,
                        TMA,
                        BLOCK_N,
                        BLOCK_M,
                        BLOCK_K,
                    )
                    acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
                halves = _halves(acc)
                for h in tl.static_range(2):
                    cols = m0 + h * HALF_M + tl.arange(0, HALF_M)
                    bias = tl.load(bias_ptr + cols, mask=cols < M, other=float("-inf")).to(tl.float32)
                    pre = halves[h] + bias[None, :]
                    cand = pre > tau[:, None]  # columns past M are −inf: never
                    at = slot_base + local[:, None] * CAP + cnt[:, None] + tl.cumsum(cand.to(tl.int32), axis=1) - 1
                    tl.store(val_ptr + at, pre, mask=cand)
                    tl.store(idx_ptr + at, tl.broadcast_to(cols[None, :], [BLOCK_N, HALF_M]), mask=cand)
                    cnt += tl.sum(cand.to(tl.int32), axis=1)
                m0 += BLOCK_M
                more = (m0 < M) & (tl.max(cnt, axis=0) <= CAP - BLOCK_M)
            cnt, tau = _keep_best(
                val_ptr, idx_ptr, cnt_ptr, tau_ptr, slot_base, row_base, cnt, ok, K, BLOCK_N, CAP, ROWS
            )

        j = tl.arange(0, KP)
        for r0 in range(0, BLOCK_N, ROWS):  # counts, maxima (atomic sums) and codes, ROWS rows at a time
            r = r0 + tl.arange(0, ROWS)
            at = slot_base + r[:, None] * CAP + j[None, :]
            held = j[None, :] < tl.load(cnt_ptr + row_base + r)[:, None]
            idx = tl.load(idx_ptr + at, mask=held, other=0)
            v = tl.load(val_ptr + at, mask=held, other=0.0)
            z = tl.maximum(v, 0.0)
            fired = held & (z > 0.0)
            _add_counts(fire_ptr, max_ptr, idx, fired, z, fired)
            if ATOMIC_SUMS:
                _add_sums(sum_ptr, sq_ptr, idx, z, z * z, fired)
            if CODES:  # sorted: descending value, ties to the lower index; slots past a row's count stay last
                v_s, i_s = _key_parts(topk_desc(tl.where(held, _sort_key(v, idx), _SENTINEL), KP))
                token = tile * BLOCK_N + r
                out = token.to(tl.int64)[:, None] * K + j[None, :]
                in_range = (token < N)[:, None] & (j[None, :] < K)
                tl.store(code_idx_ptr + out, tl.where(held, i_s.to(tl.int64), -1), mask=in_range)
                tl.store(code_val_ptr + out, tl.where(held, tl.maximum(v_s, 0.0), 0.0), mask=in_range)
        if not ATOMIC_SUMS:
            for row in range(0, BLOCK_N):  # a row selects a latent at most once; rows in order
                n_r = tl.load(cnt_ptr + row_base + row)
                z_r = tl.maximum(tl.load(val_ptr + slot_base + row * CAP + j, mask=j < n_r, other=0.0), 0.0)
                i_r = tl.load(idx_ptr + slot_base + row * CAP + j, mask=j < n_r, other=0)
                _add_row_sums(part_sum_ptr + tile * M, part_sq_ptr + tile * M, i_r, z_r, z_r > 0.0)
                tl.debug_barrier()  # this row's adds land before the next row's
