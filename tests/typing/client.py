"""A client of pyfloor's documented API (README, "Python API"), as another tool would write it.

tests/test_typing.py checks it with ``mypy --strict`` against the installed package: the API's
types must let such a client type-check without casts or ignores.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

import pyfloor
from pyfloor.measure import MeasureConfig, MeasureResult, measure
from pyfloor.sae import load_sae
from pyfloor.sources import TeacherSource, load_teacher, token_file_sequences


def summary(path: str) -> tuple[int, float, float, float]:
    m = pyfloor.load_measurement(path)
    return m.n_features, m.alpha, m.capacity, m.critical_width


def floors(m: pyfloor.Measurement) -> tuple[float, NDArray[np.float64], int, float]:
    one: float = m.floor(128)
    many: NDArray[np.float64] = m.floor([128, 256, 512])
    kept: int = m.budget(256)
    uniform: float = m.uniform_floor(128)
    return one, many, kept, uniform


def theory() -> tuple[float, NDArray[np.float64], int, float, float]:
    g: float = pyfloor.capacity(0.99)
    gs: NDArray[np.float64] = pyfloor.capacity(np.array([0.9, 0.99]))
    budget: int = pyfloor.feature_budget(256, 0.99, 28665)
    floor: float = pyfloor.importance_floor(128, 0.99, np.ones(10), a=0.8, b=0.7)
    calibrated: float = pyfloor.fit_calibration([1.0, 2.0, 3.0], [1.1, 2.1, 2.9]).apply(2.0)
    return g, gs, budget, floor, calibrated


def measure_teacher(model_dir: str, tokens: str, sae_path: str) -> MeasureResult:
    model, _tokenizer = load_teacher(model_dir)
    source = TeacherSource(model, 12, token_file_sequences(tokens, 1024), batch_tokens=65536)
    result = measure(source, load_sae(sae_path), MeasureConfig(until_stable=0.01))
    d_star: float = result.measurement.critical_width
    print(d_star)
    return result


def one_batch(sae: pyfloor.SAE) -> pyfloor.FeatureStats:
    import torch

    stats, _codes = pyfloor.encode_stats(torch.randn(4, 16, sae.d_in), sae)
    return stats


def teacher_features(stats: pyfloor.FeatureStats, sae: pyfloor.SAE) -> tuple[int, float, bool]:
    both = pyfloor.count_features(stats, sae, [pyfloor.Estimator("paper"), pyfloor.Estimator(cosine=0.95)])
    merged: pyfloor.Measurement = both["merged"]
    healthy: bool = pyfloor.sae_health(sae, stats).ok
    return merged.n_features, merged.alpha, healthy


def a_family(source: TeacherSource, saes: list[pyfloor.SAE]) -> list[float]:
    results = pyfloor.measure_family(source, saes, MeasureConfig(max_tokens=1_000_000))
    paper = [r.estimators["paper"]["measurement"].critical_width for r in results]
    return [r.measurement.critical_width for r in results] + paper
