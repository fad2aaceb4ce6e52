"""Files pyfloor writes: atomic writes, and safetensors files tagged with a format and a version."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # torch is only needed for framework="pt"; statistics code never imports it
    from torch import Tensor


class CheckpointError(ValueError):
    """A file pyfloor cannot use: unreadable, corrupt, foreign, from a newer version, or inconsistent."""


def _umask() -> int:
    """This process's umask (reading it means setting it: it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``.

    A crash or error part-way leaves any previous file at ``path`` untouched and no temporary
    file behind. The file gets the permissions a newly created file gets (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def json_ready(obj: Any) -> Any:
    """A JSON-ready copy of ``obj``: numpy arrays and scalars to Python lists and numbers, NaN/±Inf to
    None (null), tuples to lists, dict keys to strings."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


Framework = Literal["numpy", "pt"]


def save_tagged(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    *,
    kind: str,
    version: int,
    metadata: Mapping[str, str] | None = None,
    framework: Framework = "numpy",
) -> None:
    """Write ``tensors`` atomically to a safetensors file tagged with a format and a version.

    ``tensors`` are numpy arrays (``framework="numpy"``) or CPU torch tensors (``"pt"``); the file's
    metadata holds ``format`` = ``kind``, ``version`` and the given string ``metadata``. Errors of
    the writer propagate and leave any previous file at ``path`` untouched (:func:`atomic_write`).
    """
    meta = {**(metadata or {}), "format": kind, "version": str(version)}
    if framework == "numpy":
        from safetensors.numpy import save_file as save_numpy

        atomic_write(path, lambda tmp: save_numpy(dict(tensors), tmp, metadata=meta))
    else:
        from safetensors.torch import save_file as save_torch

        atomic_write(path, lambda tmp: save_torch(dict(tensors), tmp, metadata=meta))


@overload
def load_tagged(
    path: str | os.PathLike[str], *, kind: str, version: int, what: str, framework: Literal["numpy"] = "numpy"
) -> tuple[dict[str, NDArray[Any]], dict[str, str]]: ...
@overload
def load_tagged(
    path: str | os.PathLike[str], *, kind: str, version: int, what: str, framework: Literal["pt"]
) -> tuple[dict[str, Tensor], dict[str, str]]: ...
def load_tagged(
    path: str | os.PathLike[str], *, kind: str, version: int, what: str, framework: Framework = "numpy"
) -> tuple[dict[str, NDArray[Any]] | dict[str, Tensor], dict[str, str]]:
    """Read a file :func:`save_tagged` wrote with this ``kind`` and at most this ``version``.

    Parameters
    ----------
    path : str or os.PathLike
        The safetensors file.
    kind, version : str, int
        The ``format`` tag the file must carry and the newest ``version`` this reader understands.
    what : str
        What the file should be, for error messages ("SAE file", …).
    framework : {"numpy", "pt"}
        Return numpy arrays or torch tensors.

    Returns
    -------
    tensors : dict[str, numpy.ndarray] or dict[str, torch.Tensor]
        Every tensor of the file by name.
    metadata : dict[str, str]
        The file's string metadata, ``format`` and ``version`` included.

    Raises
    ------
    CheckpointError
        For a missing, foreign, newer or corrupt file, naming the file and ``what`` it should have been.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = f.metadata() or {}
            if meta.get("format") != kind:
                raise CheckpointError(f"{path}: not a pyfloor {what} (format is {meta.get('format')!r})")
            if int(meta.get("version", "0")) > version:
                raise CheckpointError(
                    f"{path}: written by a newer pyfloor ({what} version {meta['version']}; this one reads up to "
                    f"{version}); upgrade pyfloor"
                )
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: unreadable or corrupt {what} ({exc})") from exc


def file_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` tag of a safetensors file :func:`save_tagged` wrote; None for any other file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # not safetensors at all: safetensors raises its own error types
        return None


def check_replaceable(path: str | os.PathLike[str], *, kind: str, what: str, overwrite: bool) -> None:
    """Raise CheckpointError unless ``path`` may be written: absent, or (with ``overwrite``) a pyfloor
    ``what`` of this ``kind``; never a directory, and never some other file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a file path for the {what}")
    if not path.exists():
        return
    if not overwrite:
        raise CheckpointError(f"{path} already exists: pass overwrite (--overwrite) to replace it")
    found = file_format(path)
    if found != kind:
        it = "not a pyfloor file" if found is None else f"a {found} file"
        raise CheckpointError(f"{path} is {it}, not a pyfloor {what}: refusing to replace it")
