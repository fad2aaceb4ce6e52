"""pyfloor.theory: the formulas, their properties and their domain errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pyfloor import theory
from pyfloor.theory import (
    capacity,
    continuous_floor,
    critical_width,
    effective_budget,
    feature_budget,
    fit_budget_law,
    fit_calibration,
    fit_packing_law,
    importance_floor,
    tail_sums,
    uniform_floor,
)

sparse_alpha = st.floats(min_value=theory.SPARSE_REGIME_ALPHA, max_value=1 - 1e-9)
any_alpha = st.floats(min_value=1e-9, max_value=1 - 1e-9)


def descending(min_size=1, max_size=200):
    return arrays(
        np.float64,
        st.integers(min_size, max_size),
        elements=st.floats(0, 1e3, allow_nan=False, allow_infinity=False),
    ).map(lambda a: np.sort(a)[::-1].copy())


# -- capacity -----------------------------------------------------------------------------------
def test_capacity_formula_at_known_points():
    for a in (0.7, 0.9, 0.99, 0.999999):
        assert capacity(a) == pytest.approx(1 / ((1 - a) * math.log(1 / (1 - a))), rel=1e-12)


def test_capacity_minimum_is_e_at_one_minus_inverse_e():
    assert capacity(1 - 1 / math.e) == pytest.approx(math.e, rel=1e-15)
    near = np.linspace(0.633, 0.99, 1000)
    assert np.all(capacity(near) > math.e)


def test_capacity_is_clamped_in_the_dense_regime():
    dense = np.array([1e-6, 0.1, 0.3, 0.5, 0.632])
    assert np.all(capacity(dense) == math.e)
    # The raw formula would grow without bound there: g(0.01) ≈ 10.05 per dimension.
    raw = 1 / ((1 - 0.01) * math.log(1 / (1 - 0.01)))
    assert raw > 10 and capacity(0.01) == math.e


def test_capacity_dense_raise_names_the_regime():
    with pytest.raises(ValueError, match="sparse regime"):
        capacity(0.3, dense="raise")
    assert capacity(0.9, dense="raise") == capacity(0.9)


@given(st.lists(sparse_alpha, min_size=2, max_size=50))
def test_capacity_increasing_on_sparse_regime(alphas):
    a = np.sort(np.array(alphas))
    g = capacity(a)
    assert np.all(np.diff(g)[np.diff(a) > 0] >= 0)


@given(st.lists(any_alpha, min_size=2, max_size=50))
def test_capacity_non_decreasing_everywhere_with_clamp(alphas):
    a = np.sort(np.array(alphas))
    assert np.all(np.diff(capacity(a)) >= 0)


def test_capacity_returns_scalar_for_scalar_and_array_for_array():
    assert isinstance(capacity(0.9), float)
    assert capacity([0.9, 0.99]).shape == (2,)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_capacity_rejects_alpha_outside_open_unit_interval(bad):
    with pytest.raises(ValueError, match="alpha"):
        capacity(bad)


# -- budgets and d* ------------------------------------------------------------------------------
def test_feature_budget_formula():
    g = capacity(0.95)
    widths = np.arange(0, 50)
    expected = np.minimum(np.floor(widths * g), 300)
    np.testing.assert_array_equal(feature_budget(widths, 0.95, 300), expected)
    assert feature_budget(widths, 0.95, 300).dtype == np.int64


@given(sparse_alpha, st.integers(1, 10**6), st.lists(st.floats(0, 1e5), min_size=2, max_size=30))
def test_budget_monotone_in_width(alpha, n_features, widths):
    w = np.sort(np.array(widths))
    budget = feature_budget(w, alpha, n_features)
    assert np.all(np.diff(budget) >= 0)
    assert np.all((budget >= 0) & (budget <= n_features))


@given(sparse_alpha, st.integers(1, 10**6))
def test_critical_width_is_where_budget_reaches_f(alpha, n_features):
    d_star = critical_width(n_features, alpha)
    assert d_star == pytest.approx(n_features / capacity(alpha))
    assert feature_budget(math.ceil(d_star) + 1e-9 * d_star, alpha, n_features) == n_features


def test_packing_law_budget_scales_capacity():
    g = capacity(0.9)
    assert feature_budget(10, 0.9, 10**6, a=0.5, b=0.8) == math.floor(10 * 0.5 * g**0.8)
    assert critical_width(100, 0.9, a=0.5, b=0.8) == pytest.approx(100 / (0.5 * g**0.8))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: feature_budget(-1, 0.9, 10), "width"),
        (lambda: feature_budget([1, float("nan")], 0.9, 10), "width"),
        (lambda: feature_budget(1, 0.9, -3), "n_features"),
        (lambda: feature_budget(1, 0.9, 2.5), "n_features"),
        (lambda: feature_budget(1, 0.9, 10, a=0), "a must"),
        (lambda: feature_budget(1, 0.9, 10, b=float("nan")), "b must"),
        (lambda: critical_width(10, 1.0), "alpha"),
        (lambda: critical_width(10, 0.0), "alpha"),
        (lambda: uniform_floor(1, 0.9, 0), "n_features"),
        (lambda: uniform_floor(1, 0.9, 10, total=-1), "total"),
    ],
)
def test_domain_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- floors -------------------------------------------------------------------------------------
def test_uniform_floor_formula():
    g = capacity(0.9)
    w = np.array([0, 1, 2, 5, 100])
    expected = 7.0 * np.maximum(0, 1 - w * g / 40)
    np.testing.assert_allclose(uniform_floor(w, 0.9, 40, 7.0), expected, rtol=1e-15)


def test_importance_floor_is_sum_beyond_budget():
    rng = np.random.default_rng(0)
    imp = np.sort(rng.exponential(size=97))[::-1]
    for w in range(0, 40):
        k = feature_budget(w, 0.95, imp.size)
        assert importance_floor(w, 0.95, imp) == pytest.approx(math.fsum(imp[k:]), rel=1e-13, abs=0)


@settings(max_examples=50)
@given(sparse_alpha, descending(), st.lists(st.floats(0, 1e4), min_size=2, max_size=30))
def test_floor_non_increasing_and_zero_beyond_critical_width(alpha, imp, widths):
    w = np.sort(np.array(widths))
    floors = importance_floor(w, alpha, imp)
    assert np.all(np.diff(floors) <= 0)
    d_star = critical_width(imp.size, alpha)
    assert np.all(floors[w >= d_star * (1 + 1e-12)] == 0)
    assert importance_floor(0, alpha, imp) == pytest.approx(imp.sum())


@pytest.mark.parametrize("n", [28_665, 1_000_000])
def test_importance_floor_exact_for_huge_f(n):
    rng = np.random.default_rng(n)
    imp = np.sort(rng.pareto(1.2, size=n) * 1e-3)[::-1]  # heavy tail spanning many decades
    widths = np.array([1, 10, 100, 1000, int(critical_width(n, 0.99)) - 1])
    floors = importance_floor(widths, 0.99, imp)
    for w, f in zip(widths, floors):
        exact = math.fsum(imp[feature_budget(w, 0.99, n) :])
        assert f == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize(
    "imp, match",
    [
        ([1.0, 2.0, 0.5], "sorted descending"),
        ([3.0, -1.0], ">= 0"),
        ([3.0, float("nan")], "NaN"),
        ([[1.0, 0.5]], "1-D"),
    ],
)
def test_bad_importances_are_named(imp, match):
    with pytest.raises(ValueError, match=match):
        importance_floor(1, 0.9, imp)


def test_tail_sums_end_in_zero():
    np.testing.assert_array_equal(tail_sums([3.0, 2.0, 1.0]), [6.0, 3.0, 1.0, 0.0])


# -- inversions and fits ------------------------------------------------------------------------
@given(descending(min_size=2), st.data())
def test_effective_budget_inverts_integer_budgets(imp, data):
    imp = imp + 1e-3  # strictly positive, so each budget has its own floor
    k = data.draw(st.integers(0, imp.size))
    floor = tail_sums(imp)[k]
    assert effective_budget(floor, imp) == pytest.approx(k, abs=1e-6)


def test_effective_budget_interpolates_and_censors():
    imp = np.array([4.0, 2.0, 1.0])  # tails 7, 3, 1, 0
    assert effective_budget(5.0, imp) == pytest.approx(0.5)
    assert effective_budget(2.0, imp) == pytest.approx(1.5)
    np.testing.assert_allclose(effective_budget([10.0, 7.0, 0.0, -1.0], imp), [0, 0, 3, 3])


def test_continuous_floor_inverts_effective_budget():
    imp = np.array([0.5, 0.3, 0.1, 0.05])
    k = np.array([0.0, 0.5, 1.0, 2.25, 4.0, 7.0])
    floors = continuous_floor(k, imp)
    np.testing.assert_allclose(floors, [0.95, 0.7, 0.45, 0.125, 0.0, 0.0])
    np.testing.assert_allclose(effective_budget(floors[1:4], imp), k[1:4])


def test_width_aware_budget_law_recovers_its_exponents():
    d = np.array([1, 2, 3, 4, 1, 2, 3, 4], dtype=float)
    alphas = np.array([0.9] * 4 + [0.99] * 4)
    k = 1.2 * d**1.1 * np.asarray(capacity(alphas)) ** 0.3
    law = fit_budget_law(d, alphas, k, width_aware=True)
    assert (law.a, law.b, law.c) == pytest.approx((1.2, 0.3, 1.1))
    np.testing.assert_allclose(law.budget(d[:4], 0.9), k[:4])
    imp = np.sort(np.random.default_rng(0).random(40))[::-1]
    assert law.floor(2, 0.9, imp) == pytest.approx(continuous_floor(k[1], imp))
    with pytest.raises(ValueError, match="one width"):
        fit_budget_law([2, 2, 2], [0.9, 0.95, 0.99], [3.0, 4.0, 5.0], width_aware=True)
    # students that kept every feature they could are left out, and do not move the law
    more = fit_budget_law(
        np.r_[d, 5.0], np.r_[alphas, 0.9], np.r_[k, 10.0], n_features=np.r_[np.full(8, 100.0), 10.0], width_aware=True
    )
    assert (more.a, more.b, more.c, more.n_points) == pytest.approx((1.2, 0.3, 1.1, 8))


def test_fit_calibration_recovers_an_affine_law():
    pred = np.linspace(0.01, 1, 20)
    cal = fit_calibration(pred, 2.5 * pred + 0.3)
    assert cal.slope == pytest.approx(2.5) and cal.intercept == pytest.approx(0.3)
    assert cal.r2 == pytest.approx(1.0) and cal.n_points == 20
    assert cal.apply(1.0) == pytest.approx(2.8)


def test_fit_calibration_r2_reflects_noise():
    rng = np.random.default_rng(1)
    pred = np.linspace(0, 1, 200)
    cal = fit_calibration(pred, pred + rng.normal(scale=0.3, size=200))
    assert 0 < cal.r2 < 0.8


@pytest.mark.parametrize(
    "pred, obs, match", [([1.0], [1.0], "at least 2"), ([1, 1], [1, 2], "all equal"), ([1, 2], [1], "same length")]
)
def test_fit_calibration_errors(pred, obs, match):
    with pytest.raises(ValueError, match=match):
        fit_calibration(pred, obs)


def test_fit_packing_law_recovers_a_and_b():
    rng = np.random.default_rng(2)
    imp = np.sort(1.0 / np.arange(1, 401) + rng.uniform(0, 1e-4, 400))[::-1]  # Zipf, ties broken
    a_true, b_true = 0.7, 0.6
    widths, alphas, observed = [], [], []
    for alpha in (0.8, 0.9, 0.95, 0.99):
        for w in (2, 4, 8, 16):
            k = a_true * w * capacity(alpha) ** b_true  # continuous budget of a "trained student"
            if k < imp.size:
                # floor of a student that keeps k features (fractionally inside feature ⌊k⌋)
                kk = int(k)
                obs = tail_sums(imp)[kk] - (k - kk) * imp[kk]
                widths.append(w)
                alphas.append(alpha)
                observed.append(obs)
    law = fit_packing_law(widths, alphas, observed, imp)
    assert law.a == pytest.approx(a_true, rel=1e-6) and law.b == pytest.approx(b_true, rel=1e-6)
    assert law.r2 == pytest.approx(1.0)
    fixed = fit_packing_law(widths, alphas, observed, [imp] * len(widths), b=b_true)
    assert fixed.a == pytest.approx(a_true, rel=1e-6)
    assert law.floor(8, 0.9, imp) == importance_floor(8, 0.9, imp, a=law.a, b=law.b)


def test_fit_packing_law_needs_informative_points():
    imp = np.array([3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="kept some but not all"):
        fit_packing_law([1, 2], [0.9, 0.95], [0.0, 6.0], imp)
    with pytest.raises(ValueError, match="fix the exponent"):
        fit_packing_law([1, 2], [0.9, 0.9], [2.0, 1.5], imp)
