"""What the measurement loop and the distillation loop share about their checkpoints: one file a
rank, and the decision to resume one, refuse to clobber one, or make room for one, taken so that
every rank fails if any one does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ._io import CheckpointError, check_replaceable
from .distributed import all_reduce_

__all__ = ["rank_path", "prepare_checkpoint"]

T = TypeVar("T")


def rank_path(path: Path, rank: int, world: int) -> Path:
    """``path`` itself in one process; with ``.rank{rank}-of-{world}`` before its suffix under several ranks."""
    return path if world == 1 else path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def _everyone(ok: bool, device: torch.device) -> bool:
    """Whether ``ok`` holds on every rank (one collective on ``device``; just ``ok`` in a single process)."""
    flag = torch.tensor([0 if ok else 1], device=device)
    all_reduce_([flag])
    return int(flag) == 0


def prepare_checkpoint(
    path: Path | None,
    *,
    resume: bool,
    overwrite: bool,
    kind: str,
    what: str,
    load: Callable[[Path], T],
    device: torch.device,
) -> T | None:
    """Resume this rank's checkpoint at ``path`` (``load(path)``, whose result is returned), or make
    room for a new one: an existing file is refused unless ``overwrite``, and replaced then only if
    it is a checkpoint of ``kind``. None when nothing was resumed. A :class:`CheckpointError` on any
    rank fails every rank (the others name it); ValueError for ``resume`` without a path."""
    error: CheckpointError | None = None
    loaded = None
    try:
        if resume:
            if path is None:  # the configs refuse this; a config changed after construction may not
                raise ValueError("resume needs a checkpoint path")
            loaded = load(path)
        elif path is not None and path.exists() and not overwrite:
            raise CheckpointError(f"{path} already exists: resume it, or start over with overwrite")
        elif path is not None:
            check_replaceable(path, kind=kind, what=what, overwrite=True)
    except CheckpointError as exc:
        error = exc
    if not _everyone(error is None, device):
        raise error or CheckpointError("another rank could not use its checkpoint; see its error")
    return loaded
