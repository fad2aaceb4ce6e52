"""Reports: floor tables of a measurement and a teacher's measurement run, as JSON-ready dicts,
terminal text, Markdown and PNG plots (matplotlib, imported when plotting). The toy experiment's
report is :mod:`pyfloor.toy.report`; the helpers both share are in :mod:`pyfloor.render`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import json_ready
from .render import format_number as _num, format_table, markdown_table as _md_table, pyplot as _pyplot
from .stats import Measurement

if TYPE_CHECKING:
    from .measure import MeasureResult

__all__ = [
    "format_prediction",
    "measurement_markdown",
    "top_feature_quantiles",
    "plot_importance_rank",
    "plot_floor_curve",
    "write_measurement_report",
]


def format_prediction(summary: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`pyfloor.floors.prediction_summary`."""
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
    lines += [f"note: {n}" for n in m.get("notes", ())]
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


# -- a teacher's measurement ------------------------------------------------------------------------
def _interval_text(iv: dict[str, Any], fmt: str) -> str:
    return f"{format(iv['estimate'], fmt)} [{format(iv['low'], fmt)}, {format(iv['high'], fmt)}]"


def _finite(x: float | None) -> float | None:
    """``x`` where it is a finite number, else None."""
    return x if x is not None and math.isfinite(x) else None


def measurement_markdown(summary: dict[str, Any]) -> str:
    """A Markdown report of a measurement run (:meth:`pyfloor.measure.MeasureResult.to_dict`, or
    that dict read back from report.json, where null stands for a number that is not finite)."""
    m, iv = summary["measurement"], summary.get("intervals") or {}
    conf = iv.get("confidence")
    seconds, rate = _finite(summary["seconds"]), _finite(summary["tokens_per_second"])
    timing = ("measuring time not recorded (resumed from a checkpoint of an older pyfloor)" if seconds is None
              else f"{_num(rate, ',.0f')} tokens/s over {seconds:.1f} s")
    lines = [
        "# pyfloor measurement",
        "",
        f"- source: {summary['source']}",
        f"- tokens: {summary['n_tokens']:,} in {summary['n_batches']:,} batches"
        + (f"; {summary['n_nonfinite']:,} tokens with non-finite activations excluded" if summary["n_nonfinite"] else ""),
        f"- {timing}; stopped: {summary['stopped']}",
        f"- pyfloor {summary['pyfloor_version']}, torch {summary['torch_version']}",
        "",
    ]
    rows = []
    for label, key, fmt in (("F (alive features)", "n_features", ",.0f"), ("mean L0", "mean_l0", ".5g"),
                            ("α", "alpha", ".6f"), ("g(α)", "capacity", ".4f"), ("d* = F / g(α)", "critical_width", ",.1f")):
        rows.append([label, _interval_text(iv[key], fmt) if key in iv else format(m[key], fmt)])
    lines.append(_md_table(["quantity", f"estimate [{conf:.0%} bootstrap interval]" if "n_features" in iv else "estimate"],
                           rows))
    if not m["in_sparse_regime"]:
        lines += ["", "α < 1 − 1/e: outside the sparse regime of g(α); the capacity is clamped to e."]
    floors = summary.get("floors") or [{"width": r["width"], "floor": r["estimate"]} for r in iv.get("floors") or []]
    if floors:
        by_width = {r["width"]: r for r in iv.get("floors") or []}
        headers = ["d_S", "kept F_S", "dropped", "floor"]
        headers += [f"{conf:.0%} interval", "bootstrap bias"] if by_width else []
        rows = []
        for r in floors:
            cells = [f"{r['width']:,}", _num(r.get("kept"), ","), _num(r.get("dropped"), ","), _num(r["floor"], ".6g")]
            if by_width:
                b = by_width[r["width"]]
                cells += [f"[{b['low']:.6g}, {b['high']:.6g}]", _num(b.get("bias"), "+.3g")]
            rows.append(cells)
        lines += ["", "## Predicted floor (Eq. 2) by student width", "", _md_table(headers, rows)]
        if by_width:
            lines += ["", "Floor intervals are basic bootstrap intervals (2·floor − the replicates' percentiles, "
                          "at least 0), which correct the low bias that re-sorting noisy importances gives each "
                          "replicate's floor and the floor alike, so an interval may lie above the floor; "
                          "the other intervals are percentile intervals."]
    sens = summary.get("alive_threshold_sensitivity") or []
    if sens:
        lines += ["", "## Sensitivity to the alive threshold", ""]
        lines.append(_md_table(
            ["threshold", "F", "α", "d*", "enough tokens (≥ 10/threshold)"],
            [[f"{r['alive_threshold']:g}", _num(r["n_features"], ","), _num(r["alpha"], ".6f"),
              _num(r["critical_width"], ",.1f"), "yes" if r["resolved"] else "no"] for r in sens],
        ))
    quantiles = summary.get("top_feature_quantiles") or []
    if quantiles:
        lines += ["", "## Activation quantiles of the most important features", ""]
        lines.append(_md_table(
            ["latent", "importance E[z²]", "firing freq.", "median z", "p99 z", "max z"],
            [[str(q["latent"]), _num(_finite(q["importance"]), ".4g"), _num(_finite(q["frequency"]), ".3g"),
              _num(_finite(q["median"]), ".4g"), _num(_finite(q["p99"]), ".4g"), _num(_finite(q["max"]), ".4g")]
             for q in quantiles],
        ))
    return "\n".join(lines) + "\n"


def top_feature_quantiles(result: "MeasureResult", n: int = 10) -> list[dict[str, Any]]:
    """Median, p99 and max of the active values of the ``n`` most important latents (from the
    per-feature histograms, within half a bin width), with their importance and firing frequency."""
    if result.feature_histograms is None or result.measurement.feature_ids is None:
        return []
    ids = result.measurement.feature_ids[:n]
    q = result.feature_histograms.quantile([0.5, 0.99])
    freq = result.stats.frequency
    return [
        {"latent": int(i), "importance": float(imp), "frequency": float(freq[i]), "median": float(q[0, i]),
         "p99": float(q[1, i]), "max": float(result.stats.act_max[i])}
        for i, imp in zip(ids, result.measurement.importances[:n])
    ]


def plot_importance_rank(measurement: Measurement, path: str | Path) -> Path:
    """Importance E[z²] against rank, log-log."""
    if measurement.importances is None:
        raise ValueError("the measurement has no importances to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    ax.loglog(np.arange(1, measurement.n_features + 1), measurement.importances, lw=1.2, color="C0")
    ax.set_xlabel("feature rank")
    ax.set_ylabel("importance E[z²]")
    ax.set_title(f"Importance by rank: F = {measurement.n_features:,}, α = {measurement.alpha:.5f}")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_floor_curve(measurement: Measurement, intervals: dict[str, Any] | None, path: str | Path) -> Path:
    """Predicted floor against student width (Eq. 2 and uniform importance), the bootstrap
    intervals at the tabulated widths drawn from their own low and high (a bias-corrected interval
    need not contain the estimate), and d* with its interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    d_star = measurement.critical_width
    grid = np.unique(np.round(np.geomspace(max(1.0, d_star / 64), 1.5 * d_star, 200)).astype(np.int64))
    eq2 = np.asarray(measurement.floor(grid))
    shown = eq2 > 0
    ax.plot(grid[shown], eq2[shown], color="C0", label="Eq. 2 (importance-weighted)")
    ax.plot(grid, measurement.uniform_floor(grid), color="C7", ls="--", label="uniform importance")
    rows = [r for r in (intervals or {}).get("floors") or [] if r["estimate"] > 0]
    if rows:
        w = np.array([r["width"] for r in rows])
        est = np.array([r["estimate"] for r in rows])
        # a low of 0 cannot be drawn on the log axis: such an interval reaches down to the curves' bottom
        low = np.maximum([r["low"] for r in rows], ax.get_ylim()[0])
        high = np.maximum([r["high"] for r in rows], low)
        ax.vlines(w, low, high, color="C0", lw=1.5, label=f"{intervals['confidence']:.0%} bootstrap interval")
        ax.plot(w, est, "o", ms=4, color="C0")
    ax.axvline(d_star, color="C3", lw=1, label=f"d* = {d_star:,.1f}")
    d_iv = (intervals or {}).get("critical_width")
    if d_iv:
        ax.axvspan(d_iv["low"], d_iv["high"], color="C3", alpha=0.15)
    ax.set_xlabel("student width d_S")
    ax.set_ylabel("predicted floor (floors of 0 not drawn)")
    ax.set_title("Distillation floor by student width")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _plot_with(draw: Any, path: str | Path) -> Path:
    """Save a figure whose single Axes ``draw(ax)`` fills."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    draw(ax)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_measurement_report(result: "MeasureResult", out_dir: str | Path) -> dict[str, Path]:
    """Write a measurement's statistics, JSON (non-finite numbers as null), Markdown and plots into
    ``out_dir``; returns the paths."""
    from .histograms import firing_density

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    summary["top_feature_quantiles"] = top_feature_quantiles(result)
    paths = {"stats": out / "stats.safetensors", "measurement": out / "measurement.json",
             "json": out / "report.json", "markdown": out / "report.md"}
    result.stats.save(paths["stats"])
    result.measurement.save_json(paths["measurement"])
    paths["json"].write_text(json.dumps(json_ready(summary), indent=1, allow_nan=False) + "\n")
    paths["markdown"].write_text(measurement_markdown(summary))
    paths["floor_plot"] = plot_floor_curve(result.measurement, result.intervals, out / "floor_curve.png")
    paths["importance_plot"] = plot_importance_rank(result.measurement, out / "importance_rank.png")
    density = firing_density(result.stats, alive_threshold=result.measurement.alive_threshold or 1e-5)
    paths["density_plot"] = _plot_with(density.plot, out / "firing_density.png")
    if result.activation_histogram is not None:
        paths["activation_plot"] = _plot_with(
            lambda ax: (result.activation_histogram.plot(ax, label="teacher activations"),
                        ax.set_title("Teacher activations at the hooked layer")),
            out / "activation_histogram.png",
        )
    return paths
