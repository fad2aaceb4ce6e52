"""The toy experiment's report: the JSON-ready dict :func:`build_report` makes of a run, and what
renders that dict (read back from report.json, or fresh): terminal tables
(:func:`format_toy_report`), Markdown (:func:`toy_markdown`) and plots, PNG, PDF or SVG
(:func:`plot_toy_floors`, :func:`plot_toy_summary`; matplotlib, imported when plotting).

The renderers read the dict by the keys :func:`build_report` writes, defined just above them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
from numpy.typing import NDArray

from .. import theory
from .._io import json_ready
from .._version import __version__
from ..render import figure_path, finish_figure, format_number, format_table, markdown_table, pyplot
from .experiment import ConfigResult, ExperimentSettings
from .predictors import (
    PREDICTORS,
    TARGETS,
    WIDTH_STRATA,
    LocoFits,
    predict_with_fits,
    score,
    summarize_scores,
    width_stratum,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "build_report",
    "PAPER_TOY_ACCURACY",
    "toy_width_table",
    "toy_sparsity_table",
    "toy_metric_table",
    "toy_stratum_table",
    "toy_sae_table",
    "toy_sae_scores",
    "toy_sae_score_table",
    "toy_sweep_table",
    "toy_markdown",
    "format_toy_report",
    "plot_toy_floors",
    "plot_toy_summary",
]


# -- the JSON report ---------------------------------------------------------------------------------
def _spread(values: NDArray[np.float64]) -> dict[str, Any]:
    """Mean, standard deviation (over seeds) and the per-seed values of [seeds] losses."""
    return {"mean": float(values.mean()), "std": float(values.std()), "per_seed": values.tolist()}


def _students(r: ConfigResult) -> list[dict[str, Any]]:
    c = r.config
    rows = []
    for wi, d in enumerate(c.widths):
        row: dict[str, Any] = {
            "width": d,
            "d_over_dstar": d / c.critical_width,
            "stratum": width_stratum(d, c.critical_width)[0],
        }
        for name, losses, kept in (
            ("distilled", r.distilled, r.distilled_kept),
            ("task_trained", r.task_trained, r.task_kept),
        ):
            row[name] = {t: _spread(getattr(losses, t)[:, wi]) for t in TARGETS}
            row[name]["n_kept"] = kept[:, wi].sum(-1).tolist()
            row[name]["kept"] = [np.flatnonzero(k).tolist() for k in kept[:, wi]]
        rows.append(row)
    return rows


def _sae_dict(r: ConfigResult) -> dict[str, Any] | None:
    if r.sae is None:
        return None
    t0 = r.teachers[0]
    represented = max(t0.represented.size, 1)
    picked = {}
    for act, i in r.sae.selected.items():
        p = r.sae.points[i]
        picked[act] = {
            **p._asdict(),
            "F_over_represented": p.n_features / represented,
            "alpha_error": p.alpha - r.config.alpha,
            "merged_F_over_represented": p.merged_features / represented,
            "merged_alpha_error": p.merged_alpha - r.config.alpha,
        }
    m = r.sae.measurements.get("relu", {})
    return {
        "seed": r.seeds[0],
        "truth": {"n_features": r.config.n_features, "alpha": r.config.alpha, "represented": int(t0.represented.size)},
        "sweep": [p._asdict() for p in r.sae.points],
        "selected": picked,
        "relu_importances": {
            name: None if meas.importances is None else meas.importances.tolist() for name, meas in m.items()
        },
    }


def _config_dict(r: ConfigResult, pred: dict[str, NDArray[np.float64] | None], fits: LocoFits) -> dict[str, Any]:
    c = r.config
    scores = {}
    for name, p in pred.items():
        if p is not None:
            scores[name] = {t: score(p.mean(0), getattr(r.distilled, t).mean(0)).to_dict() for t in TARGETS}
    return {
        "config": {
            **asdict(c),
            "label": c.label(),
            "capacity": float(theory.capacity(c.alpha)),
            "critical_width": c.critical_width,
        },
        "seconds": r.seconds,
        "teachers": [
            {
                "seed": s,
                "task_loss": t.task_loss,
                "n_represented": int(t.represented.size),
                "represented": t.represented.tolist(),
                "width0_loss": t.width0_loss,
                "output_weights": t.output_weights.tolist(),
            }
            for s, t in zip(r.seeds, r.teachers)
        ],
        "sae": _sae_dict(r),
        "students": _students(r),
        "predictions": {k: None if v is None else v.mean(0).tolist() for k, v in pred.items()},
        "loco_fits": fits.to_dict(),
        "scores": scores,
    }


def build_report(
    results: Sequence[ConfigResult], settings: ExperimentSettings, *, command: str = "", seconds: float | None = None
) -> dict[str, Any]:
    """The JSON-ready report: settings, every observed and predicted number, and the scores."""
    preds, fits = predict_with_fits(results)
    report: dict[str, Any] = json_ready(  # json_ready makes a dict of a dict
        {
            "format": "pyfloor.toy-report",
            "version": 1,
            "pyfloor_version": __version__,
            "command": command,
            "seconds": seconds,
            "settings": settings.to_dict(),
            "targets": TARGETS,
            "predictors": PREDICTORS,
            "configs": [_config_dict(r, p, f) for r, p, f in zip(results, preds, fits)],
            "summary": summarize_scores(results, preds),
        }
    )
    return report


# -- rendering it (pyfloor demo / pyfloor toy) --------------------------------------------------
#: The paper's headline for its toy grid: median prediction accuracy above 93 % at every sparsity.
PAPER_TOY_ACCURACY = 0.93

#: Short column names of the predictors and targets in tables and legends.
TOY_PREDICTOR_LABELS = {
    "eq2": "Eq. 2 (true)",
    "eq2_sae": "Eq. 2 (SAE, merged)",
    "eq2_sae_paper": "Eq. 2 (SAE, paper)",
    "sae_width_packing_loco": "SAE width packing law (LOCO)",
    "eq2_teacher": "Eq. 2 (teacher feats)",
    "teacher_density": "teacher density",
    "packing_loco": "packing law (LOCO)",
    "width_packing_loco": "width packing law (LOCO)",
    "calibrated_loco": "calibrated Eq. 2 (LOCO)",
}
TOY_TARGET_LABELS = {"distill": "(a) distill", "excess": "(b) excess task", "task": "(c) task"}


def _label(predictor: str | None) -> str:
    return str(predictor) if predictor is None else TOY_PREDICTOR_LABELS.get(predictor, predictor)


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
                    format_number(s["overall"]["r2"], ".3f"),
                    format_number(s["overall"]["pearson_r"], ".4f"),
                    format_number(pc["pearson_r_median"], ".4f"),
                    format_number(pc["pearson_r_min"], ".4f"),
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
    """SAE measurement against the truth, per configuration: the picked ReLU SAE's F̂ and α̂ by the
    paper's definition and by the merged estimator, and the picked top-k SAE's merged F̂ and α̂."""
    headers = [
        "config",
        "n",
        "represented",
        "α",
        "ReLU latents",
        "L1",
        "FVU",
        "F̂ paper",
        "α̂ paper",
        "F̂ merged",
        "α̂ merged",
        "top-k latents",
        "k",
        "F̂ merged",
        "α̂ merged",
    ]
    rows = []
    for c in report["configs"]:
        sae = c["sae"]
        if sae is None:
            continue
        t = sae["truth"]
        cells = [c["config"]["label"], str(t["n_features"]), str(t["represented"]), f"{t['alpha']:g}"]
        p = sae["selected"].get("relu")
        cells += (
            ["—"] * 7
            if p is None
            else [
                str(p["n_latents"]),
                f"{p['penalty']:g}",
                f"{p['fvu']:.3f}",
                str(p["n_features"]),
                f"{p['alpha']:.3f}",
                str(p["merged_features"]),
                f"{p['merged_alpha']:.3f}",
            ]
        )
        p = sae["selected"].get("topk")
        cells += (
            ["—"] * 4
            if p is None
            else [str(p["n_latents"]), f"{p['penalty']:g}", str(p["merged_features"]), f"{p['merged_alpha']:.3f}"]
        )
        rows.append(cells)
    return headers, rows


def toy_sae_scores(report: dict[str, Any], *, f_tol: float = 0.1, alpha_tol: float = 0.02) -> dict[str, Any]:
    """How often the picked ReLU SAE's F̂ lies within ``f_tol`` (relative) of the represented count and
    its α̂ within ``alpha_tol`` of α, by estimator: {estimator: {"F": hits, "alpha": hits, "both": hits,
    "configs": n}}."""
    out: dict[str, Any] = {}
    for name, f_key, a_key in (("paper", "n_features", "alpha"), ("merged", "merged_features", "merged_alpha")):
        hits = {"F": 0, "alpha": 0, "both": 0, "configs": 0}
        for c in report["configs"]:
            sae = c["sae"]
            p = None if sae is None else sae["selected"].get("relu")
            if p is None:
                continue
            t = sae["truth"]
            f_ok = abs(p[f_key] - t["represented"]) <= f_tol * t["represented"]
            a_ok = abs(p[a_key] - t["alpha"]) <= alpha_tol
            hits["F"] += f_ok
            hits["alpha"] += a_ok
            hits["both"] += f_ok and a_ok
            hits["configs"] += 1
        out[name] = hits
    return out


def toy_sae_score_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """:func:`toy_sae_scores` as a table: configurations within tolerance, per estimator."""
    headers = ["estimator", "F̂ within ±10 % of represented", "α̂ within ±0.02 of α", "both"]
    rows = []
    for name, h in toy_sae_scores(report).items():
        n = h["configs"]
        rows.append([name, f"{h['F']}/{n}", f"{h['alpha']}/{n}", f"{h['both']}/{n}"])
    return headers, rows


def toy_sweep_table(config: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The SAE family of one configuration: every member with FVU, L0, and F̂, α̂ by each estimator."""
    sae = config["sae"]
    rep = max(sae["truth"]["represented"], 1)
    picked = {(p["activation"], p["n_latents"], p["penalty"]) for p in sae["selected"].values()}
    headers = [
        "SAE",
        "latents",
        "penalty",
        "FVU",
        "L0",
        "F̂ paper",
        "α̂ paper",
        "F̂ merged",
        "α̂ merged",
        "F̂/rep.",
        "picked",
    ]
    rows = []
    for p in sae["sweep"]:
        rows.append(
            [
                "ReLU+L1" if p["activation"] == "relu" else "top-k",
                str(p["n_latents"]),
                f"{p['penalty']:g}",
                f"{p['fvu']:.4f}",
                f"{p['mean_l0']:.2f}",
                str(p["n_features"]),
                f"{p['alpha']:.3f}",
                str(p["merged_features"]),
                f"{p['merged_alpha']:.3f}",
                f"{p['merged_features'] / rep:.2f}",
                "◀" if (p["activation"], p["n_latents"], p["penalty"]) in picked else "",
            ]
        )
    return headers, rows


def _toy_sections(
    report: dict[str, Any], table: Callable[[Sequence[str], Sequence[Sequence[str]]], str], per_config_limit: int = 2
) -> list[tuple[str, str]]:
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
                        f"SAE family ({c['config']['label']}; truth: represented "
                        f"{c['sae']['truth']['represented']}, α = {c['sae']['truth']['alpha']:g})",
                        table(*toy_sweep_table(c)),
                    )
                )
    sections.append(
        ("Median accuracy against (a) the distillation loss, per sparsity", table(*toy_sparsity_table(report)))
    )
    sections.append(("Scores of every predictor against each observed loss", table(*toy_metric_table(report))))
    sections.append(("Median accuracy against (a) by student width relative to d*", table(*toy_stratum_table(report))))
    if any(c["sae"] is not None for c in configs):
        sections.append(
            (
                "Picked ReLU SAE against the truth: configurations within tolerance, per estimator",
                table(*toy_sae_score_table(report)),
            )
        )
    if len(configs) > per_config_limit and any(c["sae"] is not None for c in configs):
        sections.append(("SAE measurement against the truth (picked SAEs)", table(*toy_sae_table(report))))
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
    for title, body in _toy_sections(report, markdown_table):
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
        notes.append("The Eq. 2 (SAE) predictors need the SAE measurement (it was skipped with --no-sae).")
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


class _LineStyle(TypedDict, total=False):
    """Keyword arguments of ``Axes.plot`` that style one predictor's line."""

    color: str
    ls: str
    lw: float


_TOY_STYLES: dict[str, _LineStyle] = {
    "eq2": {"color": "C3", "ls": "--"},
    "eq2_sae": {"color": "C4", "ls": ":"},
    "eq2_sae_paper": {"color": "C5", "ls": ":"},
    "sae_width_packing_loco": {"color": "C6", "ls": "-", "lw": 1.8},
    "eq2_teacher": {"color": "C2", "ls": "-."},
    "teacher_density": {"color": "C1", "ls": "-"},
    "packing_loco": {"color": "C0", "ls": "-"},
    "width_packing_loco": {"color": "C9", "ls": "-", "lw": 2.2},
    "calibrated_loco": {"color": "C5", "ls": "--"},
}


def _given_axes(ax: Axes | Sequence[Axes] | NDArray[np.object_], n: int, what: str) -> list[Axes]:
    """The first ``n`` Axes of ``ax`` (one Axes, or a sequence or array of them)."""
    # an object with a plot method is one Axes (matplotlib is not imported here to isinstance-check it)
    axes: list[Axes] = [cast("Axes", ax)] if hasattr(ax, "plot") else list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) < n:
        raise ValueError(f"{what} draws {n} panel{'s' * (n != 1)}; ax holds {len(axes)} Axes")
    return axes[:n]


def _floor_title(c: dict[str, Any]) -> str:
    """A panel's title: the configuration (n = F true features, d_T, α, importance) and its d*."""
    return f"{c['config']['label']} — d* = {c['config']['critical_width']:,.2f}"


def _floor_axes(ax: Axes, c: dict[str, Any], legend: bool) -> None:
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
            style: _LineStyle = {"lw": 1.5, **_TOY_STYLES.get(name, {})}
            ax.plot(
                w,
                np.where(p > 0, p, np.nan),
                label=_label(name),
                **style,
            )
    ax.set_ylim(
        max(float(np.min(mean[mean > 0], initial=1.0)) / 20, 1e-7), 1.6 * max(float(np.max(task)), float(np.max(mean)))
    )
    d_star = c["config"]["critical_width"]
    ax.axvline(d_star, color="0.4", lw=1, ls=":")
    lo, hi = ax.get_xlim()
    right = (d_star - lo) / (hi - lo) > 0.75  # near the right edge: the label goes left of the line
    ax.text(
        d_star,
        0.97,
        f"d* = {d_star:,.2f} " if right else f" d* = {d_star:,.2f}",
        transform=ax.get_xaxis_transform(),
        va="top",
        ha="right" if right else "left",
        fontsize=8,
    )
    ax.set_yscale("log")
    ax.set_xlabel("student width d_S")
    ax.set_ylabel("loss (importance-weighted MSE)")
    ax.set_title(_floor_title(c), fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if legend:
        ax.legend(fontsize=7, loc="best", title="predicted floors of 0 are not drawn", title_fontsize=7)


def plot_toy_floors(
    report: dict[str, Any],
    path: str | os.PathLike[str] | None = None,
    *,
    n_features: int | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> list[Axes]:
    """Floor vs width, log scale: observed distillation loss (mean ± std over seeds), every
    predictor, d* marked; one panel per configuration (those with ``n_features`` features, if given).

    Draws into ``ax`` (one Axes, or a sequence or array holding at least one per configuration;
    the legend then goes into the first) or else a new figure (the legend beside the panels), and
    returns the panels' Axes. ``path`` saves the figure, its format from the suffix (``.png``,
    ``.pdf``, ``.svg``). ValueError where no configuration has ``n_features`` features, ``ax``
    holds too few Axes, or ``path`` has another suffix."""
    out = figure_path(path)
    configs = [c for c in report["configs"] if n_features is None or c["config"]["n_features"] == n_features]
    if not configs:
        raise ValueError(f"the report has no configuration with n_features = {n_features}")
    s = report["settings"]
    if ax is not None:
        axes = _given_axes(ax, len(configs), "plot_toy_floors")
        for i, (a, c) in enumerate(zip(axes, configs)):
            _floor_axes(a, c, legend=(i == 0))
        finish_figure(axes[0], out, False)
        return axes
    plt = pyplot()
    cols = min(len(configs), 4)
    rows = math.ceil(len(configs) / cols)
    fig, grid = plt.subplots(
        rows,
        cols,
        figsize=(6.0 + 2.4 if cols == 1 else 4.2 * cols + 2.4, 4.6 if rows == 1 else 3.4 * rows),
        squeeze=False,
        layout="constrained",
    )
    axes = [grid[i // cols][i % cols] for i in range(len(configs))]
    for a, c in zip(axes, configs):
        _floor_axes(a, c, legend=False)
    for j in range(len(configs), rows * cols):
        grid[j // cols][j % cols].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside right center",
        fontsize=8,
        title="predicted floors of 0\nare not drawn",
        title_fontsize=8,
    )
    fig.suptitle(
        f"Toy model: distillation floor vs student width (seeds {', '.join(map(str, s['seeds']))}; "
        f"{s['train']['steps']:,} steps)",
        fontsize=11,
    )
    finish_figure(axes[0], out, True)
    return axes


def _sparsity_colours(plt: Any, alphas: Sequence[float]) -> dict[float, Any]:
    """Colours of the sparsities in the summary: viridis without its palest yellow end."""
    cmap = plt.get_cmap("viridis")
    return {a: cmap(0.85 * i / max(len(alphas) - 1, 1)) for i, a in enumerate(alphas)}


def _values(xs: Sequence[float]) -> str:
    return "{" + ", ".join(f"{x:g}" for x in xs) + "}"


def plot_toy_summary(
    report: dict[str, Any], path: str | os.PathLike[str] | None = None, *, ax: Sequence[Axes] | None = None
) -> list[Axes]:
    """Summary of a grid: predicted vs observed (a) for Eq. 2 and the best predictor, coloured
    by sparsity (log–log, diagonal marked), and median accuracy per sparsity per predictor.

    Draws into ``ax`` (a sequence or array of at least as many Axes as panels: 2, or 3 where the
    best predictor is not Eq. 2) or else a new figure, and returns the panels' Axes. ``path``
    saves the figure, its format from the suffix (``.png``, ``.pdf``, ``.svg``)."""
    out = figure_path(path)
    plt = pyplot()
    best = report["summary"]["best"]
    shown = ["eq2"] + ([best] if best not in (None, "eq2") else [])
    if ax is not None:
        axes, created = _given_axes(ax, len(shown) + 1, "plot_toy_summary"), False
    else:
        _, grid = plt.subplots(
            1,
            len(shown) + 1,
            figsize=(5.2 * (len(shown) + 1) + 2.0, 4.8),
            gridspec_kw={"width_ratios": [1] * len(shown) + [1.35]},
            layout="constrained",
        )
        axes, created = list(grid), True
    alphas = sorted({c["config"]["alpha"] for c in report["configs"]})
    colour = _sparsity_colours(plt, alphas)
    observed = np.concatenate([[s["distilled"]["distill"]["mean"] for s in c["students"]] for c in report["configs"]])
    lo = 10.0 ** math.floor(math.log10(max(float(np.percentile(observed, 2)), 1e-9)))
    hi = 2.0 * float(observed.max())
    for a_x, name in zip(axes, shown):
        for a in alphas:
            obs, pred = [], []
            for c in report["configs"]:
                if c["config"]["alpha"] == a and c["predictions"][name] is not None:
                    obs += [s["distilled"]["distill"]["mean"] for s in c["students"]]
                    pred += c["predictions"][name]
            a_x.scatter(
                np.clip(obs, lo, hi),
                np.clip(pred, lo, hi),
                s=14,
                color=colour[a],
                label=f"α = {a:g}",
                alpha=0.85,
                edgecolors="none",
            )
        a_x.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="prediction = observation")
        a_x.set_xscale("log")
        a_x.set_yscale("log")
        a_x.set_xlim(lo / 1.5, hi)
        a_x.set_ylim(lo / 1.5, hi)
        a_x.set_xlabel("observed distillation loss (a), mean over seeds")
        a_x.set_ylabel(f"predicted floor (below {lo:.0e}: drawn at {lo:.0e})")
        a_x.set_title(_label(name))
        a_x.grid(True, which="both", alpha=0.25)
        a_x.legend(fontsize=8, loc="upper left")
    a_x = axes[len(shown)]
    names = _available(report)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        acc = [report["summary"]["distill"][name]["by_sparsity"][f"{a:g}"]["median_accuracy"] for a in alphas]
        x = np.arange(len(alphas)) + (i - (len(names) - 1) / 2) * width
        a_x.bar(x, acc, width, label=_label(name), color=_TOY_STYLES.get(name, {}).get("color"))
        for xi, v in zip(x, acc):
            if v is not None and v < 0.02:  # a bar of (almost) 0 is not seen: say it
                a_x.text(xi, max(v, 0.0) + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=6, rotation=90)
    a_x.axhline(PAPER_TOY_ACCURACY, color="k", ls="--", lw=1, label="paper: > 93 %")
    a_x.set_xticks(range(len(alphas)), [f"α = {a:g}" for a in alphas])
    a_x.set_ylim(0, 1.05)
    a_x.set_ylabel("median accuracy vs (a)")
    a_x.set_title("median accuracy per sparsity")
    a_x.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if created:
        cfgs = [c["config"] for c in report["configs"]]
        axes[0].figure.suptitle(
            f"Toy grid: {len(cfgs)} configurations, n ∈ {_values(sorted({c['n_features'] for c in cfgs}))}, "
            f"d_T ∈ {_values(sorted({c['d_teacher'] for c in cfgs}))}, α ∈ {_values(alphas)}; "
            f"seeds {', '.join(map(str, report['settings']['seeds']))}",
            fontsize=11,
        )
    finish_figure(axes[0], out, created)
    return axes
