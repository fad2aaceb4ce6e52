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
    "StatsAccumulator": "encode",
    "SparseCodes": "encode",
    "encode_stats": "encode",
    "load_sae": "sae",
    "MeasureConfig": "measure",
    "MeasureResult": "measure",
    "ToyTask": "toy",
    "train_toy_models": "toy",
    "ToyConfig": "toy",
    "run_experiment": "toy",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyfloor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "__version__",
    *_LAZY,
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
