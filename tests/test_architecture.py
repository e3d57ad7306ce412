"""The package's shape: stages import downward only, and nothing imports in a circle.

Every import counts, function-level ones too. Package `__init__` modules are namespaces (the
top-level one is the lazy public API) and are left out of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "annotator"

#: Stages in data-flow order: a module may import its own stage or an earlier one.
STAGES = [
    ["errors", "records", "files", "logs"],
    ["models", "embeddings", "corpus"],
    ["io.readers", "io.writers", "io.outputs"],
    ["segmentation"],
    ["tagging.*"],
    ["pipeline"],
    ["runs.shards", "runs.directory", "runs.workers", "runs.ray", "views.*"],
    ["evaluation", "raw_evaluation", "training.*", "review.*"],
    ["bench.*"],
    ["cli.*", "runs.dispatch", "__main__"],
]
#: They assemble the rest: allowed to import any stage.
TOP = set(STAGES[-1])


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__":
            found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("annotator.") and name[len("annotator.") :] in modules:
                found.add(name[len("annotator.") :])
    return found


def _stage(module: str) -> int:
    for number, members in enumerate(STAGES):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return number
    raise AssertionError(f"annotator.{module} is in no stage of tests/test_architecture.py")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_module_imports_only_its_own_stage_or_earlier_ones():
    wrong = [
        f"{module} -> {target}"
        for module, targets in sorted(_graph().items())
        if module not in TOP
        for target in sorted(targets)
        if _stage(target) > _stage(module)
    ]
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_the_real_imports():
    """Guards the two tests above against passing on an empty graph."""
    graph = _graph()
    assert "tagging.engines" in graph["pipeline"] and "pipeline" in graph["runs.directory"]
    assert _stage("tagging.fast") > _stage("segmentation")
