"""No import cycles in mlmd, and dependencies that point one way between its layers.

The graph is read from the source (ast), with every import: at module level and inside functions (an import
deferred to call time is still a dependency, and a cycle through one breaks as soon as the order changes).
An edge goes to the module named (``from mlmd.a import b`` names mlmd.a.b when b is a module, else mlmd.a),
not to its parent packages: a package's __init__ importing its own submodules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

# package -> the mlmd packages it must never import (DESIGN.md: engines -> deploy -> model <- train <- data;
# the MD runner layer and the CLI sit above the engines)
FORBIDDEN = {
    "mlmd.model": ("mlmd.train", "mlmd.deploy", "mlmd.engines", "mlmd.md", "mlmd.cli"),
    "mlmd.data": ("mlmd.model", "mlmd.train", "mlmd.deploy", "mlmd.engines", "mlmd.md", "mlmd.cli"),
    "mlmd.train": ("mlmd.deploy", "mlmd.engines", "mlmd.md", "mlmd.cli"),
    "mlmd.deploy": ("mlmd.train", "mlmd.engines", "mlmd.md", "mlmd.cli"),
    "mlmd.engines": ("mlmd.train", "mlmd.md", "mlmd.cli"),
    "mlmd.md": ("mlmd.train", "mlmd.cli"),
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder root."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports (anywhere in its source)."""
    mods = modules(root)
    top = root.name

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in names:
                target = known(name) if name.split(".")[0] == top else None
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_mlmd_has_no_import_cycles():
    graph = import_graph(REPO / "mlmd")
    assert len(graph) > 50 and graph["mlmd.md.runner"]  # the whole package was read
    assert cycles(graph) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_one_way(package):
    graph = import_graph(REPO / "mlmd")
    bad = sorted(
        f"{mod} imports {target}"
        for mod, targets in graph.items() if mod == package or mod.startswith(package + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[package])
    )
    assert bad == []


def test_the_check_finds_cycles(tmp_path):
    """A cycle through a deferred (function-level) relative import, and one through `from pkg import module`."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g()\n")
    (pkg / "b.py").write_text("import pkg.a\n\ndef g():\n    return 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from pkg.sub import d\n")
    (pkg / "sub" / "d.py").write_text("from ..sub import c\n")
    (pkg / "e.py").write_text("import pkg.a\n")  # depends on the cycle, is not in it
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"], ["pkg.sub.c", "pkg.sub.d"]]


def test_the_lammps_run_path_reads_cards_without_torch():
    """`mlmd md --engine lammps` and `mlmd lammps-input` only read the model card in their own process (lmp loads
    the model): importing torch there cost ~2 CPU s per run. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import mlmd.cli, mlmd.md.lammps_md\n"
        "from mlmd.engines.lammps.inputs import model_card, model_elements, n_members\n"
        "from mlmd.md.request import MDRequest\n"
        "from mlmd.engines.domain import check_domain_mode\n"
        f"card = model_card({str(REPO / 'inputs/water/water_model_hybrid.pt')!r})\n"
        "assert card.elements == ['H', 'O'] and check_domain_mode('warn') == 'warn'\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr
