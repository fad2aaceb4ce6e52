"""The conventions every ``pyfloor`` command follows (listed in pyfloor/cli.py's docstring).

Errors name flags; exit status 0 / 1 (the run failed) / 2 (usage); --help shows the library's
defaults; one meaning per flag name; progress bars only on a terminal; --json everywhere; a failed
run leaves no empty output folder.
"""

import argparse
import dataclasses
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from test_cli_measure import sparse_activations

from pyfloor import cli
from pyfloor.cli import build_parser, main
from pyfloor.measure import MeasureConfig
from pyfloor.sae import ACTIVATIONS, SAE, TrainConfig
from pyfloor.stats import DEFAULT_ALIVE_THRESHOLD
from pyfloor.toy import (
    IMPORTANCE_PROFILES,
    ExperimentSettings,
    SAESettings,
    ToyConfig,
    TrainSettings,
)

COMMANDS = ["predict", "demo", "toy", "measure", "train-sae", "report"]
SNAKE = re.compile(r"(?<![\w-])[a-z]+_[a-z0-9_]+(?![\w-])")  # a Python parameter name such as mean_l0


def default(cls, name):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, sparse_activations(2000))
    return path


@pytest.fixture(scope="module")
def sae_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sae") / "sae.safetensors"
    SAE(16, 32, "relu").save(path)
    return path


def measure_args(acts, sae_file, out, *extra):
    return [
        "measure",
        "--activations",
        str(acts),
        "--sae",
        str(sae_file),
        "--out",
        str(out),
        "--batch-tokens",
        "500",
        "--bootstrap",
        "4",
        *extra,
    ]


def train_args(acts, out, *extra):
    return [
        "train-sae",
        "--activations",
        str(acts),
        "--latents",
        "8",
        "--batch-tokens",
        "250",
        "--steps",
        "4",
        "-o",
        str(out),
        *extra,
    ]


def subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def option_help(command, monkeypatch, capsys):
    """``--help`` of ``command`` as {flag: its line}, on a terminal wide enough that nothing wraps."""
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    entries, open_entry = [], False
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"  -", line):
            entries.append(line)
            open_entry = True
        elif open_entry and line.startswith("    "):
            entries[-1] += " " + line.strip()  # the help text on the lines below a long invocation
        else:
            open_entry = False
    lines = {}
    for entry in entries:
        invocation = entry.strip().split("  ")[0]
        for flag in re.findall(r"--[\w-]+", invocation):
            lines[flag] = " ".join(entry.split())
    return lines


# -- 1. errors name the flag --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["predict", "--features", "10", "--mean-l0", "20"], ["--mean-l0 (20) must be below --features (10)"]),
        (["predict", "--features", "10", "--alpha", "1.5"], ["--alpha must"]),
        (["demo", "--alpha", "1.5"], ["--alpha must"]),
        (["measure", "--activations", "a.npy", "--sae", "s", "--until-stable", "2"], ["--until-stable "]),
        (
            ["measure", "--activations", "a.npy", "--sae", "s", "--until-stable", "0.01", "--bootstrap", "0"],
            ["--until-stable ", "--bootstrap"],
        ),
        (
            ["train-sae", "--activations", "a.npy", "--latents", "8", "--activation", "topk"],
            ["--activation topk needs --k"],
        ),
    ],
)
def test_library_errors_name_the_flag_not_the_parameter(argv, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyfloor {argv[0]}: error: ") and all(f in err for f in fragments), err
    assert not SNAKE.search(err.split("error: ", 1)[1]), err
    assert list(tmp_path.iterdir()) == []  # a usage error is found before any work


def test_renaming_replaces_whole_words_only():
    names = {"k": "--k", "n_features": "--features", "mean_l0": "--mean-l0"}
    assert cli._name_flags("k must be <= n_features for top-k; got k=3", names) == (
        "--k must be <= --features for top-k; got --k=3"
    )
    assert cli._name_flags("mean_l0s and --k and n_features_x", names) == "mean_l0s and --k and n_features_x"


# -- 2. exit status: 0 success, 1 the run failed, 2 usage --------------------------------------------
def test_argument_errors_exit_2(acts, sae_file, tmp_path, capsys):
    for argv in (
        measure_args(acts, sae_file, tmp_path / "m", "--batch-tokens", "0"),
        measure_args(acts, sae_file, tmp_path / "m", "--resume", "--overwrite"),
        measure_args(acts, sae_file, tmp_path / "m", "--progress", "--quiet"),
        ["predict", "--features", "ten"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "error: argument" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--features", "10", "--alpha", "0.9", "--alive-threshold", "0.1"], "--alive-threshold goes with"),
        (["predict", "f.json", "--features", "10"], "not both"),
        (["measure", "--activations", "a.npy", "--sae", "s", "--activation", "relu", "--k", "3"], "--k goes with"),
        (["measure", "--activations", "a.npy", "--sae", "s", "--seq-len", "64"], "--seq-len: only for a --model"),
        (["measure", "--model", "m", "--layer", "1", "--sae", "s"], "exactly one token input"),
        (["train-sae", "--activations", "a.npy", "--latents", "8", "--k", "2"], "--k goes with --activation topk"),
        (
            ["train-sae", "--activations", "a.npy", "--latents", "8", "--activation", "topk", "--k", "9"],
            "--k (9) must be at most --latents (8)",
        ),
        (["train-sae", "--activations", "a.npy"], "--latents is required"),
    ],
)
def test_incompatible_flags_exit_2_before_reading_any_file(argv, message, capsys):
    assert main(argv) == 2  # none of the files named exists: the arguments are checked first
    assert message in capsys.readouterr().err


def test_runtime_failures_exit_1(acts, sae_file, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors file")
    bad_json = tmp_path / "report.json"
    bad_json.write_text("{not json")
    wide = tmp_path / "wide.safetensors"
    SAE(8, 16, "relu").save(wide)
    cases = [
        (["predict", str(tmp_path / "missing.json")], "no such file"),
        (["predict", str(corrupt)], "corrupt"),
        (["report", str(bad_json)], "not JSON"),
        (["report", str(tmp_path / "nowhere")], "no such report"),
        (measure_args(acts, tmp_path / "missing.safetensors", tmp_path / "m"), "no such"),
        (measure_args(acts, wide, tmp_path / "m"), "width"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"pyfloor {argv[0]}: error: ") and "Traceback" not in err
        assert message in err.lower() or message in err, err


def test_the_console_command_returns_the_status():
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "pyfloor", *argv], check=False, capture_output=True, text=True)

    assert run("predict", "--features", "100", "--alpha", "0.95").returncode == 0
    usage = run("predict", "--features", "10", "--mean-l0", "20")
    assert usage.returncode == 2 and "--mean-l0" in usage.stderr
    assert run("predict", "--widths", "x,y").returncode == 2
    assert run("report", "no-such-dir").returncode == 1


def test_predict_and_report_do_not_import_torch():
    code = (
        "import sys; from pyfloor.cli import main; main(['predict', '--features', '100', '--alpha', '0.95']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_every_help_documents_the_exit_status(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")
    for argv in ([], *([c] for c in COMMANDS)):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert "Exit status: 0 on success; 1 when the run fails" in capsys.readouterr().out


# -- 3. --help shows the defaults, taken from the library ---------------------------------------------
def test_every_default_is_shown_once(monkeypatch, capsys):
    for name, parser in subparsers().items():
        lines = option_help(name, monkeypatch, capsys)
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.nargs == 0:
                continue
            line = lines[max(action.option_strings, key=len)]
            assert line.count("(default") <= 1, line
            if action.default is not None:
                assert f"(default: {action.default})" in line, line


def test_measure_defaults_are_measure_config_defaults(monkeypatch, capsys):
    args = build_parser().parse_args(["measure", "--activations", "a.npy", "--sae", "s"])
    lines = option_help("measure", monkeypatch, capsys)
    flags = {
        "max_tokens": "--max-tokens",
        "until_stable": "--until-stable",
        "min_tokens": "--min-tokens",
        "checkpoint_every": "--checkpoint-every",
        "alive_threshold": "--alive-threshold",
        "bootstrap": "--bootstrap",
        "seed": "--seed",
        "widths": "--widths",
        "activation": "--activation",
        "k": "--k",
        "histogram_every": "--histogram-every",
    }
    for field, flag in flags.items():
        value = default(MeasureConfig, field)
        assert getattr(args, field) == value, field
        if value is not None:
            assert f"(default: {value})" in lines[flag]
    assert args.no_histograms is (not default(MeasureConfig, "histograms"))
    assert args.resume == default(MeasureConfig, "resume") and args.overwrite == default(MeasureConfig, "overwrite")
    assert subparsers()["measure"]._option_string_actions["--activation"].choices == ACTIVATIONS


def test_train_sae_defaults_are_train_config_defaults(monkeypatch, capsys):
    args = build_parser().parse_args(["train-sae", "--activations", "a.npy"])
    lines = option_help("train-sae", monkeypatch, capsys)
    for flag, field in (("--l1", "l1_coeff"), ("--lr", "lr"), ("--seed", "seed")):
        assert getattr(args, flag[2:]) == default(TrainConfig, field)
        assert f"(default: {default(TrainConfig, field)})" in lines[flag]
    assert f"(default: {default(TrainConfig, 'activation')}" in lines["--activation"]
    choices = subparsers()["train-sae"]._option_string_actions["--activation"].choices
    assert default(TrainConfig, "activation") in choices and set(choices) <= set(ACTIVATIONS)


@pytest.mark.parametrize("command", ["demo", "toy"])
def test_toy_defaults_are_the_settings_defaults(command, monkeypatch, capsys):
    args = build_parser().parse_args([command])
    lines = option_help(command, monkeypatch, capsys)
    expected = {
        "--steps": default(TrainSettings, "steps"),
        "--batch-size": default(TrainSettings, "batch_size"),
        "--lr": default(TrainSettings, "lr"),
        "--eval-samples": default(ExperimentSettings, "eval_samples"),
        "--threads": default(ExperimentSettings, "threads"),
        "--seeds": len(default(ExperimentSettings, "seeds")),
        "--importance": default(ToyConfig, "importance"),
    }
    if command == "demo":
        expected["--sae-steps"] = default(SAESettings, "steps")
    for flag, value in expected.items():
        assert getattr(args, flag[2:].replace("-", "_")) == value, flag
        assert f"(default: {value})" in lines[flag]
    assert subparsers()[command]._option_string_actions["--importance"].choices == IMPORTANCE_PROFILES


def test_predict_names_the_default_alive_threshold(monkeypatch, capsys):
    assert f"(default: {DEFAULT_ALIVE_THRESHOLD:g}" in option_help("predict", monkeypatch, capsys)["--alive-threshold"]


# -- 4. one meaning per flag name ---------------------------------------------------------------------
def test_checkpoint_every_counts_tokens_in_both_commands(acts, tmp_path, capsys, monkeypatch):
    for command in ("measure", "train-sae"):
        action = subparsers()[command]._option_string_actions["--checkpoint-every"]
        assert action.metavar == "TOKENS" and action.help.startswith("tokens between")
    saves = []
    original = SAE.save
    monkeypatch.setattr(SAE, "save", lambda self, path: (saves.append(path), original(self, path))[1])
    out = tmp_path / "sae.safetensors"
    argv = [
        "train-sae",
        "--activations",
        str(acts),
        "--latents",
        "8",
        "--batch-tokens",
        "100",
        "--steps",
        "10",
        "--checkpoint-every",
        "250",
        "-o",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoint_every_steps"] == 3  # ⌈250 / 100⌉
    assert len(saves) == 4  # after steps 3, 6 and 9, and at the end


def test_out_is_a_directory_and_output_a_file_everywhere(acts, tmp_path, capsys):
    for name, parser in subparsers().items():
        actions = parser._option_string_actions
        if "--out" in actions and actions["--out"].help != argparse.SUPPRESS:
            assert "directory" in actions["--out"].help, name
        if "--output" in actions:
            assert actions["--output"].metavar == "FILE", name
    # the old spellings keep working, with a warning naming the new one
    argv = ["train-sae", "--activations", str(acts), "--latents", "8", "--steps", "2", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "b.st")]) == 0
    assert "--out is deprecated; use -o/--output" in capsys.readouterr().err
    assert (tmp_path / "b.st").is_file()


# -- 5. progress bars only on a terminal ---------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_no_progress_bar_off_a_terminal_unless_asked(acts, sae_file, tmp_path, capsys, monkeypatch):
    assert main(train_args(acts, tmp_path / "a.safetensors")) == 0
    assert capsys.readouterr().err == ""
    assert main(measure_args(acts, sae_file, tmp_path / "m1")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "tok" not in err
    assert main(train_args(acts, tmp_path / "b.safetensors", "--progress")) == 0
    assert "train-sae" in capsys.readouterr().err
    assert main(measure_args(acts, sae_file, tmp_path / "m2", "--progress")) == 0
    assert "tok" in capsys.readouterr().err
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(train_args(acts, tmp_path / "c.safetensors")) == 0
    assert "train-sae" in terminal.getvalue()
    shown = len(terminal.getvalue())
    assert main(train_args(acts, tmp_path / "d.safetensors", "--quiet")) == 0
    assert len(terminal.getvalue()) == shown


# -- 6. --json on every command that prints a result ----------------------------------------------------
def test_every_command_has_json(monkeypatch, capsys):
    for name in COMMANDS:
        assert "--json" in option_help(name, monkeypatch, capsys), name


def test_json_output_parses(acts, tmp_path, capsys):
    sae = tmp_path / "sae.safetensors"
    assert main(train_args(acts, sae, "--quiet", "--json")) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["sae"] == str(sae) and trained["n_latents"] == 8 and trained["steps"] == 4
    assert main(measure_args(acts, sae, tmp_path / "m", "--quiet", "--json")) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["n_tokens"] == 2000
    assert main(["report", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == measured
    assert main(["predict", str(tmp_path / "m" / "stats.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measurement"]["n_features"] == measured["measurement"]["n_features"]


@pytest.mark.parametrize(
    "command, extra",
    [
        ("demo", ["--n", "5", "--d-teacher", "2", "--sae-steps", "10"]),
        ("toy", ["--n", "5", "--d-teacher", "2", "--alpha", "0.9", "--no-sae"]),
    ],
)
def test_toy_json_output_parses(command, extra, tmp_path, capsys):
    argv = [
        command,
        *extra,
        "--steps",
        "20",
        "--batch-size",
        "64",
        "--seeds",
        "1",
        "--eval-samples",
        "256",
        "--workers",
        "1",
        "--quiet",
        "--json",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "run" / "report.json").read_text())


# -- 7. a failed run leaves no empty output folder -------------------------------------------------------
def test_a_failed_run_removes_the_empty_folders_it_created(acts, tmp_path, capsys):
    wide = tmp_path / "wide.safetensors"
    SAE(8, 16, "relu").save(wide)  # d_in 8: the activations are 16 wide
    assert main(measure_args(acts, wide, tmp_path / "a" / "b" / "run", "--quiet")) == 1
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    assert main(measure_args(acts, wide, kept, "--quiet")) == 1
    assert kept.is_dir()  # not created by this run
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    assert main(train_args(bad, tmp_path / "new" / "sae.safetensors", "--quiet")) == 1
    assert not (tmp_path / "new").exists()
    capsys.readouterr()
    assert main(measure_args(acts, wide.with_name("sae16.safetensors"), tmp_path / "x" / "run", "--quiet")) == 1
    assert not (tmp_path / "x").exists()


def test_a_folder_holding_something_is_kept(acts, sae_file, tmp_path, monkeypatch, capsys):
    import pyfloor.report

    def fail(result, out_dir):
        (out_dir / "partial.txt").write_text("written before the failure")
        raise OSError("disk full")

    monkeypatch.setattr(pyfloor.report, "write_measurement_report", fail)
    assert main(measure_args(acts, sae_file, tmp_path / "run", "--quiet")) == 1
    assert "disk full" in capsys.readouterr().err
    assert (tmp_path / "run" / "partial.txt").is_file() and (tmp_path / "run" / "checkpoint.safetensors").is_file()
