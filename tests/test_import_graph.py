"""The layered import graph of docs/design.md §2.2, checked: no cycles, nothing imports upward.

Every `import` of a p3 module anywhere in a file counts, at module level or inside a function
(a lazy import is still a dependency). One kind of edge is left out of the cycle check: a
package's ``__init__`` choosing among its own submodules inside a function (``p3.backends``
picks hf or vllm), while those submodules import the package's shared types; that is a factory,
not a layer violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(package_factories: bool = True) -> dict[str, set[str]]:
    """module -> the p3 modules it imports (a name imported from a package resolves to the
    submodule when there is one, else to the package). ``package_factories=False`` leaves out
    the imports a package's ``__init__`` makes of its own submodules inside a function."""
    mods = _modules()

    def known(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(f)}
        deps = set()
        for node in ast.walk(tree):
            found = set()
            if isinstance(node, ast.Import):
                found = {known(a.name) for a in node.names if a.name.split(".")[0] == "p3"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base.split(".")[0] == "p3":
                    found = {known(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else known(base)
                             for a in node.names}
            if not package_factories and path.name == "__init__.py" and id(node) in lazy:
                found = {d for d in found if not d.startswith(mod + ".")}
            deps |= found
        deps.discard(mod)
        deps.discard("")
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_p3_import_graph_has_no_cycles():
    graph = import_graph(package_factories=False)
    assert "p3.selection" in graph and "p3.dpp" in graph["p3.selection"]  # the parser sees imports
    assert cycles(graph) == []
    # only a factory's function-level imports are left out: p3.sandbox imports its modules at
    # module level, so one of them importing the package back is a cycle
    assert "p3.sandbox.pool" in graph["p3.sandbox"]
    planted = {**graph, "p3.sandbox.pool": graph["p3.sandbox.pool"] | {"p3.sandbox"}}
    assert cycles(planted) != []


def test_nothing_imports_upward():
    graph = import_graph()
    # the bottom: storage and logs import no p3 module; contracts only storage
    assert graph["p3.storage"] == set() and graph["p3.logs"] == set()
    assert graph["p3.contracts"] <= {"p3.storage"}
    # the top: the command line and the Kubeflow layer are imported by nothing below them
    below_kfp = {m for m in graph if not m.startswith("p3.kfp")}
    assert [m for m in below_kfp if any(d.startswith("p3.kfp") for d in graph[m])] == []
    assert [m for m in graph if "p3.cli" in graph[m]] == []


def test_the_sandbox_imports_nothing_from_p3():
    # it runs under the system python3 of a grading pod, without p3 installed (docs/security.md)
    graph = import_graph()
    sandbox = [m for m in graph if m == "p3.sandbox" or m.startswith("p3.sandbox.")]
    assert sandbox
    assert {m: sorted(d for d in graph[m] if not d.startswith("p3.sandbox")) for m in sandbox} == {m: [] for m in sandbox}
