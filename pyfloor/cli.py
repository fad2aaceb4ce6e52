"""The ``pyfloor`` command: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ._version import __version__

if TYPE_CHECKING:
    import torch

    from .toy import ExperimentSettings, ToyConfig

__all__ = ["main", "build_parser"]


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


def _out_dir(path: Path) -> Path:
    """``path`` as an output directory, created now, so that a bad ``--out`` fails before any work."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a directory")
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {path}: the directory is not writable")
    return path


def _write_json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _cmd_predict(args: argparse.Namespace) -> int:
    from .floors import prediction_summary
    from .report import format_prediction
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
    if args.output is not None and args.output.is_dir():
        raise ValueError(f"-o {args.output} is a directory; give a file path for the JSON report")
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
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.8,0.9; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number; got {text!r}")
    return values


def _positive_widths(text: str) -> list[int]:
    values = _widths(text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def _toy_settings(args: argparse.Namespace) -> "ExperimentSettings":
    from .toy import ExperimentSettings, SAESettings, TrainSettings

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


def _run_toy(args: argparse.Namespace, configs: "list[ToyConfig]") -> int:
    """Run configurations, write report.json / report.md / PNGs under --out, print the tables."""
    import time

    from .toy import (
        build_report,
        format_toy_report,
        plot_toy_floors,
        plot_toy_summary,
        run_experiment,
        toy_markdown,
        total_steps,
    )

    settings = _toy_settings(args)
    out = _out_dir(Path(args.out))
    start = time.perf_counter()
    bar = _bar(total_steps(configs, settings), not args.quiet, f"pyfloor {args.command}", "step")
    with bar:
        results = run_experiment(configs, settings, progress=bar.update)
    command = "pyfloor " + " ".join(sys.argv[1:]) if args.argv is None else "pyfloor " + " ".join(args.argv)
    report = build_report(results, settings, command=command, seconds=time.perf_counter() - start)
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
    from .toy import ToyConfig

    return _run_toy(args, [ToyConfig(args.n, args.d_teacher, args.alpha, args.importance)])


def _cmd_toy(args: argparse.Namespace) -> int:
    from .toy import PAPER_GRID, SMALL_GRID, grid

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
    _add_run_options(p, out="pyfloor-demo", workers=min(2, os.cpu_count() or 1), sae_steps=800)
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


# -- measuring a teacher -----------------------------------------------------------------------------
# Options that only apply to a --model teacher, with their defaults.
_TEACHER_OPTIONS = {
    "gguf_file": None, "layer": None, "site": "resid", "tokens": None, "bin_dtype": "uint16", "text": None,
    "dataset": None, "column": "text", "seq_len": 1024, "skip_tokens": 0, "read_tokens": None, "dtype": None,
}


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Arguments that name an activation stream: a teacher with its tokens, or activation files."""
    g = p.add_argument_group("activation source: a teacher (--model, --layer, and tokens) or --activations")
    g.add_argument("--model", help="Hugging Face causal LM: a local directory or a hub id")
    g.add_argument("--gguf-file", help="GGUF checkpoint inside the --model directory")
    g.add_argument("--layer", help="block index (the residual stream after it) or a module name")
    g.add_argument("--site", choices=["resid", "mlp"], default=_TEACHER_OPTIONS["site"],
                   help="read the block's output or its MLP's")
    g.add_argument("--tokens", type=Path, help="pre-tokenized token file (.npy, or .bin of --bin-dtype)")
    g.add_argument("--bin-dtype", default=_TEACHER_OPTIONS["bin_dtype"],
                   help="integer type of a .bin token file (default uint16)")
    g.add_argument("--text", nargs="+", type=Path, help="text files, or directories of .txt/.md files")
    g.add_argument("--dataset", help="a 'datasets' dataset name or path (needs the datasets package)")
    g.add_argument("--column", default=_TEACHER_OPTIONS["column"], help="text column of --dataset (default text)")
    g.add_argument("--seq-len", type=int, default=_TEACHER_OPTIONS["seq_len"],
                   help="tokens per sequence fed to the teacher (default 1024)")
    g.add_argument("--skip-tokens", type=int, default=_TEACHER_OPTIONS["skip_tokens"],
                   help="skip this many tokens of the token stream first")
    g.add_argument("--read-tokens", type=int, help="tokenize at most this many tokens of --text/--dataset")
    g.add_argument("--activations", nargs="+", type=Path, help=".npy or .safetensors activation files [N, d]")
    g.add_argument("--activations-key", help="the tensor to read from --activations safetensors files holding several")
    g.add_argument("--batch-tokens", type=int, default=65_536, help="tokens per batch (default 65536)")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda where available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="the teacher's dtype")


def _device(args: argparse.Namespace) -> "torch.device":
    """This process's device: --device, or the one torchrun's environment gives (CPU without CUDA)."""
    import torch

    from .distributed import init_from_env

    default = init_from_env()
    if not args.device:
        return default
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch sees no CUDA device")
    return device


def _check_source_args(args: argparse.Namespace) -> None:
    """Raise ValueError unless the arguments name exactly one complete activation source."""
    if (args.model is None) == (args.activations is None):
        raise ValueError("name one activation source: --model (with --layer and tokens) or --activations")
    if args.activations is not None:
        given = [f"--{k.replace('_', '-')}" for k, default in _TEACHER_OPTIONS.items() if getattr(args, k) != default]
        if given:
            raise ValueError(f"{', '.join(given)}: only for a --model teacher, not for --activations")
        return
    if args.activations_key is not None:
        raise ValueError("--activations-key goes with --activations")
    if args.layer is None:
        raise ValueError("--model needs --layer (a block index or a module name)")
    if sum(x is not None for x in (args.tokens, args.text, args.dataset)) != 1:
        raise ValueError("--model needs exactly one token input: --tokens, --text or --dataset")


def _source_from_args(args: argparse.Namespace, device: "torch.device"):
    """The activation source the arguments name (checked by :func:`_check_source_args`)."""
    import torch

    from . import sources

    if args.activations is not None:
        return sources.ArraySource(args.activations, args.batch_tokens, key=args.activations_key, device=device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = sources.load_teacher(args.model, gguf_file=args.gguf_file, device=device, dtype=dtype)
    budget = None if args.read_tokens is None else args.read_tokens + args.skip_tokens
    if args.tokens is not None:
        seqs = sources.token_file_sequences(args.tokens, args.seq_len, bin_dtype=args.bin_dtype)
    elif args.text is not None:
        seqs = sources.text_file_sequences(args.text, tokenizer, args.seq_len, max_tokens=budget)
    else:
        seqs = sources.dataset_sequences(args.dataset, tokenizer, args.seq_len, column=args.column, max_tokens=budget)
    if args.skip_tokens:
        seqs = seqs.skip(args.skip_tokens)
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    return sources.TeacherSource(model, layer, seqs, args.batch_tokens, site=args.site, device=device)


def _cmd_measure(args: argparse.Namespace) -> int:
    from ._io import check_replaceable
    from .distributed import rank_and_world
    from .measure import CHECKPOINT_FORMAT, MeasureConfig, measure
    from .report import measurement_markdown, write_measurement_report
    from .sae import load_sae

    _check_source_args(args)
    config = MeasureConfig(
        max_tokens=args.max_tokens, until_stable=args.until_stable, min_tokens=args.min_tokens,
        checkpoint=args.checkpoint or args.out / "checkpoint.safetensors", checkpoint_every=args.checkpoint_every,
        resume=args.resume, overwrite=args.overwrite, alive_threshold=args.alive_threshold, bootstrap=args.bootstrap,
        seed=args.seed, widths=args.widths, mode=args.mode, k=args.k, histograms=not args.no_histograms,
        histogram_every=args.histogram_every,
    )
    device = _device(args)
    sae = load_sae(args.sae, device=device)
    _out_dir(args.out)
    _out_dir(Path(config.checkpoint).parent)
    if not args.resume:  # fail now, not after loading the teacher; measure() checks again
        check_replaceable(Path(config.checkpoint), kind=CHECKPOINT_FORMAT, what="measure checkpoint",
                          overwrite=args.overwrite)
    source = _source_from_args(args, device)
    result = measure(source, sae, config, progress=not args.quiet)
    if rank_and_world()[0] != 0:
        return 0
    paths = write_measurement_report(result, args.out)
    if args.json:
        print(json.dumps(json.loads(paths["json"].read_text()), indent=2))
    else:
        print(measurement_markdown(json.loads(paths["json"].read_text())))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_train_sae(args: argparse.Namespace) -> int:
    from ._io import check_replaceable
    from .sae import SAE, SAE_FORMAT, TrainConfig, load_sae, train_sae

    _check_source_args(args)
    check_replaceable(args.out, kind=SAE_FORMAT, what="SAE file", overwrite=args.overwrite)
    _out_dir(args.out.parent)
    device = _device(args)
    if args.init is not None:
        sae, fresh = load_sae(args.init, device=device), False
        given = {"--latents": (args.latents, sae.n_latents), "--activation": (args.activation, sae.activation),
                 "--k": (args.k, sae.k)}
        for flag, (asked, has) in given.items():
            if asked is not None and asked != has:
                raise ValueError(f"{flag} {asked}: the --init SAE has {has}; leave {flag} out to keep it")
    elif args.latents is None:
        raise ValueError("--latents is required to train a new SAE (or continue one with --init)")
    else:
        sae, fresh = None, True
    activation = sae.activation if sae is not None else args.activation or "relu"
    config = TrainConfig(n_latents=sae.n_latents if sae is not None else args.latents, activation=activation,
                         k=sae.k if sae is not None else args.k, l1_coeff=args.l1, lr=args.lr, steps=args.steps,
                         seed=args.seed)
    source = _source_from_args(args, device)
    if sae is None:
        sae = SAE(source.d, config.n_latents, config.activation, k=config.k, device=device)
    if sae.d_in != source.d:
        raise ValueError(f"the SAE has d_in = {sae.d_in} but the source yields activations of width {source.d}")
    bar = _bar(args.steps, not args.quiet, "train-sae", "step")

    def on_step(step) -> None:
        bar.update(1)
        bar.set_postfix(fvu=f"{step.fvu:.4f}", l0=f"{step.l0:.1f}", dead=step.dead)
        if args.checkpoint_every and (step.step + 1) % args.checkpoint_every == 0:
            sae.save(args.out)

    with bar:
        sae, history = train_sae(source, source.d, config, sae=sae,
                                 init_pre_bias=fresh, on_step=on_step)
    sae.save(args.out)
    last = history[-1]
    nonfinite = sum(step.nonfinite for step in history)
    left_out = f"; {nonfinite:,} tokens with NaN or ±Inf activations left out" if nonfinite else ""
    print(f"trained {sae.d_in}→{sae.n_latents} {sae.activation} SAE for {len(history)} steps: "
          f"FVU {last.fvu:.4f}, L0 {last.l0:.1f}, dead latents {last.dead}{left_out}\nwrote {args.out}")
    return 0


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
        raise ValueError(f"{report}: an incomplete or damaged measurement report ({type(exc).__name__}: {exc})") from None
    markdown = report.with_name("report.md")
    markdown.write_text(text)
    print(markdown.read_text())
    print(f"wrote {markdown}")
    return 0


def _bar(total: int | None, enabled: bool, desc: str, unit: str):
    """A progress bar on stderr, shown on a terminal unless disabled."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, desc=desc,
                disable=not enabled or not sys.stderr.isatty())


def _add_measure_commands(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="measure a teacher: F, α, d*, importances and floors with intervals, from an SAE",
        description=(
            "Stream activations (a teacher read at one layer, stopped there, over a token stream; or activation "
            "files) through an SAE and measure F, L0, α, g(α), d*, the importance distribution and the predicted "
            "floors with bootstrap intervals. Writes stats.safetensors, measurement.json, report.json, report.md "
            "and plots to --out, with an atomic checkpoint to --resume from. Under torchrun each rank reads its "
            "own share of the batches."
        ),
    )
    _add_source_args(p)
    p.add_argument("--sae", type=Path, required=True,
                   help="SAE: a pyfloor .safetensors file, an SAELens or an EleutherAI sparsify directory")
    p.add_argument("--mode", choices=["relu", "jumprelu", "topk"], help="encode with this activation instead")
    p.add_argument("--k", type=int, help="k for --mode topk")
    p.add_argument("--out", type=Path, default=Path("pyfloor-measure"), help="output directory (default pyfloor-measure)")
    p.add_argument("--max-tokens", type=int, help="stop after this many tokens (rounded up to whole batches)")
    p.add_argument("--until-stable", type=float, metavar="TOL",
                   help="stop once d*'s bootstrap interval is narrower than TOL × d* (e.g. 0.01)")
    p.add_argument("--min-tokens", type=int, default=0, help="never stop for stability before this many tokens")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default OUT/checkpoint.safetensors)")
    p.add_argument("--checkpoint-every", type=int, default=10_000_000, help="tokens between checkpoints")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="start over, replacing an existing checkpoint")
    p.add_argument("--alive-threshold", type=float, default=1e-5, help="firing frequency above which a latent is alive")
    p.add_argument("--bootstrap", type=int, default=32, help="bootstrap replicates over batches (0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap weights")
    p.add_argument("--widths", type=_widths, help="student widths for the floor table (default: around d*)")
    p.add_argument("--no-histograms", action="store_true", help="skip the per-feature and activation histograms")
    p.add_argument("--histogram-every", type=int, default=1, help="fill the histograms from every N-th batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of Markdown")
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser(
        "train-sae",
        help="train an SAE on a teacher's activations (ReLU+L1, the paper's recipe, or top-k+AuxK)",
        description=(
            "Train an SAE on the same activation sources measure reads: ReLU with an L1 penalty and decoder rows "
            "renormalised every step (the paper's recipe), or top-k with the AuxK loss (Gao et al. 2024). "
            "One step per batch; the SAE is saved every --checkpoint-every steps and at the end."
        ),
    )
    _add_source_args(p)
    p.add_argument("--latents", type=int, help="number of SAE latents (required unless --init)")
    p.add_argument("--activation", choices=["relu", "topk"], help="relu (default) or topk")
    p.add_argument("--k", type=int, help="k of a top-k SAE")
    p.add_argument("--l1", type=float, default=1e-2, help="L1 coefficient of a ReLU SAE (default 1e-2)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--steps", type=int, help="training steps (default: one pass over the source)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation")
    p.add_argument("--init", type=Path, help="continue training this SAE")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between saves of the SAE (0: only at the end)")
    p.add_argument("--out", type=Path, default=Path("sae.safetensors"), help="SAE file to write (default sae.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing SAE file at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_sae)

    p = sub.add_parser("report", help="re-render the Markdown report of a measure run",
                       description="Re-render report.md from a measure output directory's report.json.")
    p.add_argument("run", type=Path, help="a measure --out directory, or its report.json")
    p.set_defaults(func=_cmd_report)


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
        "--alive-threshold", type=float,
        help="firing frequency above which a latent is alive, for a statistics file (default 1e-5)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-o", "--output", type=Path, help="also write the JSON report to this file")
    p.set_defaults(func=_cmd_predict)
    _add_toy_commands(sub)
    _add_measure_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyfloor`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, ImportError) as exc:
        print(f"pyfloor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
