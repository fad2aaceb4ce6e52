"""Bitonic top-k of integer keys along the last axis, as a Triton device function.

``topk_desc(keys, K)`` returns the K largest keys of each row of a [R, C] tensor (C and K powers
of two), sorted largest first. It is the bitonic top-k of Shanbhag, Pirk & Madden ("Efficient
Top-K Query Processing on Massively Parallel Hardware", SIGMOD 2018): sort runs of K elements,
keep the larger of each pair of runs, re-merge, until K remain. Each row is viewed as a hypercube
of 2-element axes, so that a compare-and-swap layer is a reduction over one axis.

``tl.topk`` does the same, but finds each element's partner with ``xor_sum``, a reduction that
Triton's interpreter runs element by element in Python (15 s for a 32 × 256 block). Here the partner
is ``sum(pair) − self`` in wrapping int64 arithmetic: on the GPU the same one-axis reduction (a
register move or one shuffle), in the interpreter one numpy call. The layers of a merge are written
inline because every nested ``@triton.jit`` call costs the interpreter a millisecond of patching.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.jit import constexpr_function

__all__ = ["topk_desc"]


@constexpr_function
def _log2(n: int) -> int:
    return n.bit_length() - 1


@constexpr_function
def _min(a: int, b: int) -> int:
    return min(a, b)


@constexpr_function
def _bit(rank: int, axis: int) -> list[int]:
    """Shape that puts a 2-vector on hypercube axis ``axis`` (counted from the innermost)."""
    return [1] * (rank - axis - 1) + [2] + [1] * axis


@triton.jit
def _merge(h, run: tl.constexpr, alternate: tl.constexpr):
    """Bitonic merge of the sorted runs of 2**run entries along the innermost axes of ``h``.

    Runs alternate in direction (a 0/1 ``flip`` along axis ``run``) if ``alternate``, else all
    end descending. Each layer orders the pairs along one axis, where ``right`` is 0/1.
    """
    if alternate:
        flip = tl.reshape(tl.arange(0, 2), _bit(len(h.shape), run))
    else:
        flip = 1
    for i in tl.static_range(run):  # axes run − 1, …, 0 (axis len − run + i counted from the outside)
        partner = tl.sum(h, axis=len(h.shape) - run + i, keep_dims=True) - h
        right = tl.reshape(tl.arange(0, 2), _bit(len(h.shape), run - 1 - i))
        h = tl.where((h > partner) != (flip ^ right), partner, h)
    return h


@triton.jit
def topk_desc(keys, K: tl.constexpr):
    """The K largest entries of each row of ``keys`` [R, C] (integers), sorted descending: [R, K]."""
    R: tl.constexpr = keys.shape[0]
    log_c: tl.constexpr = _log2(keys.shape[1])
    log_k: tl.constexpr = _log2(K)
    h = tl.reshape(keys, [R] + [2] * log_c)
    for stage in tl.static_range(1, log_c + 1):
        if stage > log_k:  # keep the larger of each pair of sorted K-runs
            h = tl.max(h, axis=len(h.shape) - 1 - log_k)
        h = _merge(h, _min(stage, log_k), stage < log_c)
    return tl.reshape(h, [R, K])
