"""The package's import graph, read from the source with `ast`: no circles, and `lib/` free of Dagster.

Every import counts, the ones inside functions too: a function-level import only hides a circle
from import time, it does not remove the knot a reader has to untie.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "embed_pipeline"
ROOT = Path(__file__).resolve().parent.parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(path: Path, module: str, is_package: bool) -> set[str]:
    """Every dotted name `module` imports, anywhere in the file; relative imports made absolute."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a `from pkg import mod` names the module itself)."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        names = imported_names(path, module, path.name == "__init__.py")
        graph[module] = {name for name in names if name in files and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path that ends where it starts, or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from embed_pipeline.lib import config\n    from . import sibling\n")
    assert {"embed_pipeline.lib.config", "embed_pipeline.lib.sibling"} <= imported_names(source, "embed_pipeline.lib.m", False)


def test_the_package_import_graph_has_no_circle():
    graph = import_graph()
    assert "embed_pipeline.cli" in graph and "embed_pipeline.lib.config" in graph["embed_pipeline.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lib_never_imports_dagster():
    files = module_files()
    offenders = {module: sorted(n for n in imported_names(path, module, path.name == "__init__.py")
                                if n == "dagster" or n.startswith(("dagster.", "dagster_")))
                 for module, path in files.items() if module.startswith(f"{PACKAGE}.lib")}
    assert len(offenders) > 10
    assert {m: n for m, n in offenders.items() if n} == {}


def test_no_comment_or_doc_cites_a_work_item_number():
    """Comments say why; a work-item number tells a reader nothing once the item is closed."""
    folders = [PACKAGE, "embed_pipeline_tests", "benchmarks", "docs"]
    files = [path for folder in folders for path in (ROOT / folder).rglob("*")
             if path.suffix in (".py", ".md", ".yaml") and not any(p.startswith(".") for p in path.relative_to(ROOT).parts)]
    files += [ROOT / "README.md", ROOT / "data" / "README.md"]
    assert len(files) > 50
    pattern = re.compile(r"\bissue [0-9]")
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in files
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if pattern.search(line)]
    assert hits == []
