"""The code a stage's cache key covers: the import closure of its source inside the project.

Starting from the file that defines a stage's function, every `import` / `from ... import` anywhere in
the file (also inside functions: lazy imports run too) that names a module of the project's packages is
followed, transitively, with `ast` (nothing is imported or executed to find them). Parent packages'
`__init__.py` are included (importing `a.b` runs `a/__init__.py`). Project data files that a module
reads at run time (the standalone scripts a bundle ships or a benchmark child runs, the profile YAMLs,
the benchmark schema) cannot be seen in imports, so they are declared next to the reading module's name
in DATA_READS (a test checks that every entry exists).

Why `ast` and not `modulefinder`: modulefinder also walks the standard library and third-party
packages (slow: seconds per stage) and reports them; we only want the project's own files.

Everything here is cached per process (closures by start file, file digests by path+mtime+size), so a
run with 20 stages parses each project file once.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("pipeline", "targets", "calibration", "benchmarks")

# module -> project paths (files or folders, relative to ROOT) it reads or runs at run time.
DATA_READS: dict[str, tuple[str, ...]] = {
    "pipeline.stages.target": ("targets/standalone/bench.py",),  # benchmark children run it
    "pipeline.stages.bundle": ("targets/standalone",),  # copied into every bundle
    "targets.tensorrt_target": ("targets/standalone/tensorrt",),  # engine scripts shipped in TensorRT bundles
    "targets.profiles": ("targets/profiles",),  # the built-in device profiles
    "pipeline.measure.harness": ("targets/standalone/bench.py", "pipeline/measure/schema.json"),
}

_SKIP_DIRS = {"__pycache__"}


class CodeHashError(PipelineError):
    """The code behind a stage could not be hashed: a cache key without it could serve stale work."""

    exit_code = 4


def _fail(what: str, why: str) -> CodeHashError:
    return CodeHashError(f"cannot compute the cache key: {what}: {why}",
                         hint="fix the file named (a cache key must cover all the code of a stage)")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The project file of module `name` (a package's __init__.py), None when it is not a project module."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _package_of(path: Path, root: Path = ROOT) -> str | None:
    """Dotted name of the package holding `path` when it is inside a project package."""
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        return None
    parts = list(rel.parts[:-1])
    if not parts or parts[0] not in PROJECT_PACKAGES:
        return None
    return ".".join(parts)


def _statements(tree: ast.AST):
    """Every statement, at any depth (function bodies, if/try/with/match blocks): imports are statements,
    so expression subtrees (most of a file's nodes) need not be walked."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, name, None)
            if isinstance(children, list):
                stack.extend(c for c in children if isinstance(c, ast.AST))


def import_names(path: Path, package: str | None) -> list[tuple[str, bool]]:
    """(dotted module name, must exist) for every import anywhere in `path` (also inside functions).
    `from pkg import x` yields `pkg` (must exist) and `pkg.x` (a module only if such a file exists).
    `package`: the dotted package holding `path`, for relative imports (None: they are an error)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as e:
        raise _fail(str(path), f"{type(e).__name__}: {e}") from None
    names: list[tuple[str, bool]] = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            names += [(a.name, True) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    raise _fail(str(path), f"relative import at line {node.lineno} outside a package")
                up = package.split(".")
                base = up[: len(up) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append((mod, True))
            # `from pkg import submodule` imports a module; `from mod import function` does not
            names += [(f"{mod}.{a.name}", False) for a in node.names if a.name != "*"]
    return names


@lru_cache(maxsize=None)
def _project_imports(path: Path) -> tuple[Path, ...]:
    """Project files `path` imports anywhere in its source (module files and their parent packages)."""
    names = import_names(path, _package_of(path))
    out: list[Path] = []
    for name, required in names:
        if not name or name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # parents first: importing a.b.c runs a and a.b
            f = module_file(".".join(parts[:i]))
            if f is None and ROOT.joinpath(*parts[:i]).is_dir():
                continue  # a namespace package (a folder without __init__.py): nothing runs
            if f is None:
                if required:
                    raise _fail(str(path), f"imports {name!r}, which is not a module of the project")
                break
            out.append(f)
    return tuple(dict.fromkeys(out))


def _module_name(path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts and parts[0] in PROJECT_PACKAGES else None


def _data_files(rel: str) -> list[Path]:
    p = ROOT / rel
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not _SKIP_DIRS & set(f.relative_to(p).parts)
                      and f.suffix != ".pyc")
    raise _fail(rel, "declared in pipeline.code_closure.DATA_READS but not in the project")


def reach(start: Path, neighbours: Callable[[Path], Iterable[Path]]) -> list[Path]:
    """`start` and every path reachable from it through `neighbours`, each once (depth-first)."""
    seen: dict[Path, None] = {}
    todo = [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f] = None
        todo += [p for p in neighbours(f) if p not in seen]
    return list(seen)


@lru_cache(maxsize=None)
def closure(start: Path) -> tuple[Path, ...]:
    """`start` plus every project file (code and declared data) its imports reach, transitively; sorted.
    Data files are leaves: their own imports (a standalone script's) are not followed."""
    start = Path(start).resolve()
    if not start.is_file():
        raise _fail(str(start), "no such source file")
    code = reach(start, lambda f: [p.resolve() for p in _project_imports(f)] if f.suffix == ".py" else [])
    data = [d.resolve() for f in code for rel in DATA_READS.get(_module_name(f) or "", ()) for d in _data_files(rel)]
    return tuple(sorted(set(code) | set(data)))


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, cached per (path, mtime, size) for this process."""
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in _DIGESTS:
            _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return _DIGESTS[key]
    except OSError as e:
        raise _fail(str(path), f"{type(e).__name__}: {e.strerror or e}") from None


def _label(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def source_of(obj: Any) -> list[Path]:
    """Start files for `obj`: a function/class (its defining file), a module, or a path (file or folder)."""
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_dir():
            return [f for f in sorted(p.rglob("*")) if f.is_file() and not _SKIP_DIRS & set(f.parts)]
        if not p.is_file():
            raise _fail(str(p), "no such file")
        return [p]
    if isinstance(obj, types.ModuleType):
        f = getattr(obj, "__file__", None)
        if not f:
            raise _fail(repr(obj), "a module without a source file")
        return [Path(f)]
    if isinstance(obj, type):
        mod = sys.modules.get(obj.__module__)
        mod_file = getattr(mod, "__file__", None) if mod is not None else None
        if mod_file:
            return [Path(mod_file)]
    try:
        f = inspect.getsourcefile(obj)
    except TypeError as e:
        raise _fail(repr(obj), str(e)) from None
    if not f:
        raise _fail(repr(obj), "its source file is unknown")
    return [Path(f)]


def code_files(objs: Iterable[Any]) -> list[Path]:
    """All files whose content a stage's key covers: each object's source and its project closure."""
    files: dict[Path, None] = {}
    for obj in objs:
        for start in source_of(obj):
            if start.suffix == ".py":
                files.update(dict.fromkeys(closure(start.resolve())))
            else:
                files.setdefault(start.resolve(), None)
    return sorted(files)


def code_digest(objs: Iterable[Any]) -> dict[str, Any]:
    """{"sha256": digest over (name, content) of every file of the closure, "files": count}."""
    h = hashlib.sha256()
    files = code_files(objs)
    for f in files:
        h.update(_label(f).encode() + b"\0" + file_digest(f).encode() + b"\n")
    return {"sha256": h.hexdigest(), "files": len(files)}
