"""The ``pyfloor`` command."""

import json
import subprocess
import sys

import pytest

from pyfloor.cli import main


def test_predict_from_summary_prints_the_table(capsys):
    assert main(["predict", "--features", "28665", "--mean-l0", "218.29", "--widths", "128,1024"]) == 0
    out = capsys.readouterr().out
    assert "0.992385" in out and "1,064.7" in out
    assert "3,446" in out and "27,568" in out


def test_predict_json_from_fixture(paper_fixture_path, capsys, tmp_path):
    report = tmp_path / "out" / "prediction.json"
    code = main(["predict", str(paper_fixture_path), "--widths", "128,256", "--json", "-o", str(report)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(report.read_text())
    rows = {r["width"]: r for r in printed["floors"]}
    assert rows[128]["kept"] == 3446
    assert rows[128]["floor"] == pytest.approx(0.07948824, rel=1e-6)
    assert printed["measurement"]["n_features"] == 28665


def test_predict_default_widths_bracket_critical_width(capsys):
    assert main(["predict", "--features", "40", "--alpha", "0.9", "--json"]) == 0
    widths = [r["width"] for r in json.loads(capsys.readouterr().out)["floors"]]
    assert widths == sorted(widths) and widths[0] <= 40 / 10.0 / 8 + 1 and widths[-1] >= 8
    assert 10 in widths  # ⌈d*⌉ = ⌈9.15⌉


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["predict"], 2, "nothing to predict"),
        (["predict", "--features", "10", "--mean-l0", "20"], 2, "--mean-l0 (20) must be below --features (10)"),
        (["predict", "--features", "10", "--alpha", "1.5"], 2, "--alpha must lie in"),
        (["predict", "missing-file.json"], 1, "no such file"),
    ],
)
def test_predict_errors_exit_with_a_message(argv, status, message, capsys):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("pyfloor predict: error: ") and message in err


def test_bad_widths_are_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--features", "10", "--alpha", "0.9", "--widths", "a,b"])
    assert exc.value.code == 2
    assert "comma-separated" in capsys.readouterr().err


def test_console_entry_point_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "pyfloor", "predict", "--features", "100", "--alpha", "0.95", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["measurement"]["n_features"] == 100
