"""The source files behind a user's model spec: the module it names plus the local modules it imports.

`path/to/nets.py:build` -> nets.py and every module of path/to/ that nets.py imports (transitively,
also imports inside functions); `mypkg.nets:build` -> mypkg/nets.py, its parent packages' __init__.py
and the modules of mypkg (and, when mypkg is not an installed package, of its folder) it imports.
Third-party and standard-library imports are not followed: their versions are not source the user edits.
Found with `ast` (pipeline.code_closure.import_names), nothing is imported to find them.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Callable

from pipeline.errors import ConfigError, PipelineError


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _package_name(root: Path, path: Path) -> str | None:
    rel = path.relative_to(root)
    parts = list(rel.parts[:-1])
    return ".".join(parts) or None


def _walk(root: Path, start: Path, local: Callable[[str], bool]) -> list[Path]:
    from pipeline.code_closure import CodeHashError, import_names, reach

    def local_imports(f: Path) -> list[Path]:
        try:
            names = import_names(f, _package_name(root, f))
        except CodeHashError as e:
            raise ConfigError(f"reading the model's source failed: {e.message.split(': ', 1)[-1]}",
                              hint=f"fix {f}") from None
        out = []
        for name, _required in names:
            if not name or not local(name):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
                m = _module_file(root, ".".join(parts[:i]))
                if m is not None:
                    out.append(m.resolve())
        return out

    return sorted(reach(start, local_imports))


def model_source_files(scheme: str) -> tuple[Path, list[Path]]:
    """(root folder, files) for a `file.py` or `package.module` scheme; ConfigError when it is not found."""
    if scheme.endswith(".py"):
        path = Path(scheme).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist",
                              hint="give path/to/file.py:callable (relative to the folder you run from, or absolute)")
        path = path.resolve()
        root = path.parent
        # the file is loaded with its folder on sys.path: a sibling module or package is local
        return root, _walk(root, path, lambda n: _module_file(root, n.split(".")[0]) is not None)
    try:
        found = importlib.util.find_spec(scheme)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"cannot import {scheme!r}: {e}",
                          hint="check the module path (is it installed, or on PYTHONPATH?), or give "
                               "path/to/file.py:callable") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ConfigError(f"cannot import {scheme!r}: no such module (or it has no source file)",
                          hint="check the module path (is it installed, or on PYTHONPATH?), or give "
                               "path/to/file.py:callable")
    origin = Path(found.origin).resolve()
    parts = scheme.split(".")
    root = origin.parents[len(parts) if origin.name == "__init__.py" else len(parts) - 1]
    top = parts[0]
    installed = root.name in ("site-packages", "dist-packages")

    def local(name: str) -> bool:
        first = name.split(".")[0]
        return first == top or (not installed and _module_file(root, first) is not None)

    return root, _walk(root, origin, local)


def model_source_digest(scheme: str) -> str:
    """sha256 over (relative name, content) of the model's local source files."""
    root, files = model_source_files(scheme)
    h = hashlib.sha256()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise PipelineError(f"cannot read {f} to key the model's cache entry: {e.strerror or e}",
                                hint="make the model's source files readable") from None
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    return h.hexdigest()
