"""Layering of the package, checked from the source text so that it holds in a runtime-only
install: only `ast` and the standard library, nothing of ortrefine is imported.

- No import cycle among module-level imports (`if TYPE_CHECKING:` ones left out: they never
  run): a cycle makes what a module sees depend on which of its members was imported first, and
  leaves half-initialised modules behind a failed import.
- The edge runtime (`ortrefine.runtime`) must install and start without torch or the export,
  evaluation, serving, batch and CLI layers, so it may not import them, not even inside a
  function: a deferred import is still a dependency, only one that fails later.
- The bundle format (`ortrefine.bundle`) is read by export, runtime and tools alike, so it may not
  depend on export, the CLI or the onnxruntime session code.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ortrefine"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

RUNTIME_FORBIDDEN = ("ortrefine.export", "ortrefine.cli", "ortrefine.evaluate", "ortrefine.serve", "ortrefine.batch",
                     "torch", "transformers", "optimum")
BUNDLE_FORBIDDEN = ("ortrefine.export", "ortrefine.cli", "ortrefine.runtime.session", "ortrefine.runtime.ort_session")


@dataclass(frozen=True)
class Import:
    """One imported name as the importing module wrote it, and where: `top_level` imports run when
    the module is imported (so they can form a cycle); the others run when a function is called."""

    module: str          # the importing module
    target: str          # absolute dotted name
    line: int
    top_level: bool
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs, but still ties the layers together


def module_files(root: Path | None = None) -> dict[str, Path]:
    """Dotted module name → source file. A package directory wins over a same-named module file,
    as it does for Python's path finder (a module being turned into a package may hold both)."""
    root = root or ROOT
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        elif (path.with_suffix("") / "__init__.py").is_file():
            continue
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _base_package(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of `level` dots starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(parts[: len(parts) - (level - 1)])


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """Absolute names an import statement loads. `from P import x` loads P.x when that is a module
    of ours, else P itself (x is then an attribute of P)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        pkg = _base_package(module, is_package, node.level)
        base = f"{pkg}.{base}" if base else pkg
    subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return subs if len(subs) == len(node.names) else [base, *subs]


def _import_module_call(node: ast.Call) -> str | None:
    """The literal absolute name of `importlib.import_module("...")` / `__import__("...")`."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in one source file, at any depth: module level (class bodies included, they run
    at import too) or inside a function; literal `importlib.import_module` calls count as imports."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, top_level: bool, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            visit_all(node.body, top_level, True)
            visit_all(node.orelse, top_level, type_checking)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend(Import(module, t, node.lineno, top_level, type_checking)
                         for t in _targets(node, module, is_package, known))
        elif isinstance(node, ast.Call) and (name := _import_module_call(node)):
            found.append(Import(module, name, node.lineno, top_level, type_checking))
        inner = top_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        visit_all(ast.iter_child_nodes(node), inner, type_checking)

    def visit_all(nodes, top_level: bool, type_checking: bool) -> None:
        for child in nodes:
            visit(child, top_level, type_checking)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), True, False)
    return found


def _own_module(name: str, known: set[str]) -> str | None:
    """The ortrefine module `name` lands in: itself, or its longest known prefix (`import a.b.c`
    where c is an attribute), None for other packages' modules."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def all_imports(root: Path | None = None) -> list[Import]:
    files = module_files(root)
    known = set(files)
    return [imp for module, path in files.items() for imp in imports_of(module, path, known)]


def top_level_graph(imports: list[Import], known: set[str]) -> dict[str, set[str]]:
    """module → the ortrefine modules it imports while it is itself being imported. `from P import
    m` adds P.m, not P: P is already in sys.modules (if half-initialised) by the time m runs."""
    graph: dict[str, set[str]] = {m: set() for m in known}
    for imp in imports:
        target = _own_module(imp.target, known)
        if imp.top_level and not imp.type_checking and target is not None:
            graph[imp.module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle path per strongly connected component that has one (Tarjan's SCCs,
    iterative so that a deep graph cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    scc.add(member)
                    if member == node:
                        break
                if len(scc) > 1 or node in graph[node]:
                    sccs.append(scc)
    return [_shortest_cycle(graph, scc) for scc in sccs]


def _shortest_cycle(graph: dict[str, set[str]], scc: set[str]) -> list[str]:
    """a → … → a through the SCC's first module, by breadth-first search inside the SCC."""
    first = min(scc)
    came_from: dict[str, str] = {}
    queue = deque([first])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & scc):
            if child == first:
                path = [node]
                while path[-1] != first:
                    path.append(came_from[path[-1]])
                return [first, *reversed(path[:-1]), first] if node != first else [first, first]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {first} in {sorted(scc)}")


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden(imports: list[Import], layer: str, prefixes: tuple[str, ...]) -> list[str]:
    """Imports, at any depth and TYPE_CHECKING ones included, from `layer` into `prefixes`."""
    return [f"{imp.module}:{imp.line} imports {imp.target}" for imp in imports
            if _matches(imp.module, (layer,)) and _matches(imp.target, prefixes)]


# -- the tests --------------------------------------------------------------------------------


def test_the_scan_sees_the_package():
    """Guards the other tests against passing on an empty or mis-rooted scan."""
    imports = all_imports()
    modules = module_files()
    assert {"ortrefine", "ortrefine.runtime", "ortrefine.bundle", "ortrefine.cli.main"} <= set(modules)
    assert any(i.module.startswith("ortrefine.runtime.") and i.top_level and i.target.startswith("ortrefine.") for i in imports)
    assert any(i.module.startswith("ortrefine.cli.") and not i.top_level for i in imports)


def test_no_import_cycle_among_module_level_imports():
    graph = top_level_graph(all_imports(), set(module_files()))
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_runtime_imports_no_export_cli_evaluate_serve_batch_or_torch():
    bad = forbidden(all_imports(), "ortrefine.runtime", RUNTIME_FORBIDDEN)
    assert not bad, "the edge runtime imports what it must not (also inside functions):\n" + "\n".join(bad)


def test_bundle_imports_no_export_cli_or_session():
    bad = forbidden(all_imports(), "ortrefine.bundle", BUNDLE_FORBIDDEN)
    assert not bad, "the bundle format imports what it must not:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """In a throwaway package: a cycle through a relative import is found, and one closed only by
    an in-function or a TYPE_CHECKING import is not; in-function, relative and TYPE_CHECKING
    imports into a forbidden layer are all found."""
    pkg = tmp_path / PACKAGE
    for folder in ("", "runtime", "cli", "bundle", "export"):
        (pkg / folder).mkdir(exist_ok=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "runtime" / "a.py").write_text("from ortrefine.runtime import b\n")
    (pkg / "runtime" / "b.py").write_text("from . import c\n")
    (pkg / "runtime" / "c.py").write_text("import ortrefine.runtime.a\n\ndef f():\n    from ..cli import main\n    import torch.nn\n")
    (pkg / "cli" / "main.py").write_text("def h():\n    import ortrefine.bundle.read\n")
    (pkg / "bundle" / "read.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ortrefine.export import x\n"
                                            "    from ortrefine.cli import main\n")
    imports = all_imports(pkg)
    cycles = find_cycles(top_level_graph(imports, set(module_files(pkg))))
    assert cycles == [["ortrefine.runtime.a", "ortrefine.runtime.b", "ortrefine.runtime.c", "ortrefine.runtime.a"]]
    assert forbidden(imports, "ortrefine.runtime", RUNTIME_FORBIDDEN) == [
        "ortrefine.runtime.c:4 imports ortrefine.cli.main", "ortrefine.runtime.c:5 imports torch.nn"]
    assert forbidden(imports, "ortrefine.bundle", BUNDLE_FORBIDDEN) == [
        "ortrefine.bundle.read:3 imports ortrefine.export", "ortrefine.bundle.read:4 imports ortrefine.cli.main"]
