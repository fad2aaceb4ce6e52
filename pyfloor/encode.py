"""SAE encode fused with per-latent statistics.

:class:`StatsAccumulator` encodes batches of activations and accumulates, on the batch's device,
exactly the sums that :class:`pyfloor.stats.FeatureStats` holds (int64 counts, float64 sums, max).
CUDA tensors go to the Triton kernels of ``pyfloor.kernels``, which never write the dense
tokens × latents matrix; CPU tensors go to the torch reference below, which processes the batch in
chunks of ``chunk_tokens`` tokens so its memory stays bounded. Both give the same codes and
statistics (counts exactly, sums to float rounding).

Both take a pyfloor SAE or a SAELens / sparsify SAE object (converted once by
:func:`pyfloor.interop.as_sae`).

Tokens whose activation row holds NaN or ±Inf are counted in ``n_nonfinite`` and left out of the
statistics; their top-k codes have index −1 and value 0, their ReLU/JumpReLU codes no entries.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from . import _checks
from .encode_types import BatchStats, EncodeSpec, KernelOptions, SparseCodes, check_activations
from .interop import SAELike, as_sae
from .sae import SAE, Activation, topk_codes
from .stats import FeatureStats

__all__ = ["StatsAccumulator", "SparseCodes", "BatchStats", "encode_stats", "reference_batch_stats"]

Backend = Literal["auto", "torch", "triton"]


def _finite_rows(x: Tensor) -> Tensor:
    """bool [N]: whether each row of x [N, d] holds only finite values."""
    return torch.isfinite(x).all(dim=-1)


def reference_batch_stats(
    x: Tensor, sae: SAE, spec: EncodeSpec, *, want_codes: bool = False, chunk_tokens: int = 4096
) -> BatchStats:
    """The torch reference: pre-activations in float32, latents, and their per-latent sums.

    Parameters
    ----------
    x : Tensor
        Activations [N, d_in] (float32, float16 or bfloat16), on the SAE's device; not checked here
        (:class:`StatsAccumulator` checks them).
    sae : SAE
        The SAE.
    spec : EncodeSpec
        The activation to apply (see :meth:`EncodeSpec.resolve`).
    want_codes : bool
        Also return the sparse codes of every token.
    chunk_tokens : int
        Tokens encoded at a time: memory is O(chunk_tokens × m), never O(N × m).

    Returns
    -------
    BatchStats
        int64 fire counts, float64 Σz and Σz², float32 max z, int64 margin-band counts
        (:meth:`pyfloor.sae.SAE.margins`; zeros for top-k) [m] over the finite rows, the number of
        non-finite rows, and the codes if asked (None otherwise).
    """
    m, device = sae.n_latents, x.device
    fire, s1, s2, mx, margin_count, nonfinite, _ = BatchStats.zeros(m, device)
    margins = sae.margins(spec.activation)
    idx_parts: list[Tensor] = []
    val_parts: list[Tensor] = []
    count_parts: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_tokens):
            xc = x[start : start + chunk_tokens]
            ok = _finite_rows(xc)
            nonfinite += (~ok).sum()
            pre = sae.pre_activations(torch.where(ok[:, None], xc, torch.zeros((), dtype=xc.dtype, device=device)))
            pre = pre.float()
            if spec.activation == "topk":
                idx, val = topk_codes(pre, spec.top_k)
                z = torch.zeros_like(pre).scatter_(-1, idx, val)
            elif spec.activation == "jumprelu":
                z = pre * (pre > sae.jumprelu_threshold().float())
            else:
                z = torch.relu(pre)
            z = z * ok[:, None]
            fire += (z > 0).sum(0)
            if margins is not None:
                margin_count += ((z > 0) & (z <= margins)).sum(0)
            z64 = z.double()
            s1 += z64.sum(0)
            s2 += z64.square().sum(0)
            mx = torch.maximum(mx, z.amax(0)) if z.shape[0] else mx
            if want_codes:
                if spec.activation == "topk":
                    idx = torch.where(ok[:, None], idx, -1)
                    val = val * ok[:, None]
                    idx_parts.append(idx.reshape(-1))
                    val_parts.append(val.reshape(-1))
                    count_parts.append(torch.full((xc.shape[0],), spec.top_k, dtype=torch.int64, device=device))
                else:
                    active = z > 0
                    rows, cols = active.nonzero(as_tuple=True)
                    idx_parts.append(cols)
                    val_parts.append(z[rows, cols])
                    count_parts.append(active.sum(1))
    codes = None
    if want_codes:
        counts = torch.cat(count_parts) if count_parts else torch.zeros(0, dtype=torch.int64, device=device)
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=device)
        torch.cumsum(counts, 0, out=offsets[1:])
        empty_i = torch.zeros(0, dtype=torch.int64, device=device)
        codes = SparseCodes(
            torch.cat(idx_parts) if idx_parts else empty_i,
            torch.cat(val_parts) if val_parts else empty_i.float(),
            offsets,
        )
    return BatchStats(fire, s1, s2, mx, margin_count, nonfinite, codes)


class StatsAccumulator:
    """Encode batches with an SAE and accumulate per-latent statistics on the device.

    >>> acc = StatsAccumulator(sae)
    >>> for x in batches:          # [..., d_in] tensors on the SAE's device
    ...     acc.update(x)
    >>> stats = acc.result()       # pyfloor.FeatureStats

    ``sae`` is a pyfloor SAE, or a SAELens or sparsify SAE object, converted once by
    :func:`pyfloor.interop.as_sae` (``self.sae`` is the pyfloor SAE).
    ``activation``/``k`` override the SAE's own activation (e.g. top-k encoding of a ReLU SAE).
    ``backend``: ``"auto"`` uses the Triton kernels for CUDA tensors and torch otherwise;
    ``"triton"`` forces the kernels (on CPU tensors they run under ``TRITON_INTERPRET=1``).
    ``kernel_options`` go to :func:`pyfloor.kernels.fused_batch_stats` (block sizes, warps, …;
    see :class:`pyfloor.encode_types.KernelOptions`). There 16-bit activations with float32 SAE
    weights are multiplied by W_enc rounded to the activations' dtype, on tensor cores (the torch
    path multiplies in float32); the kernels' sums have the same bits on every run. ``chunk_tokens`` bounds the torch path's
    memory to O(chunk_tokens × n_latents).

    Raises
    ------
    TypeError
        For an ``sae`` of no kind :func:`pyfloor.interop.as_sae` converts.
    ValueError
        For an unknown backend, a ``chunk_tokens`` below 1, or an activation/k the SAE cannot
        use (see :meth:`EncodeSpec.checked`); :meth:`batch` and :meth:`update` raise it for
        activations of the wrong dtype, width or device.
    """

    def __init__(
        self,
        sae: SAELike,
        *,
        activation: Activation | None = None,
        k: int | None = None,
        backend: Backend = "auto",
        chunk_tokens: int = 4096,
        kernel_options: KernelOptions | None = None,
    ) -> None:
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
        _checks.count(chunk_tokens, "chunk_tokens", minimum=1)
        self.sae: SAE = as_sae(sae)
        self.spec = EncodeSpec.resolve(self.sae, activation, k)
        self.backend, self.chunk_tokens = backend, chunk_tokens
        self.kernel_options = KernelOptions(**(kernel_options or {}))
        self._rows = 0
        self._sums: BatchStats | None = None

    def _uses_triton(self, x: Tensor) -> bool:
        return self.backend == "triton" or (self.backend == "auto" and x.is_cuda)

    def _check(self, x: Tensor) -> Tensor:
        check_activations(x, self.sae)
        if x.device != self.sae.W_enc.device:
            raise ValueError(f"activations are on {x.device} but the SAE is on {self.sae.W_enc.device}")
        return x.reshape(-1, self.sae.d_in)

    def batch(self, x: Tensor, *, want_codes: bool = False) -> BatchStats:
        """Encode one batch [..., d_in] and return its statistics without accumulating them.

        The sums are on the batch's device (:class:`BatchStats`); ``codes`` is None unless ``want_codes``.
        """
        x2 = self._check(x)
        if self._uses_triton(x2):
            from .kernels import fused_batch_stats

            return fused_batch_stats(
                x2, self.sae, self.spec.activation, self.spec.k, want_codes=want_codes, **self.kernel_options
            )
        return reference_batch_stats(x2, self.sae, self.spec, want_codes=want_codes, chunk_tokens=self.chunk_tokens)

    def update(self, x: Tensor, *, want_codes: bool = False) -> SparseCodes | None:
        """Encode a batch [..., d_in], add its statistics, and return its codes if asked."""
        b = self.batch(x, want_codes=want_codes)
        self._rows += int(np.prod(x.shape[:-1]))
        self._sums = b._replace(codes=None) if self._sums is None else self._sums + b
        return b.codes

    def result(self) -> FeatureStats:
        """The statistics of every token seen so far, as float64/int64 numpy arrays.

        ``n_tokens`` counts the finite rows only; the non-finite ones are in ``n_nonfinite``.
        """
        m = self.sae.n_latents
        if self._sums is None:
            return FeatureStats.empty(m)
        s = self._sums
        nonfinite = int(s.n_nonfinite)
        return FeatureStats(
            n_tokens=self._rows - nonfinite,
            fire_count=s.fire_count.cpu().numpy().astype(np.int64),
            act_sum=s.act_sum.cpu().numpy().astype(np.float64),
            act_sq_sum=s.act_sq_sum.cpu().numpy().astype(np.float64),
            act_max=s.act_max.cpu().numpy().astype(np.float64),
            n_nonfinite=nonfinite,
            margin_count=s.margin_count.cpu().numpy().astype(np.int64),
        )


def encode_stats(
    x: Tensor,
    sae: SAELike,
    *,
    activation: Activation | None = None,
    k: int | None = None,
    want_codes: bool = False,
    backend: Backend = "auto",
) -> tuple[FeatureStats, SparseCodes | None]:
    """Per-latent statistics (and optionally sparse codes) of one batch of activations [..., d_in].

    A one-batch :class:`StatsAccumulator` (see there for ``sae`` — a pyfloor, SAELens or sparsify SAE —
    ``activation``, ``k``, ``backend`` and the errors raised). Returns the statistics as :class:`pyfloor.stats.FeatureStats` and the codes of
    every token (None unless ``want_codes``).
    """
    acc = StatsAccumulator(sae, activation=activation, k=k, backend=backend)
    codes = acc.update(x, want_codes=want_codes)
    return acc.result(), codes
