"""The layers the README promises, read from the source's import statements (no interpreter started).

Every ``import``/``from … import`` of every module counts, function-level ones too, so a lazy
import cannot hide a dependency.
"""
import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "depthpi"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def graph() -> dict[str, tuple[set[str], set[str]]]:
    """module → (modules it imports anywhere, modules it imports at its top level)."""
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        anywhere, top = set(), set()
        for node in ast.walk(tree):
            found = _imported(node, name, path.name == "__init__.py")
            anywhere |= found
            if node in tree.body:
                top |= found
        edges[name] = (anywhere, top)
    return edges


def _imported(node, importer: str, is_package: bool) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing package
            base = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module
        return {module} | {f"{module}.{alias.name}" for alias in node.names}
    return set()


def reachable(start: str) -> set[str]:
    """Every module ``start`` imports, directly or through depthpi modules (third-party names included)."""
    edges, seen, todo = graph(), set(), [start]
    while todo:
        module = todo.pop()
        for target in edges.get(module, (set(), set()))[0]:
            if target not in seen:
                seen.add(target)
                if target in edges:
                    todo.append(target)
    return seen


def test_the_graph_sees_every_module_and_a_known_edge():
    assert {"depthpi.train.engine", "depthpi.data.loader", "depthpi.camera"} <= set(graph())
    assert "depthpi.train.run" in graph()["depthpi.train.engine"][1]
    anywhere, top = graph()["depthpi.cli"]  # the command line imports its jobs inside functions
    assert "depthpi.precompute" in anywhere and "depthpi.precompute" not in top


@pytest.mark.parametrize("module", ["depthpi.predict", "depthpi.evaluate", "depthpi.export", "depthpi.precompute",
                                   "depthpi.inference_cli", "depthpi.data.batches", "depthpi.models.posenet"])
def test_using_a_trained_model_does_not_import_the_training_engine(module):
    leaked = {m for m in reachable(module) if m.startswith("depthpi.train")}
    assert not leaked, f"{module} imports {sorted(leaked)}"


@pytest.mark.parametrize("module", ["depthpi.train.engine", "depthpi.train.run", "depthpi.evaluate"])
def test_training_and_evaluation_do_not_import_precompute_or_prediction(module):
    assert "depthpi.precompute" not in reachable(module)
    if module != "depthpi.evaluate":
        assert "depthpi.predict" not in reachable(module)


def test_geometry_is_plain_numpy():
    for module in ("depthpi.camera", "depthpi.skeleton"):
        imported = reachable(module)
        assert "torch" not in imported and "numpy" in imported, module


def test_models_know_nothing_of_shards_or_training():
    for module in (m for m in graph() if m.startswith("depthpi.models")):
        leaked = {m for m in reachable(module) if m.startswith(("depthpi.data", "depthpi.train", "webdataset"))}
        assert not leaked, f"{module} imports {sorted(leaked)}"


def test_shard_planning_is_pure():
    leaked = {m for m in reachable("depthpi.data.shard_plan") if m.split(".")[0] in ("torch", "webdataset")}
    assert not leaked


def test_no_import_cycle_among_depthpi_modules():
    """Function-level imports count: a lazy import hides a cycle from Python, not from this test."""
    edges = {m: {t for t in anywhere if t in graph() and t != m} for m, (anywhere, _) in graph().items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]):
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(target):] + [target]))
            if not state.get(target):
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if not state.get(module):
            visit(module, [module])
