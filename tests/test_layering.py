"""The package's layering: no import cycle, no function-level import used to hide one, and a
public API that `import flowvae` exposes."""

from __future__ import annotations

import ast
from pathlib import Path

import flowvae

PACKAGE = Path(flowvae.__file__).parent


def _imports() -> dict[str, tuple[set[str], set[str]]]:
    """module -> (modules it imports at top level, modules it imports inside functions)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        top: set[str] = set()
        inner: set[str] = set()
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowvae"):
                rest = node.module.split(".")[1:]
                names = [rest[0]] if rest else [a.name for a in node.names]
            names = [n.split(".")[0] for n in names if (PACKAGE / f"{n.split('.')[0]}.py").exists()]
            (top if node in tree.body else inner).update(names)
        graph[path.stem] = (top, inner)
    return graph


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycle_even_through_function_level_imports():
    graph = _imports()
    edges = {m: top | inner for m, (top, inner) in graph.items()}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_build_reads_the_model_config():
    readers = {p.stem for p in PACKAGE.glob("*.py") if "ModelConfig" in p.read_text()}
    # config defines it, __init__ exports it, model maps it onto modules, testing builds its
    # fixture through model
    assert readers <= {"__init__", "config", "model", "testing"}
    for module in ("nets", "posteriors", "flows", "vae", "hierarchical", "likelihoods", "core", "estimators"):
        assert "ModelConfig" not in (PACKAGE / f"{module}.py").read_text(), module
