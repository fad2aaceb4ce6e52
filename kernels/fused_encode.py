"""Fused SAE encode + per-latent statistics: the launcher of the Triton kernels.

For activations x [N, d] and an SAE (W_enc [d, m], b_enc [m], b_dec [d], threshold [m]) the kernels
compute z = act((x − b_dec) @ W_enc + b_enc) tile by tile and folds each tile straight into

* per-latent statistics: fire count (z > 0), Σz, Σz², max z and, for ReLU/JumpReLU, the count of
  active values within the latent's margin band (z ≤ ``SAE.margins()``) — int32/fp32 partials
  over a token tile; counts and maxima added atomically into int64 (max: float32) totals (exact
  in any order), Σz and Σz² stored at the tile's slot and added into float64 totals in tile order
  by a second small kernel, so that a result has the same bits on every run;
* optionally the sparse codes: top-k indices/values [N, k], or ReLU/JumpReLU codes in CSR form.

Three kernels do it: the flat kernel (:mod:`.flat`; ReLU/JumpReLU statistics, one flattened
pipelined loop over (token tile, latent tile)), the select kernel (:mod:`.select`; top-k statistics
and codes, candidate buffers cut by selection) and the sweep kernel (:mod:`.sweep`; the previous
design: every mode and the codes); ``kernel=`` chooses (:data:`KernelDesign`).

The dense N × m pre-activation matrix is never written. Top-k keeps, per token, a candidate buffer
in a small per-program scratch area: a pre-activation enters it only if it beats the token's
current k-th best value, and the buffer is cut to its best k whenever it could overflow (select
kernel: by selection; sweep kernel: by a bitonic top-k of packed (value, index) keys; see
``benchmarks/KERNELS.md``).

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
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from pyfloor.encode_types import (
    SUPPORTED_DTYPES,
    BatchStats,
    EncodeSpec,
    InputPrecision,
    KernelDesign,
    KernelOptions,
    Reduction,
    SparseCodes,
    check_activations,
)
from pyfloor.sae import SAE, Activation

from .flat import _flat_stats_kernel
from .select import _select_kernel
from .sweep import _encode_stats_kernel
from .tiles import (
    _COUNT_ROWS,
    _NO_CODES,
    _WRITE_CODES,
    MODES,
    _fold_bias_kernel,
    _reduce_partials_kernel,
    _row_flags_kernel,
)

__all__ = ["fused_batch_stats", "MAX_K", "MODES", "PARTIAL_BYTES", "KernelDesign", "Reduction"]

#: Largest k the top-k kernels handle: the select kernel (the sort width and scratch grow with k) and
#: the sweep kernel.
MAX_K = 256
SWEEP_MAX_K = 128
_HALF = (torch.float16, torch.bfloat16)
#: Token tiles of the flat kernel that take each latent tile in turn (they share it through L2).
FLAT_GROUP = 8
#: Register cap of the flat kernel at 8 warps: 128 × 256 threads lets two programs share an SM.
FLAT_MAX_REGISTERS = 128


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
    scratch: tuple[Tensor, ...]  # top-k candidates (entries; select: values, indices), counts, thresholds
    k: int
    nprog: int
    launch: dict[str, Any]
    design: str  # 'flat', 'select' or 'sweep'


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
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"the kernel needs activations contiguous along d (strides {x.stride()}); pass x.contiguous()")
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "the Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 before pyfloor.kernels is "
            "imported (or use the torch reference, backend='torch')"
        )
    return k


def _design(design: KernelDesign, activation: Activation, want_codes: bool) -> str:
    """The kernel that ``design`` means for this encode: 'flat', 'select' or 'sweep'; ValueError where
    the one asked for cannot do it."""
    if design not in ("auto", "flat", "select", "sweep"):
        raise ValueError(f"kernel must be 'auto', 'flat', 'select' or 'sweep'; got {design!r}")
    flat_fits = activation != "topk" and not want_codes
    if design == "flat" and not flat_fits:
        raise ValueError("the flat kernel computes ReLU/JumpReLU statistics only; use kernel='auto' for top-k or codes")
    if design == "select" and activation != "topk":
        raise ValueError("the select kernel computes top-k only; use kernel='auto' for ReLU/JumpReLU")
    if design == "auto":
        return "select" if activation == "topk" else "flat" if flat_fits else "sweep"
    return design


def _tma_ready(t: Tensor) -> bool:
    """Whether a 2-d tensor can be read through a TMA descriptor: 16-byte aligned base and row stride, unit inner stride."""
    es = t.element_size()
    rows_apart = t.stride(0) >= t.shape[1]  # not a broadcast (stride 0) or overlapping view
    return (
        t.stride(-1) == 1
        and rows_apart
        and (t.stride(0) * es) % 16 == 0
        and t.data_ptr() % 16 == 0
        and (t.shape[1] * es) >= 16
    )


def _prepare(
    x: Tensor,
    sae: SAE,
    activation: Activation,
    k: int | None,
    knobs: KernelOptions,
    reduction: Reduction = "fixed",
    want_codes: bool = False,
) -> _Encode:
    """Operands, scratch, zeroed totals and launch settings of one encode of x [N > 0, d] (validated)
    with the tuning ``knobs`` of :func:`fused_batch_stats` (absent or None: the defaults)."""
    n, d = x.shape
    m, dev = sae.n_latents, x.device
    interp = _interpreting()
    topk = activation == "topk"
    design = _design(knobs.get("kernel") or "auto", activation, want_codes)
    flat = design == "flat"
    bn = _check_pow2("block_n", knobs.get("block_n") or (64 if interp else 128))
    bm = _check_pow2("block_m", knobs.get("block_m") or (64 if design == "select" else 128))
    bk = _check_pow2("block_k", knobs.get("block_k") or 64)
    bn, bm, bk = min(bn, _pow2_at_least(n)), min(bm, _pow2_at_least(m)), min(bk, _pow2_at_least(d))
    kp = triton.next_power_of_2(k) if topk else 1
    slots = knobs.get("buffer_slots") or triton.next_power_of_2(kp + 2 * bm)
    cap = _check_pow2("buffer_slots", slots, lo=kp + bm) if topk else 1
    if design == "sweep" and topk and kp > SWEEP_MAX_K:
        raise ValueError(f"the sweep kernel supports k <= {SWEEP_MAX_K}; got k={k} (kernel='auto' takes up to {MAX_K})")
    rows = bn if interp else 16 if design == "sweep" else 8 if kp <= 128 else 2  # rows sorted or selected at a time
    rows_per_sort = min(bn, _check_pow2("compact_rows", knobs.get("compact_rows") or rows, lo=1))
    num_programs = knobs.get("num_programs")
    if num_programs is None:  # flat: two programs an SM (its 128 registers at 8 warps allow it)
        num_programs = 4 if interp else torch.cuda.get_device_properties(dev).multi_processor_count * (1 + flat)
    tiles = triton.cdiv(n, bn) * (triton.cdiv(m, bm) if flat else 1)
    nprog = max(1, min(int(num_programs), tiles))

    w, half = _encoder_weights(x, sae, interp)
    bias = _folded_bias(w, sae) if half else sae.b_enc.detach()
    thr = sae.jumprelu_threshold().detach() if activation == "jumprelu" else bias
    margins = sae.margins(activation)
    margin = bias if margins is None else margins.contiguous()  # top-k: unused
    out = BatchStats.zeros(m, dev)
    if topk:
        if nprog * bn * cap >= 2**31:
            raise ValueError(f"top-k scratch of {nprog} programs × {bn} rows × {cap} slots overflows int32 offsets")
        slot_dtypes = (torch.float32, torch.int32) if design == "select" else (torch.int64,)  # value, index / entry
        scratch = (
            *(torch.empty(nprog * bn * cap, dtype=t, device=dev) for t in slot_dtypes),
            torch.empty(nprog * bn, dtype=torch.int32, device=dev),
            torch.empty(nprog * bn, dtype=torch.float32, device=dev),
        )
    else:
        scratch = (out.fire_count, out.fire_count, out.act_max)  # unused
    launch: dict[str, Any] = dict(BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, ATOMIC_SUMS=reduction == "atomic", HALF_DOT=half)
    launch["INPUT_PRECISION"] = knobs.get("input_precision", "ieee")
    launch["num_warps"] = knobs.get("num_warps") or (8 if bn * bm >= 128 * 64 else 4)
    launch["num_stages"] = knobs.get("num_stages") or 3
    tma = _tma_ready(x) and _tma_ready(w) and max(bn, bm, bk) <= 256
    if design == "sweep":
        launch.update(MODE=MODES[activation], KP=kp, CAP=cap, COMPACT_ROWS=rows_per_sort)
    elif flat:
        launch.update(MODE=MODES[activation], TMA=tma, GROUP=FLAT_GROUP)
        if launch["num_warps"] == 8 and bn * bm <= 128 * 128 and not interp:  # two programs an SM (KERNELS.md §9)
            launch["maxnreg"] = FLAT_MAX_REGISTERS
    else:
        launch.update(TMA=tma, KP=kp, CAP=cap, ROWS=rows_per_sort)
    return _Encode(w, sae.b_dec.detach(), bias, thr, margin, out, scratch, k or 0, nprog, launch, design)


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


def _operands(enc: _Encode, x: Tensor) -> tuple[Tensor | TensorDescriptor, Tensor | TensorDescriptor]:
    """x and W_enc as the flat and select kernels read them: TMA descriptors of their tiles, or the tensors."""
    c = enc.launch
    if not c["TMA"]:
        return x, enc.w
    return (
        TensorDescriptor.from_tensor(x, [c["BLOCK_N"], c["BLOCK_K"]]),
        TensorDescriptor.from_tensor(enc.w, [c["BLOCK_K"], c["BLOCK_M"]]),
    )


def _launch_select(
    enc: _Encode, x: Tensor, ok: Tensor, part: tuple[Tensor, Tensor] | None, codes: tuple[Tensor, Tensor] | None
) -> None:
    """One launch of the select kernel over the rows of x (``part``: the zeroed tile partials; ``codes``:
    where the top-k indices and values go)."""
    idx, val = codes or (enc.out.fire_count, enc.out.act_max)  # unused without CODES
    o, c = enc.out, enc.launch
    part_sum, part_sq = part or (o.act_max, o.act_max)  # unused with ATOMIC_SUMS
    n, d = x.shape
    xs, ws = _operands(enc, x)
    _select_kernel[(max(1, min(enc.nprog, triton.cdiv(n, c["BLOCK_N"]))),)](
        xs,
        ws,
        enc.b_dec,
        enc.bias,
        ok,
        o.fire_count,
        o.act_max,
        part_sum,
        part_sq,
        o.act_sum,
        o.act_sq_sum,
        idx,
        val,
        *enc.scratch,
        n,
        d,
        enc.w.shape[1],
        enc.k,
        x.stride(0),
        CODES=codes is not None,
        **c,
    )


def _launch_flat(enc: _Encode, x: Tensor, ok: Tensor, part: tuple[Tensor, Tensor] | None) -> None:
    """One launch of the flat kernel over the rows of x, whose finite rows ``ok`` flags (``part``: the tile partials)."""
    o, c = enc.out, enc.launch
    part_sum, part_sq = part or (o.act_max, o.act_max)  # unused with ATOMIC_SUMS
    n, d = x.shape
    m = enc.w.shape[1]
    xs, ws = _operands(enc, x)
    tiles = triton.cdiv(n, c["BLOCK_N"]) * triton.cdiv(m, c["BLOCK_M"])
    _flat_stats_kernel[(min(enc.nprog, tiles),)](
        xs,
        ws,
        enc.b_dec,
        enc.bias,
        enc.thr,
        enc.margin,
        ok,
        o.fire_count,
        o.act_max,
        o.margin_count,
        part_sum,
        part_sq,
        o.act_sum,
        o.act_sq_sum,
        n,
        d,
        m,
        x.stride(0),
        **c,
    )


def _row_flags(x: Tensor, nonfinite: Tensor) -> Tensor:
    """int8 [N]: 1 where a row of x holds only finite values; adds the number of the others into ``nonfinite``."""
    n, d = x.shape
    ok = torch.empty(n, dtype=torch.int8, device=x.device)
    _row_flags_kernel[(triton.cdiv(n, 64),)](x, ok, nonfinite, n, d, x.stride(0), BLOCK_N=64, BLOCK_K=64, num_warps=4)
    return ok


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
    kernel: KernelDesign = "auto",
) -> BatchStats:
    """Per-latent statistics (and optionally codes) of activations x [N, d] in one fused pass.

    ``activation`` is 'relu', 'jumprelu' or 'topk' (with 1 <= k <= min(m, 256); 128 for the sweep kernel). Returns the
    :class:`pyfloor.encode.BatchStats` that the torch reference returns: int64 fire counts, float64
    Σz and Σz², float32 max, int64 margin-band counts (zeros for top-k), the number of non-finite
    rows, and with ``want_codes`` the codes (top-k: k per token; ReLU/JumpReLU: CSR, found by a
    counting launch and a writing launch).

    Tuning knobs (defaults suit an H100; blocks are clamped to the problem): ``block_n`` tokens ×
    ``block_m`` latents per tile, ``block_k`` the reduction step over d, ``num_programs`` the
    persistent grid (default: one per SM, two for the flat kernel), ``buffer_slots`` the per-token top-k candidate buffer
    (a power of two >= KP + block_m, KP = k rounded up to a power of two; default the one >=
    KP + 2·block_m), ``compact_rows`` rows sorted at a time.
    ``input_precision`` of fp32 dots: 'ieee' (exact fp32, the default) or 'tf32' (faster on GPUs).

    ``kernel``: 'flat' computes ReLU/JumpReLU statistics (no codes) in one flattened, pipelined
    loop over (token tile, latent tile), reading x and W_enc through TMA descriptors where their
    rows are 16-byte aligned; 'sweep' computes every mode and the codes, one program sweeping all
    latents of each of its token tiles; 'auto' (the default) takes the flat kernel where it applies.

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
        or k > 256 (sweep: 128), a tuning knob that is not a power of two in range, an unknown
        ``input_precision``, ``reduction`` or ``kernel``, ``kernel="flat"`` for top-k or codes, or
        top-k scratch that would overflow int32 offsets.
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
        kernel=kernel,
    )
    enc = _prepare(x, sae, activation, k, knobs, reduction, want_codes)
    out, bn, placeholder = enc.out, enc.launch["BLOCK_N"], enc.out.fire_count
    topk_codes = want_codes and k is not None  # top-k (_validate gives an int k exactly then)
    if topk_codes:
        code_idx = torch.empty(n * enc.k, dtype=torch.int64, device=dev)
        code_val = torch.empty(n * enc.k, dtype=torch.float32, device=dev)
    row = torch.empty(n, dtype=torch.int64, device=dev) if want_codes and not topk else placeholder

    tiles = triton.cdiv(n, bn)
    wave = 1 if enc.design == "flat" else enc.nprog  # sweep, select: whole waves of token tiles a launch
    chunk = tiles if reduction == "atomic" else wave * max(1, PARTIAL_BYTES // (wave * m * 8))
    ok = placeholder if enc.design == "sweep" else _row_flags(x, out.n_nonfinite)
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
        if enc.design == "flat":
            _launch_flat(enc, x[lo:hi], ok[lo:hi], part)
        elif enc.design == "select":
            codes_at = (code_idx[lo * enc.k :], code_val[lo * enc.k :]) if topk_codes else None
            _launch_select(enc, x[lo:hi], ok[lo:hi], part, codes_at)
        else:
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
