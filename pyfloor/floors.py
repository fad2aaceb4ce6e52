"""Floor tables of a measurement: the student widths worth tabulating, the predicted floor at each,
and the JSON-ready summary ``pyfloor predict`` prints and every report embeds. numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._version import __version__
from .stats import Measurement

__all__ = ["default_widths", "floor_table", "prediction_summary"]


def default_widths(critical_width: float) -> list[int]:
    """Student widths worth tabulating: the powers of two in [d*/16, 2·d*] and ⌈d*⌉ itself."""
    if not math.isfinite(critical_width) or critical_width <= 0:
        raise ValueError(f"critical_width must be a finite number > 0; got {critical_width!r}")
    hi = math.ceil(math.log2(2 * critical_width))
    widths = {2**p for p in range(max(hi, 0) + 1) if critical_width / 16 <= 2**p <= 2 * critical_width}
    widths.add(math.ceil(critical_width))
    return sorted(widths)


def floor_table(measurement: Measurement, widths: ArrayLike) -> list[dict[str, Any]]:
    """One row per width: features kept and dropped, the Eq. 2 floor (where importances are
    known), that floor as a fraction of the total importance, and the uniform-importance floor.

    Returns
    -------
    list of dict
        Per width: ``width``, ``kept``, ``dropped``, ``floor`` (SAE units², None without importances),
        ``floor_fraction`` and ``uniform_floor``.
    """
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
    """The measurement's scalar quantities and its floor table, ready for JSON.

    Returns
    -------
    dict
        ``pyfloor_version``, ``measurement`` (its scalar fields and notes) and ``floors``
        (:func:`floor_table` at ``widths``, by default :func:`default_widths` around d*).
    """
    if widths is None:
        widths = default_widths(measurement.critical_width)
    m = measurement.to_dict()
    m.pop("importances")
    m.pop("feature_ids")
    return {"pyfloor_version": __version__, "measurement": m, "floors": floor_table(measurement, widths)}
