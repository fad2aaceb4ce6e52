"""The measuring commands: train-sae, measure (with resume after a kill), report."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pyfloor.cli import main
from pyfloor.sae import SAE
from pyfloor.stats import FeatureStats


def sparse_activations(n, d=16, n_feat=48, p=0.04, seed=0):
    """Activations made of sparse non-negative combinations of unit directions."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n_feat, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coeff = rng.random((n, n_feat)) * (rng.random((n, n_feat)) < p)
    return (coeff @ dirs).astype(np.float32)


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, sparse_activations(20_000))
    return path


@pytest.fixture(scope="module")
def trained_sae(acts, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "sae.safetensors"
    code = main(
        [
            "train-sae",
            "--activations",
            str(acts),
            "--latents",
            "64",
            "--l1",
            "3e-3",
            "--lr",
            "3e-3",
            "--batch-tokens",
            "512",
            "--steps",
            "150",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_train_sae_writes_a_loadable_sae(trained_sae):
    sae = SAE.load(trained_sae)
    assert (sae.d_in, sae.n_latents, sae.activation) == (16, 64, "relu")


def test_measure_writes_the_report(acts, trained_sae, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "measure",
            "--activations",
            str(acts),
            "--sae",
            str(trained_sae),
            "--batch-tokens",
            "1000",
            "--bootstrap",
            "8",
            "--widths",
            "1,2,4,8",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "critical width" in printed or "d*" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["n_tokens"] == 20_000 and report["measurement"]["n_features"] > 0
    assert [r["width"] for r in report["intervals"]["floors"]] == [1, 2, 4, 8]
    for name in (
        "stats.safetensors",
        "measurement.json",
        "report.md",
        "floor_curve.png",
        "importance_rank.png",
        "firing_density.png",
    ):
        assert (out / name).is_file(), name
    stats = FeatureStats.load(out / "stats.safetensors")
    assert stats.n_tokens == 20_000
    # the saved statistics feed predict and report
    assert main(["predict", str(out / "stats.safetensors"), "--json"]) == 0  # statistics alone: the paper's count
    paper = report["estimators"]["paper"]["measurement"]
    assert json.loads(capsys.readouterr().out)["measurement"]["n_features"] == paper["n_features"]
    assert main(["predict", str(out / "measurement.json"), "--json"]) == 0  # the lead estimator's measurement
    assert json.loads(capsys.readouterr().out)["measurement"]["n_features"] == report["measurement"]["n_features"]
    assert report["estimator"] == "merged" and set(report["estimators"]) == {"merged", "paper"}
    assert report["measurement"]["n_features"] < paper["n_features"]  # merged and tail-cut latents are not counted
    md = (out / "report.md").read_text()
    assert "## Estimators of the teacher's features" in md and "## Sensitivity of the merged estimator" in md
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_measure_refuses_to_clobber_and_names_bad_input(acts, trained_sae, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "measure",
        "--activations",
        str(acts),
        "--sae",
        str(trained_sae),
        "--out",
        str(out),
        "--quiet",
        "--max-tokens",
        "2000",
        "--batch-tokens",
        "1000",
    ]
    assert main(args) == 0
    assert main(args) == 1  # the checkpoint on disk, not the arguments, is in the way
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["measure", "--sae", str(trained_sae), "--out", str(out)]) == 2
    assert "activation source" in capsys.readouterr().err
    assert (
        main(["measure", "--activations", str(acts), "--sae", str(tmp_path / "none.safetensors"), "--out", str(out)])
        == 1
    )
    assert "no such" in capsys.readouterr().err


@pytest.mark.numerics
def test_resume_after_kill_is_bit_identical(tmp_path, trained_sae):
    big = tmp_path / "big.npy"
    np.save(big, sparse_activations(300_000, seed=1))
    base = [
        sys.executable,
        "-m",
        "pyfloor",
        "measure",
        "--activations",
        str(big),
        "--sae",
        str(trained_sae),
        "--batch-tokens",
        "500",
        "--checkpoint-every",
        "2000",
        "--bootstrap",
        "4",
        "--quiet",
    ]
    whole = tmp_path / "whole"
    subprocess.run(base + ["--out", str(whole)], check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (killed / "stats.safetensors").exists(), "the run ended before it was killed"
    subprocess.run(base + ["--out", str(killed), "--resume"], check=True, capture_output=True)
    assert FeatureStats.load(killed / "stats.safetensors") == FeatureStats.load(whole / "stats.safetensors")


def test_measure_a_teacher_from_a_local_directory(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model_dir = tmp_path / "neox"
    transformers.GPTNeoXForCausalLM(cfg).save_pretrained(model_dir)
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(1, 97, size=4000).astype(np.int64))
    sae = SAE(32, 40, "relu")
    with torch.no_grad():
        sae.W_enc.mul_(40.0)
        sae.b_enc.fill_(-0.8)
    sae.save(tmp_path / "sae.safetensors")
    code = main(
        [
            "measure",
            "--model",
            str(model_dir),
            "--layer",
            "1",
            "--tokens",
            str(tokens),
            "--seq-len",
            "32",
            "--batch-tokens",
            "512",
            "--sae",
            str(tmp_path / "sae.safetensors"),
            "--out",
            str(tmp_path / "m"),
            "--bootstrap",
            "4",
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_tokens"] == 4000 and "gpt_neox.layers.1" in report["source"]
    # few tokens and replicates: bias-corrected floor intervals that exclude their estimate are plotted too
    assert (
        main(
            [
                "measure",
                "--model",
                str(model_dir),
                "--layer",
                "1",
                "--tokens",
                str(tokens),
                "--seq-len",
                "32",
                "--batch-tokens",
                "512",
                "--sae",
                str(tmp_path / "sae.safetensors"),
                "--out",
                str(tmp_path / "short"),
                "--bootstrap",
                "4",
                "--max-tokens",
                "1000",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    short = json.loads(capsys.readouterr().out)
    assert any(not f["low"] <= f["estimate"] <= f["high"] for f in short["intervals"]["floors"])
    assert (tmp_path / "short" / "floor_curve.png").is_file()
    assert (
        main(
            [
                "measure",
                "--model",
                str(model_dir),
                "--layer",
                "7",
                "--tokens",
                str(tokens),
                "--sae",
                str(tmp_path / "sae.safetensors"),
                "--out",
                str(tmp_path / "m2"),
            ]
        )
        == 1
    )
    assert "blocks 0 … 2" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()  # the failed run leaves no empty output folder


def test_a_family_is_trained_and_measured_from_one_pass_each(acts, tmp_path, capsys):
    from pyfloor.family import load_family
    from pyfloor.sae import TrainConfig, train_sae
    from pyfloor.sources import ArraySource

    fam = tmp_path / "fam"
    args = ["train-sae", "--activations", str(acts), "--batch-tokens", "1000", "--lr", "3e-3", "--steps", "30"]
    args += ["--latents", "32,64", "--l1", "0.01,0.1", "--seeds", "0,1", "-o", str(fam), "--quiet", "--json"]
    assert main(args) == 0
    listed = json.loads(capsys.readouterr().out)["members"]
    assert len(listed) == 8 and {m["n_latents"] for m in listed} == {32, 64}
    members = load_family(fam)
    # a member equals the SAE trained alone on the same batches
    config, sae = members[5][0]["config"], members[5][1]
    alone, _ = train_sae(ArraySource([np.load(acts)], 1000), 16, TrainConfig(**config))
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in sae.state_dict().items())
    assert main(args) == 1 and "already holds an SAE family" in capsys.readouterr().err
    out = tmp_path / "run"
    assert (
        main(
            ["measure", "--activations", str(acts), "--sae", str(fam), "--batch-tokens", "1000"]
            + ["--bootstrap", "4", "--out", str(out), "--quiet", "--no-histograms"]
        )
        == 0
    )
    assert "◀ lead" in capsys.readouterr().out
    summary = json.loads((out / "family.json").read_text())
    assert len(summary["members"]) == 8 and summary["lead"]["member"] in {p.stem for p in fam.glob("*.safetensors")}
    for row in summary["members"]:
        report = json.loads((out / row["member"] / "report.json").read_text())
        assert report["measurement"]["n_features"] == row["merged.n_features"]
        assert report["estimators"]["paper"]["measurement"]["n_features"] == row["paper.n_features"]
        assert report["sae_health"]["fvu_trend"] is not None  # the manifest's training curve reached the check
    assert (out / "family.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["train-sae", "--activations", str(acts), "--latents", "8,16", "-o", str(tmp_path / "f2")]) == 2
    assert "--steps" in capsys.readouterr().err
