"""The types the SAE encode's torch reference and its Triton kernels share.

``pyfloor.encode`` (the dispatching caller and the CPU reference) and ``pyfloor.kernels`` both
import this module and nothing of each other: the kernels return a :class:`BatchStats`, resolve the
activation through :class:`EncodeSpec` and check their input with :func:`check_activations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, TypedDict

import torch
from torch import Tensor

from .sae import SAE, Activation, is_activation

__all__ = [
    "SUPPORTED_DTYPES",
    "SparseCodes",
    "BatchStats",
    "EncodeSpec",
    "KernelOptions",
    "InputPrecision",
    "Reduction",
    "KernelDesign",
    "check_activations",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


#: Precision of the Triton kernels' fp32 dots: exact fp32, or TensorFloat-32 (one or three passes).
InputPrecision = Literal["ieee", "tf32", "tf32x3"]


#: How the fused kernels add their float partial sums: in a fixed order (bit-identical run after run)
#: or with float64 atomics in arrival order (the earlier kernels)
Reduction = Literal["fixed", "atomic"]

#: Which fused kernel encodes: 'flat' (ReLU/JumpReLU statistics: one flattened, pipelined loop over
#: (token tile, latent tile), TMA loads), 'select' (top-k: candidate buffers cut by selection),
#: 'sweep' (the previous design, every mode and the codes), or 'auto' (flat for ReLU/JumpReLU
#: statistics, select for top-k, sweep for ReLU/JumpReLU codes)
KernelDesign = Literal["auto", "flat", "select", "sweep"]


class KernelOptions(TypedDict, total=False):
    """Tuning knobs of :func:`pyfloor.kernels.fused_batch_stats` (every one optional; see there).

    Block sizes and ``buffer_slots``/``compact_rows`` are powers of two; ``num_programs`` is the
    persistent grid size; ``num_warps``/``num_stages`` go to the Triton launch; ``reduction`` is
    :data:`Reduction`.
    """

    block_n: int | None
    block_m: int | None
    block_k: int | None
    num_warps: int | None
    num_stages: int | None
    num_programs: int | None
    buffer_slots: int | None
    compact_rows: int | None
    reduction: Reduction
    input_precision: InputPrecision
    kernel: KernelDesign


class SparseCodes(NamedTuple):
    """Active latents of each token in compressed-row form.

    Token t's latents are ``indices[offsets[t]:offsets[t+1]]`` with ``values`` alike. Top-k codes
    have exactly k entries per token (``offsets = k·arange(N+1)``; values may be 0 where fewer
    than k pre-activations are positive); ReLU/JumpReLU codes hold the latents with z > 0.
    """

    indices: Tensor  # int64 [nnz]
    values: Tensor  # float32 [nnz]
    offsets: Tensor  # int64 [N + 1]

    def rows(self, k: int) -> tuple[Tensor, Tensor]:
        """Indices and values as [N, k] views (top-k codes only)."""
        n = self.offsets.numel() - 1
        if self.indices.numel() != n * k:
            raise ValueError(f"codes do not hold exactly k={k} entries per token")
        return self.indices.view(n, k), self.values.view(n, k)


class BatchStats(NamedTuple):
    """Per-latent sums of one batch, or of many added with ``+``, on their device (the contract every
    backend fulfils; :class:`pyfloor.stats.FeatureStats` is the same sums in numpy, with the token count)."""

    fire_count: Tensor  # int64 [m]
    act_sum: Tensor  # float64 [m]
    act_sq_sum: Tensor  # float64 [m]
    act_max: Tensor  # float32 [m]
    margin_count: Tensor  # int64 [m] tokens active within the margin band (SAE.margins; 0 for top-k)
    n_nonfinite: Tensor  # int64 [] tokens excluded
    codes: SparseCodes | None

    @classmethod
    def zeros(cls, m: int, device: torch.device | str) -> BatchStats:
        """Sums of no tokens over ``m`` latents, without codes."""

        def z(*shape: int, dtype: torch.dtype) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            z(m, dtype=torch.int64),
            z(m, dtype=torch.float64),
            z(m, dtype=torch.float64),
            z(m, dtype=torch.float32),
            z(m, dtype=torch.int64),
            z(dtype=torch.int64),
            None,
        )

    def __add__(self, other: BatchStats) -> BatchStats:  # type: ignore[override]  # sums, not tuple concatenation
        """The sums of both: counts and sums added, maxima maxed; codes are not carried."""
        return BatchStats(
            self.fire_count + other.fire_count,
            self.act_sum + other.act_sum,
            self.act_sq_sum + other.act_sq_sum,
            torch.maximum(self.act_max, other.act_max),
            self.margin_count + other.margin_count,
            self.n_nonfinite + other.n_nonfinite,
            None,
        )


@dataclass
class EncodeSpec:
    """The activation function an encode applies, resolved from an SAE and overrides.

    ``k`` is an int for ``activation="topk"`` and None otherwise (made so by :meth:`checked`).
    """

    activation: Activation
    k: int | None

    @property
    def top_k(self) -> int:
        """``k`` of a top-k encode; ValueError for another activation."""
        if self.k is None:
            raise ValueError(f"the {self.activation!r} activation has no k")
        return self.k

    @classmethod
    def resolve(cls, sae: SAE, activation: Activation | None, k: int | None) -> EncodeSpec:
        """The SAE's own activation (and its k) unless ``activation`` (and ``k``) override them; see :meth:`checked`."""
        activation = activation or sae.activation
        return cls.checked(sae, activation, k if k is not None or activation != "topk" else sae.k)

    @classmethod
    def checked(cls, sae: SAE, activation: str, k: int | None) -> EncodeSpec:
        """Exactly this ``activation`` and ``k`` (an int), valid for ``sae``; ValueError naming the problem otherwise."""
        if not is_activation(activation):
            raise ValueError(f"activation must be 'relu', 'jumprelu' or 'topk'; got {activation!r}")
        if activation == "topk":
            if k is None or isinstance(k, bool) or int(k) != k or not 1 <= k <= sae.n_latents:
                raise ValueError(f"top-k encode needs 1 <= k <= n_latents ({sae.n_latents}); got k={k!r}")
            k = int(k)
        elif k is not None:
            raise ValueError(f"k is only meaningful for the top-k activation; got k={k} with activation {activation!r}")
        if activation == "jumprelu" and sae.threshold is None:
            raise ValueError("the jumprelu activation needs an SAE with per-latent thresholds (activation='jumprelu')")
        return cls(activation, k)


def check_activations(x: Tensor, sae: SAE) -> None:
    """Raise unless ``x`` is a float32, float16 or bfloat16 tensor [..., sae.d_in]."""
    sae.check_input(x)
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"activations must be float32, float16 or bfloat16; got {x.dtype}")
