"""The built-in teacher: a toy model of superposition (Elhage et al. 2022) whose features are known,
its distilled students, its SAE measurement, the floor predictors scored on it, and its report.

Modules, each importing only the ones before it (data flows one way):

- :mod:`~pyfloor.toy.models`: the task (:class:`ToyTask`, importance profiles), model specs, batched
  training (:func:`train_toy_models`), evaluation, :func:`stable_seed`;
- :mod:`~pyfloor.toy.sweep`: the SAE sweep that measures a teacher (:class:`SAESettings`,
  :func:`measure_teacher`, :class:`TeacherMeasurement`), through the pipeline real teachers use;
- :mod:`~pyfloor.toy.experiment`: configurations (:class:`ToyConfig`, :data:`PAPER_GRID`), settings,
  and running them in units and worker processes (:func:`run_experiment` → :class:`ConfigResult`);
- :mod:`~pyfloor.toy.predictors`: the floor predictors (:data:`PREDICTORS`, :func:`predict_floors`)
  and the metrics they are scored by (:func:`score`, median accuracy, strata by d/d*);
- :mod:`~pyfloor.toy.report`: the report, its JSON (:func:`build_report`) beside what renders it
  (terminal tables, Markdown, PNG plots).

models ← sweep ← experiment ← predictors ← report. The subpackage imports torch;
``import pyfloor`` does not import it (``pyfloor.ToyConfig`` and the like load it on first use).
"""

from .experiment import (
    PAPER_GRID,
    SMALL_GRID,
    ConfigResult,
    ExperimentSettings,
    StudentLosses,
    TeacherFacts,
    ToyConfig,
    grid,
    run_experiment,
    total_steps,
)
from .models import (
    IMPORTANCE_PROFILES,
    KEPT_THRESHOLD,
    ImportanceProfile,
    ModelSpec,
    ToyLosses,
    ToyModels,
    ToyTask,
    TrainSettings,
    evaluate_losses,
    importance_profile,
    output_variance,
    stable_seed,
    train_toy_models,
)
from .predictors import (
    PREDICTORS,
    TARGETS,
    WIDTH_STRATA,
    LocoFits,
    Scores,
    accuracy,
    median_accuracy,
    pearson_r,
    predict_floors,
    predict_with_fits,
    r_squared,
    score,
    score_groups,
    summarize_scores,
    width_stratum,
)
from .report import (
    PAPER_TOY_ACCURACY,
    build_report,
    format_toy_report,
    plot_toy_floors,
    plot_toy_summary,
    toy_markdown,
    toy_metric_table,
    toy_sae_score_table,
    toy_sae_scores,
    toy_sae_table,
    toy_sparsity_table,
    toy_stratum_table,
    toy_sweep_table,
    toy_width_table,
)
from .sweep import SAESettings, SweepPoint, TeacherMeasurement, measure_teacher

__all__ = [
    # models
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
    # sweep
    "SAESettings",
    "SweepPoint",
    "TeacherMeasurement",
    "measure_teacher",
    # experiment
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
    # predictors
    "TARGETS",
    "PREDICTORS",
    "predict_floors",
    "predict_with_fits",
    "LocoFits",
    "Scores",
    "accuracy",
    "median_accuracy",
    "pearson_r",
    "r_squared",
    "score",
    "score_groups",
    "WIDTH_STRATA",
    "width_stratum",
    "summarize_scores",
    # report
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
