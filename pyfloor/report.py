"""Reports: floor tables of a measurement and a teacher's measurement run, as JSON-ready dicts,
terminal text, Markdown and plots (PNG, PDF or SVG; matplotlib, imported when plotting). The toy experiment's
report is :mod:`pyfloor.toy.report`; the helpers both share are in :mod:`pyfloor.render`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._io import json_ready
from .render import (
    figure_path,
    finish_figure,
    format_table,
    log_tick_labels,
    measurement_title,
    new_axes,
    source_label,
)
from .render import (
    format_number as _num,
)
from .render import (
    markdown_table as _md_table,
)
from .stats import Measurement

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .measure import Intervals, MeasureResult

__all__ = [
    "format_prediction",
    "measurement_markdown",
    "top_feature_quantiles",
    "plot_importance_rank",
    "plot_floor_curve",
    "write_measurement_report",
    "family_rows",
    "family_markdown",
    "plot_family",
    "write_family_report",
    "layers_markdown",
    "plot_layers",
    "write_layers_report",
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
    timing = (
        "measuring time not recorded (resumed from a checkpoint of an older pyfloor)"
        if seconds is None
        else f"{_num(rate, ',.0f')} tokens/s over {seconds:.1f} s"
    )
    lines = [
        "# pyfloor measurement",
        "",
        f"- source: {summary['source']}",
        f"- tokens: {summary['n_tokens']:,} in {summary['n_batches']:,} batches"
        + (
            f"; {summary['n_nonfinite']:,} tokens with non-finite activations excluded"
            if summary["n_nonfinite"]
            else ""
        ),
        f"- {timing}; stopped: {summary['stopped']}",
        f"- pyfloor {summary['pyfloor_version']}, torch {summary['torch_version']}",
        "",
    ]
    lead = summary.get("estimator") or "paper"
    estimators = summary.get("estimators") or {}
    if lead in estimators:
        lines += [f"Features counted by the **{lead}** estimator: {estimators[lead]['measurement']['notes'][0]}.", ""]
    rows = []
    for label, key, fmt in (
        ("F (alive features)" if lead == "paper" else "F (counted features)", "n_features", ",.0f"),
        ("mean L0", "mean_l0", ".5g"),
        ("α", "alpha", ".6f"),
        ("g(α)", "capacity", ".4f"),
        ("d* = F / g(α)", "critical_width", ",.1f"),
    ):
        rows.append([label, _interval_text(iv[key], fmt) if key in iv else format(m[key], fmt)])
    lines.append(
        _md_table(["quantity", f"estimate [{conf:.0%} bootstrap interval]" if "n_features" in iv else "estimate"], rows)
    )
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
            lines += [
                "",
                "Floor intervals are basic bootstrap intervals (2·floor − the replicates' percentiles, "
                "at least 0), which correct the low bias that re-sorting noisy importances gives each "
                "replicate's floor and the floor alike, so an interval may lie above the floor; "
                "the other intervals are percentile intervals.",
            ]
    health = summary.get("sae_health")
    if health is not None and health["warnings"]:
        lines += ["", "## SAE health", ""]
        lines += [f"- {w}" for w in health["warnings"]]
        lines += ["", "An SAE that fails these checks may count too many or too few features; train it longer."]
    lines += _estimator_sections(estimators, conf)
    lines += _provenance_section(summary.get("provenance") or {})
    sens = summary.get("alive_threshold_sensitivity") or []
    if sens:
        lines += ["", "## Sensitivity of the paper's definition to the alive threshold", ""]
        lines.append(
            _md_table(
                ["threshold", "F", "α", "d*", "enough tokens (≥ 10/threshold)"],
                [
                    [
                        f"{r['alive_threshold']:g}",
                        _num(r["n_features"], ","),
                        _num(r["alpha"], ".6f"),
                        _num(r["critical_width"], ",.1f"),
                        "yes" if r["resolved"] else "no",
                    ]
                    for r in sens
                ],
            )
        )
    quantiles = summary.get("top_feature_quantiles") or []
    if quantiles:
        lines += ["", "## Activation quantiles of the most important features", ""]
        lines.append(
            _md_table(
                ["latent", "importance E[z²]", "firing freq.", "median z", "p99 z", "max z"],
                [
                    [
                        str(q["latent"]),
                        _num(_finite(q["importance"]), ".4g"),
                        _num(_finite(q["frequency"]), ".3g"),
                        _num(_finite(q["median"]), ".4g"),
                        _num(_finite(q["p99"]), ".4g"),
                        _num(_finite(q["max"]), ".4g"),
                    ]
                    for q in quantiles
                ],
            )
        )
    return "\n".join(lines) + "\n"


def _provenance_section(provenance: dict[str, Any]) -> list[str]:
    """Markdown lines naming the teacher, layer, tokens, SAE and versions of a measurement (none if unrecorded)."""
    if not provenance:
        return []
    source, sae, stream = provenance.get("source", {}), provenance.get("sae", {}), provenance.get("stream", {})
    teacher, tokens = source.get("teacher"), source.get("tokens")
    meta = sae.get("metadata") or {}
    items = []
    if teacher:
        revision = f" at revision {teacher['revision']}" if teacher.get("revision") else ""
        items.append(f"teacher: {teacher['name']} ({teacher['class']}, {teacher['dtype']}){revision}")
        if teacher.get("device_map"):
            items.append(f"sharded over: {', '.join(sorted(set(teacher['device_map'].values())))}")
        items.append(f"layer: {source['layer']} (width {source['width']})")
    else:
        items.append(f"activations: {source.get('description', '?')}")
    if tokens:
        items.append(
            f"tokens: {tokens['description']}, sequences of {tokens['seq_len']}"
            + (" (streamed)" if tokens.get("streamed") else "")
        )
    if stream:
        where = f"; stream position {json.dumps(stream['position'])}" if stream.get("position") else ""
        items.append(f"read: {stream['n_batches']:,} batches, next batch {stream['next_batch']:,}{where}")
    if sae:
        arch = sae["activation"] + (f" k={sae['k']}" if sae.get("k") else "")
        items.append(
            f"SAE: {arch}, {sae['d_in']:,} → {sae['n_latents']:,} latents, {sae['dtype']}, sha256 {sae['sha256']}"
        )
        for key in ("path", "hub_id", "revision", "hook_name", "library", "model_name"):
            if meta.get(key) is not None:
                items.append(f"SAE {key.replace('_', ' ')}: {meta[key]}")
        if isinstance(meta.get("training"), dict):
            items.append("SAE training: " + ", ".join(f"{k}={v}" for k, v in meta["training"].items()))
    versions = provenance.get("versions") or {}
    if versions:
        items.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return ["", "## Provenance", "", *[f"- {item}" for item in items]]


def _estimator_sections(estimators: dict[str, Any], conf: float | None) -> list[str]:
    """Markdown lines: every estimator's F, α and d* side by side, and the merged estimator's sensitivity."""
    if not estimators:
        return []

    def cell(e: dict[str, Any], key: str, fmt: str) -> str:
        iv = e["intervals"].get(key)
        return _interval_text(iv, fmt) if iv else format(e["measurement"][key], fmt)

    rows = [
        [
            name,
            cell(e, "n_features", ",.0f"),
            cell(e, "alpha", ".5f"),
            cell(e, "critical_width", ",.1f"),
            e["measurement"]["notes"][0],
        ]
        for name, e in estimators.items()
    ]
    interval = f" [{conf:.0%} interval]" if conf is not None else ""
    lines = ["", "## Estimators of the teacher's features", ""]
    lines.append(_md_table(["estimator", f"F{interval}", f"α{interval}", f"d*{interval}", "definition"], rows))
    notes = [n for e in estimators.values() for n in e["measurement"]["notes"][1:]]
    for note in notes:
        lines += ["", note]
    merged = estimators.get("merged")
    if merged and merged["sensitivity"]:
        lines += ["", "## Sensitivity of the merged estimator to its settings", ""]
        lines.append(
            _md_table(
                ["decoder cosine", "importance mass", "F", "α", "d*"],
                [
                    [
                        f"{r['cosine']:g}",
                        f"{r['mass']:g}",
                        _num(r["n_features"], ","),
                        _num(r["alpha"], ".5f"),
                        _num(r["critical_width"], ",.1f"),
                    ]
                    for r in merged["sensitivity"]
                ],
            )
        )
    return lines


def top_feature_quantiles(result: MeasureResult, n: int = 10) -> list[dict[str, Any]]:
    """Median, p99 and max of the active values of the ``n`` most important latents (from the
    per-feature histograms, within half a bin width), with their importance and firing frequency."""
    importances = result.measurement.importances
    if result.feature_histograms is None or result.measurement.feature_ids is None or importances is None:
        return []
    ids = result.measurement.feature_ids[:n]
    q = result.feature_histograms.quantile([0.5, 0.99])
    freq = result.stats.frequency
    return [
        {
            "latent": int(i),
            "importance": float(imp),
            "frequency": float(freq[i]),
            "median": float(q[0, i]),
            "p99": float(q[1, i]),
            "max": float(result.stats.act_max[i]),
        }
        for i, imp in zip(ids, importances[:n])
    ]


#: Axis labels of the report's plots: importances and floors are sums of squared SAE latents.
FLOOR_LABEL = "Σ E[z²] of dropped latents (SAE units²)"
FLOOR_FRACTION_LABEL = "floor as a fraction of the total importance Σ E[z²]"
IMPORTANCE_LABEL = "E[z_i²] (SAE units²)"
WIDTH_LABEL = "student width d_S"
#: What the measurement's floor intervals are (pyfloor.measure: basic bootstrap), and its d* interval (percentile).
FLOOR_INTERVAL_METHOD = "basic"
D_STAR_INTERVAL_METHOD = "percentile"


def _percent(confidence: float) -> str:
    return f"{100 * confidence:.4g} %"


def plot_importance_rank(
    measurement: Measurement, path: str | Path | None = None, *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Importance E[z_i²] of the alive latents against their rank, log-log, the rank F (the last
    alive latent) marked. Draws into ``ax`` (else a new figure) and returns that Axes; ``path``
    saves the figure, its format from the suffix (``.png``, ``.pdf``, ``.svg``). ``title``
    defaults to the source, F, α and d*. ValueError for a measurement without importances or a
    ``path`` of another suffix."""
    if measurement.importances is None:
        raise ValueError("the measurement has no importances to plot")
    out = figure_path(path)
    ax, created = new_axes(ax)
    imp = np.asarray(measurement.importances, dtype=np.float64)
    rank = np.arange(1, imp.size + 1)
    shown = imp > 0  # a log axis cannot draw an importance of 0
    ax.loglog(rank[shown], imp[shown], lw=1.4, color="C0", label=f"{int(shown.sum()):,} alive latents")
    if not shown.all():
        ax.text(
            0.98,
            0.02,
            f"{int((~shown).sum()):,} importances of 0 not drawn",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
        )
    ax.set_xlabel("rank")
    ax.set_ylabel(IMPORTANCE_LABEL)
    ax.set_title(_title(measurement) if title is None else title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return finish_figure(ax, out, created)


def _title(measurement: Measurement) -> str:
    return measurement_title(measurement.source, measurement.n_features, measurement.alpha, measurement.critical_width)


def plot_floor_curve(
    measurement: Measurement,
    intervals: Intervals | None = None,
    path: str | Path | None = None,
    *,
    ax: Axes | None = None,
    normalize: bool = False,
    title: str | None = None,
) -> Axes:
    """Predicted floor against student width, log-log: Eq. 2 (importance-weighted) and uniform
    importance, with d* marked.

    ``intervals`` (:attr:`pyfloor.measure.MeasureResult.intervals`) adds the floors' basic
    bootstrap intervals as a shaded band drawn from their own low and high at the tabulated widths
    (a bias-corrected interval need not contain the estimate; a low of 0 reaches the bottom of the
    plot); between those widths the band follows the Eq. 2 curve, its bounds relative to the curve
    interpolated in log width. d*'s percentile interval is shaded around its line.

    The floor is Σ E[z²] of the dropped latents in SAE activation units squared, or with
    ``normalize`` a fraction of the total importance. Floors of 0 (from d* on) are not drawn.
    Draws into ``ax`` (else a new figure) and returns that Axes; ``path`` saves the figure, its
    format from the suffix (``.png``, ``.pdf``, ``.svg``). ``title`` defaults to the source, F, α, d*.
    ValueError for ``normalize`` without a positive total importance, or a ``path`` of another suffix.
    """
    out = figure_path(path)
    total = measurement.total_importance
    if normalize and not (total is not None and total > 0):
        raise ValueError("normalize=True needs a measurement with importances whose total is positive")
    scale = 1.0 / total if normalize and total else 1.0
    d_star = measurement.critical_width
    rows = sorted(
        (
            r
            for r in (intervals or {}).get("floors") or []
            if r["estimate"] > 0 and all(math.isfinite(r[k]) for k in ("estimate", "low", "high"))
        ),
        key=lambda r: r["width"],
    )
    grid = np.round(np.geomspace(max(1.0, d_star / 64), max(1.5 * d_star, 2.0), 240)).astype(np.int64)
    grid = np.unique(np.concatenate([grid, [r["width"] for r in rows]]).astype(np.int64))

    ax, created = new_axes(ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    drawn: list[np.ndarray] = []
    eq2 = None
    if total is not None:
        eq2 = np.asarray(measurement.floor(grid), dtype=np.float64) * scale
        ax.plot(grid[eq2 > 0], eq2[eq2 > 0], color="C0", lw=1.8, zorder=4, label="Eq. 2 (importance-weighted)")
        drawn.append(eq2[eq2 > 0])
    uniform = np.asarray(measurement.uniform_floor(grid), dtype=np.float64) * scale
    ax.plot(
        grid[uniform > 0],
        uniform[uniform > 0],
        color="0.45",
        ls="--",
        lw=1.2,
        zorder=3,
        label="uniform importance" if total is not None else "uniform importance (fraction of features lost)",
    )
    drawn.append(uniform[uniform > 0])
    if rows and eq2 is not None:
        w = np.array([r["width"] for r in rows], dtype=np.float64)
        est = np.array([r["estimate"] for r in rows]) * scale
        low, high = np.array([r["low"] for r in rows]) * scale, np.array([r["high"] for r in rows]) * scale
        drawn += [est, low[low > 0], high]
    values = np.concatenate(drawn) if drawn else np.zeros(0)
    if values.size:
        ax.set_ylim(float(values.min()) / 1.6, float(values.max()) * 1.6)
    if rows and eq2 is not None:
        conf = (intervals or {}).get("confidence", 0.95)
        rel = float(np.max(np.maximum(high - est, est - low) / est))
        label = (
            f"{_percent(conf)} bootstrap interval ({FLOOR_INTERVAL_METHOD})\n"
            f"at the marked widths: ≤ {100 * rel:.2g} % from Eq. 2"
        )
        if w.size == 1:  # one width: a narrow band around it
            xs = np.array([w[0] / 1.04, w[0] * 1.04])
            lo_band, hi_band = np.repeat(low, 2), np.repeat(high, 2)
        else:
            on = (grid >= w[0]) & (grid <= w[-1]) & (eq2 > 0)
            xs, curve = grid[on].astype(np.float64), eq2[on]
            lo_band = curve * np.interp(np.log(xs), np.log(w), low / est)
            hi_band = curve * np.interp(np.log(xs), np.log(w), high / est)
        floor_y = ax.get_ylim()[0]
        ax.fill_between(
            xs,
            np.maximum(lo_band, floor_y),
            np.maximum(hi_band, floor_y),
            color="C1",
            alpha=0.25,
            lw=0,
            zorder=2,
            label=label,
        )
        # the tabulated widths: hollow markers, and the interval as caps that show even where the band is too thin
        ax.plot(w, est, "o", ms=4.5, mfc="white", mec="C0", mew=1.2, zorder=5)
        ax.errorbar(
            w,
            est,
            yerr=[np.maximum(est - np.maximum(low, floor_y), 0), np.maximum(high - est, 0)],
            fmt="none",
            ecolor="C1",
            elinewidth=1.4,
            capsize=4,
            capthick=1.4,
            zorder=6,
        )
    ax.axvline(d_star, color="C3", lw=1.2, zorder=3, label=f"d* = {d_star:,.1f}")
    d_iv = (intervals or {}).get("critical_width")
    if d_iv and math.isfinite(d_iv.get("low", math.nan)) and math.isfinite(d_iv.get("high", math.nan)):
        ax.axvspan(
            d_iv["low"],
            d_iv["high"],
            color="C3",
            alpha=0.2,
            lw=0,
            zorder=1,
            label=f"d*: {_percent((intervals or {}).get('confidence', 0.95))} interval ({D_STAR_INTERVAL_METHOD})",
        )
    ax.set_xlim(grid[0] / 1.1, grid[-1] * 1.1)
    log_tick_labels(ax, "x", integers=True)
    log_tick_labels(ax, "y")
    ax.set_xlabel(WIDTH_LABEL)
    ax.set_ylabel(
        FLOOR_FRACTION_LABEL if normalize else FLOOR_LABEL if total is not None else "fraction of features lost"
    )
    ax.set_title(_title(measurement) if title is None else title, fontsize=10)
    notes = ["floors of 0 (d_S ≥ d*) not drawn"]
    if not measurement.in_sparse_regime:
        notes.append("α < 1 − 1/e: g(α) clamped to e")
    ax.legend(fontsize=7.5, loc="best", title="; ".join(notes), title_fontsize=7, framealpha=0.9)
    ax.grid(True, which="both", alpha=0.3)
    return finish_figure(ax, out, created)


def _activation_title(source: str) -> tuple[str, str]:
    """Title and legend label of the activation histogram, by the kind of source measured."""
    kind, name = source_label(source)
    if kind == "teacher":
        return f"Teacher activations: {name}", "teacher activations"
    if kind == "file":
        return f"Activations from file {name}", "activations"
    if kind == "array":
        return f"Activations: {name}", "activations"
    if kind == "iterable":
        return "Activations from an iterable", "activations"
    return (f"Activations: {name}" if name else "Activations"), "activations"


def write_measurement_report(result: MeasureResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a measurement's statistics, JSON (non-finite numbers as null), Markdown and plots into
    ``out_dir``; returns the paths."""
    from .histograms import firing_density

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    summary["top_feature_quantiles"] = top_feature_quantiles(result)
    paths = {
        "stats": out / "stats.safetensors",
        "measurement": out / "measurement.json",
        "json": out / "report.json",
        "markdown": out / "report.md",
    }
    result.stats.save(paths["stats"], metadata={"provenance": json.dumps(json_ready(result.provenance))})
    result.measurement.save_json(paths["measurement"])
    paths["json"].write_text(json.dumps(json_ready(summary), indent=1, allow_nan=False) + "\n")
    paths["markdown"].write_text(measurement_markdown(summary))
    paths["floor_plot"] = out / "floor_curve.png"
    plot_floor_curve(result.measurement, result.intervals, paths["floor_plot"])
    paths["importance_plot"] = out / "importance_rank.png"
    plot_importance_rank(result.measurement, paths["importance_plot"])
    density = firing_density(result.stats, alive_threshold=result.measurement.alive_threshold or 1e-5)
    paths["density_plot"] = out / "firing_density.png"
    name = source_label(result.source)[1]
    density.plot(title="Firing frequency of SAE latents" + (f": {name}" if name else ""), path=paths["density_plot"])
    if result.activation_histogram is not None:
        title, label = _activation_title(result.source)
        paths["activation_plot"] = out / "activation_histogram.png"
        result.activation_histogram.plot(label=label, title=title, path=paths["activation_plot"])
    return paths


# -- SAE families ---------------------------------------------------------------------------------------
def family_rows(results: list[MeasureResult], labels: list[str]) -> list[dict[str, Any]]:
    """One row per family member: its label, dictionary size, and F, α, d* (with intervals where
    measured) by each estimator, and its health."""
    rows = []
    for label, r in zip(labels, results):
        row: dict[str, Any] = {"member": label, "n_latents": r.stats.n_latents, "n_tokens": r.stats.n_tokens}
        for name, e in r.estimators.items():
            m, iv = e["measurement"], e["intervals"]
            for key in ("n_features", "alpha", "critical_width"):
                interval: Any = iv.get(key)
                row[f"{name}.{key}"] = getattr(m, key)
                row[f"{name}.{key}.low"] = None if interval is None else interval["low"]
                row[f"{name}.{key}.high"] = None if interval is None else interval["high"]
        row["healthy"] = r.health is None or r.health.ok
        row["warnings"] = [] if r.health is None else r.health.warnings
        rows.append(row)
    return rows


#: The colour of each estimator in the comparison plots
_ESTIMATOR_COLORS = {"paper": "C0", "merged": "C3"}


def _row_estimators(rows: list[dict[str, Any]]) -> list[str]:
    """The estimators whose F, α and d* :func:`family_rows`' rows hold, in report order."""
    return [n for n in ("paper", "merged") if f"{n}.n_features" in rows[0]]


def _estimate_bars(
    rows: list[dict[str, Any]], name: str, key: str
) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    """Estimator ``name``'s ``key`` over the rows and its error bars to the interval's ends (the
    estimate where a row has no interval); a percentile interval need not contain its estimate,
    so the bars are clipped at it."""
    y = np.array([r[f"{name}.{key}"] for r in rows], dtype=np.float64)
    lo = np.array([r.get(f"{name}.{key}.low") or r[f"{name}.{key}"] for r in rows], dtype=np.float64)
    hi = np.array([r.get(f"{name}.{key}.high") or r[f"{name}.{key}"] for r in rows], dtype=np.float64)
    return y, [np.maximum(y - lo, 0), np.maximum(hi - y, 0)]


def _estimate_columns(rows: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict[str, Any]], list[str]]]:
    """Headers and a row's cells for F, α and d* (with intervals) by each estimator of
    :func:`family_rows`' rows, and the SAE's health."""
    names = _row_estimators(rows)

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        lo, hi = row.get(f"{key}.low"), row.get(f"{key}.high")
        text = format(row[key], fmt)
        return text if lo is None or hi is None else f"{text} [{format(lo, fmt)}, {format(hi, fmt)}]"

    def cells(row: dict[str, Any]) -> list[str]:
        values = [cell(row, f"{n}.{key}", fmt) for n in names for key, fmt in _ESTIMATE_FORMATS]
        return values + ["yes" if row["healthy"] else "no: " + "; ".join(row["warnings"])]

    return [f"{what} {n}" for n in names for what in ("F", "α", "d*")] + ["healthy"], cells


_ESTIMATE_FORMATS = (("n_features", ",.0f"), ("alpha", ".4f"), ("critical_width", ",.1f"))


def family_markdown(rows: list[dict[str, Any]], lead: str, rule: str | None = None) -> str:
    """The family comparison as Markdown: every member's F, α and d* by each estimator, the lead
    member marked with the ``rule`` that chose it."""
    headers, cells = _estimate_columns(rows)
    body = [[r["member"] + (" ◀ lead" if r.get("lead") else ""), f"{r['n_latents']:,}", *cells(r)] for r in rows]
    lines = [
        "# pyfloor SAE family measurement",
        "",
        f"{len(rows)} SAEs measured from one pass over the same tokens; the reports lead with the **{lead}** "
        "estimator. Intervals are bootstrap percentile intervals.",
        "",
        _md_table(["member", "latents", *headers], body),
    ]
    lead_rows = [r for r in rows if r.get("lead")]
    if lead_rows:
        lines += [
            "",
            f"◀ lead: {lead_rows[0]['member']}, chosen without any truth ({lead} F̂, training FVU): {rule}.",
        ]
    return "\n".join(lines) + "\n"


def plot_family(rows: list[dict[str, Any]], out: str | Path | None = None, *, ax: Axes | None = None) -> Axes:
    """F̂ (filled) and d* (open markers) against dictionary size, colour by estimator, one line per
    penalty group (``row["group"]``, e.g. "L1 0.1"; medians over its members of a size), intervals as bars."""
    ax, created = new_axes(ax, figsize=(6.8, 4.6))
    names = _row_estimators(rows)
    groups = list(dict.fromkeys(str(r.get("group", "")) for r in rows))
    dashes = ["-", "--", ":", "-."]
    x_all = np.array([r["n_latents"] for r in rows], dtype=np.float64)
    for n in names:
        for key, marker, what in (("n_features", "o", "F̂"), ("critical_width", "s", "d*")):
            y, yerr = _estimate_bars(rows, n, key)
            ax.errorbar(
                x_all,
                y,
                yerr=yerr,
                fmt=marker,
                color=_ESTIMATOR_COLORS[n],
                mfc=_ESTIMATOR_COLORS[n] if key == "n_features" else "white",
                ms=4.5,
                capsize=2,
                alpha=0.85,
                label=f"{what} ({n})",
            )
            for gi, g in enumerate(groups):
                mine = np.array([str(r.get("group", "")) == g for r in rows])
                sizes = np.unique(x_all[mine])
                ax.plot(
                    sizes,
                    [np.median(y[mine & (x_all == v)]) for v in sizes],
                    ls=dashes[gi % len(dashes)],
                    color=_ESTIMATOR_COLORS[n],
                    lw=1,
                )
    for gi, g in enumerate(groups):
        if g:
            ax.plot([], [], ls=dashes[gi % len(dashes)], color="0.3", lw=1, label=g)
    sizes = np.unique(x_all)
    ax.plot(sizes, sizes, color="0.6", lw=0.8, ls=":", label="dictionary size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_tick_labels(ax, "y")
    ax.set_xticks(sizes, [f"{int(v):,}" for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("SAE dictionary size (latents)")
    ax.set_ylabel("features F̂ (filled) / critical width d* (open)")
    ax.set_title("Counted features and critical width against dictionary size", fontsize=10)
    ax.legend(fontsize=7, loc="best", ncols=2, title="lines: medians over seeds", title_fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return finish_figure(ax, figure_path(out), created)


def write_family_report(
    results: list[MeasureResult],
    labels: list[str],
    out_dir: str | Path,
    *,
    lead: tuple[int, str] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Path]:
    """Write each member's report into ``out_dir/<label>/`` and the comparison (JSON, Markdown, plot)
    into ``out_dir``, marking the member the selection rule chose (``lead``: its index and why) if
    given; ``groups`` names each member's penalty (one plot line per group). Returns the comparison's paths."""
    out = Path(out_dir)
    for label, r in zip(labels, results):
        write_measurement_report(r, out / label)
    rows = family_rows(results, labels)
    for i, row in enumerate(rows):
        row["lead"] = lead is not None and i == lead[0]
        row["group"] = "" if groups is None else groups[i]
    estimator = str(results[0].config.get("estimator"))
    paths = {"json": out / "family.json", "markdown": out / "family.md", "plot": out / "family.png"}
    summary = {
        "estimator": estimator,
        "lead": None if lead is None else {"member": labels[lead[0]], "rule": lead[1]},
        "members": rows,
    }
    paths["json"].write_text(json.dumps(json_ready(summary), indent=1, allow_nan=False) + "\n")
    paths["markdown"].write_text(family_markdown(rows, estimator, None if lead is None else lead[1]))
    plot_family(rows, paths["plot"])
    return paths


def layers_markdown(rows: list[dict[str, Any]], lead: str) -> str:
    """The comparison across layers as Markdown: each layer's measured SAE (its family's lead
    member) and its F, α and d* by each estimator."""
    headers, cells = _estimate_columns(rows)
    body = [[r["layer"], r["member"], f"{r['n_latents']:,}", f"{r['n_tokens']:,}", *cells(r)] for r in rows]
    return (
        "\n".join(
            [
                "# pyfloor measurement across layers",
                "",
                f"{len(rows)} layers measured from one forward pass per batch over the same tokens; the reports lead "
                f"with the **{lead}** estimator. Intervals are bootstrap percentile intervals.",
                "",
                _md_table(["layer", "SAE", "latents", "tokens", *headers], body),
            ]
        )
        + "\n"
    )


def plot_layers(rows: list[dict[str, Any]], out: str | Path | None = None) -> Figure:
    """F̂, α̂ and d* of each layer (in the order measured), one panel each, colour by estimator,
    intervals as bars."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    names = _row_estimators(rows)
    x = np.arange(len(rows))
    for ax, (key, what) in zip(
        axes, (("n_features", "features F̂"), ("alpha", "sparsity α̂"), ("critical_width", "critical width d*"))
    ):
        for offset, n in zip((-0.08, 0.08), names):
            y, yerr = _estimate_bars(rows, n, key)
            ax.errorbar(
                x + offset,
                y,
                yerr=yerr,
                fmt="o-",
                color=_ESTIMATOR_COLORS[n],
                ms=4.5,
                capsize=2,
                lw=1,
                label=n,
            )
        ax.set_xticks(x, [str(r["layer"]) for r in rows], rotation=30 if len(rows) > 6 else 0, fontsize=8)
        ax.set_title(what, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("estimate")
    axes[0].legend(fontsize=8, title="estimator", title_fontsize=8)
    fig.suptitle("The teacher's features by depth", fontsize=11)
    if out is not None:
        fig.savefig(out, dpi=130)
        plt.close(fig)
    return fig


def write_layers_report(
    results: dict[str, MeasureResult], members: dict[str, str], out_dir: str | Path
) -> dict[str, Path]:
    """Write the comparison across layers (JSON, Markdown, plot) into ``out_dir``: ``results`` holds
    each layer's measured SAE (its family's lead), ``members`` names it. Returns the paths."""
    out = Path(out_dir)
    layers = list(results)
    rows = family_rows([results[k] for k in layers], [members[k] for k in layers])
    for layer, row in zip(layers, rows):
        row["layer"] = layer
    estimator = str(results[layers[0]].config.get("estimator"))
    paths = {"json": out / "layers.json", "markdown": out / "layers.md", "plot": out / "layers.png"}
    paths["json"].write_text(
        json.dumps(json_ready({"estimator": estimator, "layers": rows}), indent=1, allow_nan=False) + "\n"
    )
    paths["markdown"].write_text(layers_markdown(rows, estimator))
    plot_layers(rows, paths["plot"])
    return paths
