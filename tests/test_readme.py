"""The README's two set-up commands are the ones CI runs."""

import re

from conftest import REPO


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them():
    readme = (REPO / "README.md").read_text()
    setup = [b.strip() for b in _bash_blocks(readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0])]
    assert len(setup) == 2, setup
    main_cmd, test_cmd = setup
    assert main_cmd.startswith("pip install torch==2.13.0 ") and "pyfloor " in main_cmd
    assert test_cmd.startswith("pip install torch==2.13.0 ") and "pytest" in test_cmd
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd in ci
    assert main_cmd in ci


def test_import_pyfloor_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, pyfloor; pyfloor.Measurement; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
