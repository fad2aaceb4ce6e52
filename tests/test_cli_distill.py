"""The distill and calibrate commands: students of several widths from one run, floors, calibration."""

import json

import numpy as np
import torch
from test_layers import fitted_sae
from test_measure import token_sequences

from pyfloor.cli import main
from pyfloor.sources import TeacherSource


def test_distill_then_calibrate(saved_teacher, tiny_neox, tmp_path, capsys):
    torch.set_num_threads(1)
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(1, 97, size=6000).astype(np.int64))
    out = tmp_path / "students"
    argv = ["distill", "--model", str(saved_teacher), "--tokens", str(tokens), "--seq-len", "16"]
    argv += ["--widths", "16,32,48", "--steps", "24", "--eval-every", "4", "--eval-tokens", "320"]
    argv += ["--batch-tokens", "64", "--lr", "3e-3", "--out", str(out), "--quiet", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["floors"], key=int) == ["16", "32", "48"]
    for floor in summary["floors"].values():
        assert np.isfinite(floor["paper"]) and np.isfinite(floor["l_inf"]) and "flattened" in floor
    assert (out / "eval_curves.png").is_file() and (out / "student-32" / "config.json").is_file()
    assert json.loads((out / "student-32" / "config.json").read_text())["hidden_size"] == 32

    probe = TeacherSource(tiny_neox, 1, token_sequences(), batch_tokens=64)
    fitted_sae(probe, "gpt_neox.layers.1", m=400).save(tmp_path / "sae.safetensors")  # d* above the widths
    measure = ["measure", "--model", str(saved_teacher), "--layer", "1", "--tokens", str(tokens), "--seq-len", "16"]
    measure += ["--sae", str(tmp_path / "sae.safetensors"), "--out", str(tmp_path / "m"), "--quiet", "--bootstrap", "0"]
    assert main(measure) == 0
    capsys.readouterr()
    assert (
        main(["calibrate", str(out), "--measurement", str(tmp_path / "m"), "--out", str(tmp_path / "c"), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["predictors"] and (tmp_path / "c" / "calibration.png").is_file()
    for p in result["predictors"].values():
        assert p["widths"] == [16, 32, 48] and -1 <= (p["spearman"] if p["spearman"] is not None else 0) <= 1

    assert main(argv) == 1  # the checkpoint is there: resume it or start over
    assert "already exists" in capsys.readouterr().err
