"""pyfloor.calibrate: asymptotes of eval curves, the paper's floor, and calibration of predicted floors."""

import json
import math

import numpy as np
import pytest

from pyfloor import calibrate as cal
from pyfloor.calibrate import (
    calibrate,
    calibration_markdown,
    fit_asymptote,
    floors_from_fits,
    observed_floor,
    paper_floor,
    predictor_table,
    write_calibration_report,
)
from pyfloor.stats import Measurement
from pyfloor.theory import PackingLaw

#: Eval steps of a long run: 10 … 100,000, log-spaced.
LONG_STEPS = np.unique(np.round(np.geomspace(10, 1e5, 60)))


def power_curve(steps, l_inf, A, beta, noise, seed):
    rng = np.random.default_rng(seed)
    return l_inf + A * np.asarray(steps, dtype=np.float64) ** (-beta) + rng.normal(0.0, noise, len(steps))


# -- the asymptote ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dof", "quantile"),
    [
        (1, 12.706204736174694),
        (2, 4.302652729749462),
        (10, 2.228138851986274),
        (30, 2.0422724563012378),
        (2000, 1.9611508260994377),
    ],
)
def test_t_quantile_matches_tables(dof, quantile):
    assert cal._t_quantile(0.95, dof) == pytest.approx(quantile, rel=1e-10)


def test_t_quantile_at_another_confidence():
    assert cal._t_quantile(0.99, 5) == pytest.approx(4.032142983555228, rel=1e-10)


def test_interval_covers_the_true_asymptote_in_the_large_majority():
    cases = [(1.0, 0.5, 0.01), (2.0, 1.0, 0.02), (0.5, 0.3, 0.005), (3.0, 0.7, 0.05)]
    covered, fits = 0, 0
    for A, beta, noise in cases:
        for seed in range(10):
            f = fit_asymptote(LONG_STEPS, power_curve(LONG_STEPS, 2.0, A * 10**beta, beta, noise, seed))
            fits += 1
            covered += f.low <= 2.0 <= f.high
            assert abs(f.l_inf - 2.0) < 5 * noise, (A, beta, noise, seed, f)
            assert f.high - f.low < 20 * noise, (A, beta, noise, seed, f)  # an interval, not the whole line
            assert f.low <= f.l_inf <= f.high
    # 95 % intervals: 38 of 40 expected; at most 6 misses allowed
    assert fits == 40 and covered >= 34, covered


def test_noiseless_curve_is_recovered_in_the_callers_steps():
    steps = np.arange(100, 20_001, 100, dtype=np.float64)
    f = fit_asymptote(steps, 1.5 + 40.0 * steps**-0.8)
    assert f.l_inf == pytest.approx(1.5, abs=1e-7)
    assert f.beta == pytest.approx(0.8, rel=1e-5)
    assert f.A == pytest.approx(40.0, rel=1e-4)
    assert f.rmse < 1e-8
    np.testing.assert_allclose(f.curve(steps), 1.5 + 40.0 * steps**-0.8, rtol=1e-6)
    assert f.n_points == steps.size and f.confidence == 0.95


def test_curve_that_stops_early_warns():
    steps = np.arange(1.0, 31.0)
    f = fit_asymptote(steps, power_curve(steps, 2.0, 1.0, 0.5, 1e-3, 0))
    assert not f.flattened
    assert f.warning is not None and "still falls" in f.warning
    assert f.remaining == pytest.approx(30**-0.5, rel=0.1)  # L(30) − L∞ = 30^−0.5 ≈ 18 % of the drop from step 1


def test_curve_that_has_flattened_does_not_warn():
    steps = np.geomspace(1.0, 1e4, 80)
    f = fit_asymptote(steps, power_curve(steps, 2.0, 1.0, 0.5, 1e-3, 0))
    assert f.flattened and f.warning is None
    assert f.remaining == pytest.approx(1e-2, rel=0.1)  # 1 % of the drop from step 1


def test_flat_noise_is_flattened_and_a_rising_curve_is_not():
    steps = np.geomspace(1.0, 1e4, 80)
    rng = np.random.default_rng(3)
    flat = fit_asymptote(steps, 3.0 + rng.normal(0, 0.01, steps.size))
    assert flat.flattened and abs(flat.l_inf - 3.0) < 0.01
    rising = fit_asymptote(steps, 3.0 + 0.01 * np.log(steps) + rng.normal(0, 0.01, steps.size))
    assert rising.A == 0 and math.isnan(rising.beta)
    assert not rising.flattened and "rises" in rising.warning


def test_curve_linear_in_log_steps_has_no_trustworthy_asymptote():
    steps = np.geomspace(1.0, 1e4, 80)
    f = fit_asymptote(steps, power_curve(steps, 0.0, 0.0, 0.0, 0.01, 1) + 3.0 - 0.1 * np.log(steps))
    assert not f.flattened and "lower end" in f.warning


@pytest.mark.parametrize(
    ("steps", "losses", "match"),
    [
        ([0, 1, 2, 3, 4], [5, 4, 3, 2, 1], "steps must be finite and > 0"),
        ([1, 2, 2, 3, 4], [5, 4, 3, 2, 1], "strictly increasing"),
        ([1, 2, 3, 4], [4, 3, 2, 1], "at least 5"),
        ([1, 2, 3, 4, 5], [5, 4, np.nan, 2, 1], "losses must be finite"),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2], "one loss per step"),
    ],
)
def test_fit_asymptote_rejects_bad_curves(steps, losses, match):
    with pytest.raises(ValueError, match=match):
        fit_asymptote(steps, losses)


def test_fit_asymptote_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        fit_asymptote(LONG_STEPS, power_curve(LONG_STEPS, 2, 1, 0.5, 0.01, 0), confidence=1.0)


def test_paper_floor_is_the_mean_of_the_last_tenth():
    losses = np.arange(20, 0, -1, dtype=np.float64)  # 20, 19, …, 1
    assert paper_floor(losses) == 1.5  # last 2 of 20
    assert paper_floor(np.arange(25, 0, -1)) == 2.0  # last ⌈2.5⌉ = 3 of 25: (3 + 2 + 1) / 3
    assert paper_floor([7.0, 5.0]) == 5.0  # at least one
    assert paper_floor(losses, fraction=1.0) == 10.5
    with pytest.raises(ValueError, match="fraction"):
        paper_floor(losses, fraction=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        paper_floor([])


def test_observed_floor_gives_both():
    y = power_curve(LONG_STEPS, 2.0, 10.0, 0.5, 0.01, 0)
    both = observed_floor(LONG_STEPS, y)
    assert both.paper == paper_floor(y)
    assert both.asymptote == fit_asymptote(LONG_STEPS, y)
    assert both.asymptote.l_inf < both.paper  # the tail mean still holds the drop to come


# -- calibration --------------------------------------------------------------------------------------
PREDICTED = {128: 0.08, 256: 0.03, 512: 0.01, 1024: 0.001}


def test_exactly_affine_observations_calibrate_exactly():
    observed = {w: 2.5 * p + 3.1 for w, p in PREDICTED.items()}
    r = calibrate({"eq2": PREDICTED}, observed).predictors["eq2"]
    assert r.fit.slope == pytest.approx(2.5, rel=1e-12)
    assert r.fit.intercept == pytest.approx(3.1, rel=1e-12)
    assert r.fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert r.lowo_folds == 4 and r.lowo_max_abs < 1e-12 and r.lowo_max_rel < 1e-12
    assert r.spearman == 1.0 and r.kendall_tau == 1.0
    assert (r.concordant, r.discordant, r.tied) == (6, 0, 0) and r.order_holds
    assert r.widths == (128, 256, 512, 1024)


def test_reversed_order_gives_spearman_minus_one():
    observed = {w: 1.0 - p for w, p in PREDICTED.items()}
    r = calibrate({"eq2": PREDICTED}, observed).predictors["eq2"]
    assert r.spearman == pytest.approx(-1.0) and r.kendall_tau == pytest.approx(-1.0)
    assert r.discordant == 6 and not r.order_holds


def test_leave_one_width_out_by_hand():
    r = calibrate({"p": {1: 0.0, 2: 1.0, 3: 2.0}}, {1: 0.0, 2: 1.0, 3: 3.0}).predictors["p"]
    # without width 1: line through (1, 1), (2, 3) predicts −1 at 0; without 2: 1.5 for 1; without 3: 2 for 3
    assert r.lowo_mean_abs == pytest.approx(2.5 / 3) and r.lowo_max_abs == pytest.approx(1.0)
    # relative where the observed floor is not 0: 0.5 / 1 and 1 / 3
    assert r.lowo_mean_rel == pytest.approx((0.5 + 1 / 3) / 2) and r.lowo_max_rel == pytest.approx(0.5)


def test_fold_whose_other_widths_share_one_prediction_is_left_out():
    # above d* every width predicts 0: leaving out the one width below it leaves no slope to fit
    r = calibrate({"eq2": {64: 0.5, 128: 0.0, 256: 0.0, 512: 0.0}}, {64: 3.0, 128: 2.0, 256: 2.1, 512: 1.9}).predictors[
        "eq2"
    ]
    assert r.lowo_folds == 3
    # without 128, 256, 512 the line's intercept is the mean of the other two zeros' floors: 2.0, 1.95, 2.05
    assert r.lowo_max_abs == pytest.approx(0.15) and r.lowo_mean_abs == pytest.approx(0.1)


def test_rank_agreement_with_ties_by_hand():
    predicted = {1: 3.0, 2: 1.0, 3: 1.0, 4: 0.0}  # ranks 4, 2.5, 2.5, 1
    observed = {1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0}  # ranks 4, 3, 2, 1
    r = calibrate({"p": predicted}, observed).predictors["p"]
    assert r.spearman == pytest.approx(np.corrcoef([4, 2.5, 2.5, 1], [4, 3, 2, 1])[0, 1])
    assert (r.concordant, r.discordant, r.tied) == (5, 0, 1) and r.order_holds
    assert r.kendall_tau == pytest.approx(5 / math.sqrt(5 * 6))


def test_too_few_common_widths_is_an_error_naming_the_predictor():
    with pytest.raises(ValueError, match=r"'eq2' shares 2 widths.*at least 3"):
        calibrate({"eq2": {128: 0.1, 256: 0.05, 2048: 0.0}}, {128: 3.0, 256: 2.9, 512: 2.8})


def test_constant_predictor_is_skipped_and_all_skipped_is_an_error():
    observed = {w: 2.5 * p + 3.1 for w, p in PREDICTED.items()}
    result = calibrate({"eq2": PREDICTED, "uniform": dict.fromkeys(PREDICTED, 0.0)}, observed)
    assert list(result.predictors) == ["eq2"] and "every width" in result.skipped["uniform"]
    with pytest.raises(ValueError, match="no predictor could be calibrated"):
        calibrate({"uniform": dict.fromkeys(PREDICTED, 0.0)}, observed)


def test_bad_observed_intervals_are_errors():
    observed = {w: 2.5 * p + 3.1 for w, p in PREDICTED.items()}
    with pytest.raises(ValueError, match=r"observed_intervals\[128\].*contain"):
        calibrate({"eq2": PREDICTED}, observed, observed_intervals={128: (0.0, 1.0)})
    with pytest.raises(ValueError, match="which observed lacks"):
        calibrate({"eq2": PREDICTED}, observed, observed_intervals={64: (0.0, 1.0)})
    with pytest.raises(ValueError, match=r"observed\[256\]"):
        calibrate({"eq2": PREDICTED}, {**observed, 256: math.nan})


# -- predictors ---------------------------------------------------------------------------------------
def zipf_measurement():
    return Measurement.from_importances(1.0 / np.arange(1, 2001), alpha=0.99)


def test_predictor_table_holds_every_measurement_predictor():
    m = zipf_measurement()
    widths = [8, 16, 32, 64]
    law = PackingLaw(a=0.5, b=0.9, r2=1.0, n_points=10)
    table = predictor_table(m, widths, packing_law=law, prefix="layer12/")
    assert list(table) == ["layer12/eq2", "layer12/uniform", "layer12/packing"]
    assert table["layer12/eq2"] == {w: float(m.floor(w)) for w in widths}
    assert table["layer12/uniform"] == {w: float(m.uniform_floor(w)) for w in widths}
    assert table["layer12/packing"] == {w: float(law.floor(w, m.alpha, m.importances)) for w in widths}
    width_aware = PackingLaw(a=0.5, b=0.9, r2=1.0, n_points=10, c=1.1)
    assert "width_packing" in predictor_table(m, widths, packing_law=width_aware)


def test_predictor_table_of_a_summary_has_only_the_uniform_floor():
    m = Measurement.from_summary(2000, alpha=0.99)
    assert list(predictor_table(m, [8, 16])) == ["uniform"]
    with pytest.raises(ValueError, match="packing_law needs a measurement with importances"):
        predictor_table(m, [8, 16], packing_law=PackingLaw(0.5, 0.9, 1.0, 10))
    with pytest.raises(ValueError, match="distinct"):
        predictor_table(m, [8, 8])
    with pytest.raises(ValueError, match="widths"):
        predictor_table(m, [0, 8])


def test_students_end_to_end_recover_the_calibration():
    m = zipf_measurement()
    widths = [4, 8, 16, 32, 64]
    table = predictor_table(m, widths)
    fits = {}
    for i, w in enumerate(widths):
        l_inf = 0.4 * table["eq2"][w] + 1.2
        fits[w] = fit_asymptote(LONG_STEPS, power_curve(LONG_STEPS, l_inf, 30.0, 0.6, 0.002, i))
    observed, intervals = floors_from_fits(fits)
    result = calibrate(table, observed, observed_intervals=intervals)
    eq2 = result.predictors["eq2"]
    assert eq2.fit.slope == pytest.approx(0.4, rel=0.05) and eq2.fit.intercept == pytest.approx(1.2, abs=0.01)
    assert eq2.fit.r2 > 0.99 and eq2.spearman == 1.0 and eq2.order_holds
    assert result.observed_intervals == intervals


def test_floors_from_open_intervals_are_an_error():
    open_fit = fit_asymptote(LONG_STEPS, power_curve(LONG_STEPS, 2, 10, 0.5, 0.01, 0))
    open_fit = type(open_fit)(**{**open_fit.__dict__, "low": -math.inf})
    with pytest.raises(ValueError, match=r"widths \[64\] have open intervals"):
        floors_from_fits({64: open_fit})


# -- output -------------------------------------------------------------------------------------------
def test_report_files_are_written_and_read_back(tmp_path):
    observed = {w: 2.5 * p + 3.1 + 0.001 * (-1) ** i for i, (w, p) in enumerate(PREDICTED.items())}
    intervals = {w: (o - 0.002, o + 0.003) for w, o in observed.items()}
    predictions = {
        "eq2": PREDICTED,
        "reversed": {w: -p for w, p in PREDICTED.items()},
        "flat": dict.fromkeys(PREDICTED, 1.0),
    }
    result = calibrate(predictions, observed, observed_intervals=intervals)
    paths = write_calibration_report(result, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"calibration.json", "calibration.md", "calibration.png"}

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    loaded = json.loads(paths["json"].read_text(), parse_constant=no_constants)
    assert loaded == result.to_dict()
    assert loaded["predictors"]["eq2"]["fit"]["slope"] == pytest.approx(result.predictors["eq2"].fit.slope)
    assert loaded["observed_intervals"]["128"] == list(intervals[128])
    assert "flat" in loaded["skipped"]
    md = paths["markdown"].read_text()
    assert md == calibration_markdown(result)
    assert "| eq2 | 4 |" in md and "| reversed | 4 |" in md and "Not calibrated: flat" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_undefined_rank_agreement_is_null_in_json(tmp_path):
    result = calibrate({"eq2": PREDICTED}, dict.fromkeys(PREDICTED, 3.0))
    assert result.predictors["eq2"].spearman is None
    loaded = json.loads(write_calibration_report(result, tmp_path)["json"].read_text())
    assert loaded["predictors"]["eq2"]["spearman"] is None and loaded["predictors"]["eq2"]["kendall_tau"] is None
