"""The metrics text library stays apart: pure modules that know nothing of the server or features.

Text in, families out, bytes out (prometheus_client's parser and ``generate_latest`` are the
model): the parser, the writer, the registry of Patio's own metrics, the rename schemes, the
assembly and the scrape plan import neither asyncio nor any Patio module outside this set, so
they are tested, benchmarked and reused without a server.  Read with ``ast`` (every import counts,
deferred ones too), like ``test_import_graph``.
"""

import ast

import pytest
from test_import_graph import ROOT, import_graph

# The library: sans-IO (``memory`` calls the C library, ``process`` reads procfs; neither waits).
LIBRARY = (
    "patio.metrics.model",
    "patio.metrics.grammar",
    "patio.metrics.parse",
    "patio.metrics.write",
    "patio.metrics.registry",
    "patio.metrics.process",
    "patio.metrics.memory",
    "patio.metrics.rules",
    "patio.metrics.assemble",
    "patio.metrics.protocol_tables",
    "patio.metrics.protocol_input",
    "patio.metrics.protocol",
    "patio.metrics.plan",
    "patio.metrics.pipeline",
    "patio.metrics.exposition",
    "patio.metrics.seams",
)
NOT_IN_THE_LIBRARY = ("asyncio", "socket", "threading.Thread", "concurrent")


def _stdlib_imports(module: str) -> set:
    path = ROOT.parent.joinpath(*module.split(".")).with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.fixture(scope="module")
def graph():
    return import_graph()


@pytest.mark.parametrize("module", LIBRARY)
def test_library_module_imports_only_the_library(module, graph):
    seen, todo = set(), [module]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    outside = sorted(dep for dep in seen if dep not in LIBRARY and dep not in ("patio", "patio.metrics"))
    assert not outside, f"{module} reaches {outside}"


@pytest.mark.parametrize("module", LIBRARY)
def test_library_module_does_no_io_of_its_own(module):
    imported = _stdlib_imports(module)
    found = sorted(name for name in imported if name.startswith(NOT_IN_THE_LIBRARY))
    assert not found, f"{module} imports {found}"
