"""Imports point one way: no cycle among patio/'s modules.

The graph is read with ``ast`` (no third-party tool): every ``import`` counts, at the top
of a module, inside a function (deferred) or under ``TYPE_CHECKING``, because each says
"this module knows that one".  The assembly point (``patio.app``) and the settings
composer (``patio.config``) depend on the parts, never the reverse.
"""

import ast
import pathlib
from typing import Dict, List, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "patio"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> Dict[str, Set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                deps.add(base)
                deps |= {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
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
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def a_path(graph: Dict[str, Set[str]], members: List[str]) -> List[str]:
    """One concrete loop through a cycle's modules, for the failure message."""
    inside = set(members)
    start = members[0]
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for child in sorted(graph[node] & inside):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                todo.append(child)
    return members


def test_patio_has_no_import_cycle() -> None:
    graph = import_graph()
    loops = [" -> ".join(a_path(graph, members)) for members in cycles(graph)]
    assert not loops, "import cycles in patio/:\n  " + "\n  ".join(loops)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
    ids=["a line is no cycle", "two modules importing each other", "a loop of three, with a bystander"],
)
def test_the_cycle_finder_finds_what_it_should(graph: Dict[str, Set[str]], expected: List[List[str]]) -> None:
    assert cycles(graph) == expected


@pytest.mark.parametrize(
    "leaf",
    ["patio.component", "patio.options", "patio.errors", "patio.http.request_parser", "patio.metrics.parse"],
    ids=["the component contracts", "the option kit", "the error family", "the HTTP parser", "the text parser"],
)
def test_the_leaves_import_no_capability(leaf: str) -> None:
    graph = import_graph()
    seen: Set[str] = set()
    todo = [leaf]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    capabilities = ("patio.lora", "patio.topology", "patio.kvevents", "patio.artifacts", "patio.app", "patio.config")
    reached = sorted(d for d in seen if d.startswith(capabilities))
    assert not reached, f"{leaf} reaches {reached}"
