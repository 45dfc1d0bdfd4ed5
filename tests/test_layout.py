"""The package's import graph has no cycle, counting imports inside functions too (a cycle dodged
by a function-level import is still a cycle), and the public surface is the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import mlux

PACKAGE = Path(mlux.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["mlux", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + [node.module] if node.module else base) \
                    if node.level else node.module or ""
                for alias in node.names:  # `from pkg import submodule` depends on the submodule
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "mlux.decode" in graph["mlux.generate"]
    cycle = find_cycle(graph)
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_api_names_are_importable_from_mlux():
    api = (PACKAGE.parents[1] / "shared" / "API.md")
    names = ["HookedModel", "HookWrapper", "HookContext", "expand_layer_specs",
             "compute_steering_vector", "extract_steering_vectors", "create_steering_hook",
             "create_additive_hook", "prefill_with_cache", "generate_from_cache",
             "stream_from_cache", "ContrastiveSteering", "SteeringVector", "ModelConfig",
             "MODEL_CONFIGS", "get_model_config", "infer_model_config", "generate_batch",
             "Steering"]
    if api.is_file():  # the contract, when the shared folder sits beside the checkout
        text = api.read_text()
        assert [n for n in names if f"`{n}" not in text] == []
    assert [n for n in names if not hasattr(mlux, n)] == []
    assert set(names) <= set(mlux.__all__) and len(mlux.__all__) <= 25
