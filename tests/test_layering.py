"""The library's import graph: no cycle, and nothing imports the CLI.

Every ``import`` of every ``fapm_lib`` module is read from its source (``ast``), including
the ones inside functions, so a cycle hidden behind a lazy import is found too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import fapm_lib

PACKAGE = Path(fapm_lib.__file__).parent
#: Modules allowed to import the CLI: its entry point.
CLI_USERS = {"fapm_lib.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The ``fapm_lib`` modules that module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import module` imports that module; `from module import name` the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_every_module() -> None:
    assert {"fapm_lib.cli", "fapm_lib.model", "fapm_lib.benchmark", "fapm_lib.synthetic.writer"} <= set(MODULES)
    assert "fapm_lib.cli" in GRAPH["fapm_lib.__main__"]
    assert "fapm_lib.benchmark" in GRAPH["fapm_lib.cli"]  # a function-level import is seen
    assert "fapm_lib.errors" in GRAPH["fapm_lib.synthetic.catalogue"]  # `from ..errors import`


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_no_import_cycle_in_the_library() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_in_the_library_imports_the_cli() -> None:
    users = {name for name, targets in GRAPH.items() if "fapm_lib.cli" in targets}
    assert users <= CLI_USERS, f"these modules import fapm_lib.cli: {sorted(users - CLI_USERS)}"
