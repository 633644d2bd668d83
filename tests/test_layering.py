"""The package's layers, read from its source: no import cycles (function-body imports included), and the model
and data layers import nothing from the engine or the recipes (transfer, fpt, spt)."""
import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = Path(REPO) / "ds_prompt"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: ds_prompt modules it imports anywhere in its body}."""
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ds_prompt"):
                found |= {t for t in [node.module] + [f"{node.module}.{a.name}" for a in node.names] if t in modules}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None
    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    graph = _imports(_modules())
    assert "ds_prompt.engine.trainer" in graph and graph["ds_prompt.engine.trainer"]  # the reader sees imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_model_and_data_layers_import_nothing_above_them():
    above = ("ds_prompt.engine", "ds_prompt.transfer", "ds_prompt.fpt", "ds_prompt.spt", "ds_prompt.cli",
             "ds_prompt.builders")
    for name, targets in _imports(_modules()).items():
        if name.startswith(("ds_prompt.models", "ds_prompt.data")):
            bad = sorted(t for t in targets if t.startswith(above))
            assert not bad, f"{name} imports {bad}"


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
