"""The project's structure: no import cycles among its modules, and the dependency direction that
docs/ARCHITECTURE.md states. The import graph is read with ast (nothing is imported), so the test is fast
and also sees imports inside functions, which a cycle reaches just the same at run time."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "targets", "calibration", "benchmarks")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `if TYPE_CHECKING:` (never executed, so never part of a cycle)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> project modules it imports (at any depth of the file). Importing a.b.c also runs the
    __init__ of a and a.b, so those packages count as imported unless they enclose the importer."""
    def resolve(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                names = [f"{base_name}.{a.name}" if resolve(f"{base_name}.{a.name}") == f"{base_name}.{a.name}"
                         else base_name for a in node.names]
            else:
                continue
            if _type_checking_only(node, parents):
                continue
            for name in names:
                target = resolve(name)
                if target is None:
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in mods and dep != mod and not mod.startswith(dep + "."):
                        graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def _describe(comp: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
    return "cycle among " + ", ".join(comp) + ": " + "; ".join(edges)


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The checker itself: a planted cycle (a -> b -> a, through a function-level import) is reported."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pipeline.b import x\n")
    (pkg / "b.py").write_text("def x():\n    from pipeline import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.a import x\n")
    for other in PACKAGES[1:]:
        (tmp_path / other).mkdir()
    mods = project_modules(tmp_path)
    assert cycles(import_graph(mods)) == [["pipeline.a", "pipeline.b"]]


def test_no_import_cycles():
    graph = import_graph(project_modules())
    found = cycles(graph)
    assert not found, "\n".join(_describe(c, graph) for c in found)


def test_dependency_direction():
    """pipeline never imports benchmarks (scripts); targets and calibration use only pipeline.errors from the
    pipeline; the standalone files that bundles ship import nothing from the project."""
    graph = import_graph(project_modules())
    bad = []
    for mod, deps in graph.items():
        top = mod.split(".")[0]
        for dep in deps:
            dtop = dep.split(".")[0]
            if top == "pipeline" and dtop == "benchmarks":
                bad.append(f"{mod} -> {dep} (library code must not import the benchmark scripts)")
            if top in ("targets", "calibration") and dtop == "pipeline" and dep not in ("pipeline", "pipeline.errors"):
                bad.append(f"{mod} -> {dep} (targets/calibration may use only pipeline.errors)")
            if mod.startswith("targets.standalone") and not dep.startswith("targets.standalone") \
                    and dep not in ("targets",):
                bad.append(f"{mod} -> {dep} (standalone files ship in bundles without the project)")
            if mod == "pipeline.errors" and dep != "pipeline":
                bad.append(f"{mod} -> {dep} (the errors module is a leaf: targets and calibration import it)")
    assert not bad, "\n".join(sorted(bad))


# The project stands alone: it cites only files in the repository, and no developer machine's paths.
NOT_IN_REPO = tuple(name + ".md" for name in ("FACTS", "DESIGN", "REFERENCES"))  # spelled so this file passes
DEV_PATH = re.compile(r"(?<![\w.~])/(?:work|root|home)/")
SCANNED = ("pipeline", "targets", "calibration", "benchmarks", "tests", "docs", "README.md", "Makefile",
           "pyproject.toml", ".github")


def _text_files():
    for entry in SCANNED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for f in files:
            if not f.is_file() or "__pycache__" in f.parts or f.suffix in (".pyc", ".png", ".npz", ".onnx"):
                continue
            try:
                yield f, f.read_text()
            except UnicodeDecodeError:
                continue


def test_the_project_cites_only_its_own_files():
    bad = []
    for f, text in _text_files():
        for n, line in enumerate(text.splitlines(), 1):
            where = f"{f.relative_to(ROOT)}:{n}"
            bad += [f"{where}: cites {name}, which is not in the repository" for name in NOT_IN_REPO if name in line]
            if DEV_PATH.search(line):
                bad.append(f"{where}: absolute path of a developer machine: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_the_cited_docs_exist():
    """The files that replaced them are in the repository."""
    for name in ("docs/TOOLCHAIN.md", "docs/PUBLISHED_FIGURES.md", "docs/ARCHITECTURE.md", "docs/ERRORS.md"):
        assert (ROOT / name).is_file(), name
