"""The package's imports follow docs/architecture.md: every module in one stage, no import from a higher
stage, no circle (imports inside functions count)."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pseudolabel"


def documented_stages() -> dict[str, int]:
    """module -> stage index, lowest first, from the table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    stage_of = {}
    rows = [line for line in text.splitlines() if re.match(r"\| \w+ \| [\w ]+ \|", line)]
    for index, row in enumerate(rows[1:]):  # the header row first
        for module in row.split("|")[2].split():
            assert module not in stage_of, f"{module} is in two stages"
            stage_of[module] = index
    return stage_of


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative imports, anywhere in the file)."""
    modules = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("pseudolabel"), \
                    f"{path.name}: import the package's modules relatively (from .x import y)"
                if node.level == 1:
                    if node.module:
                        targets.add(node.module.split(".")[0])
                    else:  # from . import x: module x, or a name of the package's __init__
                        targets.update(a.name if a.name in modules else "__init__" for a in node.names)
        targets.discard(path.stem)
        graph[path.stem] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_exactly_one_documented_stage():
    stages = documented_stages()
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules - set(stages) == set(), "add these modules to docs/architecture.md"
    assert set(stages) - modules == set(), "docs/architecture.md names modules that do not exist"


def test_no_import_circle_and_no_import_from_a_higher_stage():
    stages = documented_stages()
    graph = import_graph(PACKAGE)
    assert circles(graph) == []
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if stages[b] > stages[a])
    assert upward == []


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    (tmp_path / "low.py").write_text("def f():\n    from .high import g\n")
    (tmp_path / "high.py").write_text("from .low import f\n")
    (tmp_path / "alone.py").write_text("from . import low\n")
    graph = import_graph(tmp_path)
    assert graph == {"low": {"high"}, "high": {"low"}, "alone": {"low"}}
    assert circles(graph) == [["high", "low"]]


def test_the_package_version_is_the_one_pyproject_states():
    import pseudolabel

    with open(ROOT / "pyproject.toml", "rb") as f:
        assert pseudolabel.__version__ == tomllib.load(f)["project"]["version"]

