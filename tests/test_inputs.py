"""Bad input to the sources, SAE training and the command line: a clear error, nothing destroyed."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from pyfloor._io import atomic_write
from pyfloor.cli import main
from pyfloor.sae import SAE, TrainConfig, load_sae, train_sae
from pyfloor.sources import TeacherSource, TokenSequences, dataset_sequences, text_file_sequences, token_file_sequences


class CharTokenizer:
    """One id per character (ids 3 … 99); ``vocab`` limits which characters get one."""

    eos_token_id, bos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, vocab=None):
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 97 for c in text if self.vocab is None or c in self.vocab]}


# -- sources ---------------------------------------------------------------------------------------
def test_text_files_must_be_utf8_text(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("Friends, Romans, countrymen.\n\nLend me your ears.")
    assert len(text_file_sequences([good], CharTokenizer(), 8)) > 0
    binary = tmp_path / "acts.npy"
    np.save(binary, np.arange(100, dtype=np.float32))
    with pytest.raises(ValueError, match="acts.npy: not a text file"):
        text_file_sequences([good, binary], CharTokenizer(), 8)
    latin1 = tmp_path / "b.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="b.txt: not UTF-8 text"):
        text_file_sequences([latin1], CharTokenizer(), 8)


def test_a_tokenizer_that_yields_no_tokens_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("some text")
    with pytest.raises(ValueError, match="into no tokens"):
        text_file_sequences([path], CharTokenizer(vocab=""), 8)


def test_bin_token_files_need_an_integer_dtype(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(64, dtype=np.uint16).tofile(path)
    assert len(token_file_sequences(path, 8, bin_dtype="uint16")) == 8
    for bad in ("foo", "float32"):
        with pytest.raises(ValueError, match="bin_dtype must name an integer type"):
            token_file_sequences(path, 8, bin_dtype=bad)


def test_a_missing_dataset_column_is_named():
    class Rows(list):
        column_names = ["content", "id"]

    rows = Rows([{"content": "to be or not to be", "id": 0}])
    assert len(dataset_sequences(rows, CharTokenizer(), 8, column="content")) > 0
    with pytest.raises(ValueError, match="no column 'text'; its columns: content, id"):
        dataset_sequences(rows, CharTokenizer(), 8)


def test_token_ids_outside_the_vocabulary_are_refused(tiny_neox):
    ids = torch.randint(1, 97, (4, 8))
    ok = TeacherSource(tiny_neox, 1, TokenSequences(ids, torch.ones_like(ids), "ok"), 32)
    assert sum(b.acts.shape[0] for b in ok.batches()) == 32
    for bad in (97, -1):
        wrong = ids.clone()
        wrong[2, 5] = bad
        src = TeacherSource(tiny_neox, 1, TokenSequences(wrong, torch.ones_like(wrong), "wrong ids"), 32)
        with pytest.raises(ValueError, match=rf"token id {bad} is outside the teacher's vocabulary \[0, 97\)"):
            list(src.batches())


# -- SAE training ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"n_latents": 0}, "n_latents must be an integer >= 1"),
        ({"steps": True}, "steps must be an integer >= 1; got True"),
        ({"l1_coeff": float("nan")}, "l1_coeff must be a finite number"),
        ({"l1_coeff": -1.0}, "l1_coeff must be a finite number"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
    ],
)
def test_train_config_rejects_impossible_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"n_latents": 8, **kwargs})


def test_training_leaves_out_nonfinite_tokens():
    x = torch.randn(600, 6)
    x[5, 2], x[400, 0] = float("nan"), float("inf")
    sae, history = train_sae(list(x.split(200)), 6, TrainConfig(n_latents=12, steps=3))
    assert [s.nonfinite for s in history] == [1, 0, 1]
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert all(np.isfinite(s.loss) for s in history)


def test_a_diverging_loss_stops_training():
    x = torch.randn(200, 6) * 1e30
    with pytest.raises(ValueError, match="training loss is"):
        train_sae([x.float()], 6, TrainConfig(n_latents=12, steps=1, l1_coeff=1e30))


# -- files -----------------------------------------------------------------------------------------
def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "f.bin", lambda tmp: open(tmp, "wb").write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture()
def acts(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32))
    return path


def _error(capsys, code, status=2):
    """The message of a failed command; ``status`` 2: a usage error, 1: the run failed (files, models)."""
    assert code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_train_sae_never_overwrites_what_is_not_its_sae(acts, tmp_path, capsys):
    before = acts.read_bytes()
    base = [
        "train-sae",
        "--activations",
        str(acts),
        "--latents",
        "16",
        "--steps",
        "2",
        "--batch-tokens",
        "250",
        "--quiet",
    ]
    assert "is not a pyfloor file" in _error(capsys, main(base + ["--out", str(acts), "--overwrite"]), 1)
    assert acts.read_bytes() == before
    sae = tmp_path / "sae.safetensors"
    assert main(base + ["--out", str(sae)]) == 0
    capsys.readouterr()
    assert "already exists" in _error(capsys, main(base + ["--out", str(sae)]), 1)
    assert main(base + ["--out", str(sae), "--overwrite"]) == 0
    assert "is a directory" in _error(capsys, main(base + ["--out", str(tmp_path)]), 1)


def test_train_sae_init_keeps_its_shape(acts, tmp_path, capsys):
    init = tmp_path / "init.safetensors"
    SAE(8, 16, "relu").save(init)
    base = [
        "train-sae",
        "--activations",
        str(acts),
        "--init",
        str(init),
        "--steps",
        "2",
        "--batch-tokens",
        "250",
        "--quiet",
        "--out",
        str(tmp_path / "more.safetensors"),
    ]
    assert "--latents 32: the --init SAE has 16" in _error(capsys, main(base + ["--latents", "32"]), 1)
    assert "--activation topk: the --init SAE has relu" in _error(capsys, main(base + ["--activation", "topk"]), 1)
    assert main(base) == 0
    assert load_sae(tmp_path / "more.safetensors").n_latents == 16
    assert "--latents is required" in _error(capsys, main(["train-sae", "--activations", str(acts)]))


def test_teacher_options_are_refused_with_activations(acts, tmp_path, capsys):
    err = _error(
        capsys,
        main(
            [
                "train-sae",
                "--activations",
                str(acts),
                "--latents",
                "8",
                "--seq-len",
                "64",
                "--layer",
                "3",
                "--out",
                str(tmp_path / "s.safetensors"),
            ]
        ),
    )
    assert "--layer, --seq-len: only for a --model teacher" in err


def test_measure_checks_its_output_before_any_work(acts, tmp_path, capsys):
    sae = tmp_path / "sae.safetensors"
    SAE(8, 16, "relu").save(sae)
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    base = ["measure", "--activations", str(acts), "--sae", str(sae), "--quiet"]
    assert "is a file; give a directory" in _error(capsys, main(base + ["--out", str(a_file)]), 1)
    assert a_file.read_text() == "keep me"
    err = _error(capsys, main(base + ["--out", str(tmp_path / "run"), "--checkpoint", str(sae), "--overwrite"]), 1)
    assert "a pyfloor.SAE file, not a pyfloor measure checkpoint" in err
    assert load_sae(sae).n_latents == 16
    assert "--device 'nonsense'" in _error(capsys, main(base + ["--device", "nonsense"]))


def test_predict_errors_name_the_problem(paper_fixture_path, tmp_path, capsys):
    assert "is a directory" in _error(capsys, main(["predict", str(paper_fixture_path), "-o", str(tmp_path)]), 1)
    err = _error(capsys, main(["predict", str(paper_fixture_path), "--alive-threshold", "0.3"]), 1)
    assert "a different alive threshold needs the statistics file" in err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert _error(capsys, main(["predict", str(paper_fixture_path), "-o", str(blocked / "x.json")]), 1)


def test_report_refuses_what_is_not_a_measurement_report(tmp_path, capsys):
    path = tmp_path / "r.json"
    for content in ('"a string"', "[1, 2]", "{not json"):
        path.write_text(content)
        assert "pyfloor report" in _error(capsys, main(["report", str(path)]), 1)
    path.write_text(json.dumps({"measurement": {}, "intervals": {}}))
    assert "incomplete or damaged" in _error(capsys, main(["report", str(path)]), 1)
