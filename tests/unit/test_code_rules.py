"""House rules that a reviewer would otherwise have to catch by eye (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "distill"


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_used_across_modules():
    """`from distill.x import _helper` or `x._helper(...)` on a distill module: a helper two modules
    share is public and lives in one place (stages/common.py or a library module)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()  # local names bound to distill modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill"):
                for alias in node.names:
                    if _private(alias.name):
                        offenders.append(f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}")
                    elif _is_module(f"{node.module}.{alias.name}"):
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules.update(a.asname or a.name for a in node.names if a.name.startswith("distill"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) \
                    and node.value.id in modules:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offenders, "private names used across modules:\n" + "\n".join(offenders)


def test_no_stage_module_imports_a_sibling_stage():
    stages = PACKAGE / "stages"
    names = {p.stem for p in stages.glob("*.py")} - {"__init__", "common"}
    offenders = []
    for path in sorted(stages.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t.startswith("distill.stages.") and t.split(".")[2] in names and t.split(".")[2] != path.stem:
                    offenders.append(f"{path.name} imports {t}")
    assert not offenders, offenders


def _distill_imports(path: Path) -> set[str]:
    """Every distill module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if _is_module(full) else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("distill"))
    return out


def test_evaluation_modules_import_each_other_without_cycles():
    """adapters -> loading -> adapters (and the like) made the import order matter; model
    resolution, adapters and dtype helpers import each other in one direction only."""
    folder = PACKAGE / "evaluation"
    graph = {f"distill.evaluation.{p.stem}": {m for m in _distill_imports(p) if m.startswith("distill.evaluation.")}
             for p in folder.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
