"""Reports: floor tables of a measurement, the toy-model experiment, and a teacher's measurement run,
as JSON-ready dicts, terminal text, Markdown and PNG plots (matplotlib, imported when plotting)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ._io import json_ready
from .scoring import WIDTH_STRATA
from ._version import __version__
from .stats import Measurement

if TYPE_CHECKING:
    from .measure import MeasureResult

__all__ = [
    "default_widths",
    "floor_table",
    "prediction_summary",
    "format_prediction",
    "format_table",
    "PAPER_TOY_ACCURACY",
    "toy_width_table",
    "toy_sparsity_table",
    "toy_metric_table",
    "toy_stratum_table",
    "toy_sae_table",
    "toy_sweep_table",
    "toy_markdown",
    "format_toy_report",
    "plot_toy_floors",
    "plot_toy_summary",
    "measurement_markdown",
    "top_feature_quantiles",
    "plot_importance_rank",
    "plot_floor_curve",
    "write_measurement_report",
]


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


# -- the toy-model experiment (pyfloor demo / pyfloor toy) ------------------------------------------
#: The paper's headline for its toy grid: median prediction accuracy above 93 % at every sparsity.
PAPER_TOY_ACCURACY = 0.93

#: Short column names of the predictors and targets in tables and legends.
TOY_PREDICTOR_LABELS = {
    "eq2": "Eq. 2 (true)",
    "eq2_sae": "Eq. 2 (SAE)",
    "eq2_teacher": "Eq. 2 (teacher feats)",
    "teacher_density": "teacher density",
    "packing_loco": "packing law (LOCO)",
    "width_packing_loco": "width packing law (LOCO)",
    "calibrated_loco": "calibrated Eq. 2 (LOCO)",
}
TOY_TARGET_LABELS = {"distill": "(a) distill", "excess": "(b) excess task", "task": "(c) task"}


def _label(predictor: str | None) -> str:
    return TOY_PREDICTOR_LABELS.get(predictor, str(predictor))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _available(report: dict[str, Any], target: str = "distill") -> list[str]:
    return [k for k, v in report["summary"][target].items() if v is not None]


def toy_width_table(config: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for one configuration: per width the three observed losses (mean ± std
    over seeds) of the distilled students, the task-trained students' task loss, features kept,
    and every available predictor's floor."""
    preds = [k for k, v in config["predictions"].items() if v is not None]
    headers = ["d_S", "d/d*", "(a) distill", "(b) excess task", "(c) task", "task-trained (c)", "kept"]
    headers += [_label(k) for k in preds]
    rows = []
    for i, s in enumerate(config["students"]):
        d = s["distilled"]
        cells = [str(s["width"]), f"{s['d_over_dstar']:.2f}"]
        cells += [f"{d[t]['mean']:.4f} ± {d[t]['std']:.4f}" for t in ("distill", "excess", "task")]
        cells.append(f"{s['task_trained']['task']['mean']:.4f}")
        cells.append("/".join(str(k) for k in d["n_kept"]))
        cells += [f"{config['predictions'][k][i]:.4f}" for k in preds]
        rows.append(cells)
    return headers, rows


def toy_sparsity_table(report: dict[str, Any], target: str = "distill") -> tuple[list[str], list[list[str]]]:
    """Median accuracy of every predictor at every sparsity against ``target``, beside the paper's claim."""
    names = _available(report, target)
    alphas = list(report["summary"][target][names[0]]["by_sparsity"]) if names else []
    headers = ["α", "paper's claim"] + [_label(k) for k in names]
    rows = []
    for a in alphas:
        rows.append(
            [a, f"> {PAPER_TOY_ACCURACY:.0%}"]
            + [_pct(report["summary"][target][k]["by_sparsity"][a]["median_accuracy"]) for k in names]
        )
    return headers, rows


def toy_metric_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per predictor and target: pooled R², median accuracy, and the per-configuration Pearson r."""
    headers = [
        "predictor",
        "target",
        "median acc.",
        "R² (pooled)",
        "r (pooled)",
        "median r per config",
        "min r per config",
        "configs with r ≥ 0.98",
    ]
    rows = []
    for name in _available(report):
        for target in TOY_TARGET_LABELS:
            s = report["summary"][target][name]
            pc = s["per_config"]
            rows.append(
                [
                    _label(name),
                    TOY_TARGET_LABELS[target],
                    _pct(s["overall"]["median_accuracy"]),
                    _num(s["overall"]["r2"], ".3f"),
                    _num(s["overall"]["pearson_r"], ".4f"),
                    _num(pc["pearson_r_median"], ".4f"),
                    _num(pc["pearson_r_min"], ".4f"),
                    _pct(pc["fraction_r_at_least_0.98"]),
                ]
            )
    return headers, rows


def toy_stratum_table(report: dict[str, Any], target: str = "distill") -> tuple[list[str], list[list[str]]]:
    """Median accuracy (and the number of students) per d/d* stratum for every predictor."""
    names = _available(report, target)
    scores = report["summary"][target]
    strata = [label for label, *_ in WIDTH_STRATA if any(label in scores[k]["by_stratum"] for k in names)]
    headers = (
        ["predictor"] + [f"{s} (n={report['summary'][target][names[0]]['by_stratum'][s]['n_points']})" for s in strata]
        if names
        else ["predictor"]
    )
    rows = [
        [_label(k)]
        + [_pct(report["summary"][target][k]["by_stratum"].get(s, {}).get("median_accuracy")) for s in strata]
        for k in names
    ]
    return headers, rows


def toy_sae_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """SAE measurement against the truth, per configuration: F̂ and α̂ of the picked ReLU and top-k SAEs."""
    headers = ["config", "n", "represented", "α", "latents", "ReLU L1", "F̂", "α̂", "FVU", "top-k k", "F̂", "α̂", "FVU"]
    rows = []
    for c in report["configs"]:
        sae = c["sae"]
        if sae is None:
            continue
        cells = [
            c["config"]["label"],
            str(sae["truth"]["n_features"]),
            str(sae["truth"]["represented"]),
            f"{sae['truth']['alpha']:g}",
            str(sae["n_latents"]),
        ]
        for act in ("relu", "topk"):
            p = sae["selected"].get(act)
            cells += (
                ["—"] * 4
                if p is None
                else [f"{p['penalty']:g}", str(p["n_features"]), f"{p['alpha']:.3f}", f"{p['fvu']:.3f}"]
            )
        rows.append(cells)
    return headers, rows


def toy_sweep_table(config: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The SAE sensitivity table of one configuration: every penalty with FVU, L0, F̂ and α̂."""
    sae = config["sae"]
    picked = {(p["activation"], p["penalty"]) for p in sae["selected"].values()}
    headers = ["SAE", "penalty", "FVU", "L0", "F̂", "α̂", "F̂ / represented", "α̂ − α", "picked"]
    rows = []
    for p in sae["sweep"]:
        rows.append(
            [
                "ReLU+L1" if p["activation"] == "relu" else "top-k",
                f"{p['penalty']:g}",
                f"{p['fvu']:.4f}",
                f"{p['mean_l0']:.2f}",
                str(p["n_features"]),
                f"{p['alpha']:.3f}",
                f"{p['n_features'] / max(sae['truth']['represented'], 1):.2f}",
                f"{p['alpha'] - sae['truth']['alpha']:+.3f}",
                "◀" if (p["activation"], p["penalty"]) in picked else "",
            ]
        )
    return headers, rows


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _toy_sections(report: dict[str, Any], table: Any, per_config_limit: int = 2) -> list[tuple[str, str]]:
    """(title, rendered table) of every section of a toy report, rendered by ``table(headers, rows)``."""
    sections = []
    configs = report["configs"]
    if len(configs) <= per_config_limit:
        for c in configs:
            t = c["teachers"]
            title = (
                f"{c['config']['label']}: d* = {c['config']['critical_width']:.2f}, teacher represents "
                f"{'/'.join(str(x['n_represented']) for x in t)} features, teacher task loss "
                f"{'/'.join(format(x['task_loss'], '.4f') for x in t)} (per seed)"
            )
            sections.append((title, table(*toy_width_table(c))))
            if c["sae"] is not None:
                sections.append(
                    (
                        f"SAE sensitivity ({c['config']['label']}, {c['sae']['n_latents']} latents)",
                        table(*toy_sweep_table(c)),
                    )
                )
    sections.append(
        ("Median accuracy against (a) the distillation loss, per sparsity", table(*toy_sparsity_table(report)))
    )
    sections.append(("Scores of every predictor against each observed loss", table(*toy_metric_table(report))))
    sections.append(("Median accuracy against (a) by student width relative to d*", table(*toy_stratum_table(report))))
    if len(configs) > per_config_limit and any(c["sae"] is not None for c in configs):
        sections.append(("SAE measurement against the truth (picked penalties)", table(*toy_sae_table(report))))
    return sections


def toy_markdown(report: dict[str, Any]) -> str:
    """The toy report as Markdown: settings, per-configuration tables (for one or two), summaries."""
    s = report["settings"]
    lines = [
        "# pyfloor toy-model report",
        "",
        f"pyfloor {report['pyfloor_version']}; command: `{report['command'] or '(API)'}`; "
        f"{len(report['configs'])} configuration(s); seeds {s['seeds']}; "
        f"{s['train']['steps']} steps, batch {s['train']['batch_size']}, lr {s['train']['lr']:g}; "
        + (f"ran {report['seconds']:.0f} s." if report.get("seconds") else ""),
        "",
        "Observed losses: " + "; ".join(report["targets"].values()) + ".",
        f"Best predictor on (a) (highest worst-sparsity median accuracy): **{_label(report['summary']['best'])}**.",
        "",
        "Predictors:",
        "",
    ]
    lines += [f"- **{_label(k)}** (`{k}`): {v}" for k, v in report["predictors"].items()]
    note = _missing_note(report)
    if note:
        lines += ["", note]
    for title, body in _toy_sections(report, _md_table):
        lines += ["", f"## {title}", "", body]
    return "\n".join(lines) + "\n"


def _missing_note(report: dict[str, Any]) -> str | None:
    """Why some predictors are absent from a report, or None."""
    missing = [k for k, v in report["summary"]["distill"].items() if v is None]
    notes = []
    fitted = [_label(k) for k in missing if k.endswith("_loco")]
    if fitted:
        notes.append(
            f"Not shown: {', '.join(fitted)}. They are fitted on the other configurations of a run (leave one "
            "configuration out), so they need a grid with two or more sparsities, e.g. `pyfloor toy --grid small`."
        )
    if "eq2_sae" in missing:
        notes.append("Eq. 2 (SAE) needs the SAE measurement (it was skipped with --no-sae).")
    return " ".join(notes) or None


def format_toy_report(report: dict[str, Any]) -> str:
    """Human-readable rendering of a toy report for a terminal."""
    lines = []
    for title, body in _toy_sections(report, format_table):
        lines += ["", title, body]
    best = report["summary"]["best"]
    lines += ["", f"best predictor on (a): {_label(best)}"]
    note = _missing_note(report)
    if note:
        lines.append(note)
    return "\n".join(lines).lstrip("\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_TOY_STYLES = {
    "eq2": dict(color="C3", ls="--"),
    "eq2_sae": dict(color="C4", ls=":"),
    "eq2_teacher": dict(color="C2", ls="-."),
    "teacher_density": dict(color="C1", ls="-"),
    "packing_loco": dict(color="C0", ls="-"),
    "width_packing_loco": dict(color="C9", ls="-", lw=2.2),
    "calibrated_loco": dict(color="C5", ls="--"),
}


def _floor_axes(ax, c: dict[str, Any], legend: bool) -> None:
    """One configuration's floor curve: observed (a) mean ± std, every predictor, d* marked."""
    w = [s["width"] for s in c["students"]]
    mean = np.array([s["distilled"]["distill"]["mean"] for s in c["students"]])
    std = np.array([s["distilled"]["distill"]["std"] for s in c["students"]])
    ax.errorbar(w, mean, yerr=std, fmt="o", color="k", ms=4, capsize=3, label="observed (a) mean ± std", zorder=5)
    task = [s["distilled"]["task"]["mean"] for s in c["students"]]
    ax.plot(w, task, "s", mfc="none", color="0.5", ms=4, label="observed (c) task loss")
    for name, p in c["predictions"].items():
        if p is not None:
            p = np.asarray(p, dtype=np.float64)
            ax.plot(
                w,
                np.where(p > 0, p, np.nan),
                label=_label(name),
                **{"lw": 1.5, **_TOY_STYLES.get(name, {})},
            )
    ax.set_ylim(
        max(float(np.min(mean[mean > 0], initial=1.0)) / 20, 1e-7), 1.6 * max(float(np.max(task)), float(np.max(mean)))
    )
    ax.axvline(c["config"]["critical_width"], color="0.4", lw=1, ls=":")
    ax.text(c["config"]["critical_width"], 0.97, " d*", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("student width d_S")
    ax.set_ylabel("loss (importance-weighted MSE)")
    ax.set_title(c["config"]["label"], fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if legend:
        ax.legend(fontsize=7, loc="lower left", title="predicted floors of 0 are not drawn", title_fontsize=7)


def plot_toy_floors(report: dict[str, Any], path: str, *, n_features: int | None = None) -> None:
    """PNG of floor vs width: observed distillation loss (mean ± std over seeds), every predictor,
    d* marked; one panel per configuration (those with ``n_features`` features, if given), log scale."""
    plt = _pyplot()
    configs = [c for c in report["configs"] if n_features is None or c["config"]["n_features"] == n_features]
    if not configs:
        raise ValueError(f"the report has no configuration with n_features = {n_features}")
    cols = min(len(configs), 4)
    rows = math.ceil(len(configs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(6.5 * cols if cols == 1 else 4.2 * cols, 4.6 if rows == 1 else 3.4 * rows), squeeze=False
    )
    for i, c in enumerate(configs):
        _floor_axes(axes[i // cols][i % cols], c, legend=(i == 0))
    for j in range(len(configs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    s = report["settings"]
    fig.suptitle(
        f"Distillation floor vs student width (toy model; seeds {s['seeds']}, {s['train']['steps']} steps)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_toy_summary(report: dict[str, Any], path: str) -> None:
    """PNG summary of a grid: predicted vs observed (a) for Eq. 2 and the best predictor, coloured
    by sparsity (log–log, diagonal marked), and median accuracy per sparsity per predictor."""
    plt = _pyplot()
    best = report["summary"]["best"]
    shown = ["eq2"] + ([best] if best not in (None, "eq2") else [])
    fig, axes = plt.subplots(
        1,
        len(shown) + 1,
        figsize=(5.2 * (len(shown) + 1) + 2.0, 4.8),
        gridspec_kw={"width_ratios": [1] * len(shown) + [1.35]},
    )
    alphas = sorted({c["config"]["alpha"] for c in report["configs"]})
    cmap = plt.get_cmap("viridis")
    colour = {a: cmap(i / max(len(alphas) - 1, 1)) for i, a in enumerate(alphas)}
    observed = np.concatenate([[s["distilled"]["distill"]["mean"] for s in c["students"]] for c in report["configs"]])
    lo = 10.0 ** math.floor(math.log10(max(float(np.percentile(observed, 2)), 1e-9)))
    hi = 2.0 * float(observed.max())
    for ax, name in zip(axes, shown):
        for a in alphas:
            obs, pred = [], []
            for c in report["configs"]:
                if c["config"]["alpha"] == a and c["predictions"][name] is not None:
                    obs += [s["distilled"]["distill"]["mean"] for s in c["students"]]
                    pred += c["predictions"][name]
            ax.scatter(
                np.clip(obs, lo, hi), np.clip(pred, lo, hi), s=12, color=colour[a], label=f"α = {a:g}", alpha=0.8
            )
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo / 1.5, hi)
        ax.set_ylim(lo / 1.5, hi)
        ax.set_xlabel("observed distillation loss (a), mean over seeds")
        ax.set_ylabel(f"predicted floor (values below {lo:.0e} drawn at it)")
        ax.set_title(_label(name))
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="upper left")
    ax = axes[-1]
    names = _available(report)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        acc = [report["summary"]["distill"][name]["by_sparsity"][f"{a:g}"]["median_accuracy"] for a in alphas]
        ax.bar(
            np.arange(len(alphas)) + (i - (len(names) - 1) / 2) * width,
            acc,
            width,
            label=_label(name),
            color=_TOY_STYLES.get(name, {}).get("color"),
        )
    ax.axhline(PAPER_TOY_ACCURACY, color="k", ls="--", lw=1, label="paper: > 93 %")
    ax.set_xticks(range(len(alphas)), [f"α = {a:g}" for a in alphas])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("median accuracy vs (a)")
    ax.set_title("median accuracy per sparsity")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"Toy grid: {len(report['configs'])} configurations, seeds {report['settings']['seeds']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)




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
