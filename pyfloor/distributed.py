"""torch.distributed reductions of statistics (NCCL on GPUs, gloo on CPU).

Every function is a no-op in a single process (torch.distributed not initialised), so library code
calls them unconditionally. Under ``torchrun`` call :func:`init_from_env` once per process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = ["init_from_env", "is_distributed", "rank_and_world", "all_reduce_", "all_reduce_max_", "all_reduce_arrays"]

_Scalar = TypeVar("_Scalar", bound=np.generic)


def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) in a single process."""
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_from_env() -> torch.device:
    """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK…)
    if present and return this process's device: ``cuda:LOCAL_RANK`` with NCCL where CUDA is
    available, the CPU with gloo otherwise."""
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not is_distributed():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def _backend_device(t: Tensor) -> Tensor:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if torch.distributed.get_backend() == "nccl" and not t.is_cuda:
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def _all_reduce_(tensors: Sequence[Tensor], op: torch.distributed.ReduceOp.RedOpType) -> None:
    """All-reduce each tensor in place with ``op``, through the backend's device where it needs one."""
    if not is_distributed():
        return
    for t in tensors:
        moved = _backend_device(t)
        torch.distributed.all_reduce(moved, op=op)
        if moved is not t:
            t.copy_(moved)


def all_reduce_(tensors: Sequence[Tensor]) -> None:
    """Sum each tensor across ranks, in place (a no-op in a single process).

    On NCCL a CPU tensor is reduced through a CUDA copy and copied back.
    """
    _all_reduce_(tensors, torch.distributed.ReduceOp.SUM)


def all_reduce_max_(*tensors: Tensor) -> None:
    """Element-wise maximum of each tensor across ranks, in place."""
    _all_reduce_(tensors, torch.distributed.ReduceOp.MAX)


def all_reduce_arrays(
    arrays: Mapping[str, NDArray[_Scalar]], *, max_keys: Sequence[str] = ()
) -> dict[str, NDArray[_Scalar]]:
    """Sum numpy arrays across ranks (element-wise maximum for the keys in ``max_keys``).

    Parameters
    ----------
    arrays : Mapping[str, numpy.ndarray]
        Arrays of the same shapes and dtypes on every rank; they are not modified.
    max_keys : Sequence[str]
        Keys reduced by maximum instead of sum.

    Returns
    -------
    dict[str, numpy.ndarray]
        New arrays with the reduced values, same keys, shapes and dtypes (copies in a single process).
    """
    out: dict[str, NDArray[_Scalar]] = {}
    for key, arr in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(arr).copy())
        if key in max_keys:
            all_reduce_max_(t)
        else:
            all_reduce_([t])
        out[key] = t.numpy()
    return out
