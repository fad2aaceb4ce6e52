"""Distilling a teacher LM into students of several widths in one pass over the training tokens.

Each training batch runs the teacher once (no gradients) and every student learns from the same
logits: the loss is the per-token KL(softmax(t/T) ‖ softmax(s/T))·T² (:func:`distill_kl`), averaged
over the batch's loss positions. Each student has its own AdamW optimizer and learning-rate schedule
(linear warm-up, then cosine decay to 0; :class:`DistillConfig`), so a student of a family run is,
bit for bit, the student distilled alone from the same batches.

Loss positions are the real tokens (mask 1) of a sequence except a leading BOS: the BOS position is
fed to teacher and students (it is what the first real token attends to) but its output is left out
of every loss, as the measurement leaves it out of the activations (:class:`pyfloor.tokens.TokenSequences`
``leading_bos``): the floor pyfloor predicts concerns the positions it measured, and the BOS position
(the attention sink, with an atypical residual stream) is not one of them. Padding is masked from
attention and from the loss.

Dropout (where a student's config has it) draws from the CPU generator (and a CUDA student's device
generator) seeded by (seed, width, step, rank) for each student's forward pass and restored afterwards:
the random state is a function of the step, so a family run, a student alone and a resumed run draw
the same masks, and a checkpoint needs no random state.

Under ``torch.distributed`` rank r trains at step s on batch s·world + r; the gradients (and the
batch loss) are averaged over the ranks before each optimizer step, so every rank holds the same
students. Each rank writes its own checkpoint (``name.rank{r}-of-{world}.safetensors``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from . import _checks
from ._io import CheckpointError, json_ready, load_tagged, save_tagged
from ._version import __version__
from .checkpoints import prepare_checkpoint, rank_path
from .distributed import all_reduce_, all_reduce_max_, rank_and_world
from .sources import check_token_ids, input_device
from .tokens import Chunk, StreamedSequences, TokenSequences

__all__ = [
    "DistillConfig",
    "DistillStep",
    "StudentResult",
    "DistillResult",
    "distill_kl",
    "split_train_eval",
    "distill",
]

CHECKPOINT_FORMAT = "pyfloor.DistillCheckpoint"
CHECKPOINT_VERSION = 1
#: Settings of :class:`DistillConfig` a resumed run must share with the checkpoint it continues
_RECIPE = ("steps", "temperature", "lr", "betas", "weight_decay", "grad_clip", "eval_every", "seed")


@dataclass
class DistillConfig:
    """The distillation recipe and its checkpoints.

    ``steps`` optimizer steps of AdamW (``lr``, ``betas``, ``weight_decay``), the rate rising linearly
    over ``warmup_steps`` (default ⌈steps / 20⌉, 5 %) and falling on a cosine to 0 at ``steps``
    (:meth:`learning_rate`); gradients clipped to norm ``grad_clip`` (None: not clipped); the KL
    taken at ``temperature``. Every ``eval_every`` steps (and before the first and after the last)
    each student is evaluated on the whole evaluation set. ``seed`` draws dropout masks.
    ``checkpoint`` is written every ``checkpoint_every`` steps and after the last; an existing file
    there is refused unless ``resume`` (continue it, bit for bit) or ``overwrite`` (start over,
    replacing it only if it is a distillation checkpoint).
    """

    steps: int = 1000
    temperature: float = 2.0
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    grad_clip: float | None = 1.0
    eval_every: int = 100
    seed: int = 0
    checkpoint: str | os.PathLike[str] | None = None
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.steps = _checks.count(self.steps, "steps", minimum=1)
        self.temperature = _checks.number(self.temperature, "temperature", low=0.0, low_open=True)
        self.lr = _checks.number(self.lr, "lr", low=0.0, low_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1); got {self.betas!r}")
        self.betas = (
            _checks.number(self.betas[0], "betas[0]", low=0.0, high=1.0, high_open=True),
            _checks.number(self.betas[1], "betas[1]", low=0.0, high=1.0, high_open=True),
        )
        self.weight_decay = _checks.number(self.weight_decay, "weight_decay", low=0.0)
        if self.warmup_steps is not None:
            self.warmup_steps = _checks.count(self.warmup_steps, "warmup_steps")
            if self.warmup_steps > self.steps:
                raise ValueError(f"warmup_steps must be <= steps ({self.steps}); got {self.warmup_steps}")
        if self.grad_clip is not None:
            self.grad_clip = _checks.number(self.grad_clip, "grad_clip", low=0.0, low_open=True)
        self.eval_every = _checks.count(self.eval_every, "eval_every", minimum=1)
        self.checkpoint_every = _checks.count(self.checkpoint_every, "checkpoint_every", minimum=1)
        self.seed = _checks.count(self.seed, "seed")
        _checks.resume_flags(self.resume, self.overwrite, self.checkpoint)

    @property
    def warmup(self) -> int:
        """The warm-up steps: ``warmup_steps``, or ⌈steps / 20⌉ where it is None."""
        return -(-self.steps // 20) if self.warmup_steps is None else self.warmup_steps

    def lr_factor(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0 = the first) as a fraction of ``lr``:
        step / warmup during the warm-up (0 at the first step, which only starts AdamW's moment
        estimates), then (1 + cos(π·(step − warmup)/(steps − warmup)))/2, which is 1 at the end of
        the warm-up and would reach 0 at step = ``steps``, one after the last."""
        _checks.count(step, "step")
        warmup = self.warmup
        if step < warmup:
            return step / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, self.steps - warmup)))

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step``: ``lr`` · :meth:`lr_factor` (what the optimizer uses)."""
        return self.lr * self.lr_factor(step)


# -- the loss -------------------------------------------------------------------------------------------
def _token_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T))·T² at every position: float32, the logits' shape less the vocabulary."""
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return kl * (temperature * temperature)


def _masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """The float64 sum of ``values`` where the bool ``mask`` holds (no device synchronisation)."""
    return torch.where(mask, values, 0.0).sum(dtype=torch.float64)


def distill_kl(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """The distillation loss: KL(softmax(t/T) ‖ softmax(s/T))·T² per token, averaged over the positions
    where ``mask`` is 1 (not summed over positions and divided by the batch size).

    Parameters
    ----------
    teacher_logits, student_logits : Tensor
        Logits [..., V] of the same shape (any float dtype; computed in float32 with log_softmax).
    mask : Tensor
        [...] (the logits' shape less V): 1 (or True) at the positions the loss averages over.
    temperature : float
        T > 0.

    Returns
    -------
    Tensor
        A float32 scalar on the student logits' device, differentiable in ``student_logits``.
    """
    T = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    if teacher_logits.shape != student_logits.shape or teacher_logits.ndim < 2:
        raise ValueError(
            "teacher_logits and student_logits must both be [..., vocab] of one shape; got "
            f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask must be the logits' shape less the vocabulary, {tuple(student_logits.shape[:-1])}; "
            f"got {tuple(mask.shape)}"
        )
    keep = mask.to(device=student_logits.device, dtype=torch.bool)
    n = int(keep.sum())
    if n == 0:
        raise ValueError("mask selects no position: there is nothing to average the loss over")
    return _mean_kl(teacher_logits.to(student_logits.device), student_logits, keep, n, T)


def _mean_kl(teacher_logits: Tensor, student_logits: Tensor, keep: Tensor, n: int, temperature: float) -> Tensor:
    """:func:`distill_kl` of checked inputs on one device, ``n`` being the number of positions ``keep`` selects."""
    return (_masked_sum(_token_kl(teacher_logits, student_logits, temperature), keep) / n).float()


# -- data -----------------------------------------------------------------------------------------------
def split_train_eval(sequences: TokenSequences, eval_tokens: int) -> tuple[TokenSequences, TokenSequences]:
    """(train, eval): the sequences holding the first ``eval_tokens`` positions (rounded up to whole
    sequences; :meth:`TokenSequences.take`) are the evaluation set, the rest (:meth:`TokenSequences.skip`)
    the training set; the two never share a sequence."""
    if not isinstance(sequences, TokenSequences):
        raise ValueError(f"sequences must be TokenSequences; got {type(sequences).__name__}")
    held_out = sequences.take(_checks.count(eval_tokens, "eval_tokens", minimum=1))
    if len(held_out) == len(sequences):
        raise ValueError(
            f"eval_tokens={eval_tokens:,} takes all {len(sequences):,} sequences of {sequences.seq_len} "
            "positions: nothing is left to train on"
        )
    return sequences.skip(eval_tokens), held_out


def _check_disjoint(train: TokenSequences | StreamedSequences, held_out: TokenSequences) -> None:
    """ValueError when ``train`` and ``held_out`` are windows of one :class:`TokenSequences` that share sequences."""
    if not isinstance(train, TokenSequences) or train._read is not held_out._read:
        return  # different sources: nothing to tell
    lo, hi = max(train._start, held_out._start), min(train._n, held_out._n)
    if lo < hi:
        raise ValueError(
            f"train ({train.description}) and eval ({held_out.description}) share sequences {lo}…{hi - 1}: "
            "the evaluation set must be held out (split_train_eval)"
        )


def _loss_mask(mask: Tensor, leading_bos: bool) -> Tensor:
    """The bool loss positions of a batch: its real tokens (``mask`` 1) less a leading BOS."""
    keep = mask.bool()
    if leading_bos:
        keep[:, 0] = False
    return keep


def _logits(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """The logits [B, S, V] of a Hugging Face-style causal LM (``model(input_ids=, attention_mask=)``)."""
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, Tensor) or logits.shape[:2] != ids.shape or logits.ndim != 3:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(out).__name__
        raise ValueError(
            f"{type(model).__name__} must return logits [{ids.shape[0]}, {ids.shape[1]}, vocab]; got {got}"
        )
    return logits


def _model_device(model: nn.Module) -> torch.device:
    """The device of a student's parameters; ValueError for a student with none or on several devices."""
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise ValueError(
            f"a student must have its parameters on one device; found {sorted(map(str, devices)) or 'none'}"
        )
    return devices.pop()


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Run the body with the CPU generator (and a CUDA ``device``'s) seeded with ``seed``; their states are restored after."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _step_seed(seed: int, width: int, step: int, rank: int) -> int:
    """The seed of a student's dropout at one step on one rank (a function of those four only)."""
    return int(np.random.SeedSequence([seed, width, step, rank]).generate_state(1, np.uint64)[0])


# -- one student --------------------------------------------------------------------------------------
class _Student:
    """One student's training: its model, optimizer, schedule and curves (train loss per step, eval loss per evaluation)."""

    def __init__(self, width: int, model: nn.Module, config: DistillConfig) -> None:
        self.width, self.model = width, model
        self.device = _model_device(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"student {width} has no trainable parameters")
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        self.schedule = LambdaLR(self.opt, lambda step: config.lr_factor(step))
        self.train_losses: list[float] = []
        self.eval_losses: list[float] = []

    def step(
        self, batch: Chunk, keep: Tensor, n: int, teacher_logits: Tensor, config: DistillConfig, seed: int
    ) -> Tensor:
        """One optimizer step on ``batch`` (``keep``: its ``n`` loss positions; ``seed``: its dropout's);
        returns the batch loss (averaged over the ranks), a detached scalar on the student's device."""
        dev = self.device
        self.model.train()
        with _seeded(dev, seed):
            logits = _logits(self.model, batch.ids.to(dev), batch.mask.to(dev))
        if logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student {self.width} gives logits {tuple(logits.shape)} but the teacher {tuple(teacher_logits.shape)}: "
                "the student must share the teacher's vocabulary"
            )
        loss = _mean_kl(teacher_logits.to(dev), logits, keep.to(dev), n, config.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]  # torch leaves Tensor.backward unannotated (flagged under --strict only)
        value = _average_gradients(self.params, loss.detach())
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        self.opt.step()
        self.schedule.step()
        return value

    # -- checkpoints ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """The student's weights, optimizer state and curves as CPU tensors named for a checkpoint."""
        w = self.width
        out = {f"student.{w}.{k}": v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}
        for index, state in self.opt.state_dict()["state"].items():
            out.update({f"optimizer.{w}.{index}.{k}": v.detach().cpu().clone().contiguous() for k, v in state.items()})
        out[f"train.{w}"] = torch.tensor(self.train_losses, dtype=torch.float64)
        out[f"eval.{w}"] = torch.tensor(self.eval_losses, dtype=torch.float64)
        return out

    def settings(self) -> dict[str, Any]:
        """The optimizer's parameter groups and the schedule's state, JSON-ready, for a checkpoint's metadata."""
        return {"param_groups": self.opt.state_dict()["param_groups"], "schedule": self.schedule.state_dict()}

    def restore(self, tensors: Mapping[str, Tensor], settings: Any, steps: int, evaluations: int) -> dict[str, Tensor]:
        """Restore the optimizer, schedule and curves from :meth:`tensors` and :meth:`settings` of a
        checkpoint ``steps`` steps and ``evaluations`` evaluations in, and return the student's
        weights from it, checked against the model but not yet loaded into it; CheckpointError for
        what does not fit."""
        w = self.width
        weights = {k.removeprefix(f"student.{w}."): v for k, v in tensors.items() if k.startswith(f"student.{w}.")}
        mine = self.model.state_dict()
        if weights.keys() != mine.keys():
            raise CheckpointError(
                f"student {w}: the checkpoint's weights are not this student's (other parameter names)"
            )
        for k, v in weights.items():
            if v.shape != mine[k].shape or v.dtype != mine[k].dtype:
                raise CheckpointError(
                    f"student {w}: checkpoint weight {k} is {tuple(v.shape)} {v.dtype}, "
                    f"expected {tuple(mine[k].shape)} {mine[k].dtype}"
                )
        curves = {}
        for name, n in (("train", steps), ("eval", evaluations)):
            t = tensors.get(f"{name}.{w}")
            if t is None or t.shape != (n,) or t.dtype != torch.float64:
                raise CheckpointError(f"student {w}: the checkpoint's {name} curve must be float64 [{n}]")
            curves[name] = t.tolist()
        if not isinstance(settings, dict) or not isinstance(settings.get("param_groups"), list):
            raise CheckpointError(f"student {w}: corrupt optimizer settings in the checkpoint")
        groups = [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
            for g in settings["param_groups"]
        ]
        try:
            state: dict[int, dict[str, Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith(f"optimizer.{w}."):
                    index, key = k.removeprefix(f"optimizer.{w}.").split(".", 1)
                    state.setdefault(int(index), {})[key] = v
            self.opt.load_state_dict({"state": state, "param_groups": groups})
            self.schedule.load_state_dict(settings["schedule"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"student {w}: the checkpoint's optimizer state does not fit ({exc})") from exc
        self.train_losses, self.eval_losses = curves["train"], curves["eval"]
        return weights


def _average_gradients(params: Sequence[Tensor], loss: Tensor) -> Tensor:
    """Average the gradients of ``params`` over the ranks, in place (one all-reduce of them all),
    and return ``loss`` averaged over the ranks; both unchanged in a single process."""
    _, world = rank_and_world()
    if world == 1:
        return loss
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    total = loss.reshape(1).clone()
    all_reduce_([flat, total])
    flat /= world
    offset = 0
    for p in params:
        g = flat[offset : offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += p.numel()
    return total[0] / world


# -- results --------------------------------------------------------------------------------------------
class DistillStep(NamedTuple):
    """What :func:`distill`'s ``on_step`` is told after each step: the steps done so far, the batch
    this rank trained on and each student's batch loss (averaged over the ranks), by width."""

    step: int
    batch: Chunk
    losses: dict[int, float]


@dataclass
class StudentResult:
    """One student's distillation: the model (trained, in eval mode), its training curve (step,
    loss of that step's batch; steps 1 … n) and evaluation curve (steps done, mean per-token KL over
    the evaluation set; step 0 is before training)."""

    width: int
    student: nn.Module
    train_curve: list[tuple[int, float]]
    eval_curve: list[tuple[int, float]]

    @property
    def n_parameters(self) -> int:
        """The student's parameter count."""
        return sum(p.numel() for p in self.student.parameters())

    @property
    def final_eval(self) -> float:
        """The evaluation loss after the last step."""
        return self.eval_curve[-1][1]


@dataclass
class DistillResult:
    """Everything a distillation run produced: each student's result by width, the steps taken,
    the loss positions trained on (every rank and resumed run), the wall time (summed over resumed
    runs), the settings (:class:`DistillConfig` as a dict with the warm-up, ``batch_sequences`` and
    ``world_size``) and where the tokens and teacher came from."""

    students: dict[int, StudentResult]
    steps: int
    train_tokens: int
    seconds: float
    config: dict[str, Any]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: settings, provenance and every student's curves (no weights)."""
        summary: dict[str, Any] = json_ready(
            {
                "pyfloor_version": __version__,
                "torch_version": torch.__version__,
                "config": self.config,
                "provenance": self.provenance,
                "steps": self.steps,
                "train_tokens": self.train_tokens,
                "seconds": self.seconds,
                "students": {
                    w: {
                        "width": w,
                        "n_parameters": s.n_parameters,
                        "final_eval": s.final_eval,
                        "train_curve": s.train_curve,
                        "eval_curve": s.eval_curve,
                    }
                    for w, s in self.students.items()
                },
            }
        )
        return summary


# -- checkpoints ----------------------------------------------------------------------------------------
def _describe(model: nn.Module) -> dict[str, Any]:
    """A model's class, name (its config's name_or_path), parameter count and dtype, for fingerprints and provenance."""
    param = next(model.parameters(), None)
    return {
        "class": type(model).__name__,
        "name": str(getattr(getattr(model, "config", None), "name_or_path", "") or ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": None if param is None else str(param.dtype).removeprefix("torch."),
    }


class _Run:
    """The loop's position: steps done, the next batch index this rank reads, this rank's loss
    positions trained on, seconds so far and the steps at which the students were evaluated."""

    def __init__(self) -> None:
        self.step = self.next_index = self.tokens = 0
        self.seconds = 0.0
        self.eval_steps: list[int] = []


def _save(path: Path, run: _Run, members: list[_Student], fingerprint: dict[str, Any], position: Any) -> None:
    """Write the family's checkpoint atomically (a temporary file renamed over the previous one)."""
    tensors = {
        "counters": torch.tensor([run.step, run.next_index, run.tokens], dtype=torch.int64),
        "seconds": torch.tensor(run.seconds, dtype=torch.float64),
        "eval_steps": torch.tensor(run.eval_steps, dtype=torch.int64),
    }
    for m in members:
        tensors.update(m.tensors())
    metadata = {
        "fingerprint": json.dumps(fingerprint),
        "students": json.dumps({str(m.width): m.settings() for m in members}),
        "position": json.dumps(position),
    }
    save_tagged(path, tensors, kind=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, metadata=metadata, framework="pt")


def _json_field(meta: Mapping[str, str], key: str, path: Path) -> Any:
    """The JSON value of metadata ``key`` (null if absent); CheckpointError for corrupt JSON."""
    try:
        return json.loads(meta.get(key, "null"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata {key} ({exc})") from exc


def _load(path: Path, run: _Run, members: list[_Student], fingerprint: dict[str, Any], steps: int) -> Any:
    """Restore the family and the loop's position from ``path`` and return the stream position it
    recorded (None: none); CheckpointError for a checkpoint of another run or anything that does not fit."""
    tensors, meta = load_tagged(
        path, kind=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, what="distillation checkpoint", framework="pt"
    )
    theirs = _json_field(meta, "fingerprint", path)
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (the fingerprint is not a JSON object)")
    diff = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
    if diff:
        detail = "; ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {fingerprint[k]!r}" for k in diff)
        raise CheckpointError(f"{path}: checkpoint belongs to a different run ({detail})")
    counters, seconds, eval_steps = (tensors.get(k) for k in ("counters", "seconds", "eval_steps"))
    if counters is None or counters.shape != (3,) or counters.dtype != torch.int64:
        raise CheckpointError(f"{path}: checkpoint counters must be int64 [3]")
    if seconds is None or seconds.shape != () or seconds.dtype != torch.float64 or not 0 <= float(seconds) < math.inf:
        raise CheckpointError(f"{path}: checkpoint seconds must be a finite float64 scalar >= 0")
    if eval_steps is None or eval_steps.ndim != 1 or eval_steps.dtype != torch.int64:
        raise CheckpointError(f"{path}: checkpoint eval_steps must be int64 [evaluations]")
    step, next_index, tokens = (int(v) for v in counters)
    if not (0 <= step <= steps and next_index >= step and tokens >= 0):
        raise CheckpointError(f"{path}: inconsistent position (step {step} of {steps}, next batch {next_index})")
    settings = _json_field(meta, "students", path)
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (the students' settings are not a JSON object)")
    try:
        weights = [m.restore(tensors, settings.get(str(m.width)), step, eval_steps.numel()) for m in members]
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    for m, w in zip(members, weights):  # the students change only once every one of them fits
        m.model.load_state_dict(w)
    run.step, run.next_index, run.tokens = step, next_index, tokens
    run.seconds, run.eval_steps = float(seconds), eval_steps.tolist()
    return _json_field(meta, "position", path)


# -- the loop -------------------------------------------------------------------------------------------
def _evaluate(teacher: nn.Module, members: list[_Student], held_out: TokenSequences, per: int, T: float) -> list[float]:
    """Each student's mean per-token KL over every loss position of ``held_out`` (read in order; the
    ranks share the batches and the float64 sums)."""
    rank, world = rank_and_world()
    sums = torch.zeros(len(members), dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.int64)
    device = input_device(teacher)
    for m in members:
        m.model.eval()
    with torch.no_grad():
        for chunk in held_out.chunks(per, rank=rank, world=world):
            keep = _loss_mask(chunk.mask, held_out.leading_bos)
            teacher_logits = _logits(teacher, chunk.ids.to(device), chunk.mask.to(device))
            for i, m in enumerate(members):
                logits = _logits(m.model, chunk.ids.to(m.device), chunk.mask.to(m.device))
                kl = _token_kl(teacher_logits.to(m.device), logits, T)
                sums[i] += _masked_sum(kl, keep.to(m.device)).cpu()
            count += int(keep.sum())
    all_reduce_([sums, count])
    if int(count) == 0:
        raise ValueError(f"the evaluation set ({held_out.description}) holds no loss position (only BOS and padding)")
    return (sums / int(count)).tolist()


def _fingerprint(
    teacher: nn.Module,
    members: list[_Student],
    train: TokenSequences | StreamedSequences,
    held_out: TokenSequences,
    per: int,
    config: DistillConfig,
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (JSON-normal: tuples as lists)."""
    rank, world = rank_and_world()
    fingerprint = {
        "teacher": _describe(teacher),
        "students": {str(m.width): _describe(m.model) for m in members},
        "train": train.description,
        "train_seq_len": train.seq_len,
        "eval": held_out.description,
        "eval_sequences": len(held_out),
        "eval_seq_len": held_out.seq_len,
        "leading_bos": [train.leading_bos, held_out.leading_bos],
        "batch_sequences": per,
        **{k: getattr(config, k) for k in _RECIPE},
        "warmup_steps": config.warmup,
        "rank": rank,
        "world": world,
    }
    normal: dict[str, Any] = json.loads(json.dumps(fingerprint))
    return normal


def _next_batch(batches: Iterator[Chunk], step: int, steps: int) -> Chunk:
    """This rank's next training batch; ValueError on every rank when any rank's training sequences have run out."""
    chunk = next(batches, None)
    missing = torch.tensor([int(chunk is None)])
    all_reduce_max_(missing)
    if chunk is None or int(missing):
        raise ValueError(
            f"the training sequences ran out after {step} of {steps} steps: give more training tokens, "
            "fewer steps or smaller batches"
        )
    return chunk


def _check_inputs(
    students: Mapping[int, nn.Module],
    train: TokenSequences | StreamedSequences,
    held_out: TokenSequences,
    per: int,
    config: DistillConfig,
    devices: Mapping[int, torch.device | str],
) -> None:
    """ValueError naming the argument of :func:`distill` that does not fit (see its Raises)."""
    if not students:
        raise ValueError("students must hold at least one student")
    for w in students:
        _checks.count(w, "students (a width)", minimum=1)
    if not isinstance(train, (TokenSequences, StreamedSequences)):
        raise ValueError(f"train must be TokenSequences or StreamedSequences; got {type(train).__name__}")
    if not isinstance(held_out, TokenSequences):
        raise ValueError(f"eval must be TokenSequences (a fixed set read in order); got {type(held_out).__name__}")
    _check_disjoint(train, held_out)
    _, world = rank_and_world()
    if isinstance(train, TokenSequences) and -(-len(train) // per) < config.steps * world:
        raise ValueError(
            f"train holds {len(train):,} sequences, {-(-len(train) // per):,} batches of {per}; {config.steps:,} steps"
            + (f" on {world} ranks" if world > 1 else "")
            + f" need {config.steps * world:,} batches"
        )
    unknown = sorted(set(devices) - set(students))
    if unknown:
        raise ValueError(f"devices names widths with no student: {unknown}")


def _result(
    members: list[_Student],
    run: _Run,
    settings: dict[str, Any],
    teacher: nn.Module,
    train: TokenSequences | StreamedSequences,
    held_out: TokenSequences,
) -> DistillResult:
    """The run's :class:`DistillResult` (the loss positions trained on summed over the ranks)."""
    tokens = torch.tensor([run.tokens], dtype=torch.int64)
    all_reduce_([tokens])
    provenance = {
        "teacher": _describe(teacher),
        "train": train.description,
        "eval": held_out.description,
        "eval_sequences": len(held_out),
        "loss_positions": "real tokens" + (", less a leading BOS" if train.leading_bos else ""),
    }
    results = {
        m.width: StudentResult(
            m.width,
            m.model,
            [(s + 1, v) for s, v in enumerate(m.train_losses)],
            list(zip(run.eval_steps, m.eval_losses)),
        )
        for m in members
    }
    return DistillResult(results, run.step, int(tokens), run.seconds, settings, provenance)


def distill(
    teacher: nn.Module,
    students: Mapping[int, nn.Module],
    train: TokenSequences | StreamedSequences,
    eval: TokenSequences,
    config: DistillConfig | None = None,
    *,
    batch_sequences: int,
    devices: Mapping[int, torch.device | str] | None = None,
    progress: bool = True,
    on_step: Callable[[DistillStep], None] | None = None,
) -> DistillResult:
    """Distil ``teacher`` into every student of ``students`` (by width) in one pass over ``train``.

    Step s reads batch s (of ``batch_sequences`` sequences; batch s·world + rank under
    ``torch.distributed``), runs the teacher on it once and takes one optimizer step of every
    student on :func:`distill_kl` of the teacher's logits over the batch's loss positions (real
    tokens less a leading BOS; see the module). Before the first step, every ``config.eval_every``
    steps and after the last, each student's mean per-token KL over every loss position of
    ``eval`` is recorded. Student w trains on ``devices[w]`` where given (it is moved there), else
    where its parameters are; the teacher's logits go to each student's device.

    ``teacher`` and the students are Hugging Face-style causal LMs (``model(input_ids=,
    attention_mask=, use_cache=)`` giving ``.logits``) sharing the vocabulary; the teacher is put in
    eval mode, the students are left in eval mode. ``on_step`` runs after each step (after any
    evaluation and checkpoint of that step). ``progress`` shows a bar (rank 0) with each width's
    running training loss.

    Raises
    ------
    ValueError
        For bad arguments, ``train`` and ``eval`` windows of one :class:`TokenSequences` that share
        sequences, training sequences too few for ``config.steps`` (× world) batches, token ids
        outside the teacher's vocabulary, a non-finite loss.
    CheckpointError
        For a checkpoint that cannot be resumed or replaced (see :class:`DistillConfig`).
    """
    config = config or DistillConfig()
    per = _checks.count(batch_sequences, "batch_sequences", minimum=1)
    _check_inputs(students, train, eval, per, config, devices or {})
    rank, world = rank_and_world()
    for w, device in (devices or {}).items():
        students[w].to(torch.device(device))
    members = [_Student(w, students[w], config) for w in students]
    if world > 1 and any(m.device.type == "cuda" and m.device != input_device(teacher) for m in members):
        raise ValueError("under torch.distributed every student must be on its rank's device (the teacher's)")
    teacher.eval()
    vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
    fingerprint = _fingerprint(teacher, members, train, eval, per, config)
    path = None if config.checkpoint is None else rank_path(Path(config.checkpoint), rank, world)
    run = _Run()
    position = prepare_checkpoint(
        path,
        resume=config.resume,
        overwrite=config.overwrite,
        kind=CHECKPOINT_FORMAT,
        what="distillation checkpoint",
        load=lambda p: _load(p, run, members, fingerprint, config.steps),
        device=input_device(teacher),
    )
    if isinstance(train, StreamedSequences) and position is not None:
        train.seek(run.next_index, position)
    teacher_device = input_device(teacher)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.steps, initial=run.step, unit="step", disable=not (progress and rank == 0), dynamic_ncols=True
    )
    running: dict[int, float] = {}
    start = time.perf_counter()
    seconds_before = run.seconds

    def evaluate() -> None:
        for m, loss in zip(members, _evaluate(teacher, members, eval, per, config.temperature)):
            m.eval_losses.append(loss)
        run.eval_steps.append(run.step)

    batches = train.chunks(per, start=run.next_index, rank=rank, world=world)
    try:
        if run.step == 0:
            evaluate()
        while run.step < config.steps:
            chunk = _next_batch(batches, run.step, config.steps)
            check_token_ids(chunk.ids, vocab, f"training batch {chunk.index}")
            keep = _loss_mask(chunk.mask, train.leading_bos)
            n = int(keep.sum())
            if n == 0:
                raise ValueError(f"training batch {chunk.index} holds no loss position (only BOS and padding)")
            with torch.no_grad():
                teacher_logits = _logits(teacher, chunk.ids.to(teacher_device), chunk.mask.to(teacher_device))
            losses = [
                m.step(chunk, keep, n, teacher_logits, config, _step_seed(config.seed, m.width, run.step, rank))
                for m in members
            ]
            values = [float(v) for v in torch.stack([v.cpu() for v in losses]).tolist()]
            for m, v in zip(members, values):
                if not math.isfinite(v):
                    raise ValueError(f"student {m.width}: the loss is {v} at step {run.step}: try a smaller lr")
                m.train_losses.append(v)
                running[m.width] = v if m.width not in running else 0.9 * running[m.width] + 0.1 * v
            run.step, run.next_index, run.tokens = run.step + 1, chunk.index + 1, run.tokens + n
            if run.step % config.eval_every == 0 or run.step == config.steps:
                evaluate()
            bar.update(1)
            bar.set_postfix({f"d{w}": f"{v:.4f}" for w, v in running.items()})
            if path is not None and (run.step % config.checkpoint_every == 0 or run.step == config.steps):
                run.seconds = seconds_before + time.perf_counter() - start
                stream = train.position(run.next_index) if isinstance(train, StreamedSequences) else None
                _save(path, run, members, fingerprint, stream)
            if on_step is not None:
                on_step(DistillStep(run.step, chunk, {m.width: v for m, v in zip(members, values)}))
    finally:
        bar.close()
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    run.seconds = seconds_before + time.perf_counter() - start
    for m in members:
        m.model.eval()
    settings = {
        **asdict(config),
        "checkpoint": None if config.checkpoint is None else str(config.checkpoint),
        "warmup_steps": config.warmup,
        "batch_sequences": per,
        "world_size": world,
    }
    return _result(members, run, settings, teacher, train, eval)
