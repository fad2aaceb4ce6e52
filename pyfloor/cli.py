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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyfloor`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"pyfloor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
