"""The package's layout: imports run one way, down the layers that tools/import_graph.py documents."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import import_graph


def test_no_module_imports_one_above_it_and_every_module_has_a_layer():
    assert import_graph.check() == []


def test_the_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    (tmp_path / "pyfloor").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "pyfloor" / "__init__.py").write_text("from ._version import __version__\n")
    (tmp_path / "pyfloor" / "_version.py").write_text("")
    (tmp_path / "pyfloor" / "theory.py").write_text("def f():\n    from .stats import FeatureStats\n")
    (tmp_path / "pyfloor" / "stats.py").write_text("from . import theory\n")
    monkeypatch.setattr(import_graph, "REPO", tmp_path)
    assert import_graph.check() == ["pyfloor.theory (layer 1) imports pyfloor.stats (layer 2)"]


def test_readme_layout_table_names_every_module():
    readme = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    for name in import_graph.module_files():
        parts = name.split(".")
        if parts[1:2] in (["kernels"], ["toy"]) or name == "pyfloor" or parts[-1].startswith("_"):
            continue  # named by their folder, or private
        assert f"{parts[-1]}.py" in readme, f"README's layout table does not name {name}"
