"""Triton GPU kernels of pyfloor (installed as ``pyfloor.kernels``).

Importing this package requires Triton; ``pyfloor`` itself never needs it. On CPU tensors the
kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before this import).

* :func:`fused_batch_stats` (``fused_encode.py``): fused SAE encode + per-latent statistics and codes.
* ``bitonic.py``: the bitonic top-k of int64 keys the top-k encode uses.
"""

try:
    import triton  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pyfloor.kernels needs Triton (pip install triton, or pip install 'pyfloor[triton]'); "
        "without it use the torch reference: StatsAccumulator(sae, backend='torch')"
    ) from exc

from .fused_encode import MAX_K, fused_batch_stats

__all__ = ["fused_batch_stats", "MAX_K"]
