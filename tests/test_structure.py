"""The package's shape: no import cycles, libraries never import the stages, no function too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tinyrlhf"
# Who may import the stages module: the entry points above it.
STAGE_USERS = {"cli", "__main__", "stages"}
# The command line imports its subcommands' modules when one runs, so `tinyrlhf --help` does not load torch.
LAZY_IMPORTS_ALLOWED = {"cli"}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module, modules) -> set[str]:
    """Package modules imported anywhere in the file, function bodies included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("tinyrlhf")):
            base = (node.module or "").removeprefix("tinyrlhf").lstrip(".")
            if base:
                found.add(base.split(".")[0])
            else:  # from . import a, b
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tinyrlhf.")}
    return found & set(modules)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(tree, modules) - {name} for name, tree in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"stages", "data", "ppo", "evaluate", "base_model"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_libraries_never_import_the_stages():
    offenders = {name for name, deps in import_graph().items() if "stages" in deps} - STAGE_USERS
    assert not offenders, f"{sorted(offenders)} import tinyrlhf.stages; pass what they need as arguments instead"


def test_package_imports_sit_at_the_top_of_each_module():
    """A package import inside a function is how the old cycles were hidden."""
    late = []
    for name, tree in _modules().items():
        if name in LAZY_IMPORTS_ALLOWED:
            continue
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level >= 1:
                    late.append(f"{name}.{fn.name}: from {'.' * node.level}{node.module or ''}")
    assert not late, late


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, tree in _modules().items():
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            lines = fn.end_lineno - fn.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{name}.{fn.name}: {lines} lines")
    assert not long, long


def test_the_licence_and_the_citation_can_be_read_by_their_tools():
    import tomllib

    import yaml

    root = PACKAGE.parent
    assert (root / "LICENSE").read_text().startswith("MIT License")
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["title"] and cff["authors"]
    readme = (root / "README.md").read_text()
    assert "@software{" in readme and "[LICENSE](LICENSE)" in readme
