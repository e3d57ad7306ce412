"""The package's shape: stages import downward only, and nothing imports in a circle.

Every import counts, function-level ones too, and every module is in the graph, package
`__init__` modules included: a package's own (`cli`, `runs`, ...) goes by the package's name,
the top-level one (the lazy public API) by `__init__`. `from annotator.cli import main` is an
import of the module `cli.main`; `from annotator.cli import cli`, of the package's `__init__`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "annotator"

#: Packages whose `__init__` is a namespace: it imports nothing, so it sits in the first stage.
NAMESPACES = ["io", "runs", "tagging", "training", "views", "bench", "review"]

#: Stages in data-flow order: a module may import its own stage or an earlier one.
STAGES = [
    ["errors", "records", "files", "logs", "streams", "version", *NAMESPACES],
    # loading a model: Flair's, or its Flair-free export with the fast engine's components,
    # or the numpy engine (torch-free: its lookups, batching and CRF decoding)
    [
        "models",
        "embeddings",
        "corpus",
        "vectors",
        "tagging.export",
        "tagging.export_header",
        "tagging.components",
        "tagging.lookup",
        "tagging.packed",
        "tagging.crf",
        "tagging.decoding",
        "tagging.numpy_engine",
        "tagging.precision",
    ],
    ["io.readers", "io.writers", "io.outputs", "io.storage", "io.sinks"],
    ["runs.shards", "runs.request"],
    ["segmentation"],
    ["tagging.*"],
    ["pipeline"],
    ["runs.directory", "runs.workers", "runs.ray", "views.*"],
    ["evaluation", "raw_evaluation", "training.*", "review.*"],
    ["bench.*"],
    ["cli", "cli.*", "runs.dispatch", "__main__", "__init__"],
]
#: They assemble the rest: allowed to import any stage.
TOP = set(STAGES[-1])


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]  # a package's own module: named as the package
        found[".".join(parts)] = path
    return found


def _module_of(name: str, modules: set[str]) -> str | None:
    """`annotator.X.Y` -> `X.Y` if that is a module of the package; `annotator` -> `__init__`."""
    if name == "annotator":
        return "__init__"
    if name.startswith("annotator.") and name[len("annotator.") :] in modules:
        return name[len("annotator.") :]
    return None


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # a submodule, else a name defined in the module
                name = f"{node.module}.{alias.name}"
                found.add(_module_of(name, modules) or _module_of(node.module, modules))
        elif isinstance(node, ast.Import):
            found.update(_module_of(alias.name, modules) for alias in node.names)
    return found - {None}


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
    assert "cli.main" in graph["cli"] and "pipeline" in graph["__init__"]  # `__init__`s count
    assert "logs" in graph["cli.main"] and "__init__" not in graph["cli.main"]


def test_no_module_imports_another_ones_private_names():
    """A leading underscore means "this module's own": a name another module needs is public."""
    modules = _modules()
    found = [
        f"{name}: {node.module}.{alias.name}"
        for name, path in modules.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("annotator")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not found
