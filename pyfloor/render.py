"""Small rendering helpers shared by the measurement report (:mod:`pyfloor.report`) and the toy
report (:mod:`pyfloor.toy.report`): plain-text and Markdown tables, numbers, matplotlib figures
(Axes to draw into, saving by file suffix, titles naming a measurement's source, F, α and d*)."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "format_table",
    "markdown_table",
    "format_number",
    "pyplot",
    "FIGURE_FORMATS",
    "figure_path",
    "new_axes",
    "finish_figure",
    "log_tick_labels",
    "source_label",
    "format_alpha",
    "measurement_title",
]


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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown (GitHub) table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def format_number(x: float | None, fmt: str) -> str:
    """``x`` in format ``fmt``, or a dash for None."""
    return "—" if x is None else format(x, fmt)


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- figures ------------------------------------------------------------------------------------------
#: File suffixes a figure can be saved as, and the matplotlib format of each.
FIGURE_FORMATS: dict[str, str] = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def figure_path(path: str | os.PathLike[str] | None) -> Path | None:
    """``path`` as a Path whose suffix names a format of :data:`FIGURE_FORMATS` (None stays None);
    any other suffix is a ValueError naming it and the allowed ones."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(
            f"{p}: cannot save a figure as {p.suffix or '(no suffix)'!r}; the suffix picks the format, one of "
            + ", ".join(FIGURE_FORMATS)
        )
    return p


def _figure_pyplot() -> ModuleType:
    """``matplotlib.pyplot``, with the Agg backend chosen first where there is no display (and no
    backend was asked for): a figure made in a terminal or a notebook still shows there."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_axes(ax: Axes | None = None, *, figsize: tuple[float, float] = (6.4, 4.2)) -> tuple[Axes, bool]:
    """``(ax, False)`` for a given Axes, else ``(axes of a new figure, True)``."""
    if ax is not None:
        return ax, False
    plt = _figure_pyplot()
    fig, new = plt.subplots(figsize=figsize, layout="constrained")
    return new, True


def finish_figure(ax: Axes, path: Path | None, created: bool, *, dpi: int = 150) -> Axes:
    """Save the figure holding ``ax`` to ``path`` (checked by :func:`figure_path`; format from its
    suffix) and return ``ax``. A figure made by the plotting call itself and saved is closed in
    pyplot (the returned Axes and its figure stay usable), so that writing many plots holds no memory."""
    fig = ax.figure.figure  # the root figure (an Axes of a subfigure has the subfigure as .figure)
    if path is not None:
        fig.savefig(path, format=FIGURE_FORMATS[path.suffix.lower()], dpi=dpi)
        if created:
            _figure_pyplot().close(fig)
    return ax


def _basename(name: str) -> str:
    return Path(name.rstrip("/")).name or name


def source_label(source: str) -> tuple[str, str]:
    """``(kind, short name)`` of a source description (``ActivationSource.describe()`` or a
    measurement's ``source``): kind ``"teacher"`` (short: model and layer), ``"file"`` (file
    name), ``"array"``, ``"iterable"``, ``""`` for an empty description, or ``"other"``."""
    s = " ".join(str(source).split())
    if not s:
        return "", ""
    m = re.match(r"teacher (?P<name>.+?) at (?P<layer>\S+)(?: over .*)?$", s)
    if m:
        name = m["name"]
        if name.startswith(("/", ".", "~")) or os.path.isabs(name):
            name = _basename(name)  # a local model directory: its name, not the whole path
        return "teacher", f"{name}, {m['layer']}"
    m = re.match(r"activations (?P<names>.+) \([\d,]+ tokens, d=\d+\)$", s)
    if m:
        names = re.findall(r"<array \([^)]*\)>|[^,\s][^,]*", m["names"])
        more = f" + {len(names) - 1} more" if len(names) > 1 else ""
        if names and names[0].startswith("<array"):
            return "array", "in-memory array " + names[0][len("<array ") : -1] + more
        return "file", (_basename(names[0].strip()) if names else m["names"]) + more
    if s.startswith("iterable of activations"):
        return "iterable", s
    if "/" in s or os.sep in s or re.search(r"\.(json|safetensors|npy|pt)$", s):
        return "file", _basename(s)
    return "other", s if len(s) <= 60 else s[:57] + "…"


def format_alpha(alpha: float) -> str:
    """α with at least five decimals and three significant digits of 1 − α (α near 1 is where d*
    is most sensitive to it: 0.99238, 0.99999012)."""
    if not math.isfinite(alpha):
        return str(alpha)
    gap = 1.0 - alpha
    decimals = 5 if gap <= 0 or gap >= 1e-3 else min(12, math.ceil(-math.log10(gap)) + 2)
    return f"{alpha:.{decimals}f}"


def measurement_title(source: str, n_features: int, alpha: float, d_star: float, *, width: int = 62) -> str:
    """``"<source> — F = 28,665, α = 0.99238, d* = 1,064.7"``; on two lines where one would pass
    ``width`` characters, and without the source where there is none."""
    facts = f"F = {n_features:,}, α = {format_alpha(alpha)}, d* = {d_star:,.1f}"
    name = source_label(source)[1]
    if not name:
        return facts
    one = f"{name} — {facts}"
    return one if len(one) <= width else f"{name}\n{facts}"


def log_tick_labels(ax: Axes, axis: str, *, integers: bool = False) -> None:
    """Readable labels on a log axis (``axis`` "x" or "y") of ``ax``, called once its limits are
    set: with ``integers`` (widths) plain numbers, 1, 2, 1,000, rather than 2×10⁰; and where the
    axis spans less than two decades the minor ticks are labelled too, as plain numbers (4, 30,
    0.002) rather than 4×10¹."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    narrow = lo > 0 and hi / lo < 100
    every_minor = lo > 0 and hi / lo < 10  # under a decade: label every minor tick, else 2, 3 and 5 only

    def plain(x: float, _pos: int) -> str:
        return f"{x:,.0f}" if integers and x >= 1 else f"{x:g}"

    def minor(x: float, pos: int) -> str:
        mantissa = round(x / 10 ** math.floor(math.log10(x)), 6) if x > 0 else 0
        return plain(x, pos) if every_minor or mantissa in (2, 3, 5) else ""

    if integers or narrow:
        target.set_major_formatter(FuncFormatter(plain))
    if narrow:
        target.set_minor_formatter(FuncFormatter(minor))
    elif integers:
        target.set_minor_formatter(NullFormatter())
