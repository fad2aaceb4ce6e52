"""Argument checks with one policy for all of pyfloor.

- A count is an integer: Python or numpy integers, or floats with an integral value (``1e6``);
  never a bool (``True`` is not 1 step) and never a string.
- A number is a finite real (not a bool) unless ``finite=False``.
- Every message names the argument, the range it must lie in and the value it got, so a caller (the
  CLI) can map the name to its flag.

numpy only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import TypeVar

import numpy as np

__all__ = ["count", "number", "fraction", "one_of", "resume_flags"]

T = TypeVar("T")


def _is_real(value: object) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def count(value: object, name: str, *, minimum: int = 0) -> int:
    """``value`` as an int ≥ ``minimum``; ValueError naming ``name`` otherwise (see the module policy)."""
    n: int | None = None
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        n = int(value)
    elif _is_real(value) and float(value).is_integer():  # type: ignore[arg-type]
        n = int(float(value))  # type: ignore[arg-type]
    if n is None or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return n


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """' in [low, high)', ' >= low', … as a message fragment."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    try:
        v = float(value) if _is_real(value) else math.nan  # type: ignore[arg-type]
    except OverflowError:  # an int beyond float64
        v = math.inf
    ok = math.isfinite(v)
    ok = ok and (low is None or v > low or (not low_open and v == low))
    ok = ok and (high is None or v < high or (not high_open and v == high))
    if not ok:
        raise ValueError(f"{name} must be a finite number{_interval(low, high, low_open, high_open)}; got {value!r}")
    return v


def fraction(value: object, name: str) -> float:
    """``value`` as a float in [0, 1) (a frequency threshold such as ``alive_threshold``)."""
    return number(value, name, low=0.0, high=1.0, high_open=True)


def one_of(value: T, name: str, options: Iterable[T]) -> T:
    """``value`` if it is one of ``options``; ValueError listing them otherwise."""
    options = tuple(options)
    if isinstance(value, bool) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value


def resume_flags(resume: bool, overwrite: bool, checkpoint: object) -> None:
    """ValueError unless ``resume`` has a ``checkpoint`` path and excludes ``overwrite``."""
    if resume and checkpoint is None:
        raise ValueError("resume needs a checkpoint path")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
