"""Regression tests for the findings of the atheris fuzz targets (tools/fuzz/, run by tools/fuzz.sh).

Each test is one finding: an input that crashed with an exception outside pyfloor's documented
types (KeyError, AttributeError, OverflowError, RecursionError, RuntimeError, safetensors' own
error...), allocated memory for a size no data backed, or was silently accepted with a wrong value.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pyfloor import CheckpointError, FeatureStats, Measurement, load_measurement
from pyfloor.histograms import Binning, FeatureHistograms, Histogram
from pyfloor.sae import SAE, load_sae

B = Binning(3, -10, 10)


# -- histograms: from_dict / unpickle -------------------------------------------------------------
def test_histogram_from_dict_refuses_uint64_counts_beyond_int64():
    counts = np.zeros(B.n_bins, np.uint64)
    counts[5] = 2**64 - 1  # used to wrap to a count of -1
    with pytest.raises(ValueError, match="fit int64"):
        Histogram.from_dict({"counts": counts, "binning": B.to_array()})


def test_feature_histograms_from_dict_checks_the_shape_before_allocating():
    # zero-size counts with 10^7 rows used to allocate 26 GB (MemoryError) before the shape check
    with pytest.raises(ValueError, match="binning needs"):
        FeatureHistograms.from_dict({"counts": np.zeros((10**7, 0), np.int64), "binning": B.to_array()})


@pytest.mark.parametrize("binning", [[2**62, -10, 10], [3, -200, 10], [3, 10, 10], [11, 0, 1]])
def test_from_dict_names_a_binning_out_of_range(binning):
    # a value beyond C int used to raise pybind11's "incompatible constructor arguments" TypeError
    with pytest.raises(ValueError, match="binning"):
        Histogram.from_dict({"counts": np.zeros(B.n_bins, np.int64), "binning": np.array(binning, np.int64)})


@pytest.mark.parametrize("state", [None, 3, "counts"])
def test_from_dict_and_setstate_of_a_non_mapping(state):
    with pytest.raises(TypeError, match="mapping"):
        Histogram.from_dict(state)
    with pytest.raises(TypeError, match="mapping"):
        Histogram.__new__(Histogram).__setstate__(state)


# -- FeatureStats files -----------------------------------------------------------------------------
def _stats_dict(counters):
    s = FeatureStats(5, np.array([1, 2]), np.ones(2), np.ones(2), np.ones(2)).to_dict()
    s["counters"] = counters
    return s


@pytest.mark.parametrize("counters", [np.array([2**64 - 1, 0], np.uint64), np.array([5.5, 0]), np.array([np.inf, 0])])
def test_feature_stats_counters_must_be_non_negative_int64(counters, tmp_path):
    # uint64 2^64-1 used to give n_tokens = 18446744073709551615, 5.5 was truncated, inf: OverflowError
    with pytest.raises(ValueError, match="counters|n_tokens"):
        FeatureStats.from_dict(_stats_dict(counters))
    from safetensors.numpy import save_file as np_save

    path = tmp_path / "s.safetensors"
    np_save(_stats_dict(counters), str(path), metadata={"format": "pyfloor.FeatureStats", "version": "1"})
    with pytest.raises(CheckpointError):
        FeatureStats.load(path)


# -- measurement JSON -------------------------------------------------------------------------------
def _json(tmp_path, obj):
    path = tmp_path / "m.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_deeply_nested_json_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="JSON"):  # was RecursionError
        load_measurement(_json(tmp_path, "[" * 100_000 + "]" * 100_000))


GOOD = {"format": "pyfloor.Measurement", "n_features": 2, "mean_l0": 1.0, "alpha": 0.5}


@pytest.mark.parametrize(
    "change",
    [
        {"n_features": None},  # TypeError
        {"n_features": 0, "mean_l0": 0.0},  # ZeroDivisionError
        {"version": [1]},  # TypeError
        {"alive_threshold": [1]},  # TypeError when asked for another threshold
        {"n_tokens": "abc"},  # silently kept as a str
        {"n_latents": -3},  # silently kept
        {"n_latents": 1e300},  # read as a 301-digit int that to_dict -> from_dict then refused
        {"importances": [2, 1], "feature_ids": [1.7, 0]},  # silently truncated to 1
        {"importances": [2, 1], "feature_ids": [2**70, 0]},  # OverflowError
        {"feature_ids": []},  # no id per feature, silently kept
        {"notes": 5},  # TypeError
    ],
)
def test_measurement_json_fields_are_checked(tmp_path, change):
    with pytest.raises(ValueError):
        load_measurement(
            _json(tmp_path, {**GOOD, **change}), alive_threshold=1e-6 if "alive_threshold" in change else None
        )


def test_measurement_json_without_a_required_key(tmp_path):
    with pytest.raises(ValueError, match="lacks n_features"):  # was KeyError
        load_measurement(_json(tmp_path, {k: v for k, v in GOOD.items() if k != "n_features"}))
    with pytest.raises(ValueError, match="n_features"):  # was OverflowError
        load_measurement(_json(tmp_path, json.dumps(GOOD).replace('"n_features": 2', '"n_features": 1e400')))


def test_measurement_with_zero_features():
    with pytest.raises(ValueError, match="n_features"):  # was ZeroDivisionError
        Measurement(n_features=0, mean_l0=0.0, alpha=0.5)


@pytest.mark.parametrize("field", ["sorted_importance", "alpha"])
def test_published_json_with_an_integer_beyond_float64(tmp_path, field):
    d = {"F_alive": 3, "avg_active": 1, "sorted_importance": [3, 2, 1]}
    text = json.dumps(d) if field == "alpha" else json.dumps(d).replace("[3, 2, 1]", "[" + "9" * 400 + ", 2, 1]")
    if field == "alpha":
        text = text[:-1] + ', "alpha": ' + "9" * 400 + "}"
    with pytest.raises(ValueError):  # was OverflowError
        load_measurement(_json(tmp_path, text))


# -- SAE files --------------------------------------------------------------------------------------
def _pyfloor_sae(tmp_path, config: str):
    sae = SAE(4, 8)
    path = tmp_path / "sae.safetensors"
    save_file(
        {k: v.detach().contiguous() for k, v in sae.state_dict().items()},
        str(path),
        metadata={"format": "pyfloor.SAE", "version": "1", "config": config},
    )
    return path


@pytest.mark.parametrize(
    "config",
    [
        '{"d_in": 1e400, "n_latents": 8, "activation": "relu", "k": null}',  # OverflowError
        '{"d_in": 1000000, "n_latents": 1000000, "activation": "relu", "k": null}',  # tried to allocate 4 TB
        '{"d_in": 4.0, "n_latents": 8.5, "activation": "relu", "k": null}',
    ],
)
def test_pyfloor_sae_config_is_checked_against_the_weights(tmp_path, config):
    with pytest.raises(CheckpointError, match="W_enc"):
        load_sae(_pyfloor_sae(tmp_path, config))


def _weights(d=4, m=8):
    sae = SAE(d, m)
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def _saelens(tmp_path, cfg, tensors, name="sae_weights.safetensors"):
    (tmp_path / "cfg.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name))
    return tmp_path


@pytest.mark.parametrize("cfg", ["{", "[]", '"x"'])
def test_saelens_cfg_that_is_not_a_json_object(tmp_path, cfg):
    with pytest.raises(CheckpointError, match="cfg.json"):  # JSONDecodeError, AttributeError
        load_sae(_saelens(tmp_path, cfg, _weights()))


def test_saelens_missing_tensor_or_key(tmp_path):
    t = _weights()
    del t["b_dec"]
    with pytest.raises(CheckpointError, match="b_dec"):  # was KeyError
        load_sae(_saelens(tmp_path, {}, t))
    with pytest.raises(CheckpointError, match="'k'"):  # was KeyError
        load_sae(_saelens(tmp_path, {"architecture": "topk"}, _weights()))


@pytest.mark.parametrize("k", [2.7, "2", None, True])
def test_topk_k_must_be_an_integer(tmp_path, k):
    with pytest.raises(CheckpointError, match="k must be an integer"):  # 2.7 was silently truncated to 2
        load_sae(_saelens(tmp_path, {"architecture": "topk", "k": k}, _weights()))


def test_saelens_architecture_that_is_not_a_string(tmp_path):
    with pytest.raises(ValueError, match="architecture"):  # was TypeError: unhashable type: 'list'
        load_sae(_saelens(tmp_path, {"architecture": ["topk"]}, _weights()))


def test_saelens_corrupt_weights_file(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    (tmp_path / "sae_weights.safetensors").write_bytes(b"garbage!" * 3)
    with pytest.raises(CheckpointError, match="corrupt"):  # was safetensors' SafetensorError
        load_sae(tmp_path)


def test_saelens_standard_sae_with_a_threshold_tensor_loads(tmp_path):
    t = {**_weights(), "threshold": torch.zeros(8)}  # was AttributeError: NoneType has no copy_
    sae = load_sae(_saelens(tmp_path, {}, t))
    assert sae.activation == "relu" and sae.threshold is None


@pytest.mark.parametrize(
    "change",
    [
        {"b_dec": torch.zeros(0)},  # RuntimeError in b_dec @ W_enc
        {"W_enc": torch.zeros(2, 4, 8)},  # "too many values to unpack"
        {"W_enc": torch.zeros(4, 8, dtype=torch.int64)},  # RuntimeError: only floating tensors require grad
        {"threshold": torch.zeros(3)},  # RuntimeError: size mismatch
    ],
)
def test_saelens_inconsistent_weights_are_value_errors(tmp_path, change):
    cfg = {"apply_b_dec_to_input": False, "architecture": "jumprelu" if "threshold" in change else "standard"}
    t = {**_weights(), "threshold": torch.zeros(8), **change}
    with pytest.raises(ValueError, match="SAE weight|threshold|inconsistent"):
        load_sae(_saelens(tmp_path, cfg, t))


def test_saelens_mixed_dtypes_load(tmp_path):
    t = {**_weights(), "b_dec": torch.zeros(4, dtype=torch.bfloat16)}  # was RuntimeError in b_dec @ W_enc
    sae = load_sae(_saelens(tmp_path, {"apply_b_dec_to_input": False}, t))
    assert sae.b_dec.dtype == torch.float32


def test_sparsify_checks(tmp_path):
    t = _weights()
    sp = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": t["b_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    with pytest.raises(CheckpointError, match="'k'"):  # was KeyError
        load_sae(_saelens(tmp_path, {}, sp, "sae.safetensors"))
    with pytest.raises(ValueError, match="encoder.weight"):  # was "not enough values to unpack"
        load_sae(_saelens(tmp_path, {"k": 2}, {**sp, "encoder.weight": torch.zeros(8)}, "sae.safetensors"))


# -- measurement checkpoints --------------------------------------------------------------------------
def _checkpoint(tmp_path, change=None, fingerprint=None):
    from pyfloor import measure

    fp = {"source": "x", "rank": 0}
    state = measure._State(3, 2, torch.device("cpu"), histograms=True)
    tensors = {**state.tensors(), **(change or {})}
    path = tmp_path / "ckpt.safetensors"
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(path),
        metadata={
            "format": measure.CHECKPOINT_FORMAT,
            "version": str(measure.CHECKPOINT_VERSION),
            "fingerprint": json.dumps(fp if fingerprint is None else fingerprint),
        },
    )
    fresh = measure._State(3, 2, torch.device("cpu"), histograms=True)
    return lambda: measure._load_checkpoint(path, fresh, fp)


def test_checkpoint_fingerprint_that_is_not_an_object(tmp_path):
    with pytest.raises(CheckpointError, match="fingerprint"):  # was AttributeError: 'list' has no 'get'
        _checkpoint(tmp_path, fingerprint=[1])()


def test_checkpoint_histogram_of_another_dtype(tmp_path):
    b = torch.zeros(328, dtype=torch.bfloat16)  # was TypeError from tensor.numpy()
    with pytest.raises(CheckpointError, match="int64"):
        _checkpoint(tmp_path, {"hist_features.counts": b.expand(3, 328).contiguous()})()


def test_checkpoint_histogram_of_another_shape(tmp_path):
    h = FeatureHistograms(5).to_dict()  # 5 features in a run of 3: was loaded silently
    change = {f"hist_features.{k}": torch.from_numpy(v) for k, v in h.items()}
    with pytest.raises(CheckpointError, match="features histogram"):
        _checkpoint(tmp_path, change)()


def test_pyfloor_sae_with_an_infinite_k(tmp_path):
    path = _pyfloor_sae(tmp_path, '{"d_in": 4, "n_latents": 8, "activation": "topk", "k": 1e400}')
    with pytest.raises(CheckpointError, match="inconsistent SAE file"):  # was OverflowError
        load_sae(path)
