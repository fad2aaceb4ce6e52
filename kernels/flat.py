"""The flat kernel: ReLU/JumpReLU statistics over one flattened persistent loop of (token tile, latent tile).

Each program takes tiles ``pid, pid + P, …`` of the ``T × J`` (token tile, latent tile) grid, in
groups of ``GROUP`` token tiles that share each latent tile in turn (one W_enc tile serves GROUP
token tiles from L2). The tile loop and its K loop form one loop nest that Triton flattens and
software-pipelines as one (``tl.range(..., flatten=True)``), so the loads of the next tile are in
flight while a tile's statistics are computed: the pipeline never drains between tiles.

Operands come through TMA tensor descriptors when their strides allow it (16-byte aligned rows),
else through masked pointer loads; the rows outside x and the columns outside W_enc read as zeros
either way. The epilogue is lean: no column mask on the tile (a zero W_enc column with a zero bias
gives z = 0, which adds nothing), one select per value for the row mask, which also drops the rows
the flag pass (:func:`.tiles._row_flags_kernel`) found non-finite, and the tile in two halves of
tokens so that each half's values die before the next is formed (128 registers at 8 warps for
128 × 128 tiles: two programs fit on an SM). ``benchmarks/KERNELS.md`` §9 has the numbers.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import _JUMPRELU, _add_counts, _add_sums, _halves


@triton.jit
def _tile_of(tile_id, n_t, n_j, GROUP: tl.constexpr):
    """(token tile, latent tile) of flat tile ``tile_id`` of a ``n_t × n_j`` grid: GROUP token tiles take each
    latent tile in turn."""
    in_group = GROUP * n_j
    first = (tile_id // in_group) * GROUP
    size = tl.minimum(n_t - first, GROUP)
    return first + (tile_id % in_group) % size, (tile_id % in_group) // size


@triton.jit
def _load_operands(x_ptr, w_ptr, b_dec_ptr, t, j, ki, N, D, M, stride_xn, HALF_DOT, TMA, BLOCK_N, BLOCK_M, BLOCK_K):
    """x [BLOCK_N, BLOCK_K] and W_enc [BLOCK_K, BLOCK_M] at step ``ki`` of tile (t, j), zero outside the arrays.

    TMA: x_ptr and w_ptr are tensor descriptors; else pointers. Without HALF_DOT both are upcast to
    float32 and b_dec is subtracted from x (with it, b_dec is folded into the bias by the launcher).
    """
    ks = ki * BLOCK_K + tl.arange(0, BLOCK_K)
    if TMA:
        a = x_ptr.load([t * BLOCK_N, ki * BLOCK_K])
        w = w_ptr.load([ki * BLOCK_K, j * BLOCK_M])
    else:
        rows = t * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = j * BLOCK_M + tl.arange(0, BLOCK_M)
        a = tl.load(
            x_ptr + rows.to(tl.int64)[:, None] * stride_xn + ks[None, :],
            mask=(rows < N)[:, None] & (ks < D)[None, :],
            other=0.0,
        )
        w_rows = w_ptr + ks.to(tl.int64)[:, None] * M  # d·m may pass 2**31
        w = tl.load(w_rows + cols[None, :], mask=(ks < D)[:, None] & (cols < M)[None, :], other=0.0)
    if not HALF_DOT:
        a = a.to(tl.float32) - tl.load(b_dec_ptr + ks, mask=ks < D, other=0.0).to(tl.float32)[None, :]
        w = w.to(tl.float32)
    return a, w


@triton.jit
def _flat_stats_kernel(
    x_ptr,
    w_ptr,
    b_dec_ptr,
    bias_ptr,
    thr_ptr,
    margin_ptr,
    ok_ptr,
    fire_ptr,
    max_ptr,
    margin_count_ptr,
    part_sum_ptr,
    part_sq_ptr,
    sum_ptr,
    sq_ptr,
    N,
    D,
    M,
    stride_xn,
    MODE: tl.constexpr,
    ATOMIC_SUMS: tl.constexpr,
    HALF_DOT: tl.constexpr,
    TMA: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
):
    """ReLU (MODE 0) or JumpReLU (MODE 1) statistics of x [N, D] over latent-major tiles [BLOCK_M, BLOCK_N].

    Per tile: pre = W_encᵀ xᵀ (fp32 accumulation) + bias; z = act(pre) on the rows with ``ok_ptr`` set
    (int8 [N]), 0 elsewhere; int32 fire and margin-band counts and the max go atomically into the
    int64 / float32 totals, the fp32 Σz and Σz² to row t of ``part_sum_ptr``/``part_sq_ptr`` [T, M]
    (with ATOMIC_SUMS: atomically into the float64 totals ``sum_ptr``/``sq_ptr`` instead).
    """
    n_t = tl.cdiv(N, BLOCK_N)
    n_j = tl.cdiv(M, BLOCK_M)
    k_tiles = tl.cdiv(D, BLOCK_K)
    HALF: tl.constexpr = BLOCK_N // 2
    # the epilogue finds its tile from its own counter: nothing the loads compute is carried to it
    tile_c = tl.program_id(0) - tl.num_programs(0)
    for tile_id in tl.range(tl.program_id(0), n_t * n_j, tl.num_programs(0), flatten=True):
        t, j = _tile_of(tile_id, n_t, n_j, GROUP)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for ki in range(k_tiles):
            a, w = _load_operands(
                x_ptr, w_ptr, b_dec_ptr, t, j, ki, N, D, M, stride_xn, HALF_DOT, TMA, BLOCK_N, BLOCK_M, BLOCK_K
            )
            acc = tl.dot(tl.trans(w), tl.trans(a), acc, input_precision=INPUT_PRECISION)

        tile_c += tl.num_programs(0)
        t, j = _tile_of(tile_c, n_t, n_j, GROUP)
        cols = j * BLOCK_M + tl.arange(0, BLOCK_M)
        col_ok = cols < M
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        margin = tl.load(margin_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if MODE == _JUMPRELU:
            thr = tl.load(thr_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        fired_n = tl.zeros([BLOCK_M], dtype=tl.int32)
        band_n = tl.zeros([BLOCK_M], dtype=tl.int32)
        z_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        z_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        z_max = tl.zeros([BLOCK_M], dtype=tl.float32)
        halves = _halves(acc)
        for h in tl.static_range(2):
            pre = halves[h] + bias[:, None]
            rows = t * BLOCK_N + h * HALF + tl.arange(0, HALF)
            ok = (tl.load(ok_ptr + rows, mask=rows < N, other=0) != 0)[None, :]
            if MODE == _JUMPRELU:
                z = tl.where(ok & (pre > thr[:, None]), pre, 0.0)
            else:
                z = tl.where(ok, tl.maximum(pre, 0.0), 0.0)
            fired = z > 0.0
            fired_n += tl.sum(fired.to(tl.int32), axis=1)
            band_n += tl.sum((fired & (z <= margin[:, None])).to(tl.int32), axis=1)
            z_sum += tl.sum(z, axis=1)
            z_sq += tl.sum(z * z, axis=1)
            z_max = tl.maximum(z_max, tl.max(z, axis=1))
        tl.atomic_add(margin_count_ptr + cols, band_n.to(tl.int64), mask=col_ok, sem="relaxed")
        _add_counts(fire_ptr, max_ptr, cols, fired_n, z_max, col_ok)
        if ATOMIC_SUMS:
            _add_sums(sum_ptr, sq_ptr, cols, z_sum, z_sq, col_ok)
        else:
            tl.store(part_sum_ptr + t * M + cols, z_sum, mask=col_ok)
            tl.store(part_sq_ptr + t * M + cols, z_sq, mask=col_ok)
