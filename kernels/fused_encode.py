"""Fused SAE encode + per-latent statistics: one Triton kernel and its launcher.

For activations x [N, d] and an SAE (W_enc [d, m], b_enc [m], b_dec [d], threshold [m]) the kernel
computes z = act((x − b_dec) @ W_enc + b_enc) tile by tile and folds each tile straight into

* per-latent statistics: fire count (z > 0), Σz, Σz², max z and, for ReLU/JumpReLU, the count of
  active values within the latent's margin band (z ≤ ``SAE.margins()``) — int32/fp32 partials
  over a token tile, added atomically into int64/float64 (max: float32) totals;
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

import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from pyfloor.encode_types import (
    SUPPORTED_DTYPES,
    BatchStats,
    EncodeSpec,
    InputPrecision,
    SparseCodes,
    check_activations,
)
from pyfloor.sae import SAE, Activation

from .bitonic import topk_desc

__all__ = ["fused_batch_stats", "MAX_K", "MODES"]

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
def _add_stats(fire_ptr, sum_ptr, sq_ptr, max_ptr, idx, n_fired, z_sum, z_sq, z_max, mask):
    """Atomically add counts (int64), sums (float64) and maxima (float32) into the totals at ``idx``."""
    tl.atomic_add(fire_ptr + idx, n_fired.to(tl.int64), mask=mask, sem="relaxed")
    tl.atomic_add(sum_ptr + idx, z_sum.to(tl.float64), mask=mask, sem="relaxed")
    tl.atomic_add(sq_ptr + idx, z_sq.to(tl.float64), mask=mask, sem="relaxed")
    tl.atomic_max(max_ptr + idx, z_max, mask=mask, sem="relaxed")


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
      the token tile (int32 count, fp32 Σz, Σz², max) are added atomically into the
      int64/float64/float32 totals;
      CODES = 1 stores each row's number of active latents in ``row_ptr`` [N]; CODES = 2 writes
      the active (index, value) pairs at the CSR offsets ``row_ptr`` [N + 1] (a second launch).
    * MODE topk: pre-activations above the row's threshold go to the row's candidate buffer
      (CAP slots of scratch), compacted to the best KP ≥ K by :func:`_compact` before it could
      overflow; after the sweep the best K give the codes [N, K] (CODES = 2) and, with STATS,
      their atomic per-latent sums.

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
                    _add_stats(
                        fire_ptr,
                        sum_ptr,
                        sq_ptr,
                        max_ptr,
                        cols,
                        tl.sum(fired.to(tl.int32), axis=1),
                        tl.sum(z, axis=1),
                        tl.sum(z * z, axis=1),
                        tl.max(z, axis=1),
                        cols < M,
                    )
                if CODES == _WRITE_CODES:
                    pos = start[None, :] + (nnz[None, :] + tl.cumsum(fired.to(tl.int32), axis=0) - 1).to(tl.int64)
                    tl.store(
                        code_idx_ptr + pos, tl.broadcast_to(cols.to(tl.int64)[:, None], [BLOCK_M, BLOCK_N]), mask=fired
                    )
                    tl.store(code_val_ptr + pos, z, mask=fired)
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
            val, idx = _entry_parts(tl.load(cand_ptr + slot_base + local[:, None] * CAP + j[None, :]))
            tl.debug_barrier()  # read before the next token tile refills the buffers
            sel = ok[:, None] & (j[None, :] < K) & (j[None, :] < cnt[:, None])
            z = tl.where(sel, tl.maximum(val, 0.0), 0.0)
            if STATS:
                fired = z > 0.0
                _add_stats(fire_ptr, sum_ptr, sq_ptr, max_ptr, idx, fired, z, z * z, z, fired)
            if CODES == _WRITE_CODES:
                out = rows.to(tl.int64)[:, None] * K + j[None, :]
                in_range = (rows < N)[:, None] & (j[None, :] < K)
                tl.store(code_idx_ptr + out, tl.where(sel, idx.to(tl.int64), -1), mask=in_range)
                tl.store(code_val_ptr + out, z, mask=in_range)
        elif CODES == _COUNT_ROWS:
            tl.store(row_ptr + rows, nnz.to(tl.int64), mask=rows < N)


# -- launcher --------------------------------------------------------------------------------------
_FOLDED: weakref.WeakKeyDictionary[SAE, tuple[tuple[tuple[int, int], ...], Tensor]] = weakref.WeakKeyDictionary()


def _folded_bias(sae: SAE) -> Tensor:
    """b_enc − b_dec @ W_enc as float32, computed in float64; cached until the SAE's weights change."""
    params = (sae.W_enc, sae.b_enc, sae.b_dec)
    stamp = tuple((p.data_ptr(), p._version) for p in params)
    hit = _FOLDED.get(sae)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    w, b_enc, b_dec = (p.detach() for p in params)
    out = torch.empty(sae.n_latents, dtype=torch.float32, device=w.device)
    step = max(1, 2**22 // sae.d_in)  # float64 copies of at most 32 MiB of W_enc at a time
    for c in range(0, sae.n_latents, step):
        out[c : c + step] = b_enc[c : c + step].double() - b_dec.double() @ w[:, c : c + step].double()
    _FOLDED[sae] = (stamp, out)
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
) -> BatchStats:
    """Per-latent statistics (and optionally codes) of activations x [N, d] in one fused pass.

    ``activation`` is 'relu', 'jumprelu' or 'topk' (with 1 <= k <= min(m, 128)). Returns the
    :class:`pyfloor.encode.BatchStats` that the torch reference returns: int64 fire counts, float64
    Σz and Σz², float32 max, int64 margin-band counts (zeros for top-k), the number of non-finite rows, and with ``want_codes`` the codes
    (top-k: k per token; ReLU/JumpReLU: CSR, found by a counting launch and a writing launch).

    Tuning knobs (defaults suit an H100; blocks are clamped to the problem): ``block_n`` tokens ×
    ``block_m`` latents per tile, ``block_k`` the reduction step over d, ``num_programs`` the
    persistent grid (default: one per SM), ``buffer_slots`` the per-token top-k candidate buffer
    (a power of two >= KP + block_m, KP = k rounded up to a power of two; default the one >=
    KP + 2·block_m), ``compact_rows`` rows sorted at a time.
    ``input_precision`` of fp32 dots: 'ieee' (exact fp32, the default) or 'tf32' (faster on GPUs).
    16-bit x and W_enc of the same dtype are multiplied as they are (fp32 accumulation), with b_dec
    folded into the bias in float64.

    Raises
    ------
    ValueError
        For activations that are not [N, d_in] float32/float16/bfloat16 contiguous along d, SAE
        weights of another dtype or device or not contiguous, an activation/k the SAE cannot use
        or k > 128, a tuning knob that is not a power of two in range, or top-k scratch that would
        overflow int32 offsets.
    RuntimeError
        For CPU tensors outside Triton's interpreter.
    """
    k = _validate(x, sae, activation, k)
    if input_precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"input_precision must be 'ieee', 'tf32' or 'tf32x3'; got {input_precision!r}")
    n, d = x.shape
    m, dev = sae.n_latents, x.device
    interp = _interpreting()
    fire, s1, s2, mx, margin_count, nonfinite, _ = BatchStats.zeros(m, dev)
    topk = activation == "topk"
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        codes = SparseCodes(empty, empty.float(), torch.zeros(1, dtype=torch.int64, device=dev)) if want_codes else None
        return BatchStats(fire, s1, s2, mx, margin_count, nonfinite, codes)

    bn = _check_pow2("block_n", block_n or (64 if interp else 128))
    bm = _check_pow2("block_m", block_m or 128)
    bk = _check_pow2("block_k", block_k or 64)
    bn, bm, bk = min(bn, _pow2_at_least(n)), min(bm, _pow2_at_least(m)), min(bk, _pow2_at_least(d))
    kp = triton.next_power_of_2(k) if topk else 1
    cap = _check_pow2("buffer_slots", buffer_slots or triton.next_power_of_2(kp + 2 * bm), lo=kp + bm) if topk else 1
    rows_per_sort = min(bn, _check_pow2("compact_rows", compact_rows or (bn if interp else 16), lo=1))
    n_tiles = triton.cdiv(n, bn)
    if num_programs is None:
        num_programs = 4 if interp else torch.cuda.get_device_properties(dev).multi_processor_count
    nprog = max(1, min(int(num_programs), n_tiles))

    half = x.dtype == sae.W_enc.dtype and x.dtype in _HALF and not (interp and x.dtype == torch.bfloat16)
    bias = _folded_bias(sae) if half else sae.b_enc.detach()
    thr = sae.jumprelu_threshold().detach() if activation == "jumprelu" else bias
    margins = sae.margins(activation)
    margin = bias if margins is None else margins.contiguous()  # top-k: unused
    if topk:
        if nprog * bn * cap >= 2**31:
            raise ValueError(f"top-k scratch of {nprog} programs × {bn} rows × {cap} slots overflows int32 offsets")
        cand = torch.empty(nprog * bn * cap, dtype=torch.int64, device=dev)
        row_cnt = torch.empty(nprog * bn, dtype=torch.int32, device=dev)
        row_tau = torch.empty(nprog * bn, dtype=torch.float32, device=dev)
    else:
        cand, row_cnt, row_tau = fire, fire, mx  # unused
    if want_codes and k is not None:  # top-k (_validate gives an int k exactly then)
        code_idx = torch.empty(n * k, dtype=torch.int64, device=dev)
        code_val = torch.empty(n * k, dtype=torch.float32, device=dev)
        offsets = torch.arange(n + 1, dtype=torch.int64, device=dev) * k
        row = fire  # unused
    else:
        code_idx, code_val = fire, mx  # written by the second ReLU launch below, if at all
        row = torch.empty(n, dtype=torch.int64, device=dev) if want_codes else fire

    def launch(stats: bool, codes: int, row_arg: Tensor, idx_arg: Tensor, val_arg: Tensor) -> None:
        _encode_stats_kernel[(nprog,)](
            x,
            sae.W_enc.detach(),
            sae.b_dec.detach(),
            bias,
            thr,
            fire,
            s1,
            s2,
            mx,
            margin,
            margin_count,
            nonfinite,
            row_arg,
            idx_arg,
            val_arg,
            cand,
            row_cnt,
            row_tau,
            n,
            d,
            m,
            k or 0,
            x.stride(0),
            MODE=MODES[activation],
            STATS=stats,
            CODES=codes,
            HALF_DOT=half,
            INPUT_PRECISION=input_precision,
            BLOCK_N=bn,
            BLOCK_M=bm,
            BLOCK_K=bk,
            KP=kp,
            CAP=cap,
            COMPACT_ROWS=rows_per_sort,
            num_warps=num_warps or (8 if bn * bm >= 128 * 128 else 4),
            num_stages=num_stages or 3,
        )

    codes_mode = _WRITE_CODES if (want_codes and topk) else (_COUNT_ROWS if want_codes else _NO_CODES)
    launch(True, codes_mode.value, row, code_idx, code_val)
    codes = None
    if want_codes and topk:
        codes = SparseCodes(code_idx, code_val, offsets)
    elif want_codes:
        offsets = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        torch.cumsum(row, 0, out=offsets[1:])
        nnz = int(offsets[-1])
        code_idx = torch.empty(nnz, dtype=torch.int64, device=dev)
        code_val = torch.empty(nnz, dtype=torch.float32, device=dev)
        if nnz:
            launch(False, _WRITE_CODES.value, offsets, code_idx, code_val)
        codes = SparseCodes(code_idx, code_val, offsets)
    return BatchStats(fire, s1, s2, mx, margin_count, nonfinite, codes)
