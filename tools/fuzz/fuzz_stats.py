"""Fuzz the statistics and measurement loaders: FeatureStats.load (safetensors) and
pyfloor.load_measurement (FeatureStats files, pyfloor Measurement JSON, published measurement JSON).

Input: one mode byte, then either the file's bytes verbatim (modes 0, 2; the seeds are valid files)
or choices that derive a file from a valid one (modes 1, 3). A load either succeeds, and then the
result is consistent and round-trips through save/load, or raises ValueError (CheckpointError) /
TypeError / FileNotFoundError.

    python tools/fuzz/fuzz_stats.py [libFuzzer args]
"""

from __future__ import annotations

import math
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
from _common import expect_error, shm_dir
from _files import dump_json, fuzzed_file, fuzzed_json

with atheris.instrument_imports():  # pyfloor only: instrumenting numpy is slow
    from pyfloor import FeatureStats, Measurement, load_measurement

DIR = shm_dir("stats")
I64_MAX = np.iinfo(np.int64).max
GOOD_STATS = FeatureStats(
    10,
    np.array([3, 0, 10, 1], np.int64),
    np.array([1.5, 0, 7, 0.25]),
    np.array([2.0, 0, 9, 0.0625]),
    np.array([1.0, 0, 2, 0.25]),
    2,
)
GOOD_TENSORS = {k: np.ascontiguousarray(v) for k, v in GOOD_STATS.to_dict().items()}
GOOD_META = {"format": "pyfloor.FeatureStats", "version": "1", "user.note": "seed"}
GOOD_MEASUREMENT = Measurement.from_importances([4.0, 2.0, 1.0, 0.5], mean_l0=0.5, feature_ids=[7, 1, 3, 0]).to_dict()
GOOD_PUBLISHED = {"F_alive": 4, "avg_active": 0.5, "alpha": 0.875, "g_alpha": 3.9, "sorted_importance": [4, 2, 1, 0.5]}


def check_stats(s: FeatureStats) -> None:
    assert isinstance(s.n_tokens, int) and 0 <= s.n_tokens <= I64_MAX, s.n_tokens
    assert isinstance(s.n_nonfinite, int) and 0 <= s.n_nonfinite <= I64_MAX, s.n_nonfinite
    assert s.fire_count.dtype == np.int64 and s.fire_count.ndim == 1
    for k in ("act_sum", "act_sq_sum", "act_max"):
        a = getattr(s, k)
        assert a.dtype == np.float64 and a.shape == s.fire_count.shape, k
        assert np.all(np.isfinite(a)) and (a.size == 0 or a.min() >= 0), k
    assert s.fire_count.size == 0 or (s.fire_count.min() >= 0 and s.fire_count.max() <= s.n_tokens)
    path = os.path.join(DIR, "roundtrip.safetensors")
    s.save(path)
    assert FeatureStats.load(path) == s, "save -> load changed the statistics"


def check_measurement(m: Measurement) -> None:
    assert isinstance(m.n_features, int) and m.n_features > 0
    assert 0 < m.alpha < 1 and math.isfinite(m.mean_l0) and 0 < m.mean_l0 <= m.n_features  # α ≈ 0 rounds L0 to F
    assert math.isclose(1 - m.mean_l0 / m.n_features, m.alpha, rel_tol=1e-9, abs_tol=1e-12)
    for name in ("n_tokens", "n_latents"):
        v = getattr(m, name)
        assert v is None or (isinstance(v, int) and v >= 0), (name, v)
    assert m.alive_threshold is None or 0 <= m.alive_threshold < 1
    if m.importances is not None:
        imp = m.importances
        assert imp.dtype == np.float64 and imp.shape == (m.n_features,)
        assert np.all(np.isfinite(imp)) and imp.min() >= 0 and np.all(np.diff(imp) <= 0)
        f = m.floor([0, 1, 4, 1000])
        assert np.all(np.diff(f) <= 0) and f[0] == m.total_importance
    if m.feature_ids is not None:
        assert m.feature_ids.dtype == np.int64 and m.feature_ids.min() >= 0
    back = Measurement.from_dict(m.to_dict())
    assert back.n_features == m.n_features and back.alpha == m.alpha and back.mean_l0 == m.mean_l0
    assert (back.importances is None) == (m.importances is None)
    if m.importances is not None:
        assert np.array_equal(back.importances, m.importances)


def write(name: str, data: bytes) -> str:
    path = os.path.join(DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def TestOneInput(data: bytes) -> None:
    mode = data[0] % 4 if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:])
    if mode in (0, 1):
        blob = data[1:] if mode == 0 else fuzzed_file(fdp, GOOD_TENSORS, GOOD_META)
        path = write("stats.safetensors", blob)
        try:
            s = FeatureStats.load(path)
        except Exception as exc:
            expect_error(exc)
        else:
            check_stats(s)
        thr = None if mode == 0 or fdp.ConsumeBool() else fdp.PickValueInList([1e-5, 0.0, 0.5, 1.0, -1, float("nan")])
        loader = lambda: load_measurement(path, alive_threshold=thr)
    else:
        if mode == 2:
            text = data[1:]
        else:
            base = GOOD_MEASUREMENT if fdp.ConsumeBool() else GOOD_PUBLISHED
            text = dump_json(fuzzed_json(fdp, base)).encode()
        path = write("measurement.json", text)
        thr = None if fdp.ConsumeIntInRange(0, 3) else fdp.PickValueInList([1e-5, 0.5, float("nan")])
        loader = lambda: load_measurement(path, alive_threshold=thr)
    try:
        m = loader()
    except Exception as exc:
        expect_error(exc)
        return
    check_measurement(m)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
