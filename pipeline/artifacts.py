"""Hashing and atomic writes: nothing is ever half-written under its final name."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import PipelineError

TMP_MARK = ".tmp-"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """Hash of a file, or of a folder's relative names and contents (stable order)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    from pipeline import strict_json

    return strict_json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _disk_full(e: BaseException, where: Path) -> PipelineError:
    return PipelineError(f"no space left on the device while writing {where} (the disk is full)",
                         hint="free disk space (or choose another --out) and run the same command again; "
                              "finished stages are reused", exit_code=2)


def looks_disk_full(e: BaseException, where: str | Path) -> bool:
    """ENOSPC/EDQUOT, or a writer that hides it (torch.save raises a RuntimeError from its zip writer)
    while the file system holding `where` has (almost) no space left."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(e, (OSError, RuntimeError)) or isinstance(e, PipelineError):
        return False
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it: set and restore at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(path: str | Path, directory: bool) -> None:
    """Give a temporary made by mkstemp/mkdtemp (0600/0700: private by design) the mode an ordinary
    open()/mkdir() would have given it under this umask, so renamed outputs are as readable as any Unix
    tool's (a group-shared run folder stays shared)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}{TMP_MARK}{os.getpid()}-", dir=final.parent))
    umask_mode(tmp, directory=True)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        full = looks_disk_full(e, final.parent)  # before the cleanup frees space
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            final.parent.rmdir()  # a failed first attempt leaves no empty stage folder behind
        if full:
            raise _disk_full(e, final) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    if path.exists() and not path.is_file():
        # /dev/null, a FIFO, /dev/stdout: a rename would replace the device with a regular file.
        with open(path, "wb") as f:
            f.write(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    umask_mode(tmp, directory=False)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(e, path) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Strict JSON (pipeline/strict_json.py: a non-finite float is written as null, never `NaN`/`Infinity`)."""
    from pipeline import strict_json

    return atomic_write_text(path, strict_json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove temporaries left by a killed process (its pid is in the name and no longer alive)."""
    removed: list[Path] = []
    root = Path(root)
    if not root.exists():
        return removed
    for p in root.rglob(f"*{TMP_MARK}*"):
        name = p.name
        try:
            pid = int(name.split(TMP_MARK, 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def user_cache_dir(name: str, env_var: str) -> Path:
    """$env_var, else $XDG_CACHE_HOME/edge-pipeline/<name>, else ~/.cache/edge-pipeline/<name>."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-pipeline" / name
