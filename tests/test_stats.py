"""FeatureStats (exact, mergeable) and the Measurement derived from it."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfloor import theory
from pyfloor.stats import CheckpointError, FeatureStats, Measurement, load_measurement


def sparse_latents(rng, n, m, density=0.1):
    z = rng.exponential(size=(n, m)) * (rng.random((n, m)) < density)
    return z.astype(np.float32)


def test_from_activations_matches_definitions():
    rng = np.random.default_rng(0)
    z = sparse_latents(rng, 500, 37)
    s = FeatureStats.from_activations(z)
    z64 = z.astype(np.float64)
    assert s.n_tokens == 500 and s.n_latents == 37 and s.n_nonfinite == 0
    np.testing.assert_array_equal(s.fire_count, (z > 0).sum(0))
    np.testing.assert_allclose(s.act_sum, z64.sum(0), rtol=1e-15)
    np.testing.assert_allclose(s.act_sq_sum, (z64**2).sum(0), rtol=1e-15)
    np.testing.assert_array_equal(s.act_max, z64.max(0))
    assert s.fire_count.dtype == np.int64 and s.act_sum.dtype == np.float64
    np.testing.assert_allclose(s.importance, (z64**2).mean(0))
    np.testing.assert_allclose(s.frequency, (z > 0).mean(0))


def test_from_activations_accepts_leading_dimensions():
    rng = np.random.default_rng(1)
    z = sparse_latents(rng, 24, 5).reshape(2, 3, 4, 5)
    assert FeatureStats.from_activations(z) == FeatureStats.from_activations(z.reshape(24, 5))


def test_nonfinite_tokens_are_counted_and_excluded():
    rng = np.random.default_rng(2)
    z = sparse_latents(rng, 10, 4)
    bad = z.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    s = FeatureStats.from_activations(bad)
    assert s.n_nonfinite == 2 and s.n_tokens == 8
    assert s == FeatureStats.from_activations(np.delete(z, [3, 7], axis=0)).merge(
        FeatureStats(0, np.zeros(4, np.int64), np.zeros(4), np.zeros(4), np.zeros(4), n_nonfinite=2)
    )


def test_negative_latents_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        FeatureStats.from_activations(np.array([[0.5, -0.1]]))


@settings(max_examples=40)
@given(st.integers(0, 60), st.integers(1, 9), st.integers(0, 2**32 - 1), st.data())
def test_merge_of_halves_equals_whole(n, m, seed, data):
    rng = np.random.default_rng(seed)
    z = sparse_latents(rng, n, m, density=0.3)
    cut = data.draw(st.integers(0, n))
    whole = FeatureStats.from_activations(z)
    merged = FeatureStats.from_activations(z[:cut]).merge(FeatureStats.from_activations(z[cut:]))
    assert merged.n_tokens == whole.n_tokens
    np.testing.assert_array_equal(merged.fire_count, whole.fire_count)  # counts: exact
    np.testing.assert_array_equal(merged.act_max, whole.act_max)
    np.testing.assert_allclose(merged.act_sum, whole.act_sum, rtol=1e-12)
    np.testing.assert_allclose(merged.act_sq_sum, whole.act_sq_sum, rtol=1e-12)


def test_merge_is_associative_and_has_identity():
    rng = np.random.default_rng(3)
    parts = [FeatureStats.from_activations(sparse_latents(rng, 30, 6)) for _ in range(3)]
    empty = FeatureStats.empty(6)
    assert parts[0] + empty == parts[0]
    left = (parts[0] + parts[1]) + parts[2]
    assert left.n_tokens == 90
    assert left.merge() == left
    assert parts[0].merge(parts[1], parts[2]) == left


def test_merge_refuses_mismatched_latents():
    with pytest.raises(ValueError, match="6 and 7 latents"):
        FeatureStats.empty(6).merge(FeatureStats.empty(7))


def test_counts_stay_exact_beyond_float32_range():
    big = 2**24 + 1  # float32 can no longer count one more token here
    s = FeatureStats(big, np.array([big, 1], np.int64), np.zeros(2), np.zeros(2), np.zeros(2))
    t = s + FeatureStats(1, np.array([1, 0], np.int64), np.zeros(2), np.zeros(2), np.zeros(2))
    assert t.n_tokens == big + 1 and t.fire_count[0] == big + 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fire_count=np.zeros(3, np.int64)), "one entry per latent"),
        (dict(fire_count=np.array([0, 0], np.float64) + 0.5), "integers"),
        (dict(n_tokens=-1), "n_tokens must be an integer >= 0"),
        (dict(n_tokens=True), "n_tokens must be an integer >= 0; got True"),
        (dict(fire_count=np.array([5, 0], np.int64)), r"\[0, n_tokens=2\]"),
    ],
)
def test_inconsistent_stats_are_rejected(kwargs, match):
    base = dict(
        n_tokens=2, fire_count=np.zeros(2, np.int64), act_sum=np.zeros(2), act_sq_sum=np.zeros(2), act_max=np.zeros(2)
    )
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FeatureStats(**base)


# -- files --------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(4)
    s = FeatureStats.from_activations(sparse_latents(rng, 100, 13))
    s.n_nonfinite = 3
    path = tmp_path / "stats.safetensors"
    s.save(path, metadata={"step": 12})
    loaded, meta = FeatureStats.load_with_metadata(path)
    assert loaded == s and meta == {"step": "12"}
    assert FeatureStats.from_dict(s.to_dict()) == s
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]  # no temporary left behind


def test_load_refuses_foreign_corrupt_and_newer_files(tmp_path):
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": np.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a pyfloor FeatureStats"):
        FeatureStats.load(foreign)

    good = tmp_path / "good.safetensors"
    FeatureStats.empty(4).save(good)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt"):
        FeatureStats.load(corrupt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a file at all")
    with pytest.raises(CheckpointError):
        FeatureStats.load(garbage)

    newer = tmp_path / "newer.safetensors"
    save_file(FeatureStats.empty(2).to_dict(), str(newer), metadata={"format": "pyfloor.FeatureStats", "version": "99"})
    with pytest.raises(CheckpointError, match="newer pyfloor"):
        FeatureStats.load(newer)

    with pytest.raises(CheckpointError, match="no such FeatureStats file"):
        FeatureStats.load(tmp_path / "missing.safetensors")


def test_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "stats.safetensors"
    first = FeatureStats.from_activations(np.array([[1.0, 0.0]]))
    first.save(path)
    import safetensors.numpy

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        FeatureStats.empty(2).save(path)
    assert FeatureStats.load(path) == first
    assert len(list(tmp_path.iterdir())) == 1


# -- Measurement ---------------------------------------------------------------------------------
def test_measurement_from_stats_follows_the_paper_definitions():
    rng = np.random.default_rng(5)
    n, m = 2000, 50
    density = np.where(np.arange(m) < 40, rng.uniform(0.01, 0.2, m), 0.0)  # 10 dead latents
    z = rng.exponential(size=(n, m)) * (rng.random((n, m)) < density)
    stats = FeatureStats.from_activations(z)
    meas = Measurement.from_stats(stats)
    freq = (z > 0).mean(0)
    alive = freq > 1e-5
    l0 = (z > 0).sum() / n
    assert meas.n_features == alive.sum() == 40
    assert meas.mean_l0 == pytest.approx(l0)
    assert meas.alpha == pytest.approx(1 - l0 / alive.sum())
    imp = (z**2).mean(0)[alive]
    np.testing.assert_allclose(meas.importances, np.sort(imp)[::-1])
    np.testing.assert_allclose(meas.importances, (z**2).mean(0)[meas.feature_ids])
    assert meas.capacity == theory.capacity(meas.alpha)
    assert meas.critical_width == pytest.approx(40 / meas.capacity)
    np.testing.assert_allclose(meas.floor([0, 1, 5]), theory.importance_floor([0, 1, 5], meas.alpha, meas.importances))


def test_alive_threshold_is_a_parameter():
    z = np.zeros((1000, 3))
    z[:, 0] = 1.0
    z[:5, 1] = 1.0  # frequency 5e-3
    z[:1, 2] = 1.0  # frequency 1e-3
    stats = FeatureStats.from_activations(z)
    assert Measurement.from_stats(stats).n_features == 3
    assert Measurement.from_stats(stats, alive_threshold=2e-3).n_features == 2
    with pytest.raises(ValueError, match="alive_threshold"):
        Measurement.from_stats(stats, alive_threshold=1.5)


def test_measurement_errors_are_clear():
    with pytest.raises(ValueError, match="no tokens"):
        Measurement.from_stats(FeatureStats.empty(3))
    dense = FeatureStats.from_activations(np.ones((10, 3)))
    with pytest.raises(ValueError, match="not below F"):
        Measurement.from_stats(dense)
    with pytest.raises(ValueError, match="exactly one of"):
        Measurement.from_summary(100)
    with pytest.raises(ValueError, match="must be below n_features"):
        Measurement.from_summary(100, mean_l0=150)
    with pytest.raises(ValueError, match="alpha"):
        Measurement.from_summary(100, alpha=1.2)
    with pytest.raises(ValueError, match="no importances"):
        Measurement.from_summary(100, alpha=0.9).floor(3)


def test_measurement_json_round_trip(tmp_path):
    meas = Measurement.from_importances([0.1, 3.0, 1.0], mean_l0=0.3, feature_ids=[7, 2, 9], source="x")
    np.testing.assert_array_equal(meas.importances, [3.0, 1.0, 0.1])
    np.testing.assert_array_equal(meas.feature_ids, [2, 9, 7])
    path = tmp_path / "m.json"
    meas.save_json(path)
    back = load_measurement(path)
    assert back.to_dict() == meas.to_dict()


def test_load_measurement_from_stats_file(tmp_path):
    rng = np.random.default_rng(6)
    stats = FeatureStats.from_activations(sparse_latents(rng, 400, 20))
    path = tmp_path / "s.safetensors"
    stats.save(path)
    assert load_measurement(path).to_dict() == Measurement.from_stats(stats, source=str(path)).to_dict()


def test_load_measurement_rejects_unknown_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="unrecognised JSON"):
        load_measurement(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="neither"):
        load_measurement(path)


def test_measurement_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="feature_ids has 5 entries for 3"):
        Measurement.from_importances([3.0, 2.0, 1.0], mean_l0=0.5, feature_ids=[0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="inconsistent measurement"):
        Measurement(n_features=100, mean_l0=50.0, alpha=0.95)
