"""The plots: each draws into a given Axes and returns it, saves by file suffix (PNG, PDF, SVG),
labels its axes with units, names the measurement in its title, and shades intervals as bands."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb

import pyfloor
from pyfloor.histograms import FeatureHistograms, Histogram, firing_density
from pyfloor.render import figure_path, format_alpha, measurement_title, source_label
from pyfloor.report import plot_floor_curve, plot_importance_rank, write_measurement_report
from pyfloor.stats import FeatureStats

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_report import small_run

FIXTURE = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "pythia-410m-layer12-sae-measurements.json"
)
MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def run():
    return small_run(bootstrap=8, widths=(1, 2, 4))


def intervals_for(m, widths=(1, 2, 4), rel=0.05):
    est = [float(f) for f in m.floor(list(widths))]
    return {
        "confidence": 0.95,
        "floors": [
            {"width": w, "estimate": e, "low": (1 - rel) * e, "high": (1 + rel) * e, "bias": 0.0}
            for w, e in zip(widths, est)
        ],
        "critical_width": {
            "estimate": m.critical_width,
            "low": 0.95 * m.critical_width,
            "high": 1.05 * m.critical_width,
        },
    }


def stats16():
    z = np.maximum(np.random.default_rng(0).normal(size=(500, 16)), 0)
    z[:, 3] = 0  # one dead latent
    return FeatureStats.from_activations(z)


def histogram():
    x = np.random.default_rng(0).normal(size=4000).astype(np.float32)
    x[:3] = [np.nan, np.inf, 0.0]
    return Histogram().fill(x)


# every plotting function: (name, draw(ax=..., path=...) -> returned Axes)
def _plots(run):
    m = run.measurement
    fh = FeatureHistograms(4).fill_dense(np.abs(np.random.default_rng(1).normal(size=(200, 4))).astype(np.float32))
    return {
        "floor_curve": lambda **kw: plot_floor_curve(m, run.intervals, **kw),
        "floor_curve_normalized": lambda **kw: plot_floor_curve(m, run.intervals, normalize=True, **kw),
        "importance_rank": lambda **kw: plot_importance_rank(m, **kw),
        "histogram": lambda **kw: histogram().plot(label="activations", **kw),
        "feature_histograms": lambda **kw: fh.plot([0, 1], **kw),
        "firing_density": lambda **kw: firing_density(stats16()).plot(**kw),
    }


PLOTS = [
    "floor_curve",
    "floor_curve_normalized",
    "importance_rank",
    "histogram",
    "feature_histograms",
    "firing_density",
]


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_draws_into_the_given_axes_and_returns_it(run, name):
    fig, ax = plt.subplots()
    assert _plots(run)[name](ax=ax) is ax
    assert ax.has_data() and len(fig.axes) == 1  # drew there, made no figure of its own
    made = _plots(run)[name]()  # without ax: a figure of its own
    assert made is not ax and made.has_data()


@pytest.mark.parametrize("name", PLOTS)
@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_the_suffix_picks_the_format(run, tmp_path, name, suffix):
    path = tmp_path / f"plot{suffix}"
    ax = _plots(run)[name](path=path)
    assert ax is not None and path.is_file()
    head = path.read_bytes()[:200]
    if suffix == ".svg":
        assert head.startswith(b"<?xml") or head.lstrip().startswith(b"<svg")
    else:
        assert head.startswith(MAGIC[suffix])


@pytest.mark.parametrize("name", PLOTS)
@pytest.mark.parametrize("bad", ["plot.jpg", "plot", "plot.png.txt"])
def test_a_bad_suffix_is_refused_before_drawing(run, tmp_path, name, bad):
    with pytest.raises(ValueError, match=r"\.png.*\.pdf.*\.svg"):
        _plots(run)[name](path=tmp_path / bad)
    assert not (tmp_path / bad).exists()


def test_figure_path_names_the_suffix():
    with pytest.raises(ValueError, match=r"'\.jpeg'"):
        figure_path("a/b.jpeg")
    assert figure_path("x.PDF").suffix == ".PDF" and figure_path(None) is None


def test_floor_interval_is_a_band_of_its_own_colour_under_the_curve(run):
    m = run.measurement
    ax = plot_floor_curve(m, intervals_for(m))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    labels = [c.get_label() for c in bands]
    assert "95 % bootstrap interval (basic)" in labels[0]
    band = bands[0]
    curve = next(ln for ln in ax.get_lines() if ln.get_label() == "Eq. 2 (importance-weighted)")
    assert to_rgb(band.get_facecolor()[0]) != to_rgb(curve.get_color())
    assert 0.15 <= band.get_alpha() <= 0.35
    assert curve.get_zorder() > band.get_zorder()
    # the band passes through the interval's bounds at the tabulated widths
    verts = band.get_paths()[0].vertices
    for f in intervals_for(m)["floors"]:
        ys = verts[np.isclose(verts[:, 0], f["width"]), 1]
        assert np.isclose(ys.min(), f["low"]) and np.isclose(ys.max(), f["high"])
    assert "95 % bootstrap interval (basic)" in [t.get_text().split("\n")[0] for t in ax.get_legend().get_texts()]


def test_interval_that_excludes_the_estimate_and_a_low_of_zero_are_drawn(run):
    m = run.measurement
    iv = intervals_for(m)
    iv["floors"][0].update(low=1.02 * iv["floors"][0]["estimate"], high=1.05 * iv["floors"][0]["estimate"])
    iv["floors"][1].update(low=0.0)
    ax = plot_floor_curve(m, iv)
    verts = [c for c in ax.collections if isinstance(c, PolyCollection)][0].get_paths()[0].vertices
    assert np.all(np.isfinite(verts)) and verts[:, 1].min() >= ax.get_ylim()[0] > 0


def test_axis_labels_carry_units(run):
    m = run.measurement
    ax = plot_floor_curve(m, None)
    assert ax.get_ylabel() == "Σ E[z²] of dropped latents (SAE units²)"
    assert ax.get_xlabel() == "student width d_S"
    norm = plot_floor_curve(m, None, normalize=True)
    assert "fraction of the total importance" in norm.get_ylabel()
    eq2 = next(ln for ln in norm.get_lines() if ln.get_label().startswith("Eq. 2"))
    assert eq2.get_ydata().max() <= 1.0
    np.testing.assert_allclose(eq2.get_ydata()[0], m.floor(int(eq2.get_xdata()[0])) / m.total_importance)
    rank = plot_importance_rank(m)
    assert rank.get_ylabel() == "E[z_i²] (SAE units²)" and rank.get_xlabel() == "rank"


def test_normalize_needs_importances():
    with pytest.raises(ValueError, match="importances"):
        plot_floor_curve(pyfloor.Measurement.from_summary(100, mean_l0=2.0), None, normalize=True)
    ax = plot_floor_curve(pyfloor.Measurement.from_summary(100, mean_l0=2.0), None)  # uniform only
    assert "fraction of features lost" in ax.get_ylabel()


@pytest.mark.skipif(not FIXTURE.is_file(), reason="the shared Pythia fixture is not here")
def test_titles_name_source_f_alpha_and_d_star():
    m = pyfloor.load_measurement(FIXTURE)
    for ax in (plot_floor_curve(m, None), plot_importance_rank(m)):
        title = ax.get_title()
        assert "pythia-410m-layer12-sae-measurements.json" in title
        assert "F = 28,665" in title and "α = 0.99238" in title and "d* = 1,064.7" in title


def test_title_helpers():
    assert (
        measurement_title("teacher EleutherAI/pythia-410m at gpt_neox.layers.12 over x.npy", 28_665, 0.992385, 1064.7)
        == "EleutherAI/pythia-410m, gpt_neox.layers.12\nF = 28,665, α = 0.99238, d* = 1,064.7"
    )
    assert (
        measurement_title("pythia-l12", 28_665, 0.992385, 1064.7)
        == "pythia-l12 — F = 28,665, α = 0.99238, d* = 1,064.7"
    )
    assert measurement_title("", 5, 0.9, 2.0) == "F = 5, α = 0.90000, d* = 2.0"
    assert format_alpha(0.99999901) == "0.999999010"
    assert source_label("teacher /tmp/m/neox at gpt_neox.layers.1 over t.npy [0:10]") == (
        "teacher",
        "neox, gpt_neox.layers.1",
    )
    assert source_label("activations /d/a.npy, /d/b.npy (1,000 tokens, d=16)") == ("file", "a.npy + 1 more")
    assert source_label("activations <array (800, 16)> (800 tokens, d=16)") == ("array", "in-memory array (800, 16)")


def test_histogram_counters_stay_visible_under_a_title():
    h = histogram()
    ax = h.plot(label="teacher activations", title="Teacher activations: m, layer 3")
    assert ax.get_title() == "Teacher activations: m, layer 3"
    box = ax.get_legend().get_title().get_text()
    assert "NaN: 1" in box and "+inf: 1" in box and "zero: 1" in box and "4,000" in box
    d = firing_density(stats16())
    ax = d.plot(title="Firing frequency: x")
    assert ax.get_title() == "Firing frequency: x" and "1 dead" in ax.get_legend().get_title().get_text()


def test_histogram_display_bins(run):
    h = histogram()
    with pytest.raises(ValueError, match="power of two"):
        h.plot(bins_per_octave=3)
    coarse = h.plot(bins_per_octave=1)
    fine = h.plot(bins_per_octave=64)
    assert len(coarse.patches[0].get_path().vertices) < len(fine.patches[0].get_path().vertices)


def test_report_titles_the_activation_histogram_by_source_kind(tmp_path, run):
    from pyfloor.report import _activation_title

    assert _activation_title(run.source)[0] == "Activations: in-memory array (800, 16)"
    assert (
        _activation_title("teacher gpt2 at transformer.h.3 over t.npy")[0]
        == "Teacher activations: gpt2, transformer.h.3"
    )
    assert _activation_title("activations /x/acts.npy (10 tokens, d=4)")[0] == "Activations from file acts.npy"
    paths = write_measurement_report(run, tmp_path)
    for key in ("floor_plot", "importance_plot", "density_plot", "activation_plot"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"
    assert not plt.get_fignums()  # the report closes the figures it made


# -- the toy report's plots ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    """A toy report of made-up observations (no training): two configurations of 20 features, one of 12."""
    from test_toy import TINY, synthetic_result

    from pyfloor.toy import build_report

    results = [synthetic_result(0.8, 5, 1.0), synthetic_result(0.95, 5, 1.2), synthetic_result(0.9, 4, 0.9, n=12)]
    return build_report(results, TINY)


def test_toy_floors_draw_into_given_axes_and_return_them(toy, tmp_path):
    from pyfloor.toy import plot_toy_floors

    _, axes = plt.subplots(1, 3)
    assert plot_toy_floors(toy, ax=axes) == list(axes)
    assert all(a.has_data() for a in axes)
    assert "d* = " in axes[0].get_title() and "n=20" in axes[0].get_title() and "α=0.8" in axes[0].get_title()
    _, ax = plt.subplots()
    assert plot_toy_floors(toy, ax=ax, n_features=12) == [ax]  # one configuration, one Axes
    with pytest.raises(ValueError, match="3 panels; ax holds 1"):
        plot_toy_floors(toy, ax=ax)
    made = plot_toy_floors(toy, n_features=20)
    assert len(made) == 2 and made[0].figure is made[1].figure


def test_toy_summary_draws_into_given_axes_and_returns_them(toy):
    from pyfloor.toy import plot_toy_summary

    n = 2 + (toy["summary"]["best"] not in (None, "eq2"))
    _, axes = plt.subplots(1, n)
    assert plot_toy_summary(toy, ax=axes) == list(axes)
    assert all(a.has_data() for a in axes)
    with pytest.raises(ValueError, match="panels"):
        plot_toy_summary(toy, ax=axes[:1])


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_toy_plots_save_by_suffix(toy, tmp_path, suffix):
    from pyfloor.toy import plot_toy_floors, plot_toy_summary

    plot_toy_floors(toy, str(tmp_path / f"f{suffix}"), n_features=20)  # the CLI's call
    plot_toy_summary(toy, str(tmp_path / f"s{suffix}"))
    for name in ("f", "s"):
        head = (tmp_path / f"{name}{suffix}").read_bytes()[:200]
        assert head.startswith(MAGIC[suffix]) if suffix in MAGIC else (b"<svg" in head or head.startswith(b"<?xml"))
    assert not plt.get_fignums()  # figures they made and saved are closed


@pytest.mark.parametrize("bad", ["f.gif", "f.jpg", "f"])
def test_toy_plots_refuse_a_bad_suffix(toy, tmp_path, bad):
    from pyfloor.toy import plot_toy_floors, plot_toy_summary

    for plot in (plot_toy_floors, plot_toy_summary):
        with pytest.raises(ValueError, match=r"\.png, \.pdf, \.svg"):
            plot(toy, tmp_path / bad)
    assert not (tmp_path / bad).exists()
