"""pyfloor: how small a student can a teacher be distilled into before it hits a wall?

Measures the features a teacher network stores in superposition (F), their sparsity (α) and
importances with sparse autoencoders, and predicts the loss floor of distilling it into a student of
any width (Sarkar & Deka 2026, arXiv 2604.04037).

The numpy-only core is importable without torch::

    import pyfloor
    m = pyfloor.Measurement.from_summary(28665, mean_l0=218.29)
    m.critical_width            # d* = F / g(α)
    pyfloor.capacity(0.99)      # g(α)
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .stats import CheckpointError, FeatureStats, Measurement, load_measurement
from .theory import (
    Calibration,
    PackingLaw,
    capacity,
    continuous_floor,
    critical_width,
    effective_budget,
    feature_budget,
    fit_budget_law,
    fit_calibration,
    fit_packing_law,
    importance_floor,
    uniform_floor,
)

#: Names served lazily (torch, the C++ extension), so ``import pyfloor`` stays light and numpy-only.
_LAZY = {
    "Binning": "histograms",
    "Histogram": "histograms",
    "FeatureHistograms": "histograms",
    "FiringDensity": "histograms",
    "firing_density": "histograms",
    "SAE": "sae",
    "TrainConfig": "sae",
    "train_sae": "sae",
    "train_sae_family": "sae",
    "load_sae": "sae",
    "Estimator": "features",
    "count_features": "features",
    "sae_health": "features",
    "measure_family": "measure",
    "measure_layers": "measure",
    "as_sae": "interop",
    "check_hook": "interop",
    "measurement_from_sparsity": "interop",
    "TeacherSource": "sources",
    "load_teacher": "sources",
    "library_source": "library_sources",
    "StatsAccumulator": "encode",
    "encode_stats": "encode",
    "SparseCodes": "encode_types",
    "BatchStats": "encode_types",
    "MeasureConfig": "measure",
    "MeasureResult": "measure",
    "ToyTask": "toy",
    "train_toy_models": "toy",
    "ToyConfig": "toy",
    "run_experiment": "toy",
}
#: Submodules ``pyfloor.<name>`` reaches without an import of its own, whatever was imported before.
_SUBMODULES = frozenset(
    {
        "calibrate",
        "distill",
        "distributed",
        "encode",
        "encode_types",
        "family",
        "features",
        "floors",
        "histograms",
        "interop",
        "library_sources",
        "measure",
        "report",
        "render",
        "sae",
        "sources",
        "stats",
        "students",
        "theory",
        "tokens",
        "toy",
    }
)

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from . import calibrate as calibrate
    from . import distill as distill
    from . import distributed as distributed
    from . import encode as encode
    from . import encode_types as encode_types
    from . import family as family
    from . import features as features
    from . import floors as floors
    from . import histograms as histograms
    from . import interop as interop
    from . import library_sources as library_sources
    from . import measure as measure
    from . import render as render
    from . import report as report
    from . import sae as sae
    from . import sources as sources
    from . import students as students
    from . import tokens as tokens
    from . import toy as toy
    from .encode import StatsAccumulator, encode_stats
    from .encode_types import BatchStats, SparseCodes
    from .features import Estimator, count_features, sae_health
    from .histograms import Binning, FeatureHistograms, FiringDensity, Histogram, firing_density
    from .interop import as_sae, check_hook, measurement_from_sparsity
    from .library_sources import library_source
    from .measure import MeasureConfig, MeasureResult, measure_family, measure_layers
    from .sae import SAE, TrainConfig, load_sae, train_sae, train_sae_family
    from .sources import TeacherSource, load_teacher
    from .toy import ToyConfig, ToyTask, run_experiment, train_toy_models


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyfloor' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES])


__all__ = [
    "__version__",
    "Binning",
    "Histogram",
    "FeatureHistograms",
    "FiringDensity",
    "firing_density",
    "SAE",
    "TrainConfig",
    "train_sae",
    "train_sae_family",
    "load_sae",
    "Estimator",
    "count_features",
    "sae_health",
    "measure_family",
    "measure_layers",
    "as_sae",
    "check_hook",
    "measurement_from_sparsity",
    "TeacherSource",
    "load_teacher",
    "library_source",
    "StatsAccumulator",
    "encode_stats",
    "SparseCodes",
    "BatchStats",
    "MeasureConfig",
    "MeasureResult",
    "ToyTask",
    "train_toy_models",
    "ToyConfig",
    "run_experiment",
    "CheckpointError",
    "FeatureStats",
    "Measurement",
    "load_measurement",
    "Calibration",
    "PackingLaw",
    "capacity",
    "continuous_floor",
    "critical_width",
    "effective_budget",
    "feature_budget",
    "fit_budget_law",
    "fit_calibration",
    "fit_packing_law",
    "importance_floor",
    "uniform_floor",
]
