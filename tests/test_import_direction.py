"""Data flows one way, and so do imports (issue 11, docs/ARCHITECTURE.md).

The module graph is read from the source with :mod:`ast`, not by importing it: every
``import`` and ``from … import`` of a project module, at module level (those under
``if TYPE_CHECKING:`` too: a circle of types is still a circle in the design) or
inside a function, is an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("strategies", "flp2p", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from package import module`` imports the module; ``from module
            # import name`` the module itself.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: imported_modules(name, path, modules) for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, …, a]``, or ``None`` (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        state[root] = 1
        pending = [iter(sorted(graph[root]))]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                state[path.pop()] = 2
                pending.pop()
                continue
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state:
                state[child] = 1
                path.append(child)
                pending.append(iter(sorted(graph[child])))
    return None


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    # flp2p.config imports strategies.base inside build_strategy only.
    assert "strategies.base" in graph["flp2p.config"]
    assert "strategies.aggregators" in graph["strategies.detection.geometry"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_strategies_import_nothing_of_flp2p() -> None:
    offending = {
        name: sorted(target for target in targets if target.startswith("flp2p"))
        for name, targets in import_graph().items()
        if name.startswith("strategies")
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_the_ledger_does_not_import_the_peer_runtime() -> None:
    offending = {
        name: sorted(t for t in targets if t.startswith("flp2p.peer"))
        for name, targets in import_graph().items()
        if name.startswith("flp2p.ledger")
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_no_import_cycle_between_project_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_dht_routing_does_not_call_into_the_protocol() -> None:
    """Routing says whom to ping; the protocol pings (hivemind's shape)."""
    assert "flp2p.dht.protocol" not in import_graph()["flp2p.dht.routing"]


def importers_of(prefix: str) -> set[str]:
    """Modules outside ``prefix`` that import a module inside it."""
    inside = (prefix, f"{prefix}.")
    return {
        name
        for name, targets in import_graph().items()
        if not name.startswith(inside)
        and any(
            target == prefix or target.startswith(f"{prefix}.") for target in targets
        )
    }


def test_the_peer_runtime_is_the_top_of_the_library() -> None:
    # benchmarks may drive anything; in the library only the entry points do
    # (python -m flp2p.client, and flp2p join/found/status --dht).
    library = {m for m in importers_of("flp2p.peer") if not m.startswith("benchmarks")}
    assert library <= {"flp2p.client", "flp2p.cli"}


def test_signatures_stand_on_nothing_of_the_project() -> None:
    assert import_graph()["flp2p.signatures"] == set()


def test_the_dashboard_is_reached_only_from_the_command_line() -> None:
    assert importers_of("flp2p.dashboard") <= {"flp2p.cli"}


def test_no_two_modules_share_a_name() -> None:
    names: dict[str, list[str]] = {}
    for name, path in project_modules().items():
        if path.name != "__init__.py":
            names.setdefault(path.stem, []).append(name)
    assert {leaf: found for leaf, found in names.items() if len(found) > 1} == {}
