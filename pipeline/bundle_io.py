"""Open deployment bundles safely: extraction, checksums and the manifest, before anything is loaded.

    root = open_bundle("runs/x/stages/bundle-jetson/.../default-jetson.tar.gz")  # extracted + verified
    manifest = load_manifest(root)

safe_extract   -- a .tar.gz into a folder, refusing absolute paths, `..`, links out of the folder,
                  device files, duplicates and archives over the size / member limits (BundleError, exit 2)
verify_checksums -- every file in SHA256SUMS exists and matches, and nothing else is in the folder
                  (BundleError exit 1 naming the file; a missing or unreadable SHA256SUMS is exit 2)
load_manifest  -- manifest.json validated against ManifestModel (any malformed manifest: BundleError exit 2)
open_bundle    -- folder or archive -> verified folder (checksums first, then the manifest)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import strict_json
from pipeline.artifacts import TMP_MARK, sha256_file, umask_mode
from pipeline.errors import BundleError

__all__ = [
    "safe_extract",
    "verify_checksums",
    "read_checksums",
    "load_manifest",
    "validate_manifest",
    "check_manifest_files",
    "is_archive",
    "open_bundle",
    "opened_bundle",
    "ManifestModel",
    "MAX_MANIFEST_BYTES",
]

SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


# --------------------------------------------------------------------------------------------------------
# names


def _unsafe_name(name: str) -> str | None:
    """Why `name` is not a safe relative path inside a bundle, or None when it is."""
    if not name or name in (".", "./"):
        return "an empty name"
    if "\x00" in name:
        return "a NUL character"
    if "\\" in name:
        return "a backslash (Windows path)"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' component"
    return None


# --------------------------------------------------------------------------------------------------------
# extraction


def _refuse(member: str, why: str, exit_code: int = 2) -> BundleError:
    return BundleError(f"unsafe bundle archive: member {member!r} {why}; nothing was extracted",
                       hint="rebuild the bundle with `python -m pipeline run` (archives from elsewhere are not "
                            "trusted)",
                       exit_code=exit_code)


def _check_members(tar: tarfile.TarFile, max_bytes: int, max_members: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    for m in tar:  # streams: a huge archive is refused after max_members, not read whole
        if len(members) >= max_members:
            raise BundleError(f"unsafe bundle archive: more than {max_members} members; nothing was extracted",
                              hint="a bundle holds a few dozen files: this is not a bundle", exit_code=2)
        name = m.name
        why = _unsafe_name(name)
        if why:
            raise _refuse(name, f"has {why}")
        norm = PurePosixPath(name).as_posix().rstrip("/")
        if norm in seen and not m.isdir():
            raise _refuse(name, "appears twice (a later copy would overwrite the first)")
        seen.add(norm)
        if m.ischr() or m.isblk():
            raise _refuse(name, "is a device file")
        if m.isfifo():
            raise _refuse(name, "is a FIFO")
        if m.issym():
            target = m.linkname
            if not target or target.startswith("/") or re.match(r"^[A-Za-z]:", target):
                raise _refuse(name, f"is a symlink to an absolute path ({target!r})")
            resolved = os.path.normpath(os.path.join(os.path.dirname(norm), target))
            if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
                raise _refuse(name, f"is a symlink pointing outside the bundle ({target!r})")
        elif m.islnk():
            target = m.linkname
            why = _unsafe_name(target)
            if why:
                raise _refuse(name, f"is a hard link to {target!r}, which has {why}")
            if PurePosixPath(target).as_posix().rstrip("/") not in seen:
                raise _refuse(name, f"is a hard link to {target!r}, which is not an earlier member of the archive")
        elif not (m.isfile() or m.isdir()):
            raise _refuse(name, "is neither a regular file, a folder nor a link")
        if m.size < 0:
            raise _refuse(name, "has a negative size")
        total += m.size
        if total > max_bytes:
            raise BundleError(f"unsafe bundle archive: members add up to more than {max_bytes} bytes (at {name!r}); "
                              "nothing was extracted", hint="raise max_bytes only for an archive you trust",
                              exit_code=2)
        members.append(m)
    return members


def safe_extract(tar_path: str | Path, dest: str | Path, *, max_bytes: int = 2_000_000_000,
                 max_members: int = 10_000) -> Path:
    """Extract `tar_path` into `dest` (which must not exist, or be empty) and return the bundle root.

    Every member is checked first (absolute paths, `..`, links out of the folder, device files, FIFOs,
    duplicates, the total size and member count); then Python's tarfile "data" filter extracts, as a second
    line of defence. Extraction goes to a temporary sibling renamed to `dest` at the end, so a refused or
    failed archive leaves nothing behind. The bundle root is the single top-level folder when the archive
    has one (as bundles do), else `dest`. Raises BundleError (exit 2) naming the offending member.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise BundleError(f"{tar_path}: no such bundle archive", hint="give the bundle's .tar.gz or its folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest}: the extraction folder exists and is not empty", hint="choose an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = _check_members(tar, max_bytes, max_members)
            if not members:
                raise BundleError(f"{tar_path}: the archive is empty", hint="give a bundle archive")
            tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}{TMP_MARK}{os.getpid()}-", dir=dest.parent))
            umask_mode(tmp, directory=True)
            try:
                tar.extractall(tmp, members=members, filter="data")
                if dest.exists():
                    dest.rmdir()
                os.replace(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BundleError:
        raise
    except tarfile.FilterError as e:  # the data filter's own refusal (should be caught above already)
        name = getattr(getattr(e, "tarinfo", None), "name", "?")
        raise _refuse(name, f"was refused by the tar data filter ({e})") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise BundleError(f"{tar_path}: not a readable bundle archive ({type(e).__name__}: {e})",
                          hint="download or copy the .tar.gz again; it may be truncated", exit_code=2) from None
    tops = {PurePosixPath(m.name).parts[0] for m in members}
    if len(tops) == 1:
        root = dest / tops.pop()
        if root.is_dir() and not root.is_symlink():
            return root
    return dest


# --------------------------------------------------------------------------------------------------------
# checksums


def read_checksums(folder: str | Path) -> dict[str, str]:
    """SHA256SUMS of `folder` as {relative name: sha256}. Malformed or unsafe lines: BundleError exit 2."""
    folder = Path(folder)
    sums = folder / SUMS
    if not sums.is_file():
        raise BundleError(f"{folder}: {SUMS} is missing, so the bundle cannot be verified",
                          hint="give a bundle written by `python -m pipeline run` (it lists every file in SHA256SUMS)")
    try:
        text = sums.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{sums}: unreadable ({e})", hint="rebuild the bundle") from None
    out: dict[str, str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUMS_LINE.match(line.rstrip("\r"))
        if not m:
            raise BundleError(f"{SUMS} line {no} is malformed (expected '<sha256>  <file>'): {line[:80]!r}",
                              hint="rebuild the bundle")
        digest, name = m.group(1).lower(), m.group(2)
        why = _unsafe_name(name)
        if why:
            raise BundleError(f"{SUMS} line {no} names {name!r}, which has {why}", hint="rebuild the bundle")
        name = PurePosixPath(name).as_posix()
        if name in out:
            raise BundleError(f"{SUMS} lists {name} twice", hint="rebuild the bundle")
        out[name] = digest
    if not out:
        raise BundleError(f"{SUMS} is empty", hint="rebuild the bundle")
    return out


def verify_checksums(folder: str | Path) -> list[str]:
    """Check every file listed in SHA256SUMS, and that no other file is in `folder`; return the names checked.

    Exit 1 (the bundle was changed): a listed file missing or different, a file not listed.
    Exit 2 (not a bundle): SHA256SUMS missing, malformed, or naming a path outside the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder", hint="give the bundle's folder or its .tar.gz")
    listed = read_checksums(folder)
    base = folder.resolve()
    for name, digest in listed.items():
        path = folder / name
        try:
            inside = path.resolve().is_relative_to(base)
        except OSError:
            inside = False
        if not inside:
            raise BundleError(f"{SUMS} names {name}, which resolves outside the bundle", hint="rebuild the bundle")
        if not path.is_file():
            raise BundleError(f"checksum check failed: {name} is listed in {SUMS} but missing from the bundle",
                              hint="copy the whole bundle again (or rebuild it)", exit_code=1)
        if sha256_file(path) != digest:
            raise BundleError(f"checksum mismatch for {name}: the file was changed or corrupted",
                              hint="copy the bundle again from the run (or rebuild it); do not edit bundle files",
                              exit_code=1)
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if (p.is_file() or p.is_symlink()) and not p.is_dir())
    extra = [n for n in present if n != SUMS and n not in listed]
    if extra:
        pyc = [n for n in extra if "__pycache__/" in n or n.endswith(".pyc")]
        hint = ("python wrote __pycache__ when a script ran inside the bundle: delete those folders "
                "(or run with PYTHONDONTWRITEBYTECODE=1)" if pyc and len(pyc) == len(extra)
                else "remove the added files, or copy the bundle again from the run")
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise BundleError(f"checksum check failed: {extra[0]}{more} is in the bundle but not listed in {SUMS}",
                          hint=hint, exit_code=1)
    return list(listed)


# --------------------------------------------------------------------------------------------------------
# manifest

SafeName = str
Source = Literal["measured", "host-measured", "estimated", "device-measured"]


def _check_safe(v: str) -> str:
    why = _unsafe_name(v)
    if why:
        raise ValueError(f"{v!r} has {why}")
    return v


class _Strictish(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ProfileInfo(_Strictish):
    name: str = Field(min_length=1)
    backend: str = Field(min_length=1)
    description: Optional[str] = None
    cpu_arch: Optional[str] = None
    threads: Optional[int] = Field(default=None, ge=1)


class ModelInfo(_Strictish):
    file: SafeName = Field(min_length=1)
    files: list[SafeName] = Field(min_length=1)
    precision: str = Field(min_length=1)
    runtime: str = Field(min_length=1)
    precision_hint: Optional[str] = None
    kept_in_float: list[Any] = Field(default_factory=list)

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return _check_safe(v)

    @field_validator("files")
    @classmethod
    def _files(cls, v: list[str]) -> list[str]:
        return [_check_safe(x) for x in v]


class InputInfo(_Strictish):
    name: str
    shape: list[int] = Field(min_length=1)
    dtype: str = Field(min_length=1)
    layout: Literal["nchw", "nhwc"]

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if any(d < -1 for d in v):
            raise ValueError("dimensions are >= 0, or -1 for a dynamic one")
        return v


class Metric(_Strictish):
    value: Union[int, float, None]
    source: Source

    @field_validator("value")
    @classmethod
    def _finite(cls, v):
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise ValueError("must be a finite number")
        return v


class ManifestModel(_Strictish):
    """manifest.json of a deployment bundle (schema_version "1"); unknown extra fields are kept."""

    schema_version: Literal["1"]
    name: str = Field(min_length=1)
    created: str
    profile: ProfileInfo
    model: ModelInfo
    device_model_files: list[SafeName] = Field(default_factory=list)
    input: InputInfo
    preprocessing: dict[str, Any]
    labels: list[str]
    toolchain: dict[str, Any]
    metrics: dict[str, Metric]
    checks: dict[str, Any] = Field(default_factory=dict)
    files: dict[SafeName, str] = Field(min_length=1)

    @field_validator("device_model_files")
    @classmethod
    def _dev(cls, v: list[str]) -> list[str]:
        return [_check_safe(x) for x in v]

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            _check_safe(name)
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise ValueError(f"{name!r}: sha256 must be 64 lowercase hex digits")
        return v

    @model_validator(mode="after")
    def _model_files_listed(self) -> "ManifestModel":
        for f in [self.model.file, *self.model.files]:
            if f not in self.files:
                raise ValueError(f"model file {f!r} is not listed in 'files'")
        return self


def _first_error(e: ValidationError) -> str:
    errs = e.errors(include_url=False)
    if not errs:
        return str(e)
    err = errs[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "(top)"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {err.get('msg', 'invalid')}{more}"


def validate_manifest(obj: Any, what: str = MANIFEST) -> dict:
    """Validate a parsed manifest; return it unchanged (a dict). Anything malformed: BundleError exit 2."""
    if not isinstance(obj, dict):
        raise BundleError(f"{what} is malformed: expected a JSON object, got {type(obj).__name__}",
                          hint="rebuild the bundle with `python -m pipeline run`")
    try:
        ManifestModel.model_validate(obj)
    except ValidationError as e:
        raise BundleError(f"{what} is malformed: {_first_error(e)}",
                          hint="rebuild the bundle with `python -m pipeline run`") from None
    except (RecursionError, ValueError, TypeError) as e:  # defensive: pathological input
        raise BundleError(f"{what} is malformed: {type(e).__name__}: {str(e)[:200]}",
                          hint="rebuild the bundle with `python -m pipeline run`") from None
    return obj


def load_manifest(folder: str | Path) -> dict:
    """Read and validate manifest.json of a bundle folder (or the file itself). Malformed: BundleError exit 2."""
    path = Path(folder)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: manifest.json is missing", hint="give a bundle written by `python -m pipeline run`")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: manifest.json is larger than {MAX_MANIFEST_BYTES} bytes",
                              hint="rebuild the bundle")
        obj = json.loads(path.read_bytes().decode("utf-8"))
        bad = strict_json.nonfinite_fields(obj)
        if bad:
            raise BundleError(f"{path.name} is malformed: {bad[0][0]} is {bad[0][1]} (not a finite number, not "
                              "valid JSON)", hint="rebuild the bundle with `python -m pipeline run`")
    except BundleError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, OSError) as e:
        raise BundleError(f"{path.name} is malformed: not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:200]})",
                          hint="rebuild the bundle with `python -m pipeline run`") from None
    return validate_manifest(obj, path.name)


def check_manifest_files(folder: str | Path, manifest: dict, sums: dict[str, str] | None = None) -> None:
    """The manifest's per-file sha256 must agree with SHA256SUMS (exit 1 naming the file)."""
    sums = read_checksums(folder) if sums is None else sums
    for name, digest in manifest["files"].items():
        if name not in sums:
            raise BundleError(f"checksum check failed: manifest.json lists {name}, which is not in {SUMS}",
                              hint="rebuild the bundle", exit_code=1)
        if sums[name] != digest:
            raise BundleError(f"checksum mismatch for {name}: manifest.json and {SUMS} disagree",
                              hint="rebuild the bundle", exit_code=1)



# --------------------------------------------------------------------------------------------------------
# opening


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def open_bundle(path: str | Path, dest: str | Path | None = None) -> Path:
    """A bundle folder or archive -> its verified folder (checksums, then the manifest, then their agreement).

    An archive is extracted with safe_extract into `dest` (default: a new temporary folder, which the
    caller removes: it is the returned folder's parent; `opened_bundle` does that for you). Nothing in the
    bundle is loaded or run here.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle", hint="give a bundle folder or its .tar.gz (stages/bundle-*/)")
    if path.is_dir():
        root = path
    elif is_archive(path) or tarfile.is_tarfile(path):
        if dest is None:
            dest = Path(tempfile.mkdtemp(prefix="edge-bundle-"))
        root = safe_extract(path, dest)
    else:
        raise BundleError(f"{path}: not a bundle folder or a .tar.gz", hint="give a bundle folder or its .tar.gz")
    verify_checksums(root)
    manifest = load_manifest(root)
    check_manifest_files(root, manifest)
    return root


@contextlib.contextmanager
def opened_bundle(path: str | Path) -> Iterator[Path]:
    """Context manager around open_bundle that removes what it extracted on exit."""
    path = Path(path)
    if path.is_dir():
        yield open_bundle(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix="edge-bundle-"))
    try:
        yield open_bundle(path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
