"""Reports of a measurement: the floor table as JSON-ready dicts and as text for a terminal."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ._version import __version__
from .stats import Measurement

__all__ = ["default_widths", "floor_table", "prediction_summary", "format_prediction", "format_table"]


def default_widths(critical_width: float) -> list[int]:
    """Student widths worth tabulating: the powers of two in [d*/16, 2·d*] and ⌈d*⌉ itself."""
    if not math.isfinite(critical_width) or critical_width <= 0:
        raise ValueError(f"critical_width must be a finite number > 0; got {critical_width!r}")
    lo = max(0, math.floor(math.log2(max(critical_width / 16, 1))))
    hi = math.ceil(math.log2(2 * critical_width))
    widths = {2**p for p in range(lo, hi + 1) if 2**p <= 2 * critical_width}
    widths.add(math.ceil(critical_width))
    return sorted(widths)


def floor_table(measurement: Measurement, widths: ArrayLike) -> list[dict[str, Any]]:
    """One row per width: features kept and dropped, the Eq. 2 floor (where importances are
    known), that floor as a fraction of the total importance, and the uniform-importance floor."""
    w = np.asarray(widths)
    kept = np.atleast_1d(measurement.budget(w))
    uniform = np.atleast_1d(measurement.uniform_floor(w))
    eq2 = None if measurement.importances is None else np.atleast_1d(measurement.floor(w))
    total = measurement.total_importance
    rows = []
    for i, width in enumerate(np.atleast_1d(w)):
        row: dict[str, Any] = {
            "width": int(width) if float(width).is_integer() else float(width),
            "kept": int(kept[i]),
            "dropped": int(measurement.n_features - kept[i]),
            "floor": None if eq2 is None else float(eq2[i]),
            "floor_fraction": None if eq2 is None or not total else float(eq2[i] / total),
            "uniform_floor": float(uniform[i]),
        }
        rows.append(row)
    return rows


def prediction_summary(measurement: Measurement, widths: ArrayLike | None = None) -> dict[str, Any]:
    """The measurement's scalar quantities and its floor table, ready for JSON."""
    if widths is None:
        widths = default_widths(measurement.critical_width)
    m = measurement.to_dict()
    m.pop("importances")
    m.pop("feature_ids")
    return {"pyfloor_version": __version__, "measurement": m, "floors": floor_table(measurement, widths)}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` holds one of ``<``/``>`` per column (default: first left, rest right)."""
    align = align or "<" + ">" * (len(headers) - 1)
    cols = list(zip(headers, *rows)) if rows else [(h,) for h in headers]
    widths = [max(len(str(c)) for c in col) for col in cols]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{str(c):{a}{wd}}" for c, a, wd in zip(cells, align, widths)).rstrip()
    out = [line(headers), line(["-" * wd for wd in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def format_prediction(summary: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`prediction_summary`."""
    m = summary["measurement"]
    lines = []
    if m.get("source"):
        lines.append(f"measurement  {m['source']}")
    facts = [
        ("features F", f"{m['n_features']:,}"),
        ("mean L0", f"{m['mean_l0']:.6g}"),
        ("sparsity α", f"{m['alpha']:.6f}"),
        ("capacity g(α)", f"{m['capacity']:.4f}"),
        ("critical width d*", f"{m['critical_width']:,.1f}"),
    ]
    if m.get("n_tokens"):
        facts.insert(0, ("tokens", f"{m['n_tokens']:,}"))
    if m.get("total_importance") is not None:
        facts.append(("total importance", f"{m['total_importance']:.8g}"))
    lines += [f"{k:<19}{v}" for k, v in facts]
    if not m["in_sparse_regime"]:
        lines.append("note: α < 1 − 1/e, outside the sparse regime of g(α); capacity clamped to e")
    lines.append("")
    has_eq2 = any(r["floor"] is not None for r in summary["floors"])
    headers = ["width d_S", "kept F_S", "dropped"]
    headers += ["floor (Eq. 2)", "of total"] if has_eq2 else []
    headers += ["uniform floor" if has_eq2 else "fraction lost (uniform)"]
    rows = []
    for r in summary["floors"]:
        cells = [f"{r['width']:,}", f"{r['kept']:,}", f"{r['dropped']:,}"]
        if has_eq2:
            frac = r["floor_fraction"]
            cells += [_num(r["floor"], ".8g"), "—" if frac is None else f"{100 * frac:.3g}%"]
        cells.append(_num(r["uniform_floor"], ".6g"))
        rows.append(cells)
    lines.append(format_table(headers, rows, ">" * len(headers)))
    return "\n".join(lines)
