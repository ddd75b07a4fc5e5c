"""No import cycles inside the ``deepclust`` package.

The test parses every module of the package with :mod:`ast` and builds the graph of the
imports it makes, module-level and function-level alike (a local import that only hides a cycle
is still a cycle), then looks for a strongly connected component with more than one module
(scipy's ``connected_components``, strong). An edge goes to the imported module itself: for
``from a.b import c`` to ``a.b.c`` when that is a module, else to ``a.b``; ``import deepclust``
and ``from deepclust import name`` are edges to the package's ``__init__``. Implicit parent
package imports are not edges (a package's ``__init__`` importing its children is the normal
layout, not a cycle). Imports under ``if TYPE_CHECKING:`` are not edges: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

import deepclust

ROOT = Path(deepclust.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _edges(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "deepclust")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "deepclust":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in mods else target)
    return {m for m in out if m in mods and m != name}


def _cycles() -> list[list[str]]:
    mods = _modules()
    names = sorted(mods)
    index = {m: i for i, m in enumerate(names)}
    rows, cols = [], []
    for m in names:
        for t in _edges(m, mods[m], mods):
            rows.append(index[m])
            cols.append(index[t])
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, comp = connected_components(graph, directed=True, connection="strong")
    groups: dict[int, list[str]] = {}
    for m, c in zip(names, comp, strict=True):
        groups.setdefault(int(c), []).append(m)
    return [g for g in groups.values() if len(g) > 1]


def test_the_graph_sees_imports() -> None:
    # The walker must find the edges that exist, or an empty graph would pass trivially.
    mods = _modules()
    assert "deepclust.engine.trainer" in mods
    edges = _edges("deepclust.engine.trainer", mods["deepclust.engine.trainer"], mods)
    assert "deepclust.config" in edges and "deepclust.engine.rundir" in edges


def test_no_import_cycles() -> None:
    cycles = _cycles()
    assert not cycles, "import cycles inside deepclust: " + "; ".join(" <-> ".join(c) for c in cycles)
