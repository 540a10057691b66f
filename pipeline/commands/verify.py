"""`python -m pipeline verify BUNDLE`: check a deployment bundle where nothing but its requirements exist.

    python -m pipeline verify runs/default/stages/bundle-jetson-orin-nano/<key>/default-jetson-orin-nano.tar.gz
    python -m pipeline verify BUNDLE_DIR --fresh --keep-venv --json verify.json

Steps (each reported): checksums of every file (SHA256SUMS, and manifest.json agreeing with it), safe
extraction of an archive, the manifest's schema, requirements.txt (plain pinned specifiers only), a virtual
environment holding ONLY those requirements (`python -m venv`, `pip install --only-binary :all: -r`),
a probe that this project and torch are NOT importable there, then `run.py --check-samples` run with
`python -I -B` in the temporary copy of the bundle that was checked (expected outputs within the bundle's tolerance).

The venv is cached under ~/.cache/edge-pipeline/venvs/<sha256 of requirements.txt + interpreter>
($XDG_CACHE_HOME respected, or $EDGE_VENV_CACHE), so a second verify is quick; `--fresh` builds a
throwaway one (deleted afterwards unless `--keep-venv`).

Exit codes: 0 pass, 1 a checksum or a sample check failed (the file is named), 2 an unsafe or malformed
bundle (or a bad option), 3 the venv could not be built (no `venv`/ensurepip, or pip could not install).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import BundleError, ConfigError, GateError, MissingDependency, PipelineError

VENV_MARKER = "edge-venv.json"
VENV_LAYOUT_VERSION = "1"
# Modules that must NOT be importable in the bundle's venv (the project and the heavy dev stack).
FORBIDDEN_MODULES = ("pipeline", "targets", "benchmarks", "calibration", "torch")
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, platform, sys
names, forbidden = json.loads(sys.argv[1]), json.loads(sys.argv[2])
versions = {}
for n in names:
    try:
        versions[n] = md.version(n)
    except md.PackageNotFoundError:
        versions[n] = None
found = []
for m in forbidden:
    try:
        if importlib.util.find_spec(m) is not None:
            found.append(m)
    except Exception:  # best effort in the probe child: a module whose spec cannot be read counts as absent
        pass
print(json.dumps({"python": platform.python_version(), "executable": sys.executable, "prefix": sys.prefix,
                  "versions": versions, "importable_forbidden": found, "sys_path": sys.path}))
"""


# --------------------------------------------------------------------------------------------------------
# report


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    bundle: str
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str, quiet: bool = False) -> None:
        self.checks.append(Check(name, ok, detail))
        if not quiet:
            mark = "✓" if ok else "✗"
            print(f"  {mark} {name}: {detail}", flush=True)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self, status: str, exit_code: int, error: str | None = None) -> dict:
        return {"bundle": self.bundle, "status": status, "exit_code": exit_code, "error": error,
                "checks": [c.__dict__ for c in self.checks], **self.info}


# --------------------------------------------------------------------------------------------------------
# requirements


def parse_requirements(path: Path) -> list[str]:
    """Names of the distributions in requirements.txt; options, URLs, paths and includes are refused (exit 2).

    A bundle's requirements.txt is installed by verify: only plain specifiers (`name==1.2`, markers allowed)
    may appear, so a bundle cannot point pip at another index, a local path or a URL.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    if not path.is_file():
        raise BundleError(f"{path.name} is missing from the bundle", hint="rebuild the bundle")
    names = []
    for no, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            raise BundleError(f"requirements.txt line {no} is a pip option ({line[:60]!r}); verify installs only "
                              "plain requirements", hint="list runtime packages as name==version, one a line")
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise BundleError(f"requirements.txt line {no} is not a requirement ({line[:60]!r}): {e}",
                              hint="list runtime packages as name==version, one a line") from None
        if req.url:
            raise BundleError(f"requirements.txt line {no} installs from a URL or path ({line[:60]!r})",
                              hint="list runtime packages as name==version, one a line")
        names.append(req.name)
    return names


# --------------------------------------------------------------------------------------------------------
# virtual environments


def venv_cache_root() -> Path:
    from pipeline.artifacts import user_cache_dir

    return user_cache_dir("venvs", "EDGE_VENV_CACHE")


def _clean_env(keep_pip: bool) -> dict[str, str]:
    """The environment children get: no PYTHON*, no VIRTUAL_ENV, no conda; pip's mirror settings kept for pip."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TEMP", "TMP", "SSL_CERT_FILE", "SSL_CERT_DIR",
            "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "OMP_NUM_THREADS", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "PIP_CONFIG_FILE"}
    env = {k: v for k, v in os.environ.items()
           if k in keep or (keep_pip and k.startswith("PIP_"))}
    if not keep_pip:
        env.pop("PIP_CONFIG_FILE", None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def base_python(explicit: str | None) -> str:
    """The interpreter the venv is made from: --python, else this Python's base (never the dev venv itself)."""
    if explicit:
        found = shutil.which(explicit) or (explicit if os.path.isfile(explicit) else None)
        if not found:
            raise ConfigError(f"--python {explicit}: no such interpreter", hint="give a python3 on PATH or its path")
        return found
    return getattr(sys, "_base_executable", None) or sys.executable


def python_identity(python: str) -> dict:
    try:
        p = subprocess.run([python, "-I", "-c", "import json, platform, sys; print(json.dumps({'version': "
                            "platform.python_version(), 'implementation': platform.python_implementation(), "
                            "'machine': platform.machine(), 'base': sys.base_prefix}))"],
                           capture_output=True, text=True, timeout=60, env=_clean_env(False))
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise ConfigError(f"--python {python}: not a working Python interpreter",
                          hint="give a python3 (3.9 or newer) on PATH or its path") from None


def venv_key(requirements: bytes, ident: dict) -> str:
    h = hashlib.sha256()
    h.update(VENV_LAYOUT_VERSION.encode() + b"\0")
    h.update(hashlib.sha256(requirements).hexdigest().encode() + b"\0")
    h.update(json.dumps(ident, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return " | ".join(lines[-n:])


def build_venv(where: Path, python: str, requirements: Path, timeout: int) -> None:
    """`python -m venv where` + `pip install --only-binary :all: -r requirements` (MissingDependency on failure)."""
    try:
        p = subprocess.run([python, "-m", "venv", str(where)], capture_output=True, text=True, timeout=timeout,
                           env=_clean_env(False))
    except subprocess.TimeoutExpired:
        raise MissingDependency(f"creating a virtual environment took more than {timeout} s") from None
    if p.returncode != 0:
        raise MissingDependency(f"{python} -m venv failed: {_tail(p.stderr or p.stdout, 3)}",
                                hint="install the venv module (Debian/Ubuntu: apt install python3-venv) or pass "
                                     "--python with an interpreter that has it")
    cmd = [str(_venv_python(where)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--only-binary", ":all:", "-q", "-r", str(requirements)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(True))
    except subprocess.TimeoutExpired:
        raise MissingDependency(f"pip install -r requirements.txt took more than {timeout} s",
                                hint="check the network / package mirror, or raise --timeout") from None
    if p.returncode != 0:
        raise MissingDependency(f"pip could not install the bundle's requirements.txt: {_tail(p.stderr or p.stdout)}",
                                hint="check that the pinned runtime versions exist for this Python and platform "
                                     "(or pass --python with another interpreter)")


def _clean_stale(root: Path, mark: str) -> None:
    """Remove half-built venvs (top level only) whose builder process is gone."""
    for p in root.iterdir():
        if mark not in p.name:
            continue
        try:
            pid = int(p.name.split(mark, 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
            continue  # still being built
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def ensure_venv(requirements: Path, python: str, *, fresh: bool, timeout: int) -> tuple[Path, bool, bool]:
    """A venv holding only `requirements`: (path, reused from the cache?, temporary?)."""
    ident = python_identity(python)
    data = requirements.read_bytes()
    if fresh:
        where = Path(tempfile.mkdtemp(prefix="edge-verify-venv-")) / "venv"
        build_venv(where, python, requirements, timeout)
        return where, False, True
    from pipeline.artifacts import TMP_MARK

    root = venv_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root, TMP_MARK)
    final = root / venv_key(data, ident)
    if (final / VENV_MARKER).is_file() and _venv_python(final).exists():
        return final, True, False
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}{TMP_MARK}{os.getpid()}-", dir=root))
    try:
        shutil.rmtree(tmp)
        build_venv(tmp, python, requirements, timeout)
        (tmp / VENV_MARKER).write_text(json.dumps({
            "requirements_sha256": hashlib.sha256(data).hexdigest(), "requirements": data.decode(errors="replace"),
            "python": ident, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
        if final.exists():  # a half one from an old layout, or one built meanwhile by another verify
            if (final / VENV_MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return final, True, False
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / VENV_MARKER).is_file():
                raise
        return final, False, False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def probe_venv(venv: Path, names: list[str], cwd: Path) -> dict:
    py = str(_venv_python(venv))
    p = subprocess.run([py, "-I", "-B", "-c", _PROBE, json.dumps(names), json.dumps(list(FORBIDDEN_MODULES))],
                       capture_output=True, text=True, timeout=120, cwd=cwd, env=_clean_env(False))
    if p.returncode != 0:
        raise MissingDependency(f"the bundle's venv does not start: {_tail(p.stderr)}",
                                hint="run verify again with --fresh")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------
# the command


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="check a bundle's checksums and run its samples in a clean venv",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder or its .tar.gz")
    p.add_argument("--python", default=None, help="interpreter to build the venv from (default: this Python's base)")
    p.add_argument("--fresh", action="store_true", help="build a new throwaway venv instead of the cached one")
    p.add_argument("--keep-venv", action="store_true",
                   help="keep the throwaway venv (with --fresh) and the temporary bundle copy; print their paths")
    p.add_argument("--timeout", type=int, default=900, help="seconds for pip install and for run.py (default 900)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_verify)


def cmd_verify(args) -> int:
    if args.timeout < 1:
        raise ConfigError(f"--timeout must be >= 1 (got {args.timeout})")
    report = Report(bundle=str(args.bundle))
    work = Path(tempfile.mkdtemp(prefix="edge-verify-"))
    venv: Path | None = None
    temporary_venv = False
    status, code, error = "fail", 1, None
    print(f"verify {args.bundle}", flush=True)
    try:
        verify_bundle(args, report, work)
        status, code = "pass", 0
        return 0
    except PipelineError as e:
        code, error = e.exit_code, e.message
        raise
    finally:
        venv = report.info.get("_venv")
        temporary_venv = report.info.pop("_venv_temporary", False)
        report.info.pop("_venv", None)
        print("PASS" if status == "pass" else f"FAIL (exit {code})", flush=True)
        if args.json_out:
            from pipeline.artifacts import atomic_write_json

            atomic_write_json(args.json_out, report.to_json(status, code, error))
        if args.keep_venv:
            print(f"kept: bundle copy {work}" + (f", venv {venv}" if venv else ""), flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if temporary_venv and venv:
                shutil.rmtree(Path(venv).parent, ignore_errors=True)


def _fail(report: Report, name: str, e: PipelineError) -> PipelineError:
    report.add(name, False, e.message)
    return e


def verify_bundle(args, report: Report, work: Path) -> None:
    from pipeline.bundle_io import (check_manifest_files, is_archive, load_manifest, read_checksums, safe_extract,
                                    verify_checksums)

    src = Path(args.bundle)
    if not src.exists():
        raise BundleError(f"{src}: no such bundle", hint="give a bundle folder or its .tar.gz (stages/bundle-*/)")
    # 1. a private copy (folders) or a safe extraction (archives): what is checked is what runs
    if src.is_dir():
        root = work / "bundle" / src.resolve().name
        # Python bytecode caches (written when a script ran inside the folder) are not part of the bundle:
        # they are left out of the copy, so nothing unverified can run.
        pycache = sorted(p.relative_to(src).as_posix() for p in src.rglob("__pycache__") if p.is_dir())
        shutil.copytree(src, root, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        if pycache:
            report.info["ignored"] = pycache
            print(f"  note: left out {', '.join(pycache)} (python bytecode caches, not part of the bundle)")
    elif src.is_file() and is_archive(src):
        try:
            root = safe_extract(src, work / "extracted")
        except PipelineError as e:
            raise _fail(report, "safe extraction", e)
        report.add("safe extraction", True, f"{src.name}: no absolute paths, '..', outside links or device files")
    else:
        raise BundleError(f"{src}: not a bundle folder or a .tar.gz", hint="give a bundle folder or its .tar.gz")
    report.info["bundle_copy"] = str(root)
    # 2. checksums, before anything in the bundle is loaded
    try:
        names = verify_checksums(root)
    except PipelineError as e:
        raise _fail(report, "checksums", e)
    report.add("checksums", True, f"{len(names)} files match SHA256SUMS, no unlisted files")
    # 3. manifest
    try:
        manifest = load_manifest(root)
        check_manifest_files(root, manifest, read_checksums(root))
    except PipelineError as e:
        raise _fail(report, "manifest", e)
    m = manifest
    report.info["manifest"] = {"name": m["name"], "profile": m["profile"]["name"], "model": m["model"]["file"],
                               "precision": m["model"]["precision"], "runtime": m["model"]["runtime"]}
    report.add("manifest", True, f"schema {m['schema_version']}, {m['name']}, profile {m['profile']['name']}, "
                                 f"model {m['model']['file']} ({m['model']['precision']}, {m['model']['runtime']}); "
                                 "agrees with SHA256SUMS")
    # 4. requirements -> clean venv
    try:
        req_names = parse_requirements(root / "requirements.txt")
    except PipelineError as e:
        raise _fail(report, "requirements", e)
    copy = root
    t0 = time.perf_counter()
    try:
        python = base_python(args.python)
        venv, reused, temporary = ensure_venv(copy / "requirements.txt", python, fresh=args.fresh,
                                              timeout=args.timeout)
    except PipelineError as e:
        raise _fail(report, "venv", e)
    report.info["_venv"], report.info["_venv_temporary"] = str(venv), temporary
    report.info["venv"] = {"path": str(venv), "reused": reused, "temporary": temporary, "base_python": python,
                           "seconds": round(time.perf_counter() - t0, 1)}
    probe = probe_venv(venv, req_names, copy)
    report.info["venv"].update(python=probe["python"], packages=probe["versions"])
    missing = [n for n, v in probe["versions"].items() if v is None]
    pkgs = ", ".join(f"{n} {v}" for n, v in probe["versions"].items())
    if missing:
        raise _fail(report, "venv", MissingDependency(f"the venv lacks {', '.join(missing)} after pip install",
                                                      hint="run with --fresh"))
    report.add("venv", True, f"{'cached' if reused else 'new'} {venv} (python {probe['python']}): {pkgs} "
                             f"from requirements.txt only")
    # 5. isolation: the bundle must not lean on this project or the dev stack
    if probe["importable_forbidden"]:
        raise _fail(report, "isolation", GateError(
            f"the venv is not isolated: {', '.join(probe['importable_forbidden'])} can be imported there",
            hint="run with --fresh, and do not install the project into the bundle's venv"))
    report.add("isolation", True, f"{', '.join(FORBIDDEN_MODULES)} not importable (python -I, clean environment)")
    # 6. run.py --check-samples in the copy
    run_samples(report, venv, copy, manifest, args.timeout)


def readme_command(report: Report, venv: Path, copy: Path, sample: str, timeout: int) -> None:
    """The README's own `python run.py image.png`, on a raw sample in the clean venv: the requirements must cover
    it (Pillow for image files)."""
    cmd = [str(_venv_python(venv)), "-I", "-B", "run.py", f"samples/{sample}"]
    try:
        p = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=timeout, env=_clean_env(False))
    except subprocess.TimeoutExpired:
        raise _fail(report, "readme", GateError(f"python run.py samples/{sample} took more than {timeout} s")) from None
    try:
        ok = p.returncode == 0 and bool(json.loads(p.stdout)["top_k"])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise _fail(report, "readme", GateError(
            f"the README's command `python run.py samples/{sample}` fails in a venv holding only requirements.txt "
            f"(exit {p.returncode}): {_tail(p.stderr, 3) or _tail(p.stdout, 3)}",
            hint="rebuild the bundle (its requirements.txt must list every package run.py needs for image files)"))
    report.add("readme", True, f"`python run.py samples/{sample}` (the README's command) prints the top-k")


def run_samples(report: Report, venv: Path, copy: Path, manifest: dict, timeout: int) -> None:
    expected_path = copy / "samples" / "expected.json"
    try:
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
        n_samples = len(expected["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        raise _fail(report, "samples", BundleError("samples/expected.json is missing or malformed",
                                                   hint="rebuild the bundle"))
    cmd = [str(_venv_python(venv)), "-I", "-B", "run.py", "--check-samples"]
    env = _clean_env(False)
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        p = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise _fail(report, "samples", GateError(f"run.py --check-samples took more than {timeout} s")) from None
    result = None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    report.info["samples"] = {"returncode": p.returncode, "result": result, "stderr_tail": _tail(p.stderr, 8)}
    runtime = f"{expected.get('runtime', '?')}"
    ran = next((f for f in manifest.get("device_model_files", []) if (copy / f).is_file()), manifest["model"]["file"])
    report.info["samples"]["model"] = ran
    if p.returncode == 0 and isinstance(result, dict) and not result.get("failures") \
            and result.get("samples") == n_samples:
        raw = expected.get("raw") or []
        kinds = f"; {len(raw)} raw file(s) ({', '.join(r.get('kind', '?') for r in raw)}) decoded and preprocessed " \
                "by run.py as on the device" if raw else ""
        report.add("samples", True, f"{n_samples}/{n_samples} outputs of {ran} within atol {result.get('atol')} and "
                                    f"same top-1 (run.py --check-samples; expected outputs from {runtime} "
                                    f"{expected.get('runtime_version', '?')}){kinds}")
        if raw:
            readme_command(report, venv, copy, raw[0]["file"], timeout)
        return
    if isinstance(result, dict) and result.get("failures"):
        f = result["failures"]
        first = f[0]
        msg = (f"sample check failed: {first.get('file')} differs from samples/expected.json (top-1 "
               f"{first.get('top1')} vs {first.get('expected_top1')}, max |diff| {first.get('max_abs_diff')} > atol "
               f"{result.get('atol')})" + (f"; {len(f) - 1} more sample(s) failed" if len(f) > 1 else ""))
        from targets.isa import host_isa

        made_on, here = expected.get("isa"), host_isa()
        isa_hint = (f"; the expected outputs were computed on a {made_on} CPU and this one is {here}: INT8 kernels "
                    "of another instruction-set class compute other numbers" if made_on and made_on != here else "")
        raise _fail(report, "samples", GateError(msg, hint="the runtime in requirements.txt does not reproduce the "
                                                           "bundle's outputs: compare runtime versions, or rebuild"
                                                           + isa_hint))
    err = _tail(p.stderr, 4) or _tail(p.stdout, 4)
    raise _fail(report, "samples", GateError(f"run.py --check-samples failed (exit {p.returncode}): {err}",
                                             hint="run it by hand in the bundle (python run.py --check-samples) "
                                                  "to see the whole error"))
