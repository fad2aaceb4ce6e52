"""The ``pyfloor`` command: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__

__all__ = ["main", "build_parser"]


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, e.g. 128,256,512; got {text!r}")
    if not widths or any(w < 0 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be non-negative integers; got {text!r}")
    return widths


def _write_json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _cmd_predict(args: argparse.Namespace) -> int:
    from .report import format_prediction, prediction_summary
    from .stats import Measurement, load_measurement

    if args.source is not None and args.features is not None:
        raise ValueError("give either a measurement file or --features, not both")
    if args.source is not None:
        if args.mean_l0 is not None or args.alpha is not None:
            raise ValueError("--mean-l0 and --alpha go with --features; a measurement file carries its own")
        measurement = load_measurement(args.source, alive_threshold=args.alive_threshold)
    elif args.features is not None:
        measurement = Measurement.from_summary(
            args.features, mean_l0=args.mean_l0, alpha=args.alpha, source="--features/--mean-l0"
            if args.mean_l0 is not None else "--features/--alpha"
        )
    else:
        raise ValueError("nothing to predict from: give a measurement file, or --features with --mean-l0 or --alpha")
    summary = prediction_summary(measurement, args.widths)
    if args.output is not None:
        _write_json(summary, args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_prediction(summary))
        if args.output is not None:
            print(f"\nwrote {args.output}")
    return 0


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.8,0.9; got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number; got {text!r}")
    return values


def _positive_widths(text: str) -> list[int]:
    values = _widths(text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def _toy_settings(args: argparse.Namespace):
    from .experiment import ExperimentSettings
    from .toy import SAESettings, TrainSettings

    sae = None if args.no_sae else SAESettings(steps=args.sae_steps)
    train = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    return ExperimentSettings(
        seeds=tuple(range(args.seeds)),
        train=train,
        sae=sae,
        eval_samples=args.eval_samples,
        workers=args.workers,
        threads=args.threads,
    )


def _run_toy(args: argparse.Namespace, configs: list) -> int:
    """Run configurations, write report.json / report.md / PNGs under --out, print the tables."""
    import time

    from tqdm import tqdm

    from .experiment import build_report, run_experiment, total_steps
    from .report import format_toy_report, plot_toy_floors, plot_toy_summary, toy_markdown

    settings = _toy_settings(args)
    out = Path(args.out)
    start = time.perf_counter()
    bar = tqdm(
        total=total_steps(configs, settings),
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=args.quiet or not sys.stderr.isatty(),
        desc=f"pyfloor {args.command}",
    )
    with bar:
        results = run_experiment(configs, settings, progress=bar.update)
    command = "pyfloor " + " ".join(sys.argv[1:]) if args.argv is None else "pyfloor " + " ".join(args.argv)
    report = build_report(results, settings, command=command, seconds=time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md"]
    _write_json(report, files[0])
    files[1].write_text(toy_markdown(report))
    feature_counts = sorted({c.n_features for c in configs})
    for n in feature_counts:  # one floor figure per feature count: at most 16 panels each
        files.append(out / ("floors.png" if len(feature_counts) == 1 else f"floors-n{n}.png"))
        plot_toy_floors(report, str(files[-1]), n_features=n)
    if len(configs) > 1:
        files.append(out / "summary.png")
        plot_toy_summary(report, str(files[-1]))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_toy_report(report))
        print(f"\nran {report['seconds']:.0f} s; wrote " + ", ".join(str(f) for f in files))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .experiment import ToyConfig

    return _run_toy(args, [ToyConfig(args.n, args.d_teacher, args.alpha, args.importance)])


def _cmd_toy(args: argparse.Namespace) -> int:
    from .experiment import PAPER_GRID, SMALL_GRID, grid

    base = {"paper": PAPER_GRID, "small": SMALL_GRID}[args.grid]
    configs = grid(
        args.n or sorted({c.n_features for c in base}),
        args.d_teacher or sorted({c.d_teacher for c in base}),
        args.alpha or sorted({c.alpha for c in base}),
        args.importance,
    )
    return _run_toy(args, configs)


def _add_run_options(p: argparse.ArgumentParser, *, out: str, workers: int, sae_steps: int) -> None:
    """Options shared by ``demo`` and ``toy``: training, SAE, output."""
    p.add_argument(
        "--importance",
        choices=["zipf", "geometric", "uniform"],
        default="zipf",
        help="importance profile: Zipf I_i = 1/i, geometric 0.9^(i-1), or uniform (default zipf)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 … SEEDS-1 per configuration (default 3)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps of every teacher and student (default 2000)")
    p.add_argument("--batch-size", type=int, default=512, help="samples per step (default 512)")
    p.add_argument(
        "--lr", type=float, default=5e-3, help="peak learning rate, cosine decay to 5%% of it (default 5e-3)"
    )
    p.add_argument(
        "--sae-steps",
        type=int,
        default=sae_steps,
        help=f"steps of each SAE of the measurement sweep (default {sae_steps})",
    )
    p.add_argument("--no-sae", action="store_true", help="skip the SAE measurement (and the eq2_sae predictor)")
    p.add_argument("--eval-samples", type=int, default=32768, help="samples the losses are measured on (default 32768)")
    p.add_argument(
        "--workers", type=int, default=workers, help=f"processes running tasks in parallel (default {workers})"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument(
        "--out", type=Path, default=Path(out), help=f"directory for report.json, report.md and PNGs (default {out})"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of tables")


def _add_toy_commands(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the built-in teacher end to end: toy teacher → SAE measurement → predicted floors → students",
        description=(
            "Train a toy-model teacher (Elhage et al. 2022) whose feature count and sparsity are known, measure "
            "it with SAEs, predict the distillation floor at every student width, distil students of every "
            "width 1 … d_T, and compare, writing a table, report.json, report.md and floors.png."
        ),
    )
    p.add_argument("--n", type=int, default=40, help="number of features n (default 40)")
    p.add_argument("--d-teacher", type=int, default=10, help="teacher width d_T (default 10)")
    p.add_argument("--alpha", type=float, default=0.9, help="sparsity α (default 0.9)")
    _add_run_options(p, out="pyfloor-demo", workers=1, sae_steps=800)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "toy",
        help="the toy-model experiment over a grid of configurations (the paper's 48 by default)",
        description=(
            "Run the demo's experiment over a grid: --grid paper is the paper's 48 configurations (n ∈ {10, 20, 40}, "
            "d_T ∈ {3, 5, 8, 10}, α ∈ {0.8, 0.9, 0.95, 0.99}); --n/--d-teacher/--alpha lists replace the grid's "
            "values. Writes report.json, report.md, floors.png and summary.png."
        ),
    )
    p.add_argument("--grid", choices=["paper", "small"], default="paper", help="which grid (default paper)")
    p.add_argument("--n", type=_positive_widths, help="feature counts, comma-separated (replaces the grid's)")
    p.add_argument("--d-teacher", type=_positive_widths, help="teacher widths, comma-separated (replaces the grid's)")
    p.add_argument("--alpha", type=_floats, help="sparsities, comma-separated (replaces the grid's)")
    _add_run_options(p, out="pyfloor-toy", workers=2, sae_steps=400)
    p.set_defaults(func=_cmd_toy)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pyfloor`` command."""
    parser = argparse.ArgumentParser(
        prog="pyfloor",
        description="Measure a teacher's features in superposition and predict the floor of distilling it.",
    )
    parser.add_argument("--version", action="version", version=f"pyfloor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "predict",
        help="F, L0, α, g, d* and the floor at each student width, from a measurement",
        description=(
            "Print F, L0, α, g(α), d* and the predicted floor at each student width. The measurement is "
            "a FeatureStats file (.safetensors), a pyfloor Measurement JSON, a published measurement JSON "
            "(F_alive, avg_active, sorted_importance), or just --features with --mean-l0 or --alpha."
        ),
    )
    p.add_argument("source", nargs="?", type=Path, help="measurement file (.safetensors or .json)")
    p.add_argument("--features", type=int, help="number of alive features F (instead of a file)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mean-l0", type=float, help="mean active latents per token L0 (with --features)")
    group.add_argument("--alpha", type=float, help="sparsity α (with --features)")
    p.add_argument("--widths", type=_widths, help="student widths, comma-separated (default: around d*)")
    p.add_argument(
        "--alive-threshold", type=float, default=1e-5, help="firing frequency above which a latent is alive"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-o", "--output", type=Path, help="also write the JSON report to this file")
    p.set_defaults(func=_cmd_predict)
    _add_toy_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyfloor`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"pyfloor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
