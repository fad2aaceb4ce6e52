"""The toy model of superposition (Elhage et al. 2022), many models trained at once.

Data: x ∈ R^n with x_i = 0 with probability α and x_i ~ U[0, 1] otherwise, independently, so
E[x_i²] = (1 − α)/3. Model of width d:

    h = W x            W ∈ R^{d×n}
    x̂ = ReLU(Wᵀ h + b)

Loss: the importance-weighted squared error Σ_i I_i (x̂_i − y_i)², averaged over samples, where the
target y is x itself (a model trained on the task) or a teacher's output x̂_T (a distilled student).
Importance profiles: Zipf I_i = 1/i (the default), geometric I_i = r^(i−1), uniform I_i = 1.

Every model of a call to :func:`train_toy_models` is trained at the same time. Models that share a
data stream (same task, data seed and teacher) form a *group*; groups of the same shape form a
*block* whose parameters are one tensor W [G, K, D, n] (G groups of K models, each padded to the
widest width D with zero rows, which stay exactly zero), and one Adam optimiser steps all blocks.
The forward and backward passes are written out by hand (a handful of tensor operations per block
instead of autograd's many) because on a CPU the step is bound by memory traffic over the
[G, K, batch, n] outputs, not by the matrix products. Each group draws its samples from its own
generator and Adam and the loss act on each model separately, so a model trained in a batch gets
the same weights (to float rounding) as the same model trained alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from .. import _checks

__all__ = [
    "ImportanceProfile",
    "IMPORTANCE_PROFILES",
    "importance_profile",
    "stable_seed",
    "ToyTask",
    "TrainSettings",
    "ModelSpec",
    "ToyModels",
    "ToyLosses",
    "train_toy_models",
    "evaluate_losses",
    "output_variance",
    "KEPT_THRESHOLD",
]

ImportanceProfile = Literal["zipf", "geometric", "uniform"]
IMPORTANCE_PROFILES: tuple[str, ...] = ("zipf", "geometric", "uniform")
#: A feature counts as represented by a model when its column has ‖W_i‖² above this.
KEPT_THRESHOLD = 0.5


def importance_profile(n_features: int, profile: ImportanceProfile = "zipf", ratio: float = 0.9) -> NDArray[np.float64]:
    """Loss importances I_1 … I_n, descending: Zipf 1/i, geometric ratio^(i−1), or uniform 1."""
    i = np.arange(1, _checks.count(n_features, "n_features", minimum=1) + 1, dtype=np.float64)
    if profile == "zipf":
        return 1.0 / i
    if profile == "geometric":
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"the geometric profile needs 0 < ratio < 1; got {ratio!r}")
        return ratio ** (i - 1.0)
    if profile == "uniform":
        return np.ones_like(i)
    raise ValueError(f"importance profile must be one of {', '.join(IMPORTANCE_PROFILES)}; got {profile!r}")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (their ``repr``), identical on every machine and run."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class ToyTask:
    """The data distribution and loss of one toy problem: n features of sparsity α, importances I."""

    n_features: int
    alpha: float
    importance: ImportanceProfile = "zipf"
    ratio: float = 0.9

    def __post_init__(self) -> None:
        importance_profile(self.n_features, self.importance, self.ratio)  # validates
        _checks.number(self.alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)

    @property
    def importances(self) -> NDArray[np.float64]:
        """I_1 … I_n (descending)."""
        return importance_profile(self.n_features, self.importance, self.ratio)

    @property
    def second_moment(self) -> float:
        """E[x_i²] = (1 − α)/3."""
        return (1.0 - self.alpha) / 3.0

    @property
    def feature_weights(self) -> NDArray[np.float64]:
        """w_i = I_i · E[x_i²], descending: Eq. 2's per-feature loss contribution."""
        return self.importances * self.second_moment

    def sample(self, n_samples: int, generator: torch.Generator) -> Tensor:
        """``n_samples`` draws of x [n_samples, n] (float32), from one uniform draw per entry.

        u ~ U[0, 1): x = 0 where u < α, else (u − α)/(1 − α), which is U[0, 1) given u ≥ α.
        """
        u = torch.rand(n_samples, self.n_features, generator=generator)
        return torch.where(u < self.alpha, 0.0, (u - self.alpha) / (1.0 - self.alpha))

    def label(self) -> str:
        """Short description, e.g. ``n=40 α=0.9 zipf``."""
        extra = f" r={self.ratio:g}" if self.importance == "geometric" else ""
        return f"n={self.n_features} α={self.alpha:g} {self.importance}{extra}"


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of the toy models: Adam, learning rate with a cosine decay to ``lr·final_lr``."""

    steps: int = 2000
    batch_size: int = 512
    lr: float = 5e-3
    final_lr: float = 0.05

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            _checks.count(getattr(self, name), name, minimum=1)
        _checks.number(self.lr, "lr", low=0.0, low_open=True)
        _checks.number(self.final_lr, "final_lr", low=0.0, high=1.0)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        frac = step / max(self.steps - 1, 1)
        return self.lr * (self.final_lr + (1.0 - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * frac)))


class ModelSpec(NamedTuple):
    """One model to train: its task, hidden width, seeds, and its teacher (``None``: the task).

    ``teacher`` indexes the ``teachers`` models given to :func:`train_toy_models`; the student then
    learns to reproduce that teacher's output on the same data stream.
    """

    task: ToyTask
    width: int
    init_seed: int
    data_seed: int
    teacher: int | None = None


@dataclass
class ToyModels:
    """Trained toy models, padded to one width: ``W`` [M, D, n] (rows ≥ a model's width are zero), ``b`` [M, n]."""

    W: Tensor
    b: Tensor
    widths: tuple[int, ...]

    def __len__(self) -> int:
        return self.W.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """x̂ = ReLU(Wᵀ W x + b) of every model on shared inputs x [B, n] → [M, B, n]."""
        return _forward(self.W, self.b, x)

    def feature_norms(self) -> NDArray[np.float64]:
        """‖W_i‖² of every model's feature columns, [M, n]."""
        return self.W.detach().pow(2).sum(1).double().numpy()

    def kept_features(self, threshold: float = KEPT_THRESHOLD) -> NDArray[np.bool_]:
        """Which features each model represents (‖W_i‖² > threshold), [M, n]."""
        return self.feature_norms() > threshold

    def select(self, index: Sequence[int]) -> ToyModels:
        """The models at ``index``, in that order."""
        idx = torch.as_tensor(list(index), dtype=torch.int64)
        return ToyModels(self.W[idx], self.b[idx], tuple(self.widths[i] for i in idx.tolist()))


def _forward(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """ReLU(Wᵀ W x + b) for W [..., K, D, n], b [..., K, n] and x [..., B, n] (broadcast over K)."""
    h = torch.matmul(x.unsqueeze(-3), W.transpose(-1, -2))  # [..., K, B, D]
    return torch.matmul(h, W).add_(b.unsqueeze(-2)).relu_()


def _grads(W: Tensor, b: Tensor, x: Tensor, y: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the importance-weighted MSE of models W [G, K, D, n], b [G, K, n] on inputs
    x [G, B, n] against targets y [G, B, n] (both shared by the K models of a group).

    ``weight`` is 2·I/B, and with δ = weight ⊙ (x̂ − y) ⊙ 1[x̂ > 0] (per model and sample):
    ∂b = Σ_b δ;  ∂W = hᵀδ (decoder use of W) + (δWᵀ)ᵀx (encoder use of W).
    """
    G, K, D, n = W.shape
    # h = W x for every model, as one product per group (x is not copied K times)
    h = torch.bmm(x, W.reshape(G, K * D, n).transpose(1, 2)).view(G, -1, K, D).transpose(1, 2)  # [G, K, B, D]
    out = torch.matmul(h, W).add_(b.unsqueeze(-2)).relu_()  # [G, K, B, n]
    delta = torch.ops.aten.threshold_backward((out - y.unsqueeze(1)).mul_(weight), out, 0.0)
    grad_W = torch.matmul(h.transpose(-1, -2), delta)
    grad_h = torch.matmul(delta, W.transpose(-1, -2))  # [G, K, B, D]
    grad_W.add_(torch.bmm(grad_h.permute(0, 1, 3, 2).reshape(G, K * D, -1), x).view(G, K, D, n))
    return grad_W, delta.sum(-2)


def _xavier(width: int, n: int, max_width: int, seed: int) -> Tensor:
    """W of one model: N(0, 2/(d+n)) in its first ``width`` rows (from its own seed), zeros below."""
    W = torch.zeros(max_width, n)
    g = torch.Generator().manual_seed(seed)
    W[:width] = torch.randn(width, n, generator=g) * math.sqrt(2.0 / (width + n))
    return W


class _Block:
    """Groups of models with the same shape, stepped together.

    A group is the models sharing one data stream (same task, data seed and teacher). Groups of
    one task with the same number of models, padded width and teacher width form a block whose
    parameters are single tensors W [G, K, D, n] and b [G, K, n]; each group keeps its own
    generator, so its samples do not depend on the other groups.
    """

    def __init__(self, groups: list[list[int]], specs: Sequence[ModelSpec], teachers: ToyModels | None):
        first = specs[groups[0][0]]
        self.groups, self.task = groups, first.task
        n = self.task.n_features
        width = max(specs[m].width for g in groups for m in g)
        self.W = torch.stack(
            [torch.stack([_xavier(specs[m].width, n, width, specs[m].init_seed) for m in g]) for g in groups]
        )
        # A narrower model's padding rows are zero, so their gradients are exactly zero: they stay zero.
        self.b = torch.zeros(len(groups), len(groups[0]), n)
        self.generators = [torch.Generator().manual_seed(specs[g[0]].data_seed) for g in groups]
        self.teacher_W: Tensor | None = None
        self.teacher_b: Tensor | None = None
        if first.teacher is not None:
            assert teachers is not None  # _blocks checked it
            index = torch.tensor([specs[g[0]].teacher for g in groups])
            self.teacher_W = teachers.W[index].detach().unsqueeze(1)  # [G, 1, D_T, n]
            self.teacher_b = teachers.b[index].detach().unsqueeze(1)

    @property
    def members(self) -> list[int]:
        return [m for g in self.groups for m in g]

    def set_grads(self, batch_size: int, weight: Tensor) -> None:
        """Draw each group's batch and set the gradients of every model's loss on it."""
        x = torch.stack([self.task.sample(batch_size, g) for g in self.generators])
        if self.teacher_W is None or self.teacher_b is None:
            y = x
        else:
            with torch.no_grad():
                y = _forward(self.teacher_W, self.teacher_b, x)[:, 0]
        grad_W, grad_b = _grads(self.W, self.b, x, y, weight)
        self.W.grad = grad_W
        self.b.grad = grad_b


def _blocks(specs: Sequence[ModelSpec], teachers: ToyModels | None) -> list[_Block]:
    """Partition the specs into groups by (task, data seed, teacher), and the groups into blocks."""
    groups: dict[tuple[ToyTask, int, int | None], list[int]] = {}
    for i, s in enumerate(specs):
        if s.teacher is not None:
            if teachers is None:
                raise ValueError("a student names a teacher but no teachers were given")
            if not 0 <= s.teacher < len(teachers):
                raise ValueError(f"teacher index {s.teacher} is outside the {len(teachers)} teachers given")
        groups.setdefault((s.task, s.data_seed, s.teacher), []).append(i)
    blocks: dict[tuple[ToyTask, int, int, int | None], list[list[int]]] = {}
    for (task, _, teacher), members in groups.items():
        shape = (
            task,
            len(members),
            max(specs[m].width for m in members),
            None if teacher is None or teachers is None else teachers.widths[teacher],
        )
        blocks.setdefault(shape, []).append(members)
    return [_Block(g, specs, teachers) for g in blocks.values()]


def _check_specs(specs: Sequence[ModelSpec]) -> int:
    if not specs:
        raise ValueError("no models to train")
    ns = {s.task.n_features for s in specs}
    if len(ns) != 1:
        raise ValueError(f"models trained together must share n_features; got {sorted(ns)}")
    for s in specs:
        if int(s.width) != s.width or s.width < 1:
            raise ValueError(f"model width must be a positive integer; got {s.width!r}")
    return ns.pop()


def train_toy_models(
    specs: Sequence[ModelSpec],
    settings: TrainSettings = TrainSettings(),
    *,
    teachers: ToyModels | None = None,
    on_step: Callable[[int], None] | None = None,
) -> ToyModels:
    """Train every model of ``specs`` at once (all must share n); returns them in ``specs`` order.

    A model trained on the task (``teacher=None``) minimises Σ_i I_i (x̂_i − x_i)²; a student
    minimises Σ_i I_i (x̂_i − x̂_T,i)² against its teacher's output on fresh samples of the same
    distribution each step. Initial weights come from each model's ``init_seed`` alone and the data
    from its ``data_seed``, so the result does not depend on which other models share the batch.
    ``on_step(step)`` is called after every optimisation step.
    """
    n = _check_specs(specs)
    blocks = _blocks(specs, teachers)
    opt = torch.optim.Adam([p for blk in blocks for p in (blk.W, blk.b)], lr=settings.lr, foreach=True)
    weight = {
        blk.task: torch.as_tensor(2.0 * blk.task.importances / settings.batch_size, dtype=torch.float32)
        for blk in blocks
    }
    for step in range(settings.steps):
        for pg in opt.param_groups:
            pg["lr"] = settings.lr_at(step)
        for blk in blocks:
            blk.set_grads(settings.batch_size, weight[blk.task])
        opt.step()
        if on_step is not None:
            on_step(step)
    width = max(s.width for s in specs)
    W = torch.zeros(len(specs), width, n)
    b = torch.zeros(len(specs), n)
    for blk in blocks:
        idx = torch.tensor(blk.members)
        W[idx, : blk.W.shape[2]] = blk.W.detach().reshape(-1, *blk.W.shape[2:])
        b[idx] = blk.b.detach().reshape(-1, n)
    return ToyModels(W, b, tuple(int(s.width) for s in specs))


class ToyLosses(NamedTuple):
    """Losses of models on a fixed evaluation set (float64 arrays [M]).

    ``task``: E Σ I_i (x̂_i − x_i)². ``distill``: E Σ I_i (x̂_i − x̂_T,i)² against the model's
    teacher (NaN without one). ``teacher_task``: the teacher's own task loss on the same samples
    (NaN without one).
    """

    task: NDArray[np.float64]
    distill: NDArray[np.float64]
    teacher_task: NDArray[np.float64]


def evaluate_losses(
    models: ToyModels,
    tasks: Sequence[ToyTask],
    *,
    teachers: ToyModels | None = None,
    teacher_index: Sequence[int | None] | None = None,
    n_samples: int = 32768,
    seed: int = 0,
    chunk: int = 4096,
) -> ToyLosses:
    """Task and distillation losses of each model on ``n_samples`` draws of its task.

    Models of the same task are evaluated on the same samples (drawn from ``seed`` and the task),
    so their losses can be compared pairwise. ``teacher_index[m]`` names model m's teacher in
    ``teachers`` (``None``: no distillation loss).
    """
    m_total = len(models)
    if len(tasks) != m_total:
        raise ValueError(f"got {len(tasks)} tasks for {m_total} models")
    tindex: list[int | None] = list(teacher_index) if teacher_index is not None else [None] * m_total
    task_loss = np.zeros(m_total)
    distill = np.full(m_total, np.nan)
    teacher_task = np.full(m_total, np.nan)
    by_task: dict[ToyTask, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    with torch.no_grad():
        for task, idx in by_task.items():
            g = torch.Generator().manual_seed(stable_seed("eval", seed, task))
            imp = torch.as_tensor(task.importances)
            sel = models.select(idx)
            taught = {j: ti for j, i in enumerate(idx) if (ti := tindex[i]) is not None}
            with_t = list(taught)
            # each teacher runs once per chunk, however many of these models it taught
            used = sorted(set(taught.values()))
            if with_t and teachers is None:
                raise ValueError("models name teachers but no teachers were given")
            t_models = teachers.select(used) if with_t and teachers is not None else None
            of_model = [used.index(taught[j]) for j in with_t]
            sums = torch.zeros(3, len(idx), dtype=torch.float64)
            done = 0
            while done < n_samples:
                x = task.sample(min(chunk, n_samples - done), g)
                out = sel.forward(x)
                sums[0] += _weighted_sq(out - x, imp)
                if t_models is not None:
                    t_out = t_models.forward(x)
                    sums[1, with_t] += _weighted_sq(out[with_t] - t_out[of_model], imp)
                    sums[2, with_t] += _weighted_sq(t_out - x, imp)[of_model]
                done += x.shape[0]
            sums /= n_samples
            task_loss[idx] = sums[0].numpy()
            for j in with_t:
                distill[idx[j]] = float(sums[1, j])
                teacher_task[idx[j]] = float(sums[2, j])
    return ToyLosses(task_loss, distill, teacher_task)


def _weighted_sq(err: Tensor, importances: Tensor) -> Tensor:
    """Σ_b Σ_i I_i err_bi² per model of err [K, B, n], in float64."""
    return (err.double().square() * importances).sum((1, 2))


def output_variance(
    models: ToyModels, task: ToyTask, *, n_samples: int = 32768, seed: int = 0, chunk: int = 4096
) -> NDArray[np.float64]:
    """Var(x̂_i) of every model's outputs over ``n_samples`` draws of ``task`` (float64 [M, n]).

    I_i · Var(x̂_T,i) is what a student loses on feature i of its teacher's output when it gives the
    feature up and outputs the best constant instead; summed over i it is the distillation loss
    of a width-0 student (x̂ = ReLU(b)).
    """
    g = torch.Generator().manual_seed(stable_seed("variance", seed, task))
    s1 = torch.zeros(len(models), task.n_features, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    done = 0
    with torch.no_grad():
        while done < n_samples:
            out = models.forward(task.sample(min(chunk, n_samples - done), g)).double()
            s1 += out.sum(1)
            s2 += out.square().sum(1)
            done += out.shape[1]
    mean = s1 / n_samples
    return (s2 / n_samples - mean.square()).clamp_min(0.0).numpy()
