"""pyfloor.toy.predictors: the metrics predicted floors are judged by."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyfloor.toy.predictors import (
    WIDTH_STRATA,
    accuracy,
    median_accuracy,
    pearson_r,
    r_squared,
    score,
    score_groups,
    width_stratum,
)


def test_accuracy_is_one_minus_relative_error_clipped_at_zero():
    acc = accuracy([1.1, 0.5, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(acc, [0.9, 0.5, 0.0, 0.0])


def test_accuracy_of_a_zero_or_negative_observation():
    np.testing.assert_array_equal(accuracy([0.0, 1e-9], [0.0, 0.0]), [1.0, 0.0])
    np.testing.assert_allclose(accuracy([-0.9, 0.0], [-1.0, -1.0]), [0.9, 0.0])  # an excess loss a hair below 0


def test_median_accuracy():
    assert median_accuracy([1.0, 2.0, 0.9], [1.0, 1.0, 1.0]) == pytest.approx(0.9)
    assert math.isnan(median_accuracy([], []))


@given(st.lists(st.floats(0.01, 10), min_size=3, max_size=30), st.floats(0.5, 2.0))
def test_pearson_r_matches_numpy_and_ignores_scale(obs, factor):
    obs = np.asarray(obs)
    pred = obs * factor + np.linspace(0, 0.1, obs.size)
    if np.ptp(obs) == 0:
        return
    assert pearson_r(pred, obs) == pytest.approx(np.corrcoef(pred, obs)[0, 1], abs=1e-9)


def test_pearson_r_of_a_constant_is_nan():
    assert math.isnan(pearson_r([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(pearson_r([1.0], [1.0]))


def test_r_squared_takes_predictions_as_they_are():
    obs = np.array([1.0, 2.0, 3.0])
    assert r_squared(obs, obs) == 1.0
    assert r_squared(np.full(3, 2.0), obs) == pytest.approx(0.0)
    assert r_squared(2 * obs, obs) < 0  # perfectly correlated, wrong scale: R² punishes it, r does not
    assert pearson_r(2 * obs, obs) == pytest.approx(1.0)


def test_score_and_groups():
    pred = [1.0, 2.0, 3.0, 10.0, 20.0]
    obs = [1.0, 2.0, 3.5, 10.0, 30.0]
    s = score(pred, obs)
    assert s.n_points == 5 and s.median_accuracy == pytest.approx(1.0)
    groups = score_groups(pred, obs, ["a", "a", "a", "b", "b"])
    assert list(groups) == ["a", "b"]
    assert groups["a"].n_points == 3 and groups["b"].median_accuracy == pytest.approx((1 + 2 / 3) / 2)
    assert set(s.to_dict()) == {"n_points", "pearson_r", "r2", "median_accuracy"}


def test_width_strata_are_half_open():
    labels = width_stratum([0.79, 0.8, 1.19, 1.2, 5.0], 1.0)
    names = [s[0] for s in WIDTH_STRATA]
    assert labels == [names[0], names[1], names[1], names[2], names[2]]


@pytest.mark.parametrize(
    "pred, obs, match",
    [([1.0, 2.0], [1.0], "same length"), ([math.nan], [1.0], "finite")],
)
def test_bad_input(pred, obs, match):
    with pytest.raises(ValueError, match=match):
        score(pred, obs)
    with pytest.raises(ValueError, match="keys"):
        score_groups([1.0], [1.0], ["a", "b"])
