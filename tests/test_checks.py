"""One policy for argument checks (pyfloor._checks), the same at every site that takes a count or a threshold."""

import numpy as np
import pytest

from pyfloor import _checks
from pyfloor.histograms import firing_density
from pyfloor.measure import MeasureConfig
from pyfloor.sae import SAE, TrainConfig
from pyfloor.stats import FeatureStats, Measurement
from pyfloor.toy import ExperimentSettings, SAESettings, ToyConfig, TrainSettings


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.5, "3", None, float("inf"), float("nan")])
def test_a_count_is_an_integer_and_never_a_bool(value):
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1; got"):
        _checks.count(value, "steps", minimum=1)


@pytest.mark.parametrize("value, expected", [(3, 3), (np.int64(3), 3), (3.0, 3), (1e6, 1_000_000), (2**62, 2**62)])
def test_integral_numbers_are_counts(value, expected):
    n = _checks.count(value, "n")
    assert n == expected and type(n) is int


@pytest.mark.parametrize(
    "make",
    [
        lambda v: TrainSettings(steps=v),
        lambda v: TrainConfig(n_latents=8, steps=v),
        lambda v: SAE(v, 8),
        lambda v: ToyConfig(10, v, 0.9),
        lambda v: ExperimentSettings(workers=v),
        lambda v: MeasureConfig(check_every=v),
        lambda v: FeatureStats.empty(v) if v is not True else FeatureStats(v, np.zeros(1, np.int64), *np.zeros((3, 1))),
    ],
)
def test_every_site_refuses_a_bool_for_a_count(make):
    with pytest.raises(ValueError, match="must be an integer >= "):
        make(True)


def test_alive_threshold_zero_is_allowed_everywhere_and_one_nowhere():
    stats = FeatureStats.from_activations(np.array([[0.0, 1.0], [2.0, 0.0]]))
    assert MeasureConfig(alive_threshold=0).alive_threshold == 0
    assert Measurement.from_stats(stats, alive_threshold=0).n_features == 2
    assert firing_density(stats, alive_threshold=0).n_alive == 2
    for make in (
        lambda: MeasureConfig(alive_threshold=1.0),
        lambda: Measurement.from_stats(stats, alive_threshold=1.0),
        lambda: firing_density(stats, alive_threshold=1.0),
        lambda: SAESettings(alive_threshold=1.0),
    ):
        with pytest.raises(ValueError, match=r"alive_threshold must be a finite number in \[0, 1\); got 1.0"):
            make()


def test_an_integer_beyond_float64_is_not_a_finite_number():
    with pytest.raises(ValueError, match="x must be a finite number; got 1000"):
        _checks.number(10**400, "x")
