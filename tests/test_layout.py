"""The code's shape holds: imports go one way (``supervisor → transport → eventstore``, and inside
``supervisor``: ``cli → daemon → shared modules``), no import circle anywhere, and the dev stack stays out of
the wheel."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("eventstore", "transport", "supervisor")  # lower layers first


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (module level, inside functions and TYPE_CHECKING blocks)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != module and not module.startswith(found + "."):
                    graph[module].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_import_graph_has_no_circle(graph):
    assert circles(graph) == []


def test_imports_go_from_supervisor_to_transport_to_eventstore(graph):
    layer = {pkg: i for i, pkg in enumerate(PACKAGES)}
    breaks = [(a, b) for a, bs in graph.items() for b in bs if layer[b.split(".")[0]] > layer[a.split(".")[0]]]
    assert breaks == []


def test_inside_supervisor_the_cli_imports_the_daemon_never_the_reverse(graph):
    def part(module: str) -> str:
        pieces = module.split(".")
        return pieces[1] if len(pieces) > 1 and pieces[1] in ("cli", "daemon", "devstack") else "shared"

    allowed = {"cli": {"cli", "daemon", "devstack", "shared"}, "daemon": {"daemon", "shared"},
               "devstack": {"devstack", "shared"}, "shared": {"shared"}}
    wrong = [(a, b) for a, bs in graph.items() if a.startswith("supervisor") for b in bs
             if b.startswith("supervisor") and part(b) not in allowed[part(a)]]
    assert wrong == []
    # the only way into the dev stack from the installed code is the demo command, imported on its branch
    into_devstack = sorted(a for a, bs in graph.items() if not a.startswith("supervisor.devstack")
                           for b in bs if b.startswith("supervisor.devstack"))
    assert into_devstack == ["supervisor.cli.main"]


def test_the_wheel_leaves_the_dev_stack_out():
    finder = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(REPO), include=finder["include"], exclude=finder.get("exclude", ())))
    on_disk = {_module_name(p.parent) for p in (REPO / "supervisor").rglob("__init__.py")}
    assert not {p for p in shipped if p.startswith("supervisor.devstack")}
    assert on_disk - shipped == {p for p in on_disk if p.startswith("supervisor.devstack")}
    assert {"supervisor", "supervisor.cli", "supervisor.daemon", "eventstore", "transport"} <= shipped
