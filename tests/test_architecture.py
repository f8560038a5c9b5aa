"""The import graph that ARCHITECTURE.md draws: no cycles, no core import of a plugin.

The graph is read from the sources, function-local imports included (they run too, only
later), imports under ``if TYPE_CHECKING:`` left out (they never run). ``make lint`` checks the
layers themselves with import-linter (``[tool.importlinter]`` in pyproject.toml); these tests
keep the two properties that matter most in the default test run as well.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where each folder of the repository lies in the installed package.
INSTALLED = {"embench": "embench", "encoders": "embench.encoders", "tasks": "embench.tasks"}
PLUGINS = ("embench.encoders", "embench.tasks")


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    modules = {}
    for folder, package in INSTALLED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, function-local)`` for each embench import in one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, local)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, local) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:  # `from embench import show` imports a module
                child = f"{origin}.{alias.name}"
                found.append((child if child in modules else origin, node.lineno, local))
        local = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, local)

    visit(ast.parse(path.read_text()), False)
    return [(m, line, local) for m, line, local in found
            if m == "embench" or m.startswith("embench.")]


def import_graph() -> dict[str, dict[str, int]]:
    """``graph[importer][imported]`` = the first line importing it, for every module."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for imported, line, _ in imports_of(name, path, modules):
            target = imported
            while target not in modules and "." in target:  # a name inside a module
                target = target.rpartition(".")[0]
            if target != name:
                edges.setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "embench.runner" in graph and "embench.encoders.pca" in graph
    described = []
    for component in cycles(graph):
        edges = [f"{m} -> {t} (line {line})" for m in component
                 for t, line in graph[m].items() if t in component]
        described.append("; ".join(edges))
    assert described == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [
        ["a", "b", "c"]]


def test_the_core_imports_no_plugin():
    modules = module_files()
    reaching = [f"{name} imports {imported} (line {line})"
                for name, path in modules.items() if not name.startswith(PLUGINS)
                for imported, line, _ in imports_of(name, path, modules)
                if imported.startswith(PLUGINS)]
    assert reaching == []


def import_groups(tree: ast.AST) -> list[list[ast.stmt]]:
    """Runs of consecutive import statements inside functions, each once."""
    groups: dict[int, list[ast.stmt]] = {}
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for block in ast.walk(function):
            for field in ("body", "orelse", "finalbody"):
                run: list[ast.stmt] = []
                statements = getattr(block, field, None)
                if not isinstance(statements, list):
                    continue
                for statement in [*statements, None]:
                    if isinstance(statement, (ast.Import, ast.ImportFrom)):
                        run.append(statement)
                    elif run:
                        groups.setdefault(run[0].lineno, run)
                        run = []
    return [groups[line] for line in sorted(groups)]


def test_function_local_imports_of_embench_say_why():
    """In the core, an import inside a function defers something heavy, and says what."""
    silent = []
    for name, path in module_files().items():
        if name.startswith(PLUGINS):
            continue
        source = path.read_text()
        lines = source.splitlines()
        for group in import_groups(ast.parse(source)):
            names = [alias.name if isinstance(s, ast.Import) else s.module or ""
                     for s in group for alias in s.names]
            if not any(n == "embench" or n.startswith("embench.") for n in names):
                continue
            above = group[0].lineno - 1  # the comment lines just above the group, if any
            while above > 0 and not lines[above - 1].strip():
                above -= 1
            said = lines[above - 1].lstrip().startswith("#") if above > 0 else False
            said = said or any("#" in lines[i - 1]  # or a comment among the group's lines
                               for i in range(group[0].lineno, group[-1].end_lineno + 1))
            if not said:
                silent.append(f"{path.relative_to(ROOT)}:{group[0].lineno}")
    assert silent == []


@pytest.mark.subprocess
def test_import_linter_sees_function_local_imports(tmp_path):
    """``make lint`` relies on grimp reading imports inside functions too."""
    spec = importlib.util.spec_from_file_location("lint_imports",
                                                  ROOT / ".ci" / "lint_imports.py")
    lint_imports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lint_imports)
    lint_imports.stage_package(tmp_path)
    code = ("import grimp\n"
            "graph = grimp.build_graph('embench', cache_dir=None)\n"
            "assert 'embench.encoders.pca' in graph.modules, 'the plugins are in the package'\n"
            "[detail] = graph.get_import_details(importer='embench.runner',\n"
            "                                    imported='embench.probes')\n"
            "print(detail['line_number'])\n")
    # run in the staged folder, so that `import embench` finds the copy laid out as installed
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=True)
    line = int(result.stdout.strip())
    source = (ROOT / "embench" / "runner.py").read_text().splitlines()[line - 1]
    assert source.startswith("    from embench.probes")  # inside a function
