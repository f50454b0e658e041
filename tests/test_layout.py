"""The package's shape: the folder tree is the architecture, so imports run only downwards, never in a circle,
and every file stays small enough to read (the layering is described in the README's layout section)."""

from __future__ import annotations

import ast
from pathlib import Path

import genrec

ROOT = Path(genrec.__file__).parent
# Lower layers never import higher ones; a module may import its own layer and any below it.
LAYERS = {
    "genrec.errors": 0, "genrec.files": 0, "genrec.config": 0, "genrec.distributed": 0, "genrec.rundir": 0,
    "genrec.provenance": 0, "genrec.plots": 0, "genrec.rules": 0,
    "genrec.data": 1, "genrec.ids": 2, "genrec.workspace": 3, "genrec.search": 3, "genrec.models": 4,
    "genrec.evaluation": 5, "genrec.train": 6, "genrec.stages": 7, "genrec.pipeline": 8, "genrec.serve": 8,
    "genrec.add_items": 8, "genrec.query": 8, "genrec.query.config": 0,
    "genrec.cli": 9, "genrec": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def imports(path: Path) -> set[str]:
    """The genrec modules a file imports, at the top or inside functions, leaving out `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genrec"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if (ROOT.parent / node.module.replace(".", "/")
                                                                         / f"{a.name}.py").exists()}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("genrec")}
    return found


FILES = sorted(ROOT.rglob("*.py"))
GRAPH = {module_name(p): imports(p) for p in FILES}


def test_the_tree_is_the_one_this_test_knows():
    assert len(FILES) > 30 and "genrec.models.tiger" in GRAPH and "genrec.search.beam" in GRAPH


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, i) for m, deps in graph.items() for i in deps
                  if layer(i) > layer(m) and not m.startswith(i.rsplit(".", 1)[0] + ".") and i != "genrec")


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among the graph's modules (a package's __init__ importing its own modules aside)."""
    edges = {m: {i for i in deps if i in graph and i != m and not i.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str]:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [m, n] if n in stack else [m, n]
            if state.get(n) is None and (found := visit(n, stack + [m])):
                return found
        state[m] = 2
        return []

    for m in sorted(edges):
        if m not in state and (found := visit(m, [])):
            return found
    return []


def test_imports_run_only_down_the_layers():
    assert upward_imports(GRAPH) == []


def test_no_import_cycle():
    assert find_cycle(GRAPH) == []


def test_the_checks_find_an_upward_import_and_a_cycle():
    fake = {"genrec.data.a": {"genrec.models.b"}, "genrec.models.b": {"genrec.search.c"},
            "genrec.search.c": {"genrec.models.b", "genrec.data.a"}, "genrec.search": {"genrec.search.c"}}
    assert upward_imports(fake) == [("genrec.data.a", "genrec.models.b"), ("genrec.search.c", "genrec.models.b")]
    assert find_cycle(fake) == ["genrec.data.a", "genrec.models.b", "genrec.search.c", "genrec.data.a"]
    assert find_cycle({"genrec.search": {"genrec.search.c"}, "genrec.search.c": set()}) == []


def test_files_stay_small_and_packages_say_what_they_own():
    long = [str(p.relative_to(ROOT)) for p in FILES if len(p.read_text().splitlines()) > 400]
    assert long == []
    for package in [p.parent for p in FILES if p.name == "__init__.py"]:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc, f"{package.name}/__init__.py has no docstring saying what it owns"
    for p in FILES:
        assert ast.get_docstring(ast.parse(p.read_text())), f"{p.relative_to(ROOT)} has no module docstring"
