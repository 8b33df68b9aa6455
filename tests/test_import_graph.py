"""The import graph of the project's packages, computed from the source with :mod:`ast`.

It keeps the layering of DESIGN.md true as the code changes:

- the data layer (``tracker`` and its subpackages except ``tracker.cli``, ``tracker.demo`` and the
  pytest plugin ``tracker.testing``) imports nothing above it: not the CLI, the hooks (``signals``),
  the gateway (``webgate``), the demo or the examples;
- the gateway never imports the hooks;
- ``tracker.cli`` reaches the gateway and the demo only through the ``tracker.commands`` entry
  points, never by import;
- there is no cycle between the parts (a subpackage such as ``tracker.cli`` is a part of its own,
  the modules directly in a top-level package are one part), and none between modules either;
- the REST endpoint modules (``webgate.api.*`` but the leaf, the schemas and the factory) never
  import each other, and only the factory imports them.

Every import counts, at module level or inside a function, under ``TYPE_CHECKING`` or not: a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tracker", "signals", "webgate", "examples")

#: Parts above the data layer inside ``tracker`` (prefixes of module names).
ABOVE_DATA = ("tracker.cli", "tracker.demo", "tracker.testing")
#: What the data layer must never import.
FORBIDDEN_FOR_DATA = (*ABOVE_DATA, "signals", "webgate", "examples")

#: The REST package and its modules that are not endpoint modules (the leaf, the request models, the
#: replies' schemas, the factory).
API_PACKAGE = "webgate.api"
API_SHARED = frozenset({"webgate.api", "webgate.api.common", "webgate.api.models", "webgate.api.schema",
                        "webgate.api.factory"})


def project_sources(root: Path = ROOT) -> dict[str, str]:
    """Module name -> source of every module of the project's packages."""
    sources: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = path.read_text()
    return sources


def _is_package(module: str, sources: Mapping[str, str]) -> bool:
    return any(other.startswith(module + ".") for other in sources)


def _resolve(name: str, sources: Mapping[str, str]) -> str | None:
    """The longest prefix of a dotted name that is a project module (None for third-party names)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in sources:
            return candidate
        parts.pop()
    return None


def module_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a import b`` names ``a.b`` when that is a module)."""
    graph: dict[str, set[str]] = {}
    for module, source in sources.items():
        package = module if _is_package(module, sources) else module.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(source, filename=module)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources else base
                           for alias in node.names]
            for target in targets:
                resolved = _resolve(target, sources)
                if resolved is not None and resolved != module:
                    edges.add(resolved)
        graph[module] = edges
    return graph


def part_of(module: str, sources: Mapping[str, str]) -> str:
    """The part a module belongs to: its subpackage (``tracker.cli``), the pytest plugin, or its
    top-level package for the modules directly in it."""
    if module == "tracker.testing" or module.startswith("tracker.testing."):
        return "tracker.testing"
    parts = module.split(".")
    if len(parts) >= 2 and _is_package(".".join(parts[:2]), sources):
        return ".".join(parts[:2])
    return parts[0]


def part_graph(graph: Mapping[str, set[str]], sources: Mapping[str, str]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in graph.items():
        mine = part_of(module, sources)
        edges = parts.setdefault(mine, set())
        edges.update(p for p in (part_of(t, sources) for t in targets) if p != mine)
    return parts


def cycles(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def data_layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items()
                  if m.startswith("tracker.") or m == "tracker"
                  if not _under(m, ABOVE_DATA)
                  for t in targets if _under(t, FORBIDDEN_FOR_DATA))


SOURCES = project_sources()
GRAPH = module_graph(SOURCES)


def test_the_graph_sees_the_project() -> None:
    # A graph that resolved nothing would pass every check below.
    assert "tracker.api" in GRAPH and "webgate.app" in GRAPH and "tracker.cli" in GRAPH
    assert "tracker.queries" in GRAPH["tracker.api"]
    assert "tracker.cli.root" in GRAPH["webgate.commands"]


def test_data_layer_imports_nothing_above_it() -> None:
    assert data_layer_violations(GRAPH) == []


def test_gateway_never_imports_the_hooks() -> None:
    assert sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _under(m, ("webgate",))
                  for t in ts if _under(t, ("signals",))) == []


def test_cli_reaches_gateway_and_demo_only_through_entry_points() -> None:
    assert sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _under(m, ("tracker.cli",))
                  for t in ts if _under(t, ("webgate", "signals", "tracker.demo"))) == []


def test_no_cycle_between_parts() -> None:
    assert cycles(part_graph(GRAPH, SOURCES)) == []


def test_no_cycle_between_modules() -> None:
    assert [sorted(c) for c in cycles(GRAPH)] == []


def endpoint_modules(sources: Iterable[str]) -> set[str]:
    return {m for m in sources if m.startswith(API_PACKAGE + ".") and m not in API_SHARED}


def endpoint_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports of an endpoint module by anything but the factory (so by another endpoint module too)."""
    endpoints = endpoint_modules(graph)
    return sorted(f"{m} -> {t}" for m, targets in graph.items() if m != API_PACKAGE + ".factory"
                  for t in targets if t in endpoints)


def test_endpoint_modules_import_only_the_leaf_and_only_the_factory_imports_them() -> None:
    assert {"webgate.api.tasks", "webgate.api.logs", "webgate.api.openapi"} <= endpoint_modules(GRAPH)
    assert endpoint_modules(GRAPH) <= GRAPH["webgate.api.factory"]
    assert endpoint_violations(GRAPH) == []


def test_the_checks_catch_a_violation() -> None:
    # The same functions over a made-up tree: a cycle and an upward import are reported.
    sources = {
        "tracker": "", "tracker.api": "from tracker import queries\n",
        "tracker.queries": "def f():\n    from tracker.api import Tracker\n",
        "tracker.cli": "", "tracker.cli.root": "import tracker.api\n",
        "tracker.models": "from webgate.core.auth import make_token\n", "webgate": "", "webgate.core.auth": "",
        "tracker.cli.views": "from .root import main\n",
        "webgate.api": "", "webgate.api.common": "", "webgate.api.factory": "from webgate.api import logs, tasks\n",
        "webgate.api.tasks": "from webgate.api.common import Call\n",
        "webgate.api.logs": "from webgate.api.tasks import LOG_FILTERS\n",
    }
    graph = module_graph(sources)
    assert cycles(graph) == [{"tracker.api", "tracker.queries"}]
    assert data_layer_violations(graph) == ["tracker.models -> webgate.core.auth"]
    assert graph["tracker.cli.views"] == {"tracker.cli.root"}  # a relative import resolves
    assert part_graph(graph, sources)["tracker.cli"] == {"tracker"}
    assert endpoint_violations(graph) == ["webgate.api.logs -> webgate.api.tasks"]
