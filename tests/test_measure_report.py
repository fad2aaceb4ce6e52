"""The report of a measurement run: report.json, report.md and the floor plot (pyfloor.report)."""

import json
import math

import numpy as np
import pytest
import torch

from pyfloor.floors import default_widths
from pyfloor.measure import MeasureConfig, measure
from pyfloor.report import measurement_markdown, plot_floor_curve, write_measurement_report
from pyfloor.sae import SAE
from pyfloor.sources import ArraySource


def strict_json(text):
    """Parse ``text`` as standard JSON: NaN and ±Infinity are not JSON."""

    def refuse(constant):
        raise AssertionError(f"report.json holds the non-JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def identity_sae(d):
    """A ReLU SAE whose latent i is max(x_i, 0)."""
    sae = SAE(d, d, "relu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def small_run(bootstrap=0, widths=(1, 2, 4), **kw):
    x = np.random.default_rng(0).normal(size=(800, 16)).astype(np.float32)
    x *= np.linspace(1, 3, 16, dtype=np.float32)  # importances spread out
    cfg = MeasureConfig(bootstrap=bootstrap, widths=list(widths), **kw)
    return measure(ArraySource([x], 100), identity_sae(16), cfg, progress=False)


def test_default_widths_start_at_the_first_power_of_two_above_a_sixteenth_of_d_star():
    assert default_widths(1064.7) == [128, 256, 512, 1024, 1065, 2048]  # 64 < 1064.7 / 16 = 66.5
    assert default_widths(1024.0) == [64, 128, 256, 512, 1024, 2048]  # d*/16 = 64 itself is in
    for d_star in (0.7, 3.2, 9.15, 66.5, 1064.7, 28_665 / 26.92):
        in_range = {2**p for p in range(40) if d_star / 16 <= 2**p <= 2 * d_star}
        assert default_widths(d_star) == sorted(in_range | {math.ceil(d_star)})


@pytest.mark.parametrize("bootstrap", [0, 1])  # no replicates, or too few for an interval
def test_floors_are_reported_without_bootstrap(tmp_path, bootstrap):
    r = small_run(bootstrap=bootstrap, widths=(1, 2, 4))
    assert "floors" not in r.intervals and "n_features" not in r.intervals
    paths = write_measurement_report(r, tmp_path)
    report = strict_json(paths["json"].read_text())
    assert [f["width"] for f in report["floors"]] == [1, 2, 4]
    kept = r.measurement.budget([1, 2, 4])
    for row, k, floor in zip(report["floors"], kept, r.measurement.floor([1, 2, 4])):
        assert row["kept"] == k and row["dropped"] == r.measurement.n_features - k
        assert row["floor"] == pytest.approx(floor, rel=1e-12)
    markdown = paths["markdown"].read_text()
    assert "## Predicted floor (Eq. 2) by student width" in markdown
    assert f"| 2 | {kept[1]} | {16 - kept[1]} | {r.measurement.floor(2):.6g} |" in markdown
    assert "bootstrap" not in markdown  # no interval columns or headers without intervals


def test_floor_table_carries_the_intervals_and_says_how_they_are_made(tmp_path):
    r = small_run(bootstrap=8, widths=(1, 2))
    report = r.to_dict()
    iv = {f["width"]: f for f in report["intervals"]["floors"]}
    assert [f["width"] for f in report["floors"]] == [1, 2]
    assert all(iv[f["width"]]["estimate"] == pytest.approx(f["floor"], rel=1e-12) for f in report["floors"])
    markdown = measurement_markdown(report)
    b = iv[2]
    assert (
        f"| 2 | {report['floors'][1]['kept']} | {report['floors'][1]['dropped']} | {b['estimate']:.6g} | "
        f"[{b['low']:.6g}, {b['high']:.6g}] | {b['bias']:+.3g} |" in markdown
    )
    assert "basic bootstrap intervals" in markdown and "percentile intervals" in markdown


def test_report_json_writes_non_finite_numbers_as_null(tmp_path):
    # latent 1 fires in the odd batches only, which histogram_every=2 never histograms
    x = np.zeros((400, 4), dtype=np.float32)
    x[:, 0] = np.random.default_rng(1).random(400)
    x[100:200, 1] = x[300:400, 1] = 5.0
    r = measure(ArraySource([x], 100), identity_sae(4), MeasureConfig(bootstrap=0, histogram_every=2), progress=False)
    paths = write_measurement_report(r, tmp_path)
    report = strict_json(paths["json"].read_text())
    top = report["top_feature_quantiles"][0]
    assert top["latent"] == 1 and top["median"] is None and top["p99"] is None and top["max"] == 5.0
    assert "| 1 | 12.5 | 0.5 | — | — | 5 |" in measurement_markdown(report)  # read back, null renders as —


def test_report_without_a_recorded_measuring_time(tmp_path):
    r = small_run()
    r.seconds = float("nan")  # resumed from a checkpoint that predates time-keeping
    paths = write_measurement_report(r, tmp_path)
    report = strict_json(paths["json"].read_text())
    assert report["seconds"] is None and report["tokens_per_second"] is None
    assert "measuring time not recorded" in measurement_markdown(report)


def test_floor_plot_draws_intervals_that_exclude_the_estimate(tmp_path):
    r = small_run()
    est = [float(f) for f in r.measurement.floor([1, 2, 4])]
    intervals = {
        "confidence": 0.95,
        "floors": [
            {"width": 1, "estimate": est[0], "low": 1.02 * est[0], "high": 1.05 * est[0], "bias": -0.03 * est[0]},
            {"width": 2, "estimate": est[1], "low": 0.0, "high": 0.5 * est[1], "bias": 0.1 * est[1]},
            {"width": 4, "estimate": est[2], "low": 0.9 * est[2], "high": 1.1 * est[2], "bias": 0.0},
        ],
        "critical_width": {"estimate": r.measurement.critical_width, "low": 1.0, "high": 2.0},
    }
    assert all(e > 0 for e in est)
    path = tmp_path / "floor_curve.png"
    ax = plot_floor_curve(r.measurement, intervals, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    band = next(c for c in ax.collections if "bootstrap interval (basic)" in c.get_label())
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(ax.get_ylim()[0])  # the low of 0 reaches the bottom of the plot
    assert ys.max() == pytest.approx(1.05 * est[0])  # the interval above its estimate is drawn from its own bounds
