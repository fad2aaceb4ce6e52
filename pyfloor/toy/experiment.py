"""The toy-model experiment: configurations, settings, and running them in units and processes.

For each configuration (n features, teacher width d_T, sparsity α, importance profile) and seed:

1. train a teacher of width d_T on the task, and task models of every width 1 … d_T;
2. distil students of every width d_S = 1 … d_T from the teacher (fresh samples each step);
3. evaluate every student on a fixed sample: (a) the distillation loss against the teacher's
   output, (b) the excess task loss over the teacher's own, (c) the raw task loss, and which
   features it represents (‖W_i‖² > 0.5);
4. measure the first seed's teacher with a sweep of SAEs (:func:`pyfloor.toy.measure_teacher`).

The predictors (:mod:`pyfloor.toy.predictors`) and the report (:mod:`pyfloor.toy.report`) take the
:class:`ConfigResult` objects :func:`run_experiment` returns.

The work comes in *units*, one per task (n, α, importance profile): a unit trains the task models and
teachers of every configuration of that task, then their students, then measures the teachers.
Units are independent and seeded from their own identity (:func:`pyfloor.toy.stable_seed`), so they
can run in parallel processes: the same configurations give bit-identical numbers with any number of
workers. A configuration alone and inside a grid agrees to float32 rounding only, since its models
are then batched in blocks of other shapes (whose matmuls may round differently).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from queue import Empty
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from .. import _checks, theory
from .models import (
    ImportanceProfile,
    ModelSpec,
    ToyModels,
    ToyTask,
    TrainSettings,
    evaluate_losses,
    output_variance,
    stable_seed,
    train_toy_models,
)
from .sweep import SAESettings, TeacherMeasurement, measure_teacher

__all__ = [
    "ToyConfig",
    "ExperimentSettings",
    "PAPER_GRID",
    "SMALL_GRID",
    "grid",
    "StudentLosses",
    "TeacherFacts",
    "ConfigResult",
    "run_experiment",
    "total_steps",
]


@dataclass(frozen=True)
class ToyConfig:
    """One configuration of the grid: n features of sparsity α, a teacher of width d_T."""

    n_features: int
    d_teacher: int
    alpha: float
    importance: ImportanceProfile = "zipf"
    ratio: float = 0.9

    def __post_init__(self) -> None:
        _ = self.task  # validates n, α and the profile
        _checks.count(self.d_teacher, "d_teacher", minimum=1)

    @property
    def task(self) -> ToyTask:
        return ToyTask(self.n_features, self.alpha, self.importance, self.ratio)

    @property
    def widths(self) -> tuple[int, ...]:
        """Student widths d_S = 1 … d_T."""
        return tuple(range(1, self.d_teacher + 1))

    @property
    def critical_width(self) -> float:
        """d* = n / g(α) with the true n and α."""
        return theory.critical_width(self.n_features, self.alpha)

    def label(self) -> str:
        extra = f" r={self.ratio:g}" if self.importance == "geometric" else ""
        return f"n={self.n_features} d_T={self.d_teacher} α={self.alpha:g} {self.importance}{extra}"


def grid(
    n_features: Sequence[int],
    d_teacher: Sequence[int],
    alphas: Sequence[float],
    importance: ImportanceProfile = "zipf",
    ratio: float = 0.9,
) -> list[ToyConfig]:
    """Every combination, ordered by n, then α, then d_T."""
    return [ToyConfig(n, d, a, importance, ratio) for n in n_features for a in alphas for d in d_teacher]


#: The paper's 48 configurations.
PAPER_GRID: tuple[ToyConfig, ...] = tuple(grid((10, 20, 40), (3, 5, 8, 10), (0.8, 0.9, 0.95, 0.99)))
#: A quick grid (8 configurations) with two sparsities, enough for the fitted predictors.
SMALL_GRID: tuple[ToyConfig, ...] = tuple(grid((10, 20), (3, 5), (0.8, 0.99)))


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything besides the configurations that decides the numbers (all of it goes in the report)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainSettings | None = None  # None → its defaults
    sae: SAESettings | None = None  # None → no SAE measurement
    eval_samples: int = 32768
    workers: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one; got {self.seeds!r}")
        for name in ("eval_samples", "workers", "threads"):
            _checks.count(getattr(self, name), name, minimum=1)

    @property
    def train_settings(self) -> TrainSettings:
        return self.train if self.train is not None else TrainSettings()

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "train": asdict(self.train_settings),
            "sae": None if self.sae is None else asdict(self.sae),
            "eval_samples": self.eval_samples,
            "workers": self.workers,
            "threads": self.threads,
        }


class StudentLosses(NamedTuple):
    """Observed losses of students, float64 [seeds, widths]: (a) distill, (b) excess, (c) task."""

    distill: NDArray[np.float64]
    excess: NDArray[np.float64]
    task: NDArray[np.float64]


class TeacherFacts(NamedTuple):
    """What one teacher is, measured in the true feature basis (known only in the toy)."""

    task_loss: float
    represented: NDArray[np.int64]  # features with ‖W_T,i‖² > 0.5
    output_weights: NDArray[np.float64]  # I_i · Var(x̂_T,i), [n]

    @property
    def width0_loss(self) -> float:
        """Distillation loss of a width-0 student (best constant output): Σ_i I_i · Var(x̂_T,i)."""
        return float(self.output_weights.sum())

    def represented_weights(self) -> NDArray[np.float64]:
        """I_i · Var(x̂_T,i) of the represented features, sorted descending."""
        weights: NDArray[np.float64] = np.sort(self.output_weights[self.represented])[::-1].copy()
        return weights


@dataclass
class ConfigResult:
    """Everything observed for one configuration, over its seeds."""

    config: ToyConfig
    seeds: tuple[int, ...]
    distilled: StudentLosses
    task_trained: StudentLosses
    distilled_kept: NDArray[np.bool_]  # [seeds, widths, n]
    task_kept: NDArray[np.bool_]  # [seeds, widths, n]
    teachers: list[TeacherFacts]
    sae: TeacherMeasurement | None = None  # of the first seed's teacher
    seconds: float = 0.0


# -- running -----------------------------------------------------------------------------------
def _unit_steps(configs: Sequence[ToyConfig], settings: ExperimentSettings) -> int:
    """Optimisation steps of one unit (for the progress bar): two training phases and the SAEs."""
    per_sae = 0 if settings.sae is None else settings.sae.total_steps
    return settings.train_settings.steps * 2 + per_sae * len(configs)


class _UnitModels(NamedTuple):
    """The specs of one unit's two training phases and where each model sits in them."""

    phase1: list[ModelSpec]  # teachers first, then task models
    teacher_of: dict[tuple[ToyConfig, int], int]  # (config, seed) → index of the teacher in phase1
    task_of: dict[tuple[int, int], int]  # (width, seed) → index of the task model in phase1
    students: list[ModelSpec]  # the distilled students, config by config, seed by seed, width by width


def _unit_models(configs: Sequence[ToyConfig], seeds: Sequence[int]) -> _UnitModels:
    """Teachers and task models share one data stream per seed; each teacher's students share one."""
    task = configs[0].task
    phase1 = [
        ModelSpec(task, c.d_teacher, stable_seed("teacher", c, s), stable_seed("task-data", task, s))
        for c in configs
        for s in seeds
    ]
    teacher_of = {(c, s): i for i, (c, s) in enumerate((c, s) for c in configs for s in seeds)}
    task_of: dict[tuple[int, int], int] = {}
    for s in seeds:
        for d in range(1, max(c.d_teacher for c in configs) + 1):
            task_of[(d, s)] = len(phase1)
            phase1.append(ModelSpec(task, d, stable_seed("task-model", task, d, s), stable_seed("task-data", task, s)))
    students = [
        ModelSpec(
            task, d, stable_seed("student", c, d, s), stable_seed("distill-data", c, s), teacher=teacher_of[(c, s)]
        )
        for c in configs
        for s in seeds
        for d in c.widths
    ]
    return _UnitModels(phase1, teacher_of, task_of, students)


def _run_unit(
    configs: Sequence[ToyConfig],
    settings: ExperimentSettings,
    on_step: Callable[[int], None] | None,
    sweeps: _SweepRunner | None = None,
) -> list[ConfigResult]:
    """Train, evaluate and measure every configuration of one task (all share n, α and the profile).

    With ``sweeps``, the SAE sweeps of the teachers run there (in other processes) while this one
    distils the students; the numbers are the same either way.
    """
    start = time.perf_counter()
    task, seeds, train = configs[0].task, settings.seeds, settings.train_settings
    plan = _unit_models(configs, seeds)
    phase1 = train_toy_models(plan.phase1, train, on_step=on_step)
    teachers = phase1.select(range(len(plan.teacher_of)))
    sae = settings.sae
    jobs = [] if sae is None else [_sweep_job(c, teachers, plan, sae, seeds[0]) for c in configs]
    pending = None if sweeps is None else [sweeps.submit(job) for job in jobs]
    distilled = train_toy_models(plan.students, train, teachers=teachers, on_step=on_step)
    task_trained = phase1.select([plan.task_of[(d, s)] for c in configs for s in seeds for d in c.widths])
    # every model of the task is evaluated on the same samples; students against their teachers
    eval_seed = stable_seed("eval", task)
    tasks, teacher_index = [task] * len(plan.students), [s.teacher for s in plan.students]
    losses = tuple(
        evaluate_losses(
            models,
            tasks,
            teachers=teachers,
            teacher_index=teacher_index,
            n_samples=settings.eval_samples,
            seed=eval_seed,
        )
        for models in (distilled, task_trained)
    )
    kept = (distilled.kept_features(), task_trained.kept_features())
    teacher_loss = evaluate_losses(
        teachers, [task] * len(teachers), n_samples=settings.eval_samples, seed=eval_seed
    ).task
    weights = output_variance(teachers, task, n_samples=settings.eval_samples, seed=eval_seed) * task.importances
    teacher_kept = teachers.kept_features()
    results, offset = [], 0
    for c in configs:
        rows = slice(offset, offset + len(seeds) * len(c.widths))
        offset = rows.stop
        shape = (len(seeds), len(c.widths))
        observed = [
            StudentLosses(
                ev.distill[rows].reshape(shape),
                (ev.task - ev.teacher_task)[rows].reshape(shape),
                ev.task[rows].reshape(shape),
            )
            for ev in losses
        ]
        facts = [
            TeacherFacts(float(teacher_loss[i]), np.flatnonzero(teacher_kept[i]).astype(np.int64), weights[i].copy())
            for i in (plan.teacher_of[(c, s)] for s in seeds)
        ]
        results.append(
            ConfigResult(
                c,
                tuple(seeds),
                observed[0],
                observed[1],
                kept[0][rows].reshape(*shape, -1),
                kept[1][rows].reshape(*shape, -1),
                facts,
            )
        )
    training_seconds = (time.perf_counter() - start) / len(results)
    measured = (
        [_run_sweep(job, on_step) for job in jobs] if sweeps is None else [sweeps.result(h) for h in pending or ()]
    )
    for i, r in enumerate(results):
        r.sae, seconds = measured[i] if measured else (None, 0.0)
        r.seconds = training_seconds + seconds
    return results


class _SweepJob(NamedTuple):
    """The SAE sweep of one configuration's first-seed teacher: everything it needs, picklable."""

    W: Tensor  # [d_T, n], the teacher's unpadded weights
    task: ToyTask
    sae: SAESettings
    seed: int


def _sweep_job(c: ToyConfig, teachers: ToyModels, plan: _UnitModels, sae: SAESettings, seed: int) -> _SweepJob:
    W = teachers.W[plan.teacher_of[(c, seed)], : c.d_teacher].detach().clone()
    return _SweepJob(W, c.task, sae, stable_seed("sae", c, seed))


def _run_sweep(job: _SweepJob, on_step: Callable[[int], None] | None) -> tuple[TeacherMeasurement, float]:
    """The teacher's measurement and the seconds it took."""
    start = time.perf_counter()
    measurement = measure_teacher(job.W, job.task, job.sae, seed=job.seed, on_step=on_step)
    return measurement, time.perf_counter() - start


class _SweepRunner:
    """Processes that run SAE sweeps while the caller trains, forked before it does any torch work.

    The workers report finished steps through a queue; :meth:`drain` passes them on to ``progress``.
    """

    def __init__(self, processes: int, threads: int, progress: Callable[[int], None] | None) -> None:
        ctx = mp.get_context("fork")
        self._queue = ctx.Queue()
        self._progress = progress
        self._pool = ctx.Pool(processes, initializer=_init_sweep_worker, initargs=(threads, self._queue))

    def submit(self, job: _SweepJob) -> Any:
        """Start ``job``; :meth:`result` of the returned handle waits for (measurement, seconds)."""
        return self._pool.apply_async(_sweep_worker, (job,))

    def result(self, handle: Any) -> tuple[TeacherMeasurement, float]:
        """Wait for ``handle``'s sweep, passing progress on meanwhile."""
        while not handle.ready():
            handle.wait(0.2)
            self.drain()
        self.drain()
        result: tuple[TeacherMeasurement, float] = handle.get()
        return result

    def drain(self) -> None:
        _drain(self._queue, self._progress)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()
        self.drain()


_worker_queue: Any = None  # the queue a sweep worker process reports its steps to


def _init_sweep_worker(threads: int, queue: Any) -> None:
    global _worker_queue
    torch.set_num_threads(threads)
    _worker_queue = queue


def _sweep_worker(job: _SweepJob) -> tuple[TeacherMeasurement, float]:
    steps = _QueuedSteps(_worker_queue)
    try:
        return _run_sweep(job, steps)
    finally:
        steps.flush()


class _QueuedSteps:
    """An ``on_step`` callback that reports finished steps to a parent process through ``queue``, 25 at a time."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.pending = queue, 0

    def __call__(self, _: int) -> None:
        self.pending += 1
        if self.pending == 25:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.queue.put(self.pending)
            self.pending = 0


def _units(configs: Sequence[ToyConfig]) -> list[list[ToyConfig]]:
    units: dict[ToyTask, list[ToyConfig]] = {}
    for c in configs:
        units.setdefault(c.task, []).append(c)
    return list(units.values())


def _worker(configs: list[ToyConfig], settings: ExperimentSettings, queue: Any) -> list[ConfigResult]:
    """Run one unit in a worker process, reporting progress through ``queue``."""
    torch.set_num_threads(settings.threads)
    steps = _QueuedSteps(queue)
    try:
        return _run_unit(configs, settings, steps)
    finally:
        steps.flush()


def run_experiment(
    configs: Sequence[ToyConfig],
    settings: ExperimentSettings = ExperimentSettings(),
    *,
    progress: Callable[[int], None] | None = None,
) -> list[ConfigResult]:
    """Run every configuration; results come back in the order of ``configs``.

    ``progress(k)`` is called as k more optimisation steps finish (see :func:`total_steps`).
    With ``settings.workers > 1`` units run in that many processes (each with
    ``settings.threads`` torch threads), or, for a single unit, its SAE sweeps run in worker
    processes while the main one distils the students; the numbers do not depend on the number of
    workers.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("no configurations to run")
    if len(set(configs)) != len(configs):
        raise ValueError("configurations must be distinct")
    units = _units(configs)
    done: dict[ToyConfig, ConfigResult] = {}
    if settings.workers == 1 or len(units) == 1:
        # one unit on several workers: its SAE sweeps run beside the distillation of its students
        helpers = min(settings.workers - 1, len(configs)) if settings.sae is not None else 0
        sweeps = _SweepRunner(helpers, settings.threads, progress) if helpers > 0 else None
        previous = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        try:
            step = None if progress is None else _MainSteps(progress, sweeps)
            for unit in units:
                for r in _run_unit(unit, settings, step, sweeps):
                    done[r.config] = r
        finally:
            torch.set_num_threads(previous)
            if sweeps is not None:
                sweeps.close()
    else:
        done = _run_parallel(units, settings, progress)
    return [done[c] for c in configs]


class _MainSteps:
    """The main process's ``on_step``: one step to ``progress``, and every 25 the sweep workers' steps too."""

    def __init__(self, progress: Callable[[int], None], sweeps: _SweepRunner | None) -> None:
        self.progress, self.sweeps, self.count = progress, sweeps, 0

    def __call__(self, _: int) -> None:
        self.progress(1)
        self.count += 1
        if self.sweeps is not None and self.count % 25 == 0:
            self.sweeps.drain()


def _run_parallel(
    units: list[list[ToyConfig]], settings: ExperimentSettings, progress: Callable[[int], None] | None
) -> dict[ToyConfig, ConfigResult]:
    # fork: the workers need no re-import of the caller's main module (``python -m pyfloor`` has no
    # __main__ guard), and the parent has run no torch work yet that a fork could inherit half-done
    ctx = mp.get_context("fork")
    done: dict[ToyConfig, ConfigResult] = {}
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(max_workers=settings.workers, mp_context=ctx) as pool:
            # the largest units first, so that the pool's tail is short
            order = sorted(units, key=lambda u: -(u[0].n_features * sum(c.d_teacher for c in u)))
            pending = {pool.submit(_worker, u, settings, q) for u in order}
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(q, progress)
                for f in finished:
                    for r in f.result():
                        done[r.config] = r
            _drain(q, progress)
    return done


def _drain(q: Any, progress: Callable[[int], None] | None) -> None:
    """Pass every step count waiting on ``q`` to ``progress``."""
    while True:
        try:
            k = q.get_nowait()
        except Empty:
            return
        if progress is not None and k:
            progress(k)


def total_steps(configs: Sequence[ToyConfig], settings: ExperimentSettings) -> int:
    """Optimisation steps :func:`run_experiment` will take (the length of its progress bar)."""
    return sum(_unit_steps(u, settings) for u in _units(list(configs)))
