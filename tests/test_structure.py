"""The code's structure: no package imports itself round in a loop (no file imports a file that
imports it back, directly or through others), lazy imports inside functions and imports for
annotations only (under ``if TYPE_CHECKING:``) included: a loop through types is a loop in the
design."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder -> its installed package name
PACKAGES = {"inference": "pyro_implicit.inference", "pyro_implicit": "pyro_implicit",
            "models": "pyro_implicit.models"}


def imports_of(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that the file ``path`` imports anywhere (functions and
    ``if TYPE_CHECKING:`` blocks included), as dotted names relative to ``package``."""
    tree = ast.parse(path.read_text())
    own = path.relative_to(ROOT / next(k for k, v in PACKAGES.items() if v == package))
    here = ".".join(own.with_suffix("").parts[:-1])  # the file's subpackage
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if here else []
                base = [b for b in base if b]
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"{target}.{a.name}" if target else a.name for a in node.names]
                found.update([target] if target else [])
                found.update(names)
            elif node.module and node.module.startswith(package + "."):
                target = node.module[len(package) + 1:]
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + "."):
                    found.add(alias.name[len(package) + 1:])
    return found


def module_graph(folder: str) -> dict[str, set[str]]:
    """file module -> the package's file modules it imports (names that are not files, such as
    a class imported from a module, are dropped)."""
    package = PACKAGES[folder]
    files = {".".join(p.relative_to(ROOT / folder).with_suffix("").parts): p
             for p in (ROOT / folder).rglob("*.py")}
    modules = {name.removesuffix(".__init__") if name != "__init__" else "" for name in files}
    graph = {}
    for name, path in files.items():
        module = name.removesuffix(".__init__") if name != "__init__" else ""
        if module in ("", "__main__") or module.endswith(".__init__"):
            continue  # package facades and entry points import everything by design
        graph[module] = {m for m in imports_of(path, package) if m in modules and m != module
                         and m != ""}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("folder", list(PACKAGES))
def test_no_file_imports_a_file_that_imports_it_back(folder):
    graph = module_graph(folder)
    assert graph, f"no modules found under {folder}/"
    assert find_cycle(graph) is None, f"import loop in {folder}/: {' -> '.join(find_cycle(graph))}"


def test_the_checker_sees_loops_lazy_imports_and_type_checking_blocks(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .c import y\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .a import z\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setitem(PACKAGES, "pkg", "pkg")
    graph = module_graph("pkg")
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("def g():\n    from .a import z\n")
    assert find_cycle(module_graph("pkg")) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("import typing\n")
    assert find_cycle(module_graph("pkg")) is None
