"""The import layering, read from the source (no imports run): what each package may import,
and no import cycles between modules.

    tambua/   wiring, gRPC, CLI: may import enroll/, matcher/, store/, sync/ and cluster/
    cluster/  galleries sharded over Ray actors: may import matcher/ and store/
    enroll/   images -> templates (ONNX Runtime, OpenCV): may import matcher/; no grpc, faiss
    sync/     site identities, bundles: may import matcher/ (its repository interfaces); no store/
    store/    the SQLite store and sealing: may import matcher/ (it implements its interfaces)
    matcher/  templates in, candidates out: no images, no grpc, no ONNX Runtime, no store/
    models/, bench/   build and measurement tools: may import the runtime, never the reverse
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.tambua.test_server import REPO

PACKAGES = ("enroll", "matcher", "store", "sync", "cluster", "tambua", "models", "bench")
# package -> top-level names it must not import
FORBIDDEN = {
    # (OpenCV is allowed: MCC takes a minutiae set's convex hull with it; images are enroll/'s.)
    "matcher": {"enroll", "store", "sync", "cluster", "tambua", "models", "bench", "grpc", "onnxruntime", "PIL",
                "ray"},
    "store": {"enroll", "sync", "cluster", "tambua", "models", "bench", "grpc", "onnxruntime", "PIL", "ray"},
    "sync": {"enroll", "store", "cluster", "tambua", "models", "bench", "grpc", "onnxruntime", "faiss", "ray"},
    "cluster": {"enroll", "sync", "tambua", "models", "bench", "grpc", "onnxruntime", "PIL"},
    "enroll": {"store", "sync", "cluster", "tambua", "models", "bench", "grpc", "faiss", "ray"},
    "tambua": {"models", "bench"},
}


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> every name it imports (top level and inside functions), absolute."""
    graph = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "v1" in parts:  # generated gRPC stubs
                continue
            is_init = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_init else parts)
            names = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = module.split(".") if is_init else module.split(".")[:-1]
                    prefix = ".".join(base[:len(base) - node.level + 1]) if node.level else ""
                    name = ".".join(x for x in (prefix, node.module or "") if x)
                    names.add(name)
                    names.update(f"{name}.{a.name}" for a in node.names)
            graph[module] = names
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {n}" for m, names in graph.items() for n in names
                  if n.split(".")[0] in FORBIDDEN.get(m.split(".")[0], ()))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), internal imports only."""
    edges = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_package_imports_upward():
    assert upward_imports(import_graph(REPO)) == []


def test_no_import_cycles():
    assert cycles(import_graph(REPO)) == []


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    (tmp_path / "matcher").mkdir()
    (tmp_path / "matcher" / "__init__.py").write_text("")
    (tmp_path / "matcher" / "a.py").write_text("from matcher import b\nimport grpc\n")
    (tmp_path / "matcher" / "b.py").write_text("def f():\n    from .a import x\n")
    graph = import_graph(tmp_path, ("matcher",))
    assert cycles(graph) == [["matcher.a", "matcher.b"]]
    assert upward_imports(graph) == ["matcher.a imports grpc"]
