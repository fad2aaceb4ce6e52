"""The toy-model experiment end to end: teachers, distilled students, SAE measurement, predictors.

For each configuration (n features, teacher width d_T, sparsity α, importance profile) and seed:

1. train a teacher of width d_T on the task, and task models of every width 1 … d_T;
2. distil students of every width d_S = 1 … d_T from the teacher (fresh samples each step);
3. evaluate every student on a fixed sample: (a) the distillation loss against the teacher's
   output, (b) the excess task loss over the teacher's own, (c) the raw task loss, and which
   features it represents (‖W_i‖² > 0.5);
4. measure the first seed's teacher with a sweep of SAEs (:func:`pyfloor.toy.measure_teacher`);
5. predict the floor at every width with each predictor of :data:`PREDICTORS` and score it.

The work comes in *units*, one per task (n, α, importance profile): a unit trains the task models and
teachers of every configuration of that task, then their students, then measures the teachers.
Units are independent and seeded from their own identity (:func:`pyfloor.toy.stable_seed`), so they
can run in parallel processes and a configuration gives the same numbers alone or in a grid.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray

from . import scoring, theory
from ._io import json_ready
from ._version import __version__

__all__ = [
    "ToyConfig",
    "ExperimentSettings",
    "PAPER_GRID",
    "SMALL_GRID",
    "grid",
    "StudentLosses",
    "TeacherFacts",
    "ConfigResult",
    "PREDICTORS",
    "TARGETS",
    "run_experiment",
    "predict_floors",
    "fit_budget_law",
    "build_report",
    "total_steps",
]

#: What the predictors are scored against (the observed losses of the distilled students).
TARGETS: dict[str, str] = {
    "distill": "(a) distillation loss against the teacher's output",
    "excess": "(b) excess task loss over the teacher's own",
    "task": "(c) raw task loss",
}

#: The floor predictors, in the order reports show them, with what each one uses.
PREDICTORS: dict[str, str] = {
    "eq2": "Eq. 2 with the true inputs: F = n, α, w_i = I_i·(1−α)/3, budget ⌊d·g(α)⌋",
    "eq2_sae": (
        "Eq. 2 with the SAE measurement of the teacher (ReLU+L1, penalty by the FVU rule): F̂, α̂ and "
        "E[z²] rescaled to sum to the width-0 distillation loss Σ_i I_i·Var(x̂_T,i)"
    ),
    "eq2_teacher": (
        "Eq. 2 over the features the teacher represents (‖W_T,i‖² > 0.5), each weighted by what the "
        "teacher's output carries of it, I_i·Var(x̂_T,i); budget ⌊d·g(α)⌋"
    ),
    "teacher_density": (
        "as eq2_teacher, but the student keeps features as densely as the teacher did: "
        "budget ⌊d·F_T/d_T⌋ (no fit, no student seen)"
    ),
    "packing_loco": (
        "as eq2_teacher with the packing law ĝ = a·g(α)^b fitted on the other configurations' "
        "distillation losses (leave one configuration out, same importance profile)"
    ),
    "width_packing_loco": (
        "as eq2_teacher with a width-aware packing law: the student keeps k = a·d^c·g(α)^b features "
        "(continuous k: the partly kept feature counts pro rata), (a, b, c) fitted by least squares on "
        "the other configurations' effective budgets (leave one configuration out, same importance profile)"
    ),
    "calibrated_loco": (
        "affine calibration C·eq2 + B fitted on the other configurations' distillation losses "
        "(leave one configuration out, same importance profile)"
    ),
}


@dataclass(frozen=True)
class ToyConfig:
    """One configuration of the grid: n features of sparsity α, a teacher of width d_T."""

    n_features: int
    d_teacher: int
    alpha: float
    importance: str = "zipf"
    ratio: float = 0.9

    def __post_init__(self) -> None:
        self.task  # validates n, α and the profile
        if int(self.d_teacher) != self.d_teacher or self.d_teacher < 1:
            raise ValueError(f"d_teacher must be a positive integer; got {self.d_teacher!r}")

    @property
    def task(self):
        from .toy import ToyTask

        return ToyTask(self.n_features, self.alpha, self.importance, self.ratio)  # type: ignore[arg-type]

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
    importance: str = "zipf",
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
    train: Any = None  # pyfloor.toy.TrainSettings; None → its defaults
    sae: Any = None  # pyfloor.toy.SAESettings; None → no SAE measurement
    eval_samples: int = 32768
    workers: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one; got {self.seeds!r}")
        for name in ("eval_samples", "workers", "threads"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")

    @property
    def train_settings(self):
        from .toy import TrainSettings

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
        return np.sort(self.output_weights[self.represented])[::-1].copy()


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
    sae: Any = None  # pyfloor.toy.TeacherMeasurement of the first seed's teacher
    seconds: float = 0.0


# -- running -----------------------------------------------------------------------------------
def _unit_steps(configs: Sequence[ToyConfig], settings: ExperimentSettings) -> int:
    """Optimisation steps of one unit (for the progress bar): two training phases and the SAEs."""
    per_sae = 0 if settings.sae is None else settings.sae.total_steps
    return settings.train_settings.steps * 2 + per_sae * len(configs)


class _UnitModels(NamedTuple):
    """The specs of one unit's two training phases and where each model sits in them."""

    phase1: list  # ModelSpec: teachers first, then task models
    teacher_of: dict  # (config, seed) → index of the teacher in phase1
    task_of: dict  # (width, seed) → index of the task model in phase1
    students: list  # ModelSpec of the distilled students, config by config, seed by seed, width by width


def _unit_models(configs: Sequence[ToyConfig], seeds: Sequence[int]) -> _UnitModels:
    """Teachers and task models share one data stream per seed; each teacher's students share one."""
    from .toy import ModelSpec, stable_seed

    task = configs[0].task
    phase1 = [
        ModelSpec(task, c.d_teacher, stable_seed("teacher", c, s), stable_seed("task-data", task, s))
        for c in configs
        for s in seeds
    ]
    teacher_of = {(c, s): i for i, (c, s) in enumerate((c, s) for c in configs for s in seeds)}
    task_of = {}
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
    sweeps: "_SweepRunner | None" = None,
) -> list[ConfigResult]:
    """Train, evaluate and measure every configuration of one task (all share n, α and the profile).

    With ``sweeps``, the SAE sweeps of the teachers run there (in other processes) while this one
    distils the students; the numbers are the same either way.
    """
    from .toy import evaluate_losses, output_variance, stable_seed, train_toy_models

    start = time.perf_counter()
    task, seeds, train = configs[0].task, settings.seeds, settings.train_settings
    plan = _unit_models(configs, seeds)
    phase1 = train_toy_models(plan.phase1, train, on_step=on_step)
    teachers = phase1.select(range(len(plan.teacher_of)))
    jobs = [_sweep_job(c, teachers, plan, settings) for c in configs] if settings.sae is not None else []
    pending = None if sweeps is None else [sweeps.submit(job) for job in jobs]
    distilled = train_toy_models(plan.students, train, teachers=teachers, on_step=on_step)
    task_trained = phase1.select([plan.task_of[(d, s)] for c in configs for s in seeds for d in c.widths])
    # every model of the task is evaluated on the same samples; students against their teachers
    evaluate = dict(
        tasks=[task] * len(plan.students),
        teachers=teachers,
        teacher_index=[s.teacher for s in plan.students],
        n_samples=settings.eval_samples,
        seed=stable_seed("eval", task),
    )
    losses = (evaluate_losses(distilled, **evaluate), evaluate_losses(task_trained, **evaluate))
    kept = (distilled.kept_features(), task_trained.kept_features())
    teacher_loss = evaluate_losses(
        teachers, [task] * len(teachers), n_samples=settings.eval_samples, seed=evaluate["seed"]
    ).task
    weights = output_variance(teachers, task, n_samples=settings.eval_samples, seed=evaluate["seed"]) * task.importances
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
    measured = [_run_sweep(job, on_step) for job in jobs] if sweeps is None else [sweeps.result(h) for h in pending]
    for i, r in enumerate(results):
        r.sae, seconds = measured[i] if measured else (None, 0.0)
        r.seconds = training_seconds + seconds
    return results


class _SweepJob(NamedTuple):
    """The SAE sweep of one configuration's first-seed teacher: everything it needs, picklable."""

    W: Any  # Tensor [d_T, n], the teacher's unpadded weights
    task: Any  # ToyTask
    sae: Any  # SAESettings
    seed: int


def _sweep_job(c: ToyConfig, teachers, plan: _UnitModels, settings: ExperimentSettings) -> _SweepJob:
    from .toy import stable_seed

    W = teachers.W[plan.teacher_of[(c, settings.seeds[0])], : c.d_teacher].detach().clone()
    return _SweepJob(W, c.task, settings.sae, stable_seed("sae", c, settings.seeds[0]))


def _run_sweep(job: _SweepJob, on_step: Callable[[int], None] | None) -> tuple[Any, float]:
    """The teacher's measurement (pyfloor.toy.TeacherMeasurement) and the seconds it took."""
    from .toy import measure_teacher

    start = time.perf_counter()
    measurement = measure_teacher(job.W, job.task, job.sae, seed=job.seed, on_step=on_step)
    return measurement, time.perf_counter() - start


class _SweepRunner:
    """Processes that run SAE sweeps while the caller trains, forked before it does any torch work.

    The workers report finished steps through a queue; :meth:`drain` passes them on to ``progress``.
    """

    def __init__(self, processes: int, threads: int, progress: Callable[[int], None] | None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self._queue = ctx.Queue()
        self._progress = progress
        self._pool = ctx.Pool(processes, initializer=_init_sweep_worker, initargs=(threads, self._queue))

    def submit(self, job: _SweepJob) -> Any:
        """Start ``job``; :meth:`result` of the returned handle waits for (measurement, seconds)."""
        return self._pool.apply_async(_sweep_worker, (job,))

    def result(self, handle: Any) -> tuple[Any, float]:
        """Wait for ``handle``'s sweep, passing progress on meanwhile."""
        while not handle.ready():
            handle.wait(0.2)
            self.drain()
        self.drain()
        return handle.get()

    def drain(self) -> None:
        _drain(self._queue, self._progress)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()
        self.drain()


_worker_queue: Any = None  # the queue a sweep worker process reports its steps to


def _init_sweep_worker(threads: int, queue: Any) -> None:
    import torch

    global _worker_queue
    torch.set_num_threads(threads)
    _worker_queue = queue


def _sweep_worker(job: _SweepJob) -> tuple[Any, float]:
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
    units: dict[Any, list[ToyConfig]] = {}  # by task (ToyTask)
    for c in configs:
        units.setdefault(c.task, []).append(c)
    return list(units.values())


def _worker(configs: list[ToyConfig], settings: ExperimentSettings, queue) -> list[ConfigResult]:
    """Run one unit in a worker process, reporting progress through ``queue``."""
    import torch

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
        import torch

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
    units: list[list[ToyConfig]], settings: ExperimentSettings, progress
) -> dict[ToyConfig, ConfigResult]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

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
    import queue

    while True:
        try:
            k = q.get_nowait()
        except queue.Empty:
            return
        if progress is not None and k:
            progress(k)


def total_steps(configs: Sequence[ToyConfig], settings: ExperimentSettings) -> int:
    """Optimisation steps :func:`run_experiment` will take (the length of its progress bar)."""
    return sum(_unit_steps(u, settings) for u in _units(list(configs)))


# -- predicting ----------------------------------------------------------------------------------
def _sae_floor(result: ConfigResult) -> NDArray[np.float64] | None:
    """eq2_sae: Eq. 2 from the picked ReLU SAE, importances rescaled to the width-0 loss."""
    if result.sae is None or "relu" not in result.sae.measurements:
        return None
    m = result.sae.measurements["relu"]
    scale = result.teachers[0].width0_loss / m.total_importance
    floor = np.asarray(m.floor(np.asarray(result.config.widths)), dtype=np.float64) * scale
    return np.broadcast_to(floor, (len(result.seeds), len(result.config.widths))).copy()


def _teacher_floor(result: ConfigResult, budget: Callable[[TeacherFacts], NDArray[np.int64]]) -> NDArray[np.float64]:
    """Σ of the teacher's represented-feature weights beyond ``budget(teacher)``, per seed and width."""
    rows = []
    for t in result.teachers:
        tails = theory.tail_sums(t.represented_weights())
        rows.append(tails[np.minimum(budget(t), tails.size - 1)])
    return np.asarray(rows, dtype=np.float64)


def _own_predictors(result: ConfigResult) -> dict[str, NDArray[np.float64] | None]:
    """The predictors that need nothing but this configuration's teacher (or nothing at all)."""
    c = result.config
    w = np.asarray(c.widths)
    s = len(result.seeds)
    eq2 = np.asarray(theory.importance_floor(w, c.alpha, c.task.feature_weights), dtype=np.float64)
    return {
        "eq2": np.broadcast_to(eq2, (s, w.size)).copy(),
        "eq2_sae": _sae_floor(result),
        "eq2_teacher": _teacher_floor(result, lambda t: np.floor(w * theory.capacity(c.alpha)).astype(np.int64)),
        "teacher_density": _teacher_floor(
            result, lambda t: np.floor(w * t.represented.size / c.d_teacher + 1e-9).astype(np.int64)
        ),
    }


class _BudgetPoints(NamedTuple):
    """Widths, sparsities and effective budgets k of the students of one configuration, with the
    number of features each could keep (its teacher's F_T)."""

    widths: NDArray[np.float64]
    alphas: NDArray[np.float64]
    budgets: NDArray[np.float64]
    n_features: NDArray[np.float64]


def _budget_points(r: ConfigResult) -> _BudgetPoints:
    """Effective budgets (:func:`pyfloor.theory.effective_budget`) of r's distilled students,
    each against its own seed's teacher features weighted by I_i·Var(x̂_T,i)."""
    widths, budgets, n_features = [], [], []
    for si, t in enumerate(r.teachers):
        imp = t.represented_weights()
        if imp.size == 0:
            continue
        k = np.atleast_1d(theory.effective_budget(r.distilled.distill[si], imp))
        widths.append(np.asarray(r.config.widths, dtype=np.float64))
        budgets.append(k)
        n_features.append(np.full(k.size, float(imp.size)))
    w = np.concatenate(widths) if widths else np.zeros(0)
    return _BudgetPoints(w, np.full(w.size, r.config.alpha), *(np.concatenate(c) if c else np.zeros(0)
                                                               for c in (budgets, n_features)))


def fit_budget_law(points: Sequence[_BudgetPoints], *, width_aware: bool) -> theory.PackingLaw | None:
    """:func:`pyfloor.theory.fit_budget_law` over several configurations' students; None when they
    cannot determine the law (too few, one sparsity or one width only, or b ≤ 0)."""
    if not points:
        return None
    try:
        widths, alphas, budgets, n_features = (np.concatenate(col) for col in zip(*points))
        return theory.fit_budget_law(widths, alphas, budgets, n_features=n_features, width_aware=width_aware)
    except ValueError:
        return None


class LocoFits(NamedTuple):
    """The laws fitted for one configuration on all the others (None: could not be fitted)."""

    packing: theory.PackingLaw | None
    width_packing: theory.PackingLaw | None
    calibration: theory.Calibration | None

    def to_dict(self) -> dict[str, Any]:
        return {k: None if v is None else v._asdict() for k, v in self._asdict().items()}


def _loco_fits(results: Sequence[ConfigResult], eq2: Sequence[NDArray]) -> list[LocoFits]:
    """For each configuration, the laws fitted on the other configurations of its importance profile."""
    points = [_budget_points(r) for r in results]
    fits = []
    for i, r in enumerate(results):
        others = [
            j
            for j, q in enumerate(results)
            if j != i and (q.config.importance, q.config.ratio) == (r.config.importance, r.config.ratio)
        ]
        fits.append(
            LocoFits(
                fit_budget_law([points[j] for j in others], width_aware=False),
                fit_budget_law([points[j] for j in others], width_aware=True),
                _fit_calibration([eq2[j] for j in others], [results[j] for j in others]),
            )
        )
    return fits


def _fit_calibration(eq2: Sequence[NDArray], others: Sequence[ConfigResult]) -> theory.Calibration | None:
    """observed ≈ C·eq2 + B over ``others`` (seed means); None without two distinct predictions."""
    if not others:
        return None
    try:
        return theory.fit_calibration(
            np.concatenate([p.mean(0) for p in eq2]), np.concatenate([q.distilled.distill.mean(0) for q in others])
        )
    except ValueError:
        return None


def _apply_fits(r: ConfigResult, fits: LocoFits, eq2: NDArray) -> dict[str, NDArray | None]:
    """packing_loco, width_packing_loco and calibrated_loco of one configuration from its fits."""
    w = np.asarray(r.config.widths, dtype=np.float64)
    packing, width_law, cal = fits
    return {
        # the paper-style law keeps whole features: F_S = ⌊d·a·g^b⌋
        "packing_loco": (
            None
            if packing is None
            else _teacher_floor(r, lambda t: np.floor(packing.budget(w, r.config.alpha)).astype(np.int64))
        ),
        "width_packing_loco": (
            None
            if width_law is None
            else np.asarray([width_law.floor(w, r.config.alpha, t.represented_weights()) for t in r.teachers])
        ),
        "calibrated_loco": None if cal is None else np.asarray(cal.apply(eq2), dtype=np.float64),
    }


def _predict(results: Sequence[ConfigResult]) -> tuple[list[dict[str, NDArray | None]], list[LocoFits]]:
    own = [_own_predictors(r) for r in results]
    fits = _loco_fits(results, [o["eq2"] for o in own])
    preds = [{**o, **_apply_fits(r, f, o["eq2"])} for r, o, f in zip(results, own, fits)]
    return [{name: p[name] for name in PREDICTORS} for p in preds], fits


def predict_floors(results: Sequence[ConfigResult]) -> list[dict[str, NDArray[np.float64] | None]]:
    """Every predictor of :data:`PREDICTORS` for every configuration: arrays [seeds, widths], or
    ``None`` where a predictor cannot be formed (no SAE measurement; no other configurations to fit on).

    No prediction uses the observed losses of the configuration it predicts: the fitted predictors
    see only the other configurations (leave one configuration out).
    """
    return _predict(results)[0]


# -- scoring and the report ----------------------------------------------------------------------
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
            "stratum": scoring.width_stratum(d, c.critical_width)[0],
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
    picked = {}
    for act, i in r.sae.selected.items():
        p = r.sae.points[i]
        picked[act] = {
            **p._asdict(),
            "F_over_represented": p.n_features / max(t0.represented.size, 1),
            "alpha_error": p.alpha - r.config.alpha,
        }
    m = r.sae.measurements.get("relu")
    return {
        "n_latents": r.sae.n_latents,
        "seed": r.seeds[0],
        "truth": {"n_features": r.config.n_features, "alpha": r.config.alpha, "represented": int(t0.represented.size)},
        "sweep": [p._asdict() for p in r.sae.points],
        "selected": picked,
        "relu_importances": None if m is None else m.importances.tolist(),
    }


def _pooled(
    results: Sequence[ConfigResult], preds: Sequence[dict[str, NDArray | None]], name: str, target: str
) -> tuple[NDArray, NDArray, list[float], list[str], list[int]] | None:
    """Seed-mean (predicted, observed) of every student of every configuration, with its α, stratum, config index."""
    p, o, alphas, strata, cfg = [], [], [], [], []
    for i, (r, pr) in enumerate(zip(results, preds)):
        if pr[name] is None:
            return None
        p.append(pr[name].mean(0))
        o.append(getattr(r.distilled, target).mean(0))
        alphas += [r.config.alpha] * len(r.config.widths)
        strata += scoring.width_stratum(np.asarray(r.config.widths), r.config.critical_width)
        cfg += [i] * len(r.config.widths)
    return np.concatenate(p), np.concatenate(o), alphas, strata, cfg


def _summary(results: Sequence[ConfigResult], preds: Sequence[dict[str, NDArray | None]]) -> dict[str, Any]:
    """Per predictor and target: pooled scores, by sparsity, by d/d* stratum, and per-configuration r."""
    out: dict[str, Any] = {}
    for target in TARGETS:
        out[target] = {}
        for name in PREDICTORS:
            pooled = _pooled(results, preds, name, target)
            if pooled is None:
                out[target][name] = None
                continue
            p, o, alphas, strata, cfg = pooled
            per_config = scoring.score_groups(p, o, cfg)
            rs = np.array([s.pearson_r for s in per_config.values()], dtype=np.float64)
            accs = np.array([s.median_accuracy for s in per_config.values()])
            out[target][name] = {
                "overall": scoring.score(p, o).to_dict(),
                "by_sparsity": {f"{a:g}": s.to_dict() for a, s in sorted(scoring.score_groups(p, o, alphas).items())},
                "by_stratum": {k: v.to_dict() for k, v in scoring.score_groups(p, o, strata).items()},
                "per_config": {
                    "pearson_r_median": float(np.nanmedian(rs)) if np.any(np.isfinite(rs)) else math.nan,
                    "pearson_r_min": float(np.nanmin(rs)) if np.any(np.isfinite(rs)) else math.nan,
                    "fraction_r_at_least_0.98": float(np.mean(rs >= 0.98)),
                    "median_accuracy_median": float(np.median(accs)),
                },
            }
    out["best"] = _best(out["distill"])
    return out


def _best(scores: dict[str, Any]) -> str | None:
    """The predictor whose worst per-sparsity median accuracy on (a) is highest (ties: higher mean r)."""
    ranked = [
        (min(s["median_accuracy"] for s in v["by_sparsity"].values()), v["per_config"]["pearson_r_median"], k)
        for k, v in scores.items()
        if v is not None
    ]
    return max(ranked, key=lambda t: (t[0], np.nan_to_num(t[1], nan=-1.0)))[2] if ranked else None


def _config_dict(r: ConfigResult, pred: dict[str, NDArray | None], fits: LocoFits) -> dict[str, Any]:
    c = r.config
    scores = {}
    for name, p in pred.items():
        if p is not None:
            scores[name] = {t: scoring.score(p.mean(0), getattr(r.distilled, t).mean(0)).to_dict() for t in TARGETS}
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
    preds, fits = _predict(results)
    return json_ready(
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
            "summary": _summary(results, preds),
        }
    )
