"""The package's shape: no import cycles between its modules (lazy imports included)."""

import ast
from pathlib import Path

import mmf_stream

PACKAGE = Path(mmf_stream.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("mmf_stream", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmf_stream"):
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("mmf_stream"))
        # the package root is the public API: only the CLI (a consumer) may import it
        graph[name] = {t for t in targets if t in files and t != name and t != "mmf_stream"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
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


def test_no_import_cycles():
    graph = _import_graph()
    assert "mmf_stream.engine.greedy" in graph and "mmf_stream._factorization" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_engine_does_not_import_the_public_objects():
    graph = _import_graph()
    for name, targets in graph.items():
        if name.startswith("mmf_stream.engine"):
            outside = {t for t in targets if not t.startswith("mmf_stream.engine")}
            assert not outside, f"{name} imports {outside}"


def test_persistence_is_one_part_below_the_service():
    """Everything that reads or writes a project lives in mmf_stream.store, which imports neither the
    service, the views, the CLI nor the public objects; the core does not import the service."""
    graph = _import_graph()
    store = [name for name in graph if name.startswith("mmf_stream.store")]
    assert {"mmf_stream.store.class_store", "mmf_stream.store.result_format", "mmf_stream.store.generations",
            "mmf_stream.store.durability"} <= set(store)
    for name in store:
        above = {t for t in graph[name] if t.startswith(("mmf_stream.service", "mmf_stream.views", "mmf_stream.cli",
                                                          "mmf_stream._factorization"))}
        assert not above, f"{name} imports {above}"
    top_level = [name for name in graph if name.count(".") == 1 and name != "mmf_stream.cli"]
    for name in top_level:
        service = {t for t in graph[name] if t.startswith("mmf_stream.service")}
        assert not service, f"{name} imports the service: {service}"
    for old in ("_class_store", "_store", "_integrity"):
        assert not (PACKAGE / f"{old}.py").exists(), f"mmf_stream/{old}.py is persistence: it belongs in store/"
