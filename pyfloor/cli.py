"""The ``pyfloor`` command: a thin shell over the Python API.

Conventions every command follows:

- errors go to stderr as ``pyfloor COMMAND: error: …`` and name the flag, not the Python parameter
  (a library ValueError about an argument has its parameter names replaced by the flags);
- exit status 0 on success, 1 when the run fails (a missing or corrupt file, a failed
  measurement), 2 for a usage error (bad or incompatible arguments, found before any work);
- ``--help`` shows every option's default, read from the library's dataclasses and constants;
- a flag name means one thing everywhere (``--checkpoint-every`` counts tokens; ``--out`` is a
  directory, ``-o/--output`` a file);
- progress bars only on a terminal, unless ``--progress`` (on) or ``--quiet`` (off);
- ``--json`` prints the result as one JSON object on stdout;
- a failed run removes the output directories it created while they are still empty.

Each command's options are built only when that command runs (:func:`main`), so ``pyfloor predict``
and ``pyfloor report`` do not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from ._version import __version__

if TYPE_CHECKING:
    import torch

    from .family import FamilyMember
    from .sae import TrainStep
    from .sources import ArraySource, TeacherSource
    from .tokens import Sequences
    from .toy import ExperimentSettings, ToyConfig

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EPILOG = (
    "Exit status: 0 on success; 1 when the run fails (a missing or corrupt file, a failed measurement); "
    "2 for a usage error (bad or incompatible arguments, found before any work starts)."
)


class _DemoDefaults(TypedDict):
    n: int
    d_teacher: int
    alpha: float
    out: str
    workers: int


class _ToyDefaults(TypedDict):
    out: str
    workers: int
    sae_steps: int


# Defaults that belong to the command line, not to a library dataclass.
_DEMO: _DemoDefaults = {
    "n": 40,
    "d_teacher": 10,
    "alpha": 0.9,
    "out": "pyfloor-demo",
    "workers": min(2, os.cpu_count() or 1),
}
_TOY: _ToyDefaults = {"out": "pyfloor-toy", "workers": 2, "sae_steps": 800}
_SEQ_LEN = 1024
_BATCH_TOKENS = 65_536
_SAE_CHECKPOINT_EVERY = 50_000_000  # tokens between saves of a training SAE
_MEASURE_OUT = "pyfloor-measure"
_SAE_OUT = "sae.safetensors"


class UsageError(ValueError):
    """Arguments that are wrong by themselves (exit status 2)."""


# -- conventions: defaults, help, flag names, progress, output directories -------------------------
def _default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{cls.__name__}.{name} has no default")


def _param_default(func: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of ``func``."""
    default = inspect.signature(func).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{func.__qualname__}({name}) has no default")
    return default


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: …)`` to every option that has a default its help does not state already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and action.nargs != 0  # flags (store_true, --help, --version)
            and action.default is not None
            and action.default is not argparse.SUPPRESS
            and "(default" not in text
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


class _DeprecatedAlias(argparse.Action):
    """An old option name kept working (hidden from --help) that warns and names its replacement."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str, **kwargs: Any) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _flag_names(p: argparse.ArgumentParser) -> dict[str, str]:
    """Each destination of ``p``'s options and the long flag that sets it."""
    names: dict[str, str] = {}
    for action in p._actions:  # argparse keeps no public list of a parser's actions
        if action.option_strings and action.help is not argparse.SUPPRESS and action.dest not in names:
            names[action.dest] = max(action.option_strings, key=len)
    return names


def _name_flags(message: str, names: dict[str, str]) -> str:
    """``message`` with whole-word occurrences of the parameter names in ``names`` replaced by their flags."""
    if not names:
        return message
    pattern = r"(?<![\w-])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?![\w-])"
    return re.sub(pattern, lambda m: names[m.group(1)], message)


@contextlib.contextmanager
def _usage(args: argparse.Namespace, **names: str) -> Iterator[None]:
    """A ValueError inside is a usage error: the arguments alone are wrong. Its message names the flags.

    Parameter names with an underscore that are also flag destinations are renamed automatically;
    ``names`` adds the others (single words, and parameters whose flag has another name).
    """
    try:
        yield
    except UsageError:
        raise
    except ValueError as exc:
        flags = {dest: flag for dest, flag in getattr(args, "flag_names", {}).items() if "_" in dest}
        flags.update(names)
        raise UsageError(_name_flags(str(exc), flags)) from exc


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars: off with --quiet, on with --progress, otherwise only when stderr is a terminal."""
    if args.quiet:
        return False
    if args.progress:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


class _ProgressBar(Protocol):
    """The part of a tqdm progress bar the commands use."""

    def update(self, n: int = 1) -> None: ...  # tqdm's returns whether it redrew, which no caller reads
    def set_postfix(self, **kwargs: object) -> None: ...
    def __enter__(self) -> _ProgressBar: ...
    def __exit__(self, *exc_info: object) -> None: ...


def _bar(total: int | None, enabled: bool, desc: str, unit: str) -> _ProgressBar:
    """A progress bar on stderr (see :func:`_show_progress` for ``enabled``)."""
    from tqdm import tqdm

    bar: _ProgressBar = tqdm(
        total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, desc=desc, disable=not enabled
    )
    return bar


def _make_dirs(path: Path, args: argparse.Namespace) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, remembering the directories this run created."""
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    args.created_dirs.extend(reversed(missing))


def _remove_empty_created(created: list[Path]) -> None:
    """Remove the directories a failed run created, innermost first, where (and only where) still empty."""
    for d in reversed(created):
        try:
            d.rmdir()  # refuses a directory that holds anything
        except OSError:
            pass


def _out_dir(path: Path, args: argparse.Namespace, flag: str = "--out") -> Path:
    """``path`` as an output directory, created now, so that a bad ``--out`` fails before any work."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file; give a directory")
    _make_dirs(path, args)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: the directory is not writable")
    return path


def _write_json(obj: object, path: Path, args: argparse.Namespace) -> None:
    _make_dirs(path.parent, args)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def _add_output_options(p: argparse.ArgumentParser, *, json_help: str, progress: bool = True) -> None:
    """--json, and for a command with progress bars --progress/--quiet."""
    p.add_argument("--json", action="store_true", help=json_help)
    if progress:
        g = p.add_mutually_exclusive_group()
        g.add_argument(
            "--progress",
            action="store_true",
            help="show progress bars even when stderr is not a terminal (by default only on one)",
        )
        g.add_argument("--quiet", action="store_true", help="no progress bars")


# -- argument types --------------------------------------------------------------------------------
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)  # 5e7, 1.5e6: integers written in exponent notation
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}")
    return int(value)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected {'a positive integer' if minimum == 1 else f'an integer >= {minimum}'}; got {text!r}"
            )
        return value

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}")
    return value


def _nonnegative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}")
    return value


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"widths must be comma-separated integers, e.g. 128,256,512; got {text!r}"
        ) from None
    if not widths or any(w < 0 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be non-negative integers; got {text!r}")
    return widths


def _positive_widths(text: str) -> list[int]:
    values = _widths(text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def _list_of(parse: Callable[[str], Any], example: str) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated values, each parsed by ``parse``."""

    def values(text: str) -> list[Any]:
        parts = [v for v in text.replace(" ", "").split(",") if v]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, e.g. {example}; got {text!r}")
        return [parse(v) for v in parts]

    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.8,0.9; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number; got {text!r}")
    return values


def _layers(text: str) -> list[int | str]:
    """Comma-separated layers: block indices or module names."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a block index, a module name, or several comma-separated")
    return [int(p) if p.lstrip("-").isdigit() else p for p in parts]


def _device_map(text: str) -> str | dict[str, int | str]:
    """accelerate's named device maps, or a JSON object of module names to devices (or a file holding one)."""
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    raw = Path(text).read_text() if Path(text).is_file() else text
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, (int, str)) for v in value.values()):
        raise argparse.ArgumentTypeError(
            "expected auto, balanced, balanced_low_0, sequential, or a JSON object of module names to devices "
            '(e.g. {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"}) or a file holding one'
        )
    return value


def _int_dtype(text: str) -> str:
    import numpy as np

    kind: str
    try:
        kind = np.dtype(text).kind
    except TypeError:
        kind = ""
    if kind not in ("i", "u"):
        raise argparse.ArgumentTypeError(f"expected an integer type such as uint16 or int32; got {text!r}")
    return text


# -- predict ---------------------------------------------------------------------------------------
def _cmd_predict(args: argparse.Namespace) -> int:
    from .floors import prediction_summary
    from .report import format_prediction
    from .stats import Measurement, load_measurement

    if args.source is not None and args.features is not None:
        raise UsageError("give either a measurement file or --features, not both")
    if args.source is not None and (args.mean_l0 is not None or args.alpha is not None):
        raise UsageError("--mean-l0 and --alpha go with --features; a measurement file carries its own")
    if args.source is None and args.features is None:
        raise UsageError("nothing to predict from: give a measurement file, or --features with --mean-l0 or --alpha")
    if args.features is not None and args.alive_threshold is not None:
        raise UsageError("--alive-threshold goes with a statistics file, not with --features")
    if args.features is not None:
        with _usage(args, n_features="--features", alpha="--alpha"):
            measurement = Measurement.from_summary(
                args.features,
                mean_l0=args.mean_l0,
                alpha=args.alpha,
                source="--features/--mean-l0" if args.mean_l0 is not None else "--features/--alpha",
            )
    if args.output is not None and args.output.is_dir():
        raise IsADirectoryError(f"-o {args.output} is a directory; give a file path for the JSON report")
    if args.source is not None and _is_sparsity_file(args.source):
        from .interop import measurement_from_sparsity

        threshold = {} if args.alive_threshold is None else {"alive_threshold": args.alive_threshold}
        measurement = measurement_from_sparsity(args.source, **threshold)
    elif args.source is not None:
        measurement = load_measurement(args.source, alive_threshold=args.alive_threshold)
    summary = prediction_summary(measurement, args.widths)
    if args.output is not None:
        _write_json(summary, args.output, args)
    if args.json:
        _print_json(summary)
    else:
        print(format_prediction(summary))
        if args.output is not None:
            print(f"\nwrote {args.output}")
    return EXIT_OK


def _is_sparsity_file(path: Path) -> bool:
    """Whether ``path`` is a SAELens ``sparsity.safetensors`` or a checkpoint directory holding one."""
    from .interop import SPARSITY_FILENAME

    return path.name == SPARSITY_FILENAME or (path / SPARSITY_FILENAME).is_file()


def _add_predict_options(p: argparse.ArgumentParser) -> None:
    from .stats import DEFAULT_ALIVE_THRESHOLD

    p.add_argument(
        "source",
        nargs="?",
        type=Path,
        help="measurement file (.safetensors or .json), or a SAELens training checkpoint's sparsity.safetensors "
        "(F, α, d* from its firing frequencies; no importances, so no floors)",
    )
    p.add_argument("--features", type=_positive_int, help="number of alive features F (instead of a file)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mean-l0", type=float, help="mean active latents per token L0 (with --features)")
    group.add_argument("--alpha", type=float, help="sparsity α (with --features)")
    p.add_argument("--widths", type=_widths, help="student widths, comma-separated (default: around d*)")
    p.add_argument(
        "--alive-threshold",
        type=_fraction,
        help=f"firing frequency above which a latent is alive, for a statistics file (default: "
        f"{DEFAULT_ALIVE_THRESHOLD:g}; a JSON measurement is already thresholded)",
    )
    p.add_argument("-o", "--output", metavar="FILE", type=Path, help="also write the JSON report to this file")
    _add_output_options(p, json_help="print the JSON report instead of a table", progress=False)
    p.set_defaults(func=_cmd_predict)


# -- the toy teacher -------------------------------------------------------------------------------
def _toy_settings(args: argparse.Namespace) -> ExperimentSettings:
    from .toy import ExperimentSettings, SAESettings, TrainSettings

    with _usage(args, steps="--sae-steps"):
        sae = None if args.no_sae else SAESettings(steps=args.sae_steps)
    with _usage(args, steps="--steps", lr="--lr", seeds="--seeds", workers="--workers", threads="--threads"):
        train = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        return ExperimentSettings(
            seeds=tuple(range(args.seeds)),
            train=train,
            sae=sae,
            eval_samples=args.eval_samples,
            workers=args.workers,
            threads=args.threads,
        )


def _run_toy(args: argparse.Namespace, configs: list[ToyConfig]) -> int:
    """Run configurations, write report.json / report.md / PNGs under --out, print the tables."""
    import time

    from .toy import (
        build_report,
        format_toy_report,
        plot_toy_floors,
        plot_toy_summary,
        run_experiment,
        total_steps,
        toy_markdown,
    )

    settings = _toy_settings(args)
    out = _out_dir(Path(args.out), args)
    start = time.perf_counter()
    bar = _bar(total_steps(configs, settings), _show_progress(args), f"pyfloor {args.command}", "step")
    with bar:
        results = run_experiment(configs, settings, progress=bar.update)
    command = "pyfloor " + " ".join(sys.argv[1:]) if args.argv is None else "pyfloor " + " ".join(args.argv)
    report = build_report(results, settings, command=command, seconds=time.perf_counter() - start)
    files = [out / "report.json", out / "report.md"]
    _write_json(report, files[0], args)
    files[1].write_text(toy_markdown(report))
    feature_counts = sorted({c.n_features for c in configs})
    for n in feature_counts:  # one floor figure per feature count: at most 16 panels each
        files.append(out / ("floors.png" if len(feature_counts) == 1 else f"floors-n{n}.png"))
        plot_toy_floors(report, str(files[-1]), n_features=n)
    if len(configs) > 1:
        files.append(out / "summary.png")
        plot_toy_summary(report, str(files[-1]))
    if args.json:
        _print_json(report)
    else:
        print(format_toy_report(report))
        print(f"\nran {report['seconds']:.0f} s; wrote " + ", ".join(str(f) for f in files))
    return EXIT_OK


_TOY_NAMES = {"n_features": "--n", "alpha": "--alpha", "importance": "--importance"}


def _cmd_demo(args: argparse.Namespace) -> int:
    from .toy import ToyConfig

    with _usage(args, **_TOY_NAMES):
        config = ToyConfig(args.n, args.d_teacher, args.alpha, args.importance)
    return _run_toy(args, [config])


def _cmd_toy(args: argparse.Namespace) -> int:
    from .toy import PAPER_GRID, SMALL_GRID, grid

    base = {"paper": PAPER_GRID, "small": SMALL_GRID}[args.grid]
    with _usage(args, **_TOY_NAMES):
        configs = grid(
            args.n or sorted({c.n_features for c in base}),
            args.d_teacher or sorted({c.d_teacher for c in base}),
            args.alpha or sorted({c.alpha for c in base}),
            args.importance,
        )
    return _run_toy(args, configs)


def _add_run_options(p: argparse.ArgumentParser, *, out: str, workers: int, sae_steps: int) -> None:
    """Options shared by ``demo`` and ``toy``: training, SAE, output."""
    from .toy import IMPORTANCE_PROFILES, ExperimentSettings, ToyConfig, TrainSettings

    p.add_argument(
        "--importance",
        choices=IMPORTANCE_PROFILES,
        default=_default(ToyConfig, "importance"),
        help=f"importance profile: Zipf I_i = 1/i, geometric {_default(ToyConfig, 'ratio'):g}^(i-1), or uniform",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=len(_default(ExperimentSettings, "seeds")),
        help="seeds 0 … SEEDS-1 per configuration",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=_default(TrainSettings, "steps"),
        help="Adam steps of every teacher and student",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=_default(TrainSettings, "batch_size"), help="samples per step"
    )
    p.add_argument(
        "--lr",
        type=_positive_number,
        default=_default(TrainSettings, "lr"),
        help=f"peak learning rate, cosine decay to {100 * _default(TrainSettings, 'final_lr'):g}%% of it",
    )
    p.add_argument(
        "--sae-steps", type=_positive_int, default=sae_steps, help="steps of each SAE of the measurement sweep"
    )
    p.add_argument("--no-sae", action="store_true", help="skip the SAE measurement (and the eq2_sae predictor)")
    p.add_argument(
        "--eval-samples",
        type=_positive_int,
        default=_default(ExperimentSettings, "eval_samples"),
        help="samples the losses are measured on",
    )
    p.add_argument("--workers", type=_positive_int, default=workers, help="processes running tasks in parallel")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=_default(ExperimentSettings, "threads"),
        help="torch threads per process",
    )
    p.add_argument(
        "--out", metavar="DIR", type=Path, default=Path(out), help="directory for report.json, report.md and PNGs"
    )
    _add_output_options(p, json_help="print the JSON report instead of tables")


def _add_demo_options(p: argparse.ArgumentParser) -> None:
    from .toy import SAESettings

    p.add_argument("--n", type=_positive_int, default=_DEMO["n"], help="number of features n")
    p.add_argument("--d-teacher", type=_positive_int, default=_DEMO["d_teacher"], help="teacher width d_T")
    p.add_argument("--alpha", type=float, default=_DEMO["alpha"], help="sparsity α")
    _add_run_options(p, out=_DEMO["out"], workers=_DEMO["workers"], sae_steps=_default(SAESettings, "steps"))
    p.set_defaults(func=_cmd_demo)


def _add_toy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", choices=["paper", "small"], default="paper", help="which grid")
    p.add_argument("--n", type=_positive_widths, help="feature counts, comma-separated (replaces the grid's)")
    p.add_argument("--d-teacher", type=_positive_widths, help="teacher widths, comma-separated (replaces the grid's)")
    p.add_argument("--alpha", type=_floats, help="sparsities, comma-separated (replaces the grid's)")
    _add_run_options(p, out=_TOY["out"], workers=_TOY["workers"], sae_steps=_TOY["sae_steps"])
    p.set_defaults(func=_cmd_toy)


# -- activation sources ----------------------------------------------------------------------------
# Options that only apply to a --model teacher (their defaults are read from the parser).
_TEACHER_OPTIONS = (
    "gguf_file",
    "layer",
    "site",
    "tokens",
    "bin_dtype",
    "text",
    "dataset",
    "column",
    "seq_len",
    "skip_tokens",
    "read_tokens",
    "dtype",
    "split",
    "device_map",
    "offload_folder",
    "whole_teacher",
    "revision",
)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Arguments that name an activation stream: a teacher with its tokens, or activation files."""
    from typing import get_args

    from . import sources

    g = p.add_argument_group("activation source: a teacher (--model, --layer, and tokens) or --activations")
    g.add_argument("--model", help="Hugging Face causal LM: a local directory or a hub id")
    g.add_argument("--gguf-file", help="GGUF checkpoint inside the --model directory")
    g.add_argument(
        "--layer",
        type=_layers,
        help="block index (the residual stream after it) or a module name; several, comma-separated "
        "(8,12,16), are read from one forward pass, each with its own --sae",
    )
    g.add_argument(
        "--site",
        choices=get_args(sources.Site),
        default=_param_default(sources.TeacherSource, "site"),
        help="read the block's output or its MLP's",
    )
    _add_token_args(g)
    g.add_argument("--activations", nargs="+", type=Path, help=".npy or .safetensors activation files [N, d]")
    g.add_argument("--activations-key", help="the tensor to read from --activations safetensors files holding several")
    g.add_argument("--batch-tokens", type=_positive_int, default=_BATCH_TOKENS, help="tokens per batch")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda where available)")
    g.add_argument(
        "--device-map",
        type=_device_map,
        help="shard the teacher over this machine's devices: auto, balanced, balanced_low_0, sequential, or a "
        "JSON map of module names to devices (cuda index, cpu, disk); needs accelerate",
    )
    g.add_argument("--offload-folder", type=Path, help="where --device-map puts the weights it offloads to disk")
    g.add_argument(
        "--whole-teacher",
        action="store_true",
        help="load every block of the teacher (default: only those up to the deepest --layer given as an index)",
    )
    _add_teacher_args(g)


def _add_token_args(g: argparse._ArgumentGroup) -> None:
    """Arguments that name a teacher's token stream: token files, text files or a dataset."""
    from . import sources

    g.add_argument("--tokens", type=Path, help="pre-tokenized token file (.npy, or .bin of --bin-dtype)")
    g.add_argument(
        "--bin-dtype",
        type=_int_dtype,
        default=_param_default(sources.token_file_sequences, "bin_dtype"),
        help="integer type of a .bin token file",
    )
    g.add_argument("--text", nargs="+", type=Path, help="text files, or directories of .txt/.md files")
    g.add_argument(
        "--dataset", help="a 'datasets' dataset name or path, streamed (needs the datasets package; no download here)"
    )
    g.add_argument("--split", default=_param_default(sources.dataset_sequences, "split"), help="split of --dataset")
    g.add_argument(
        "--column", default=_param_default(sources.dataset_sequences, "column"), help="text column of --dataset"
    )
    g.add_argument("--seq-len", type=_positive_int, default=_SEQ_LEN, help="tokens per sequence fed to the teacher")
    g.add_argument("--skip-tokens", type=_count, default=0, help="skip this many tokens of the token stream first")
    g.add_argument("--read-tokens", type=_positive_int, help="tokenize at most this many tokens of --text/--dataset")


def _add_teacher_args(g: argparse._ArgumentGroup) -> None:
    """How a --model teacher is loaded: revision and dtype."""
    from .encode_types import SUPPORTED_DTYPES

    g.add_argument("--revision", help="the teacher's hub revision (branch, tag or commit)")
    g.add_argument(
        "--dtype",
        choices=[str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES],
        help="the teacher's dtype (default: the checkpoint's)",
    )


def _device(args: argparse.Namespace) -> torch.device:
    """This process's device: --device, or the one torchrun's environment gives (CPU without CUDA)."""
    import torch

    from .distributed import init_from_env

    default = init_from_env()
    if not args.device:
        return default
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch sees no CUDA device")  # the machine's, not a usage error
    return device


def _check_source_args(args: argparse.Namespace) -> None:
    """Raise UsageError unless the arguments name exactly one complete activation source."""
    if (args.model is None) == (args.activations is None):
        raise UsageError("name one activation source: --model (with --layer and tokens) or --activations")
    if args.activations is not None:
        given = [args.flag_names[k] for k in _TEACHER_OPTIONS if getattr(args, k) != args.teacher_defaults[k]]
        if given:
            raise UsageError(f"{', '.join(given)}: only for a --model teacher, not for --activations")
        return
    if args.activations_key is not None:
        raise UsageError("--activations-key goes with --activations")
    if args.layer is None:
        raise UsageError("--model needs --layer (a block index or a module name)")
    if sum(x is not None for x in (args.tokens, args.text, args.dataset)) != 1:
        raise UsageError("--model needs exactly one token input: --tokens, --text or --dataset")
    if args.read_tokens is not None and args.tokens is not None:
        raise UsageError("--read-tokens goes with --text or --dataset, not --tokens")
    if args.offload_folder is not None and args.device_map is None:
        raise UsageError("--offload-folder goes with --device-map")
    if args.device_map is not None and args.device is not None:
        raise UsageError("--device-map places the teacher itself; leave out --device (the SAEs go to the first GPU)")


def _source_from_args(args: argparse.Namespace, device: torch.device) -> ArraySource | TeacherSource:
    """The activation source the arguments name (checked by :func:`_check_source_args`)."""
    import torch

    from . import sources

    if args.activations is not None:
        return sources.ArraySource(args.activations, args.batch_tokens, key=args.activations_key, device=device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    blocks = [layer for layer in args.layer if isinstance(layer, int)]
    keep = None if args.whole_teacher or len(blocks) < len(args.layer) or min(blocks) < 0 else max(blocks) + 1
    model, tokenizer = sources.load_teacher(
        args.model,
        gguf_file=args.gguf_file,
        device=None if args.device_map is not None else device,
        dtype=dtype,
        device_map=args.device_map,
        offload_folder=args.offload_folder,
        keep_layers=keep,
        revision=args.revision,
    )
    seqs = _sequences_from_args(args, tokenizer, streaming=True)
    layers = args.layer[0] if len(args.layer) == 1 else args.layer
    return sources.TeacherSource(
        model, layers, seqs, args.batch_tokens, site=args.site, device=None if args.device_map else device
    )


def _sequences_from_args(args: argparse.Namespace, tokenizer: Any, *, streaming: bool) -> Sequences:
    """The token sequences of --tokens, --text or --dataset (streamed if ``streaming``), after --skip-tokens."""
    from . import sources

    budget = None if args.read_tokens is None else args.read_tokens + args.skip_tokens
    seqs: Sequences
    if args.tokens is not None:
        seqs = sources.token_file_sequences(args.tokens, args.seq_len, bin_dtype=args.bin_dtype)
    elif args.text is not None:
        seqs = sources.text_file_sequences(args.text, tokenizer, args.seq_len, max_tokens=budget)
    else:
        seqs = sources.dataset_sequences(
            args.dataset,
            tokenizer,
            args.seq_len,
            column=args.column,
            split=args.split,
            max_tokens=budget,
            streaming=streaming,
        )
    return seqs.skip(args.skip_tokens) if args.skip_tokens else seqs


def _finish_source_options(p: argparse.ArgumentParser) -> None:
    """After all of a sourced command's options: the flag names and the teacher options' defaults."""
    p.set_defaults(teacher_defaults={k: p.get_default(k) for k in _TEACHER_OPTIONS})


def _load_saes(
    paths: list[Path], device: torch.device | str | None
) -> tuple[list[Any], list[str], list[FamilyMember] | None]:
    """The SAEs of ``--sae`` (files, directories of other libraries, or one family folder), a label
    each, and the family manifest's entries (None for SAEs given one by one)."""
    from .family import is_family, load_family
    from .sae import load_sae

    if len(paths) == 1 and is_family(paths[0]):
        members = load_family(paths[0], device=None if device is None else str(device))
        return [sae for _, sae in members], [Path(m["file"]).stem for m, _ in members], [m for m, _ in members]
    if any(is_family(p) for p in paths):
        raise UsageError("--sae takes one family folder alone, or SAE files (not a family among them)")
    labels = [p.stem if p.suffix == ".safetensors" else p.name for p in paths]
    if len(set(labels)) != len(labels):
        labels = [f"sae{i}-{label}" for i, label in enumerate(labels)]
    return [load_sae(p, device=device) for p in paths], labels, None


def _check_hooks(saes: list[Any], labels: list[str], layer: int | str | None, site: str, *, override: bool) -> None:
    """Each SAE's recorded hook point against the block index and site read (a ValueError on a
    mismatch unless ``override``, then a warning on stderr); module names and activation files are not checked."""
    from .interop import check_hook

    if not isinstance(layer, int):
        return
    for sae, label in zip(saes, labels):
        warning = check_hook(sae, layer, site, override=override)
        if warning is not None:
            print(f"warning: {label}: {warning}", file=sys.stderr)


def _penalty_label(config: dict[str, Any]) -> str:
    """A family member's penalty as a plot label: ``L1 0.1`` or ``k 32``."""
    return f"k {config['k']}" if config["activation"] == "topk" else f"L1 {config['l1_coeff']:g}"


def _family_lead(results: list[Any], manifest: list[FamilyMember] | None) -> tuple[int, str] | None:
    """:func:`pyfloor.family.select_member` over a measured family (None without a manifest)."""
    from .family import Candidate, select_member

    if manifest is None:
        return None
    configs = [m["config"] for m in manifest]
    penalty = [c["k"] if c["activation"] == "topk" else -c["l1_coeff"] for c in configs]  # ascending = sparsest first
    if len({c["activation"] for c in configs}) > 1:
        return None  # penalties of different activations do not compare
    order = sorted(set(penalty))
    return select_member(
        [
            Candidate(order.index(p), r.stats.n_latents, r.measurement.n_features, m["fvu"])
            for p, r, m in zip(penalty, results, manifest)
        ]
    )


# -- measure ---------------------------------------------------------------------------------------
def _cmd_measure(args: argparse.Namespace) -> int:
    from ._io import check_replaceable
    from .distributed import rank_and_world
    from .measure import CHECKPOINT_FORMAT, MeasureConfig, _member_path, measure_family
    from .report import write_layers_report

    _check_source_args(args)
    if args.k is not None and args.activation not in (None, "topk"):
        raise UsageError(f"--k goes with --activation topk (or a top-k SAE), not with --activation {args.activation}")
    checkpoint: Path = args.checkpoint or args.out / "checkpoint.safetensors"
    with _usage(
        args,
        bootstrap="--bootstrap",
        seed="--seed",
        widths="--widths",
        activation="--activation",
        k="--k",
        resume="--resume",
        overwrite="--overwrite",
        checkpoint="--checkpoint",
        cosine="--cosine",
        mass="--mass",
    ):
        config = MeasureConfig(
            max_tokens=args.max_tokens,
            until_stable=args.until_stable,
            min_tokens=args.min_tokens,
            checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            overwrite=args.overwrite,
            alive_threshold=args.alive_threshold,
            estimator=args.estimator,
            cosine=args.cosine,
            mass=args.mass,
            bootstrap=args.bootstrap,
            seed=args.seed,
            widths=args.widths,
            activation=args.activation,
            k=args.k,
            histograms=not args.no_histograms,
            histogram_every=args.histogram_every,
        )
    device = _device(args)
    layer_args = args.layer if args.model is not None else [None]
    if len(layer_args) > 1 and len(args.sae) != len(layer_args):
        raise UsageError(
            f"--layer names {len(layer_args)} layers: give one --sae per layer (an SAE or a family folder), in the same order"
        )
    groups = [_load_saes([p], device) for p in args.sae] if len(layer_args) > 1 else [_load_saes(args.sae, device)]
    for layer_arg, (saes, labels, _) in zip(layer_args, groups):
        _check_hooks(saes, labels, layer_arg, args.site, override=args.ignore_hook)
    n_saes = sum(len(saes) for saes, _, _ in groups)
    _out_dir(args.out, args)
    _out_dir(checkpoint.parent, args, "--checkpoint's directory")
    if not args.resume:  # fail now, not after loading the teacher; measure() checks again
        for i in range(n_saes):
            check_replaceable(
                _member_path(checkpoint, i, n_saes),
                kind=CHECKPOINT_FORMAT,
                what="measure checkpoint",
                overwrite=args.overwrite,
            )
    source = _source_from_args(args, device)
    reads = list(source.layer_names) if len(layer_args) > 1 else [None]
    histories = {
        str(read): [None] * len(saes) if manifest is None else [m["fvu_history"] for m in manifest]
        for read, (saes, _, manifest) in zip(reads, groups)
    }
    flat = measure_family(
        source,
        [sae for saes, _, _ in groups for sae in saes],
        config,
        progress=_show_progress(args),
        fvu_histories=[h for read in reads for h in histories[str(read)]],
        layers=[read for read, (saes, _, _) in zip(reads, groups) for _ in saes],
    )
    if rank_and_world()[0] != 0:
        return EXIT_OK
    if len(layer_args) == 1:
        saes, labels, manifest = groups[0]
        _, text = _write_measured(flat, labels, manifest, args.out, args)
        print(text)
        return EXIT_OK
    leads: dict[str, Any] = {}
    members: dict[str, str] = {}
    start = 0
    for layer_arg, read, (saes, labels, manifest) in zip(layer_args, reads, groups):
        results = flat[start : start + len(saes)]
        start += len(saes)
        lead, _ = _write_measured(results, labels, manifest, args.out / f"layer-{layer_arg}", args)
        leads[str(read)], members[str(read)] = results[lead], labels[lead]
    paths = write_layers_report(leads, members, args.out)
    if args.json:
        _print_json(json.loads(paths["json"].read_text()))
    else:
        print(paths["markdown"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()) + f" and a report per layer under {args.out}")
    return EXIT_OK


def _write_measured(
    results: list[Any], labels: list[str], manifest: list[FamilyMember] | None, out: Path, args: argparse.Namespace
) -> tuple[int, str]:
    """Write the report of one measured SAE, or a family's reports and comparison, into ``out``;
    the index of the result that leads (the family's selected member, else the first) and what
    to print (Markdown, or JSON with ``--json``)."""
    from .report import measurement_markdown, write_family_report, write_measurement_report

    if len(results) == 1:
        paths = write_measurement_report(results[0], out)
        summary = json.loads(paths["json"].read_text())
        text = json.dumps(summary, indent=2) if args.json else measurement_markdown(summary)
        return 0, text + ("" if args.json else "\nwrote " + ", ".join(str(p) for p in paths.values()))
    lead = _family_lead(results, manifest)
    groups = None if manifest is None else [_penalty_label(m["config"]) for m in manifest]
    family = write_family_report(results, labels, out, lead=lead, groups=groups)
    if args.json:
        return (0 if lead is None else lead[0]), json.dumps(json.loads(family["json"].read_text()), indent=2)
    wrote = "wrote " + ", ".join(str(p) for p in family.values()) + f" and a report per SAE under {out}"
    return (0 if lead is None else lead[0]), family["markdown"].read_text() + wrote


def _add_measure_options(p: argparse.ArgumentParser) -> None:
    from .measure import MeasureConfig
    from .sae import ACTIVATIONS

    def default(name: str) -> Any:
        return _default(MeasureConfig, name)

    _add_source_args(p)
    p.add_argument(
        "--sae",
        type=Path,
        nargs="+",
        required=True,
        help="SAE: a pyfloor .safetensors file, an SAELens or an EleutherAI sparsify directory, or a hub id "
        "(org/name[/subfolder][@revision]) in the local Hugging Face cache; several SAEs or an SAE family folder "
        "(train-sae with lists) are measured from one pass, one report each under --out; with several --layer, "
        "one SAE or family per layer",
    )
    p.add_argument(
        "--ignore-hook",
        action="store_true",
        help="measure even where an SAE's recorded hook point is not the --layer/--site read (a warning instead of an error)",
    )
    p.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=default("activation"),
        help="encode with this activation instead (default: the SAE's own)",
    )
    p.add_argument(
        "--mode",
        dest="activation",
        choices=ACTIVATIONS,
        action=_DeprecatedAlias,
        replacement="--activation",
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--k", type=_positive_int, default=default("k"), help="k for --activation topk (default: a top-k SAE's own)"
    )
    p.add_argument("--out", metavar="DIR", type=Path, default=Path(_MEASURE_OUT), help="output directory")
    p.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=default("max_tokens"),
        help="stop after this many tokens, rounded up to whole batches (default: no limit)",
    )
    p.add_argument(
        "--until-stable",
        type=float,
        metavar="TOL",
        default=default("until_stable"),
        help="stop once d*'s bootstrap interval is narrower than TOL × d*, e.g. 0.01 (default: no such stop)",
    )
    p.add_argument(
        "--min-tokens",
        type=_count,
        default=default("min_tokens"),
        help="never stop for stability before this many tokens",
    )
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: OUT/checkpoint.safetensors)")
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="TOKENS",
        default=default("checkpoint_every"),
        help="tokens between checkpoints",
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="start over, replacing an existing checkpoint")
    p.add_argument(
        "--alive-threshold",
        type=_fraction,
        default=default("alive_threshold"),
        help="firing frequency above which a latent is alive",
    )
    p.add_argument(
        "--estimator",
        choices=("merged", "paper"),
        default=default("estimator"),
        help="how latents are counted as the teacher's features, for the headline numbers: 'merged' (near-parallel "
        "decoder directions merged, the importance tail cut, margin-corrected α) or 'paper' (every alive latent); "
        "the report shows both",
    )
    p.add_argument(
        "--cosine",
        type=_fraction,
        default=default("cosine"),
        help="merged estimator: decoder cosine above which latents are one feature",
    )
    p.add_argument(
        "--mass",
        type=_fraction,
        default=default("mass"),
        help="merged estimator: fraction of the total importance the counted features hold",
    )
    p.add_argument(
        "--bootstrap",
        type=_count,
        default=default("bootstrap"),
        help="bootstrap replicates over batches; 0: no intervals",
    )
    p.add_argument("--seed", type=int, default=default("seed"), help="seed of the bootstrap weights")
    p.add_argument(
        "--widths",
        type=_widths,
        default=default("widths"),
        help="student widths for the floor table (default: around d*)",
    )
    p.add_argument("--no-histograms", action="store_true", help="skip the per-feature and activation histograms")
    p.add_argument(
        "--histogram-every",
        type=_positive_int,
        default=default("histogram_every"),
        help="fill the histograms from every N-th batch",
    )
    _add_output_options(p, json_help="print the JSON report instead of Markdown")
    _finish_source_options(p)
    p.set_defaults(func=_cmd_measure)


# -- train-sae -------------------------------------------------------------------------------------
_TRAIN_NAMES = {
    "n_latents": "--latents",
    "l1_coeff": "--l1",
    "lr": "--lr",
    "steps": "--steps",
    "seed": "--seed",
    "k": "--k",
    "activation": "--activation",
}


def _cmd_train_sae(args: argparse.Namespace) -> int:
    from ._io import check_replaceable
    from .sae import SAE, SAE_FORMAT, TrainConfig, load_sae, train_sae

    _check_source_args(args)
    if args.layer is not None and len(args.layer) > 1:
        raise UsageError("train-sae trains on one --layer; run it once per layer")
    if not isinstance(args.l1, list):  # the default, not parsed from a list
        args.l1 = [args.l1]
    lists = {"--latents": args.latents or [None], "--l1": args.l1, "--k": args.k or [None]}
    if args.seeds is not None or any(len(v) > 1 for v in lists.values()):
        return _train_family(args)
    args.latents, args.l1, args.k = (v[0] for v in lists.values())
    activation = args.activation or _default(TrainConfig, "activation")
    if args.init is None:
        if args.latents is None:
            raise UsageError("--latents is required to train a new SAE (or continue one with --init)")
        _check_k_args(activation, [args.k] if args.k is not None else None, [args.latents])
    with _usage(args, **_TRAIN_NAMES):  # the arguments' own checks, before any file is read
        TrainConfig(
            n_latents=args.latents or 1,
            activation=activation,
            k=args.k,
            l1_coeff=args.l1,
            lr=args.lr,
            steps=args.steps,
            seed=args.seed,
        )
    if args.out.is_dir():
        raise IsADirectoryError(f"-o/--output {args.out} is a directory; give the path of the SAE file")
    check_replaceable(args.out, kind=SAE_FORMAT, what="SAE file", overwrite=args.overwrite)
    device = _device(args)
    if args.init is not None:
        sae, fresh = load_sae(args.init, device=device), False
        given = {
            "--latents": (args.latents, sae.n_latents),
            "--activation": (args.activation, sae.activation),
            "--k": (args.k, sae.k),
        }
        for flag, (asked, has) in given.items():
            if asked is not None and asked != has:
                raise ValueError(f"{flag} {asked}: the --init SAE has {has}; leave {flag} out to keep it")
    else:
        sae, fresh = None, True
    config = TrainConfig(
        n_latents=sae.n_latents if sae is not None else args.latents,
        activation=sae.activation if sae is not None else activation,
        k=sae.k if sae is not None else args.k,
        l1_coeff=args.l1,
        lr=args.lr,
        steps=args.steps,
        seed=args.seed,
    )
    _make_dirs(args.out.parent, args)
    source = _source_from_args(args, device)
    if sae is None:
        sae = SAE(source.d, config.n_latents, config.activation, k=config.k, device=device)
    training: SAE = sae  # the SAE on_step saves while train_sae runs
    if sae.d_in != source.d:
        raise ValueError(f"the SAE has d_in = {sae.d_in} but the source yields activations of width {source.d}")
    batch_tokens = int(getattr(source, "batch_tokens", args.batch_tokens))
    save_every = -(-args.checkpoint_every // batch_tokens) if args.checkpoint_every else 0  # steps, rounded up
    bar = _bar(args.steps, _show_progress(args), "train-sae", "step")

    def on_step(step: TrainStep) -> None:
        bar.update(1)
        bar.set_postfix(fvu=f"{step.fvu:.4f}", l0=f"{step.l0:.1f}", dead=step.dead)
        if save_every and (step.step + 1) % save_every == 0:
            training.save(args.out)

    with bar:
        sae, history = train_sae(source, source.d, config, sae=training, init_pre_bias=fresh, on_step=on_step)
    sae.save(args.out)
    last = history[-1]
    nonfinite = sum(step.nonfinite for step in history)
    if args.json:
        _print_json(
            {
                "sae": str(args.out),
                "d_in": sae.d_in,
                "n_latents": sae.n_latents,
                "activation": sae.activation,
                "k": sae.k,
                "steps": len(history),
                "batch_tokens": batch_tokens,
                "loss": last.loss,
                "fvu": last.fvu,
                "l0": last.l0,
                "dead": last.dead,
                "nonfinite_tokens": nonfinite,
                "checkpoint_every_steps": save_every,
                "config": dataclasses.asdict(config),
            }
        )
        return EXIT_OK
    left_out = f"; {nonfinite:,} tokens with NaN or ±Inf activations left out" if nonfinite else ""
    print(
        f"trained {sae.d_in}→{sae.n_latents} {sae.activation} SAE for {len(history)} steps: "
        f"FVU {last.fvu:.4f}, L0 {last.l0:.1f}, dead latents {last.dead}{left_out}\nwrote {args.out}"
    )
    return EXIT_OK


def _check_k_args(activation: str, ks: list[int] | None, latents: list[int]) -> None:
    """UsageError unless --k is given exactly for a top-k SAE, each k at most every --latents."""
    if activation == "topk" and ks is None:
        raise UsageError("--activation topk needs --k")
    if activation != "topk" and ks is not None:
        raise UsageError(f"--k goes with --activation topk, not with {activation}")
    for k in ks or ():
        for m in latents:
            if k > m:
                raise UsageError(f"--k ({k}) must be at most --latents ({m})")


def _train_family(args: argparse.Namespace) -> int:
    """train-sae with lists: every combination of latents × penalty × seed from one pass over the source."""
    from .family import FAMILY_MANIFEST, is_family, member_name, save_family
    from .render import format_table
    from .sae import TrainConfig, train_sae_family

    if args.init is not None:
        raise UsageError("--init continues one SAE; it does not go with lists or --seeds (a family)")
    if args.latents is None:
        raise UsageError("--latents is required to train a family")
    if args.steps is None:
        raise UsageError("a family needs --steps (its members share one pass over the source)")
    activation = args.activation or _default(TrainConfig, "activation")
    _check_k_args(activation, args.k, args.latents)
    penalties = args.k if activation == "topk" else args.l1
    seeds = args.seeds if args.seeds is not None else [args.seed]
    with _usage(args, **_TRAIN_NAMES):
        configs = [
            TrainConfig(
                n_latents=m,
                activation=activation,
                k=pen if activation == "topk" else None,
                l1_coeff=0.0 if activation == "topk" else pen,
                lr=args.lr,
                steps=args.steps,
                seed=seed,
            )
            for m in args.latents
            for pen in penalties
            for seed in seeds
        ]
    folder: Path = Path("sae-family") if args.out == Path(_SAE_OUT) else args.out
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"-o/--output {folder} is a file; a family is written to a folder")
    taken = [folder / member_name(c) for c in configs if (folder / member_name(c)).exists()]
    if (taken or is_family(folder)) and not args.overwrite:
        raise FileExistsError(
            f"{folder} already holds an SAE family ({FAMILY_MANIFEST}); pass --overwrite to replace it"
        )
    device = _device(args)
    _out_dir(folder, args, "-o/--output")
    source = _source_from_args(args, device)
    bar = _bar(args.steps * len(configs), _show_progress(args), f"train-sae ({len(configs)} SAEs)", "step")

    def on_step(i: int, step: TrainStep) -> None:
        bar.update(1)
        if i == 0:
            bar.set_postfix(fvu=f"{step.fvu:.4f}", l0=f"{step.l0:.1f}")

    with bar:
        trained = train_sae_family(source, source.d, configs, device=device, on_step=on_step)
    manifest = save_family(folder, [(c, sae, history) for c, (sae, history) in zip(configs, trained)])
    rows: list[dict[str, Any]] = [
        {"file": member_name(c), "n_latents": c.n_latents, "penalty": c.k or c.l1_coeff, "seed": c.seed}
        | {"fvu": h[-1].fvu, "l0": h[-1].l0, "dead": h[-1].dead}
        for c, (_, h) in zip(configs, trained)
    ]
    if args.json:
        _print_json({"family": str(folder), "manifest": str(manifest), "members": rows})
        return EXIT_OK
    print(
        format_table(
            ["member", "latents", "penalty", "seed", "FVU", "L0", "dead"],
            [
                [r["file"], str(r["n_latents"]), f"{r['penalty']:g}", str(r["seed"])]
                + [f"{r['fvu']:.4f}", f"{r['l0']:.1f}", str(r["dead"])]
                for r in rows
            ],
        )
    )
    print(f"wrote {len(rows)} SAEs and {manifest}")
    return EXIT_OK


def _add_train_sae_options(p: argparse.ArgumentParser) -> None:
    from .sae import ACTIVATIONS, TrainConfig

    trainable = tuple(a for a in ACTIVATIONS if a != "jumprelu")  # JumpReLU SAEs are read, not trained here
    _add_source_args(p)
    p.add_argument(
        "--latents",
        type=_list_of(_positive_int, "256,512"),
        help="number of SAE latents (required unless --init); a list trains a family",
    )
    p.add_argument(
        "--activation",
        choices=trainable,
        help=f"latent activation (default: {_default(TrainConfig, 'activation')}, or the --init SAE's)",
    )
    p.add_argument(
        "--k",
        type=_list_of(_positive_int, "16,32"),
        help="k of a top-k SAE (default: the --init SAE's); a list trains a family",
    )
    p.add_argument(
        "--l1",
        type=_list_of(_nonnegative_number, "0.1,0.3"),
        default=_default(TrainConfig, "l1_coeff"),
        help="L1 coefficient of a ReLU SAE; a list trains a family",
    )
    p.add_argument("--lr", type=_positive_number, default=_default(TrainConfig, "lr"), help="Adam learning rate")
    p.add_argument("--steps", type=_positive_int, help="training steps (default: one pass over the source)")
    p.add_argument("--seed", type=int, default=_default(TrainConfig, "seed"), help="seed of the initialisation")
    p.add_argument(
        "--seeds",
        type=_list_of(int, "0,1"),
        help="train a family with one member per seed (and per --latents, --l1/--k); -o is then a folder",
    )
    p.add_argument("--init", type=Path, help="continue training this SAE")
    p.add_argument(
        "--checkpoint-every",
        type=_count,
        metavar="TOKENS",
        default=_SAE_CHECKPOINT_EVERY,
        help="tokens between saves of the SAE to --output, rounded up to whole batches; 0 saves only at the end",
    )
    p.add_argument(
        "-o", "--output", dest="out", metavar="FILE", type=Path, default=Path(_SAE_OUT), help="SAE file to write"
    )
    p.add_argument(
        "--out", dest="out", type=Path, action=_DeprecatedAlias, replacement="-o/--output", help=argparse.SUPPRESS
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing SAE file at --output")
    _add_output_options(p, json_help="print the trained SAE's summary as JSON")
    _finish_source_options(p)
    p.set_defaults(func=_cmd_train_sae)


# -- report ----------------------------------------------------------------------------------------
def _cmd_report(args: argparse.Namespace) -> int:
    from .report import measurement_markdown

    path: Path = args.run
    report = path / "report.json" if path.is_dir() else path
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no such report (give a measure --out directory or its report.json)")
    try:
        summary = json.loads(report.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{report}: not JSON ({exc})") from None
    if not isinstance(summary, dict) or "measurement" not in summary or "intervals" not in summary:
        raise ValueError(f"{report}: not the report of a pyfloor measurement")
    try:
        text = measurement_markdown(summary)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(
            f"{report}: an incomplete or damaged measurement report ({type(exc).__name__}: {exc})"
        ) from None
    markdown = report.with_name("report.md")
    markdown.write_text(text)
    if args.json:
        _print_json(summary)
    else:
        print(text)
        print(f"wrote {markdown}")
    return EXIT_OK


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a measure --out directory, or its report.json")
    _add_output_options(p, json_help="print the report's JSON instead of its Markdown", progress=False)
    p.set_defaults(func=_cmd_report)


# -- distill and calibrate ---------------------------------------------------------------------------
def _cmd_distill(args: argparse.Namespace) -> int:
    import torch

    from ._io import json_ready
    from .calibrate import MIN_FIT_POINTS, curve_floors, plot_eval_curves
    from .distill import DistillConfig, distill, split_train_eval
    from .distributed import rank_and_world
    from .render import format_number, markdown_table
    from .sources import load_teacher
    from .students import make_students
    from .tokens import TokenSequences

    if sum(x is not None for x in (args.tokens, args.text, args.dataset)) != 1:
        raise UsageError("distill needs exactly one token input: --tokens, --text or --dataset")
    if args.read_tokens is not None and args.tokens is not None:
        raise UsageError("--read-tokens goes with --text or --dataset, not --tokens")
    evals = -(-args.steps // args.eval_every)  # eval points after step 0, the last at --steps
    if evals < MIN_FIT_POINTS:
        raise UsageError(
            f"--steps {args.steps} with --eval-every {args.eval_every} gives {evals} eval points after the start; "
            f"the floor's asymptote fit needs at least {MIN_FIT_POINTS}"
        )
    checkpoint: Path = args.checkpoint or args.out / "checkpoint.safetensors"
    with _usage(args, steps="--steps", temperature="--temperature", lr="--lr", warmup_steps="--warmup-steps"):
        config = DistillConfig(
            steps=args.steps,
            temperature=args.temperature,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            eval_every=args.eval_every,
            seed=args.seed,
            checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    device = _device(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    teacher, tokenizer = load_teacher(
        args.model, gguf_file=args.gguf_file, device=device, dtype=dtype, revision=args.revision
    )
    seqs = _sequences_from_args(args, tokenizer, streaming=False)
    if not isinstance(seqs, TokenSequences):  # streaming=False gives in-memory sequences
        raise TypeError(f"expected token sequences in memory, got {type(seqs).__name__}")
    train, held_out = split_train_eval(seqs, args.eval_tokens)
    teacher_config: Any = getattr(teacher, "config", None)
    if teacher_config is None:
        raise ValueError(f"{args.model}: the teacher has no config to build students from")
    students = make_students(teacher_config, args.widths, seed=args.seed)
    _out_dir(args.out, args)
    result = distill(
        teacher,
        students,
        train,
        held_out,
        config,
        batch_sequences=max(1, args.batch_tokens // args.seq_len),
        devices=dict.fromkeys(students, device),
        progress=_show_progress(args),
    )
    if rank_and_world()[0] != 0:
        return EXIT_OK
    observed = curve_floors({w: s.eval_curve for w, s in result.students.items()})
    floors = {w: {"paper": f.paper, **dataclasses.asdict(f.asymptote)} for w, f in observed.items()}
    for w, student in result.students.items():
        student.student.save_pretrained(args.out / f"student-{w}")  # type: ignore[operator]
    summary = json_ready({**result.to_dict(), "floors": floors})
    _write_json(summary, args.out / "distill.json", args)
    fits = {w: f.asymptote for w, f in observed.items()}
    plot_eval_curves({w: s.eval_curve for w, s in result.students.items()}, fits, args.out / "eval_curves.png")
    if args.json:
        _print_json(summary)
        return EXIT_OK
    rows = [
        [
            f"{w:,}",
            f"{result.students[w].n_parameters:,}",
            f"{f['paper']:.5g}",
            f"{f['l_inf']:.5g} [{format_number(f['low'], '.4g')}, {format_number(f['high'], '.4g')}]",
            "yes" if f["flattened"] else f"no: {f['warning']}",
        ]
        for w, f in floors.items()
    ]
    print(
        markdown_table(
            ["d_S", "parameters", "floor: mean of last 10 %", "floor: asymptote [interval]", "flattened"], rows
        )
    )
    print(f"wrote {args.out / 'distill.json'}, {args.out / 'eval_curves.png'} and the students under {args.out}")
    return EXIT_OK


def _add_distill_options(p: argparse.ArgumentParser) -> None:
    from .distill import DistillConfig

    def default(name: str) -> Any:
        return _default(DistillConfig, name)

    g = p.add_argument_group("teacher and tokens")
    g.add_argument("--model", required=True, help="Hugging Face causal LM: a local directory or a hub id")
    g.add_argument("--gguf-file", help="GGUF checkpoint inside the --model directory")
    _add_teacher_args(g)
    _add_token_args(g)
    g.add_argument("--batch-tokens", type=_positive_int, default=16_384, help="tokens per training batch")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda where available)")
    p.add_argument("--widths", type=_positive_widths, required=True, help="student widths, comma-separated")
    p.add_argument("--steps", type=_positive_int, default=default("steps"), help="training steps (batches)")
    p.add_argument(
        "--eval-tokens",
        type=_positive_int,
        default=65_536,
        help="held-out tokens at the start of the stream, never trained on",
    )
    p.add_argument("--eval-every", type=_positive_int, default=default("eval_every"), help="steps between evals")
    p.add_argument("--temperature", type=float, default=default("temperature"), help="distillation temperature T")
    p.add_argument("--lr", type=float, default=default("lr"), help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=default("weight_decay"), help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=_count, default=default("warmup_steps"), help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=default("seed"), help="seed of the students' init and dropout")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("pyfloor-distill"), help="output directory")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: OUT/checkpoint.safetensors)")
    p.add_argument(
        "--checkpoint-every", type=_positive_int, default=default("checkpoint_every"), help="steps between checkpoints"
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="start over, replacing an existing checkpoint")
    _add_output_options(p, json_help="print the JSON summary instead of the table")
    p.set_defaults(func=_cmd_distill)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import (
        calibrate,
        calibration_markdown,
        curve_floors,
        floors_from_fits,
        predictor_table,
        write_calibration_report,
    )
    from .stats import load_measurement

    summary = json.loads((args.distill / "distill.json" if args.distill.is_dir() else args.distill).read_text())
    observed_floors = curve_floors({int(w): s["eval_curve"] for w, s in summary["students"].items()})
    if args.observed == "paper":
        observed, intervals = {w: f.paper for w, f in observed_floors.items()}, None
    else:
        observed, intervals = floors_from_fits({w: f.asymptote for w, f in observed_floors.items()})
    labels = args.label or [p.name if p.is_dir() else p.stem for p in args.measurement]
    if len(labels) != len(args.measurement):
        raise UsageError(f"--label names {len(labels)} measurements, --measurement gives {len(args.measurement)}")
    predictions: dict[str, dict[int, float]] = {}
    for label, path in zip(labels, args.measurement):
        measurement = load_measurement(path / "measurement.json" if path.is_dir() else path)
        prefix = f"{label}." if len(labels) > 1 else ""
        predictions.update(predictor_table(measurement, sorted(observed), prefix=prefix))
    result = calibrate(predictions, observed, observed_intervals=intervals)
    _out_dir(args.out, args)
    paths = write_calibration_report(result, args.out)
    if args.json:
        _print_json(json.loads(paths["json"].read_text()))
    else:
        print(calibration_markdown(result))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


def _add_calibrate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("distill", type=Path, help="a distill output directory (or its distill.json)")
    p.add_argument(
        "--measurement",
        type=Path,
        nargs="+",
        required=True,
        help="measure output directories (their measurement.json) or measurement files; several (layers, "
        "estimators) are calibrated side by side",
    )
    p.add_argument("--label", nargs="+", help="a name for each --measurement (default: its directory name)")
    p.add_argument(
        "--observed",
        choices=("asymptote", "paper"),
        default="asymptote",
        help="the observed floor: the fitted asymptote with its interval, or the paper's mean of the last 10 %%",
    )
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("pyfloor-calibration"), help="output directory")
    _add_output_options(p, json_help="print the JSON result instead of Markdown", progress=False)
    p.set_defaults(func=_cmd_calibrate)


# -- the parser ------------------------------------------------------------------------------------
# name: (help, description, the function adding its options)
_COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "predict": (
        "F, L0, α, g, d* and the floor at each student width, from a measurement",
        (
            "Print F, L0, α, g(α), d* and the predicted floor at each student width. The measurement is "
            "a FeatureStats file (.safetensors), a pyfloor Measurement JSON, a published measurement JSON "
            "(F_alive, avg_active, sorted_importance), or just --features with --mean-l0 or --alpha."
        ),
        _add_predict_options,
    ),
    "demo": (
        "the built-in teacher end to end: toy teacher → SAE measurement → predicted floors → students",
        (
            "Train a toy-model teacher (Elhage et al. 2022) whose feature count and sparsity are known, measure "
            "it with SAEs, predict the distillation floor at every student width, distil students of every "
            "width 1 … d_T, and compare, writing a table, report.json, report.md and floors.png."
        ),
        _add_demo_options,
    ),
    "toy": (
        "the toy-model experiment over a grid of configurations (the paper's 48 by default)",
        (
            "Run the demo's experiment over a grid: --grid paper is the paper's 48 configurations (n ∈ {10, 20, 40}, "
            "d_T ∈ {3, 5, 8, 10}, α ∈ {0.8, 0.9, 0.95, 0.99}); --n/--d-teacher/--alpha lists replace the grid's "
            "values. Writes report.json, report.md, floors.png and summary.png."
        ),
        _add_toy_options,
    ),
    "measure": (
        "measure a teacher: F, α, d*, importances and floors with intervals, from an SAE",
        (
            "Stream activations (a teacher read at one layer, stopped there, over a token stream; or activation "
            "files) through an SAE and measure F, L0, α, g(α), d*, the importance distribution and the predicted "
            "floors with bootstrap intervals. Writes stats.safetensors, measurement.json, report.json, report.md "
            "and plots to --out, with an atomic checkpoint to --resume from. Under torchrun each rank reads its "
            "own share of the batches."
        ),
        _add_measure_options,
    ),
    "train-sae": (
        "train an SAE on a teacher's activations (ReLU+L1, the paper's recipe, or top-k+AuxK)",
        (
            "Train an SAE on the same activation sources measure reads: ReLU with an L1 penalty and decoder rows "
            "renormalised every step (the paper's recipe), or top-k with the AuxK loss (Gao et al. 2024). "
            "One step per batch; the SAE is saved to --output every --checkpoint-every tokens and at the end."
        ),
        _add_train_sae_options,
    ),
    "distill": (
        "distil a teacher into students of several widths in one loop and read off their floors",
        (
            "Distil a Hugging Face causal LM into students of its architecture at each --widths (hidden size d_S, "
            "FFN 4·d_S, the same depth): each batch runs the teacher once and every student learns from its logits "
            "(per-token KL at temperature T, AdamW with warm-up and cosine decay, gradient clip 1). The first "
            "--eval-tokens tokens are held out for the eval curves. Writes distill.json (curves, each width's floor: "
            "the fitted asymptote with its interval and the mean of the last 10 %% of evals), eval_curves.png and the "
            "students; checkpoints to --resume from."
        ),
        _add_distill_options,
    ),
    "calibrate": (
        "every predictor of one or more measurements against the floors of distilled students",
        (
            "Fit observed ≈ C·predicted + B for every floor predictor of each --measurement against the floors of a "
            "distill run, with R², the leave-one-width-out error and the rank agreement of predicted and observed "
            "floors. Writes calibration.json, calibration.md and calibration.png."
        ),
        _add_calibrate_options,
    ),
    "report": (
        "re-render the Markdown report of a measure run",
        "Re-render report.md from a measure output directory's report.json.",
        _add_report_options,
    ),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``pyfloor`` command.

    ``commands``: build the options of these commands only (all by default); the others keep their
    name and help, which is all ``pyfloor --help`` shows. :func:`main` builds the one it runs.
    """
    parser = argparse.ArgumentParser(
        prog="pyfloor",
        description="Measure a teacher's features in superposition and predict the floor of distilling it.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyfloor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, description, add_options) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description, epilog=EPILOG, formatter_class=_HelpFormatter)
        if commands is None or name in commands:
            add_options(p)
            p.set_defaults(flag_names=_flag_names(p))
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (the top level has no valued options)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyfloor`` command; returns the exit status (0 success, 1 failure, 2 usage error)."""
    words = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(words)
    parser = build_parser([command] if command in _COMMANDS else ())
    args = parser.parse_args(words)  # exits 2 on an argument error, 0 after --help or --version
    args.argv = None if argv is None else list(argv)
    args.created_dirs = []
    status = EXIT_FAILURE
    try:
        status = int(args.func(args))
        return status
    except UsageError as exc:
        status = EXIT_USAGE
        print(f"pyfloor {args.command}: error: {exc}", file=sys.stderr)
        return status
    except (ValueError, OSError, ImportError) as exc:  # anything else is a bug: its traceback, exit 1
        print(f"pyfloor {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"pyfloor {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if status != EXIT_OK:
            _remove_empty_created(args.created_dirs)


if __name__ == "__main__":
    sys.exit(main())
