"""Files pyfloor writes: atomic writes, and safetensors files tagged with a format and a version."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np


class CheckpointError(ValueError):
    """A file pyfloor cannot use: unreadable, corrupt, foreign, from a newer version, or inconsistent."""


def _umask() -> int:
    """This process's umask (reading it means setting it: it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
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


def save_tagged(path: str | os.PathLike, tensors: Mapping[str, Any], *, kind: str, version: int,
                metadata: Mapping[str, str] | None = None, framework: Framework = "numpy") -> None:
    """Write ``tensors`` (numpy arrays or torch tensors) atomically to a safetensors file whose
    metadata names its ``kind`` and ``version``, plus the given string ``metadata``."""
    if framework == "numpy":
        from safetensors.numpy import save_file
    else:
        from safetensors.torch import save_file
    meta = {**(metadata or {}), "format": kind, "version": str(version)}
    atomic_write(path, lambda tmp: save_file(dict(tensors), tmp, metadata=meta))


def load_tagged(path: str | os.PathLike, *, kind: str, version: int, what: str,
                framework: Framework = "numpy") -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a file :func:`save_tagged` wrote with this ``kind`` and at most this
    ``version``; anything else (a foreign, newer, corrupt or missing file) raises CheckpointError
    naming the file and ``what`` it should have been."""
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


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` tag of a safetensors file :func:`save_tagged` wrote; None for any other file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # not safetensors at all: safetensors raises its own error types
        return None


def check_replaceable(path: str | os.PathLike, *, kind: str, what: str, overwrite: bool) -> None:
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
