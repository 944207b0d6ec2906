"""The library's shape: packages in layers, each importing only the layers before it; no import
cycle; a thin top level; one module for the search arithmetic.

Every ``import`` of every ``fapm_lib`` module is read from its source (``ast``), including the
ones inside functions, so an upward or cyclic import hidden behind a lazy import is found too.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import fapm_lib

PACKAGE = Path(fapm_lib.__file__).parent
#: The layers, lowest first. A module may import its own layer and the layers before it only.
LAYERS = ("errors", "system", "config", "data", "method", "scale", "decisions", "detectors", "report", "deploy",
          "service", "tutorial", "workflows", "cli")
#: At the top of the package: the entry points, which may import anything.
ENTRY_POINTS = {"fapm_lib", "fapm_lib.__main__"}
MAX_TOP_LEVEL_MODULES = 6


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


def layer_of(name: str) -> int | None:
    """Index in :data:`LAYERS` of ``fapm_lib.<layer>...``; None for the entry points."""
    if name in ENTRY_POINTS:
        return None
    return LAYERS.index(name.split(".")[1])


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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a higher layer by a lower one."""
    bad = []
    for name, targets in sorted(graph.items()):
        own = layer_of(name)
        if own is None:
            continue
        bad += [f"{name} -> {t}" for t in sorted(targets) if (layer_of(t) or 0) > own]
    return bad


def test_the_graph_is_read_from_every_module() -> None:
    assert {"fapm_lib.cli.main", "fapm_lib.method.fapm_model", "fapm_lib.workflows.benchmark",
            "fapm_lib.data.synthetic.writer"} <= set(MODULES)
    assert "fapm_lib.cli.main" in GRAPH["fapm_lib.__main__"]
    assert "fapm_lib.decisions.results" in GRAPH["fapm_lib.detectors.base"]  # a function-level import is seen
    assert "fapm_lib.errors" in GRAPH["fapm_lib.data.synthetic.catalogue"]  # `from ...errors import`


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        if name not in ENTRY_POINTS:
            assert name.split(".")[1] in LAYERS, f"{name}: not in a layer of {LAYERS}"


def test_find_cycle_and_upward_imports_find_them() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
    assert upward_imports({"fapm_lib.method.fapm_model": {"fapm_lib.decisions.calibration", "fapm_lib.errors"}}) == [
        "fapm_lib.method.fapm_model -> fapm_lib.decisions.calibration"]


def test_no_import_cycle_in_the_library() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_lower_layer_imports_a_higher_one() -> None:
    assert upward_imports(GRAPH) == []


def test_the_top_level_is_thin() -> None:
    plain = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(plain) <= MAX_TOP_LEVEL_MODULES, plain
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(LAYERS) - {"errors", "config"}


def test_the_search_arithmetic_lives_in_one_module() -> None:
    """The distance computation (a batched matrix product against the banks) is written once, in
    method/memory.py: FAPM's region banks and PatchCore's single bank both search through it."""
    pattern = re.compile(r"\b(baddbmm|addmm|cdist)\(")
    users = sorted(name for name, path in MODULES.items() if pattern.search(path.read_text()))
    assert users == ["fapm_lib.method.memory"]


def test_the_public_api_resolves() -> None:
    for name in fapm_lib.__all__:
        assert getattr(fapm_lib, name) is not None, name
