"""The public API is typed for its clients: a client script is mypy --strict clean against the installed package."""

import subprocess
import sys

from conftest import REPO


def test_a_client_of_the_documented_api_is_strict_clean(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-incremental",
            str(REPO / "tests" / "typing" / "client.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
