"""The package's shape: one folder per part, parts layered without cycles, no reach into another part's privates.

The parts, lowest first (a module may import its own part and the parts below it, never one above):

- ``common``: formats, limits, progress, the version, the test-only fault hooks;
- ``engine``: the numba kernels and the level work (no I/O, no public objects);
- ``store``: everything that reads or writes a project (class stores, results, generations);
- ``views``: figures and pages (from plain arrays and a layout);
- the top-level modules, the public objects and entry points (``api``, ``factorization``, ``io``,
  ``dask_client``, ...);
- ``service``: the coordinator, its queues, options and policy;
- ``cli``: the ``mmf-stream`` command;
- the package root ``mmf_stream/__init__.py``: the public API.
"""

import ast
from pathlib import Path

import pytest

import mmf_stream

PACKAGE = Path(mmf_stream.__file__).parent

#: the parts in import order: a part may import those before it
PARTS = ("common", "engine", "store", "views", "top", "service", "cli", "root")
#: the folders that are parts
FOLDERS = {"common", "engine", "store", "views", "service", "cli"}


def _module_name(path: Path) -> str:
    parts = ("mmf_stream", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, files) -> set[tuple[str, str | None]]:
    """``(module, name)`` for each import of the package's modules in ``path`` (lazy ones included);
    ``name`` is the imported name for ``from module import name`` (None for ``import module``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmf_stream"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add((submodule, None) if submodule in files else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names if alias.name.startswith("mmf_stream"))
    return found


def _package_imports() -> dict[str, set[tuple[str, str | None]]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {(module, imported) for module, imported in _imports(path, files) if module in files}
            for name, path in files.items()}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (the package root excluded: only consumers import it)."""
    return {name: {module for module, _ in targets if module not in (name, "mmf_stream")}
            for name, targets in _package_imports().items()}


def part_of(module: str) -> str:
    """The part a module belongs to (see the module docstring)."""
    names = module.split(".")
    if len(names) == 1:
        return "root"
    return names[1] if names[1] in FOLDERS else "top"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"A imports B"`` for each import of a part above the importer's own."""
    rank = {part: index for index, part in enumerate(PARTS)}
    return sorted(f"{name} ({part_of(name)}) imports {target} ({part_of(target)})"
                  for name, targets in graph.items() for target in targets
                  if rank[part_of(target)] > rank[part_of(name)])


def private_reaches(imports: dict[str, set[tuple[str, str | None]]]) -> list[str]:
    """Each import of another part's private module or private name (a leading underscore)."""
    found = []
    for name, targets in imports.items():
        for module, imported in targets:
            if part_of(module) == part_of(name):
                continue
            private_module = any(piece.startswith("_") and piece != "__init__" for piece in module.split(".")[1:])
            if private_module or (imported is not None and imported.startswith("_") and not imported.endswith("__")):
                found.append(f"{name} imports {module}{'.' + imported if imported else ''}")
    return sorted(found)


def test_no_import_cycles():
    graph = _import_graph()
    assert "mmf_stream.engine.greedy" in graph and "mmf_stream.api" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_part_level_cycles_the_parts_are_layered():
    graph = _import_graph()
    assert layering_violations(graph) == []
    parts: dict[str, set[str]] = {}
    for name, targets in graph.items():
        parts.setdefault(part_of(name), set()).update(part_of(t) for t in targets if part_of(t) != part_of(name))
    assert _cycle(parts) is None, " -> ".join(_cycle(parts))


def test_no_import_of_another_parts_private_names():
    assert private_reaches(_package_imports()) == []


def test_the_checks_find_planted_violations():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert layering_violations({"mmf_stream.engine.greedy": {"mmf_stream.store.class_store"}}) == [
        "mmf_stream.engine.greedy (engine) imports mmf_stream.store.class_store (store)"]
    assert layering_violations({"mmf_stream.api": {"mmf_stream.views.figure", "mmf_stream.io"}}) == []
    assert layering_violations({"mmf_stream.views.figure": {"mmf_stream.factorization"}}) != []
    assert private_reaches({"mmf_stream.cli.show": {("mmf_stream.views.figure", "_ROW_HEIGHT")}}) == [
        "mmf_stream.cli.show imports mmf_stream.views.figure._ROW_HEIGHT"]
    assert private_reaches({"mmf_stream.api": {("mmf_stream.store._old", None)}}) != []
    assert private_reaches({"mmf_stream.cli.show": {("mmf_stream.cli.arguments", "_private")}}) == []


@pytest.mark.parametrize("part", sorted(FOLDERS))
def test_every_part_is_one_folder(part):
    assert (PACKAGE / part / "__init__.py").is_file()


def test_the_top_level_holds_only_public_entry_points():
    top = sorted(path.name for path in PACKAGE.iterdir() if path.suffix == ".py")
    assert [name for name in top if name.startswith("_") and name != "__init__.py"] == []
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == FOLDERS
    for old in ("_class_store", "_store", "_integrity", "_factorization", "_cluster", "cli"):
        assert not (PACKAGE / f"{old}.py").exists(), f"mmf_stream/{old}.py has moved into a part"


def test_engine_does_not_import_the_public_objects():
    graph = _import_graph()
    for name, targets in graph.items():
        if name.startswith("mmf_stream.engine"):
            outside = {t for t in targets if part_of(t) not in ("engine", "common")}
            assert not outside, f"{name} imports {outside}"


def test_persistence_is_one_part_below_the_service():
    """Everything that reads or writes a project lives in mmf_stream.store, which imports neither the
    service, the views, the CLI nor the public objects."""
    graph = _import_graph()
    store = [name for name in graph if part_of(name) == "store"]
    assert {"mmf_stream.store.class_store", "mmf_stream.store.result_format", "mmf_stream.store.generations",
            "mmf_stream.store.durability", "mmf_stream.store.class_covariance"} <= set(store)
    for name in store:
        above = {t for t in graph[name] if part_of(t) not in ("store", "engine", "common")}
        assert not above, f"{name} imports {above}"


def test_the_fault_hooks_live_in_one_module():
    """Test-only environment hooks (``MMF_STREAM_*`` variables a test sets to crash or pause a process)
    are defined in ``mmf_stream.common.faults`` only."""
    hooks = mmf_stream.common.faults if hasattr(mmf_stream, "common") else None
    from mmf_stream.common import faults

    assert hooks is None or hooks is faults
    for path in PACKAGE.rglob("*.py"):
        if path.name == "faults.py":
            continue
        text = path.read_text()
        for variable in (faults.CRASH_ENV, faults.PAUSE_ENV, faults.SERVICE_PAUSE_ENV, faults.NO_EXCHANGE_ENV):
            assert f'"{variable}"' not in text, f"{path} names the fault hook {variable}"
