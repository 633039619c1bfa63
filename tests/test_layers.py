"""The package's layout is a promise to newcomers: imports only point down the data path.

    commands -> definitions -> defs -> sync -> store -> dynamics -> settings

The simulator (a stand-in for Dynamics) imports nothing from the rest of the package, and
Dagster is imported only where Dagster objects are built (defs/, definitions.py) and where a
command runs the job in process (commands/runs.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dynsync_dagster"
LAYERS = ["settings", "dynamics", "store", "sync", "defs", "definitions", "commands"]
DAGSTER_ALLOWED = {"defs", "definitions", "commands/runs.py"}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "__init__.py":
            yield rel.parts[0].removesuffix(".py"), path


def _imports(path: Path, *, top_level_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    package = ["dynsync_dagster", *path.relative_to(PACKAGE).parent.parts]
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.lineno, node.module or ""
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1])
            if node.module:
                yield node.lineno, f"{base}.{node.module}"
            else:  # from . import a, b: the submodules a and b
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "dynsync_dagster" and len(parts) > 1 else None


def test_imports_only_point_down_the_data_path() -> None:
    upward = []
    for layer, path in _modules():
        for line, module in _imports(path):
            target = _layer_of(module)
            if target is None or target == layer:
                continue
            if layer == "simulator" or target == "simulator":
                # The simulator stands alone; only commands (demo, dev) start it.
                if layer != "commands":
                    upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
                continue
            if LAYERS.index(target) > LAYERS.index(layer):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_dagster_is_imported_only_where_dagster_objects_are_built() -> None:
    outside = []
    for layer, path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if layer in DAGSTER_ALLOWED or rel in DAGSTER_ALLOWED:
            continue
        for line, module in _imports(path):
            if module == "dagster" or module.startswith(("dagster.", "dagster_")):
                outside.append(f"{rel}:{line} imports {module}")
    assert not outside, "\n".join(outside)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for _layer, path in _modules():
        name = ".".join(("dynsync_dagster", *path.relative_to(PACKAGE).with_suffix("").parts))
        graph[name.removesuffix(".__init__")] = {
            module for _line, module in _imports(path, top_level_only=True)
            if module.startswith("dynsync_dagster.") and not module.startswith(name)
        }  # fmt: skip
    for start in graph:
        seen, stack = set(), [(start, (start,))]
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                assert nxt != start, "import cycle: " + " -> ".join((*trail, nxt))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
