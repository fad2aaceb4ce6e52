"""The import graph of pyfloor and its kernels, checked against the documented layer order.

Every ``import`` and ``from … import`` of a pyfloor module (at module level or inside a function;
not under ``if TYPE_CHECKING:``, which never runs) is an edge. A module may import only modules of a lower layer than its own; the graph then has no
cycle. ``python tools/import_graph.py`` prints the layers and any violation, and exits 1 if there is
one; ``tests/test_layout.py`` runs the same check.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Layers, lowest first: each module imports only from the layers before its own. ``pyfloor``
#: (the package's ``__init__``) imports only the numpy-only modules and exports the rest lazily, by name.
LAYERS: list[list[str]] = [
    ["pyfloor._version", "pyfloor._hist", "pyfloor._checks", "pyfloor._io", "pyfloor.render"],
    ["pyfloor.theory"],
    ["pyfloor.stats"],
    ["pyfloor.floors", "pyfloor.histograms", "pyfloor.calibrate"],
    ["pyfloor.sae", "pyfloor.distributed", "pyfloor.students"],
    ["pyfloor.features", "pyfloor.family", "pyfloor.interop", "pyfloor.checkpoints"],
    ["pyfloor.encode_types", "pyfloor.tokens"],
    ["pyfloor.kernels.bitonic", "pyfloor.kernels.tiles"],
    ["pyfloor.kernels.flat", "pyfloor.kernels.sweep"],
    ["pyfloor.kernels.select"],
    ["pyfloor.kernels.fused_encode"],
    ["pyfloor.kernels"],
    ["pyfloor.encode", "pyfloor.sources"],
    ["pyfloor.library_sources", "pyfloor.distill"],
    ["pyfloor.measure"],
    ["pyfloor.report"],
    ["pyfloor.toy.models"],
    ["pyfloor.toy.sweep"],
    ["pyfloor.toy.experiment"],
    ["pyfloor.toy.predictors"],
    ["pyfloor.toy.report"],
    ["pyfloor.toy"],
    ["pyfloor.cli"],
    ["pyfloor.__main__"],
]
ROOT_IMPORTS = {"pyfloor._version", "pyfloor.theory", "pyfloor.stats"}  # what the package __init__ imports (numpy only)


def module_files() -> dict[str, Path]:
    """Module name → source file, for pyfloor (kernels/ as pyfloor.kernels)."""
    files = {}
    for base, package in ((REPO / "pyfloor", "pyfloor"), (REPO / "kernels", "pyfloor.kernels")):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            if rel.parts[0] == "kernels" and package == "pyfloor":
                continue  # pyfloor/kernels links to kernels/, read once as that
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for type checkers only)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)
    return nodes


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The pyfloor modules that module ``name`` (file ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import theory` names a module; `from .stats import X` names the module stats
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known or t == "pyfloor._hist")
    found.discard(name)
    return found


def check() -> list[str]:
    """Every violation of :data:`LAYERS`: upward or sideways imports, and modules no layer lists."""
    files = module_files()
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    problems = [f"{m} is in no layer of tools/import_graph.py" for m in files if m not in rank and m != "pyfloor"]
    known = set(files) | {"pyfloor._hist"}
    for name, path in files.items():
        for target in sorted(imports_of(name, path, known)):
            if name == "pyfloor":
                if target not in ROOT_IMPORTS:
                    problems.append(f"pyfloor/__init__ imports {target}; it exports modules lazily by name")
            elif name in rank and target in rank and rank[target] >= rank[name]:
                problems.append(f"{name} (layer {rank[name]}) imports {target} (layer {rank[target]})")
    return problems


def main() -> int:
    for i, layer in enumerate(LAYERS):
        print(f"{i:2d}  {', '.join(layer)}")
    problems = check()
    for p in problems:
        print("violation:", p, file=sys.stderr)
    print(f"{len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
