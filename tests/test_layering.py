"""The package's import graph, read from the source: no module may reach itself through imports.

Every import counts, also one inside a function: a deferred import still ties the two modules' code together
(it only hides the circle from Python's loader), so the house has floors only if none of them runs back up.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "finlora_utils"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (`from . import x` names module x; `from .x import y` module x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]   # a submodule, or else a name of `base`
        else:
            continue
        for t in targets:
            while t and t not in modules:   # `from .data import TASKS` names the module finlora_utils.data
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 15 and "finlora_utils.train" in graph["finlora_utils.pipeline"]   # the reader sees imports
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def private_imports(path: Path, modules: set[str]) -> list[str]:
    """`from .x import _name` (a private name of another package module) and `alias._name` where alias is a
    package module this file imported: both tie this file to another module's insides."""
    tree = ast.parse(path.read_text(), str(path))
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("finlora_utils")):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {a.name}")
                else:
                    aliases.add(a.asname or a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.value.id.lstrip("_") in {m.rpartition(".")[2] for m in modules}
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    found = [hit for f in files for hit in private_imports(f, modules)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_name_finder_finds_one(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .memory import _validate\nfrom . import lora as _lora\nx = _lora._cache\ny = _lora.model_config\n")
    assert private_imports(f, {"finlora_utils.memory", "finlora_utils.lora"}) == [
        "m.py:1: from .memory import _validate", "m.py:3: _lora._cache"]
