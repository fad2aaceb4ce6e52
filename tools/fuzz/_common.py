"""Shared by the fuzz targets: the exception contract, and the ASan build of pyfloor._hist.

Every target checks one contract: an input either works (and then the result's invariants hold)
or raises one of ``ALLOWED`` (pyfloor's documented error types; CheckpointError is a ValueError)
with a non-empty message. Any other exception propagates and atheris reports it as a finding.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ALLOWED: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)


def register_hist() -> None:
    """Load ``$PYFLOOR_FUZZ_HIST`` (an ASan build of the extension, see tools/fuzz.sh) as ``pyfloor._hist``
    before anything imports the in-place one."""
    so = os.environ.get("PYFLOOR_FUZZ_HIST")
    if not so:
        return
    spec = importlib.util.spec_from_file_location("pyfloor._hist", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["pyfloor._hist"] = module
    assert module.__file__ == so, module.__file__


def expect_error(exc: BaseException) -> None:
    """Re-raise ``exc`` unless it is an allowed type with a message."""
    if not isinstance(exc, ALLOWED) or not str(exc).strip():
        raise exc


def shm_dir(name: str) -> str:
    """A private scratch directory (in memory where /dev/shm exists) for the files a target writes."""
    import tempfile

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=f"pyfloor-fuzz-{name}-", dir=base)
    atexit.register(shutil.rmtree, path, True)
    return path
