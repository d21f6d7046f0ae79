"""The package's layout and imports follow docs/architecture.md: one folder per stage, every module in the
stage the page names, no import from a higher stage, no circle between modules (imports inside functions
count)."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pseudolabel"


def documented_stages() -> dict[str, list[str]]:
    """stage -> its modules, lowest stage first, from the table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if re.match(r"\| `?\w+/?`? \| [\w ]+ \|", line)]
    return {row.split("|")[1].strip(" `/"): row.split("|")[2].split() for row in rows}


def modules_of(package: Path) -> dict[str, Path]:
    """'stage.module' (or 'module' at the top) -> its file, for every module of the package."""
    out = {}
    for path in package.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(package).with_suffix("").parts
        out[".".join(parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """'stage.module' -> the package's modules it imports (relative imports, anywhere in the file)."""
    modules = modules_of(package)
    graph = {}
    for name, path in modules.items():
        here = name.split(".")[:-1]  # the folder the module is in, as a dotted path (empty at the top)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            assert not (node.module or "").startswith("pseudolabel"), \
                f"{path}: import the package's modules relatively (from .x import y)"
            if node.level == 0:
                continue
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            candidates = ([".".join(base + node.module.split("."))] if node.module
                          else [".".join(base + [a.name]) for a in node.names])
            for target in candidates:
                if target not in modules:  # a package: its __init__
                    target = ".".join([*target.split("."), "__init__"]) if target else "__init__"
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
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


def stage_rank() -> dict[str, int]:
    """module ('stage.module', or a top-level module) -> the rank of its stage, lowest first."""
    stages = documented_stages()
    rank = {}
    for i, (stage, modules) in enumerate(stages.items()):
        for module in modules:
            rank[module if stage == "pseudolabel" else f"{stage}.{module}"] = i
        if stage != "pseudolabel":
            rank[f"{stage}.__init__"] = i
    return rank


def test_every_module_is_in_the_folder_of_its_documented_stage():
    rank = stage_rank()
    modules = set(modules_of(PACKAGE))
    assert modules - set(rank) == set(), "add these modules to docs/architecture.md"
    assert set(rank) - modules == set(), "docs/architecture.md names modules that are not where it says"


def test_no_import_circle_and_no_import_from_a_higher_stage():
    rank = stage_rank()
    graph = import_graph(PACKAGE)
    assert circles(graph) == []
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if rank[b] > rank[a])
    assert upward == []


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "a.py").write_text("def f():\n    from ..high.b import g\n")
    (tmp_path / "high" / "b.py").write_text("from ..low.a import f\nfrom .c import h\n")
    (tmp_path / "high" / "c.py").write_text("from .. import low\n")
    (tmp_path / "low" / "__init__.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["low.a"] == {"high.b"} and graph["high.b"] == {"low.a", "high.c"}
    assert graph["high.c"] == {"low.__init__"}
    assert circles(graph) == [["high.b", "low.a"]]


def test_the_package_version_is_the_one_pyproject_states():
    import pseudolabel

    with open(ROOT / "pyproject.toml", "rb") as f:
        assert pseudolabel.__version__ == tomllib.load(f)["project"]["version"]


FUNCTION_LINES, CLASS_LINES = 70, 200


def oversized(package: Path) -> list[str]:
    """Functions whose body (after the signature and docstring, so typer option lists aside) runs over
    FUNCTION_LINES lines, and classes over CLASS_LINES lines."""
    out = []
    for name, path in modules_of(package).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                if node.end_lineno - body[0].lineno + 1 > FUNCTION_LINES:
                    out.append(f"{name}.{node.name}")
            elif isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES:
                out.append(f"{name}.{node.name}")
    return out


def test_no_function_or_class_outgrows_the_house_limits(tmp_path):
    assert oversized(PACKAGE) == []
    long_body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES + 1))
    (tmp_path / "m.py").write_text(f"def f(\n    a=1,\n):\n    '''doc'''\n{long_body}\n\ndef g():\n    pass\n")
    assert oversized(tmp_path) == ["m.f"]
