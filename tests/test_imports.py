"""Every flow and deployment module imports, fast, without pulling in torch."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import deployments
import flows

MODULES = [
    m.name
    for pkg in (flows, deployments)
    for m in pkgutil.iter_modules(pkg.__path__, f"{pkg.__name__}.")
]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str):
    importlib.import_module(name)


def test_flows_do_not_import_torch_or_transformers_at_import_time():
    code = (
        "import sys, flows.refresh, freshtune.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules `path` imports at run time, deferred imports included (not those under
    `if TYPE_CHECKING:`, which never execute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


ENTRY_POINTS = ("freshtune.cli", "freshtune.__main__")


def test_imports_point_down_with_no_circles():
    """deployments -> flows -> tasks -> freshtune, and no two modules need each other."""
    root = Path(__file__).resolve().parent.parent
    paths = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for package in ("freshtune", "tasks", "flows", "deployments")
        for p in (root / package).rglob("*.py")
    }
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    layer = {"freshtune": 0, "tasks": 1, "flows": 2, "deployments": 3}
    layer |= {name: 4 for name in ENTRY_POINTS}  # the CLI sits on top of everything
    upward = [
        f"{a} -> {b}"
        for a, deps in graph.items()
        for b in deps
        if layer.get(b, layer[b.split(".")[0]]) > layer.get(a, layer[a.split(".")[0]])
    ]
    assert not upward, upward
    circles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not circles, circles


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components, iteratively (each module once)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while (top := stack.pop()) != node:
                        component.append(top)
                    components.append([node, *component])
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return components
