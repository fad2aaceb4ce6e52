"""A measurement from SAELens' sparsity.safetensors (log10(freq + 1e-10) of each latent's firing frequency),
checked against F, L0, α, g and d* worked out by hand from the same frequencies."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pyfloor._io import CheckpointError
from pyfloor.interop import measurement_from_sparsity


def write_sparsity(path, freq):
    """The file as SAELens' trainer writes it: float32 log10(freq + 1e-10) under "sparsity"."""
    log10 = torch.log10(torch.tensor(freq, dtype=torch.float32) + 1e-10)
    save_file({"sparsity": log10}, str(path))
    return path


def frequencies(m=4000, seed=0):
    g = np.random.default_rng(seed)
    freq = 10.0 ** g.uniform(-7, -0.5, m)  # from dead-ish to busy latents
    freq[:300] = 0.0  # never fired in the window
    return freq


def test_measurement_matches_the_paper_definitions_by_hand(tmp_path):
    freq = frequencies()
    m = measurement_from_sparsity(write_sparsity(tmp_path / "sparsity.safetensors", freq))
    alive = freq > 1e-5
    F = int(alive.sum())
    L0 = freq.sum()
    alpha = 1 - L0 / F
    g = 1 / ((1 - alpha) * math.log(1 / (1 - alpha)))
    assert m.n_features == F and m.n_latents == 4000
    assert m.mean_l0 == pytest.approx(L0, rel=1e-5)
    assert m.alpha == pytest.approx(alpha, rel=1e-7)
    assert m.capacity == pytest.approx(g, rel=1e-5)
    assert m.critical_width == pytest.approx(F / g, rel=1e-5)
    assert m.alive_threshold == 1e-5 and m.n_tokens is None


def test_no_importances_are_invented_and_the_window_is_stated(tmp_path):
    m = measurement_from_sparsity(write_sparsity(tmp_path / "sparsity.safetensors", frequencies()), n_tokens=8192)
    assert m.importances is None and m.total_importance is None and m.n_tokens == 8192
    with pytest.raises(ValueError, match="no importances"):
        m.floor(256)
    assert "feature-sampling window" in m.source
    assert any("importances unavailable" in n for n in m.notes)
    assert m.to_dict()["importances"] is None


def test_threshold_and_directory(tmp_path):
    freq = np.array([0.5, 0.2, 0.01, 2e-4, 5e-6, 0.0])
    write_sparsity(tmp_path / "sparsity.safetensors", freq)
    m = measurement_from_sparsity(tmp_path, alive_threshold=1e-3)  # a checkpoint directory holding the file
    assert m.n_features == 3
    assert m.mean_l0 == pytest.approx(freq.sum(), rel=1e-5)
    assert m.alpha == pytest.approx(1 - freq.sum() / 3, rel=1e-5)


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"other": torch.zeros(3)}, "no tensor 'sparsity'"),
        ({"sparsity": torch.zeros(2, 2)}, "1-D"),
        ({"sparsity": torch.tensor([-1.0, float("nan")])}, "NaN"),
        ({"sparsity": torch.tensor([-1.0, 0.5])}, "above 0"),
        ({"sparsity": torch.full((4,), -10.0)}, "F = 0"),
        # one latent always on, and 20,000 just below the threshold that add 0.18 to L0: L0 > F = 1
        ({"sparsity": torch.cat([torch.zeros(1), torch.full((20_000,), -5.05)])}, "not below F"),
    ],
)
def test_bad_files_are_named(tmp_path, tensors, match):
    save_file(tensors, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match=match):
        measurement_from_sparsity(tmp_path / "s.safetensors")


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        measurement_from_sparsity(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        measurement_from_sparsity(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="n_tokens"):
        measurement_from_sparsity(write_sparsity(tmp_path / "s.safetensors", [0.1, 0.2, 0.0]), n_tokens=0)


def test_predict_reads_a_sparsity_file(tmp_path, capsys):
    import json

    from pyfloor.cli import main

    freq = frequencies()
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    write_sparsity(ckpt / "sparsity.safetensors", freq)
    assert main(["predict", str(ckpt), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["measurement"]["n_features"] == int((freq > 1e-5).sum())
    assert all(f["floor"] is None for f in summary["floors"])  # no importances in the file, no floors
    assert main(["predict", str(ckpt / "sparsity.safetensors"), "--alive-threshold", "1e-3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measurement"]["n_features"] == int((freq > 1e-3).sum())
