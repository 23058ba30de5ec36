"""The floors of the house, read from the source (ast): which ossbench modules may import which.

Ground floor: errors.py, peaks.py (the datasheet table) and hardware.py (the Device) import nothing above
them. layers/ never imports measure/ or report/; measure/ never imports env, runner, layers, workloads or
report. No import cycles. Every import counts: at the top of a module or inside a function (both run);
only those under `if TYPE_CHECKING:` do not, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# module prefix -> packages/modules it must never import (a prefix matches the module and its submodules)
FORBIDDEN = {
    "ossbench.measure": ("ossbench.env", "ossbench.runner", "ossbench.layers", "ossbench.workloads",
                         "ossbench.report"),
    "ossbench.layers": ("ossbench.measure", "ossbench.report"),
}
GROUND_FLOOR = {  # module -> the only ossbench modules it may import
    "ossbench.errors": set(),
    "ossbench.text": set(),
    "ossbench.units": set(),
    "ossbench.peaks": set(),
    "ossbench.hardware": {"ossbench.errors", "ossbench.peaks"},
}


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module under root/package."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement that can run: any depth (functions too), never under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        yield from _imports(node)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (`from pkg import mod` counts as importing pkg.mod)."""
    modules = _modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_init) in modules.items():
        here = name.split(".") if is_init else name.split(".")[:-1]  # the package relative imports start from
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_ROOT, "ossbench")


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The reader itself: relative, absolute and function-level imports count; TYPE_CHECKING ones do not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import x\n")
    (pkg / "top.py").write_text("from typing import TYPE_CHECKING\nimport pkg.other\n"
                                "if TYPE_CHECKING:\n    from .sub import leaf\nx = 1\n")
    (pkg / "other.py").write_text("def g():\n    if True:\n        from pkg.sub.leaf import f\n")
    g = import_graph(tmp_path, "pkg")
    assert g["pkg.sub"] == {"pkg.sub.leaf"}
    assert g["pkg.sub.leaf"] == {"pkg.top"}
    assert g["pkg.top"] == {"pkg.other"}  # the TYPE_CHECKING import never runs
    assert g["pkg.other"] == {"pkg.sub.leaf"}
    assert find_cycle(g) == ["pkg.other", "pkg.sub.leaf", "pkg.top", "pkg.other"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles(graph):
    assert len(graph) > 40  # the whole package was read
    assert find_cycle(graph) is None


@pytest.mark.parametrize("prefix", sorted(FORBIDDEN))
def test_no_import_runs_upward(graph, prefix):
    upward = sorted(f"{module} imports {target}" for module, targets in graph.items() if _under(module, prefix)
                    for target in targets if any(_under(target, f) for f in FORBIDDEN[prefix]))
    assert upward == []


@pytest.mark.parametrize("module", sorted(GROUND_FLOOR))
def test_the_ground_floor_imports_only_the_ground_floor(graph, module):
    assert graph[module] <= GROUND_FLOOR[module]
