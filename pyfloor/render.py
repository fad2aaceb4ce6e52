"""Small rendering helpers shared by the measurement report (:mod:`pyfloor.report`) and the toy
report (:mod:`pyfloor.toy.report`): plain-text and Markdown tables, numbers, matplotlib."""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

__all__ = ["format_table", "markdown_table", "format_number", "pyplot"]


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
