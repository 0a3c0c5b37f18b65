"""The shape of the package: no import cycles (function-level imports included), short files.

Layers sit low and their users above them (../shared/STYLE.md): a cycle, even one hidden in
a function-level import, means a module reaches up into a layer that depends on it.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(REPO, "avse")
MAX_LINES = 500


def _modules() -> dict:
    """``{dotted module name: file path}`` of every module under avse/."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node, known) -> list:
    """The avse modules an import statement of ``module`` names (every level of nesting)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        # "from a.b import c": the module a.b.c when it is one, else a.b
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:  # "import avse.x.y.Z" style: longest known prefix
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> dict:
    known = _modules()
    graph = {}
    for module, path in known.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        edges = set()
        for node in ast.walk(tree):  # every import, top-level or inside a function
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_resolve(module, is_package, node, known))
        edges.discard(module)
        graph[module] = sorted(edges)
    return graph


def find_cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": ["b"], "b": []}) == []


def test_the_graph_sees_function_level_imports(tmp_path):
    tree = ast.parse("def f():\n    from avse.data import shards\n")
    node = tree.body[0].body[0]
    assert _resolve("avse.x", False, node, {"avse.data", "avse.data.shards"}) == ["avse.data.shards"]


def test_avse_has_no_import_cycle():
    graph = import_graph()
    assert "avse.data.shards" in graph and len(graph) > 30
    cycles = find_cycles(graph)
    detail = "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(
            f"{m} imports {', '.join(e for e in graph[m] if e in c)}" for m in c)
        for c in cycles)
    assert not cycles, f"import cycles in avse/ (move the shared piece down a layer):\n{detail}"


@pytest.mark.parametrize("module,path", sorted(_modules().items()))
def test_every_module_is_short(module, path):
    with open(path) as f:
        n = sum(1 for _ in f)
    assert n < MAX_LINES, f"{path}: {n} lines; split it (one family per file, < {MAX_LINES} lines)"
