"""Stage runner: cache keys, atomic stage folders, resume, the run lock and run.json.

A stage's cache key = hash(stage name, canonical config, the sha256 of every input artifact,
versions of the tools it calls, the source of the code that runs it). Each key has its own
folder (`stages/<stage>/<key>/`), written under a temporary name and renamed when complete, so:
- the same command again reuses every finished stage (also after a SIGKILL),
- two different models never share an entry (their input hashes differ),
- going back to an earlier setting reuses its old results.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

from pipeline.artifacts import (atomic_dir, atomic_write_json, clean_stale_temporaries, sha256_file,
                                sha256_json, sha256_tree)
from pipeline.errors import PipelineError
from pipeline.memory import peak_rss_mb, reset_peak

META = "meta.json"


def tool_versions(dists: list[str]) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = "absent"
    return out


def _code_hash(fn: Callable, code: tuple = ()) -> str:
    """Digest of every project file the stage's code can run: the import closure of the file defining
    `fn` (pipeline.code_closure) plus that of each extra in `code` (modules chosen at run time, such as a
    backend from the registry, or data files). A file that cannot be read or parsed raises
    CodeHashError: a key without it could serve stale work."""
    from pipeline.code_closure import code_digest

    return code_digest((fn, *code))["sha256"]


def output_stats(folder: Path, names) -> dict[str, dict[str, int]]:
    """Size and mtime of each output, recorded so a cache hit can check them cheaply."""
    out = {}
    for n in names:
        st = (folder / n).stat()
        out[n] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def outputs_problem(folder: Path, meta: dict) -> str | None:
    """Why a finished stage folder no longer holds what meta.json recorded (None when it does).
    Size always; the sha256 only when the size or mtime differs from the record (or none was recorded)."""
    outputs = meta.get("outputs")
    if not isinstance(outputs, dict):
        return "meta.json records no outputs"
    stats = meta.get("output_stats") or {}
    for name, sha in outputs.items():
        p = folder / name
        try:
            st = p.stat()
        except OSError:
            return f"{name} is missing"
        rec = stats.get(name) or {}
        if "size" in rec and st.st_size != rec["size"]:
            return f"{name} changed size ({rec['size']} -> {st.st_size} bytes)"
        if rec.get("mtime_ns") != st.st_mtime_ns or "size" not in rec:
            try:
                if sha256_file(p) != sha:
                    return f"{name} changed content (sha256 differs)"
            except OSError as e:
                return f"{name} is unreadable ({e.strerror or e})"
    return None


def _refresh_output_stats(folder: Path, meta: dict) -> None:
    """After a hit whose files were hashed (mtimes moved: a copied run folder, an older meta.json), record
    the current sizes and mtimes so the next hit is a stat() again."""
    try:
        stats = output_stats(folder, meta["outputs"])
    except OSError:
        return
    if stats != meta.get("output_stats"):
        meta["output_stats"] = stats
        try:
            atomic_write_json(folder / META, meta)
        except OSError:  # a read-only copy of a run: the check still holds, only slower next time
            pass


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    meta: dict[str, Any]
    cached: bool
    seconds: float

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    @property
    def digest(self) -> str:
        """What downstream keys depend on: the content of this stage's outputs."""
        return self.meta["outputs_sha256"]


@dataclass
class StageContext:
    """Handed to a stage's function: where to write, and a place for metrics."""

    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise PipelineError(f"run folder {self.path.parent} is in use by process {other}",
                                hint="wait for that run to finish, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False


class Runner:
    def __init__(self, out: Path, console=None, fault_stage: str | None = None):
        self.out = Path(out)
        self.stages_dir = self.out / "stages"
        self.records: list[dict[str, Any]] = []
        self.console = console
        self.fault_stage = fault_stage or os.environ.get("PIPELINE_FAULT_STAGE")
        self.removed_temporaries = clean_stale_temporaries(self.out)

    def _say(self, text: str, label: str = "") -> None:
        if self.console is not None:
            from rich.markup import escape

            self.console.print(text.replace("{label}", escape(label)))

    def stage(self, name: str, fn: Callable[[StageContext], None], *, config: Any = None,
              inputs: dict[str, StageResult] | None = None, tools: Sequence[str] = (), label: str | None = None,
              extra_key: Any = None, code: tuple = ()) -> StageResult:
        """Run `fn` into a fresh folder unless a finished folder with the same key exists.

        The key covers the import closure of `fn`'s file inside the project (pipeline.code_closure).
        `code`: extra modules, functions or files the stage uses that imports do not show (a backend
        picked from the registry at run time, data files); each adds its own closure.
        A finished folder is reused only when its outputs still match meta.json; otherwise the stage
        reruns and says why in one line."""
        inputs = inputs or {}
        key_parts = {
            "stage": name,
            "config": config,
            "inputs": {k: v.digest for k, v in sorted(inputs.items())},
            "tools": tool_versions(list(tools)),
            "code": _code_hash(fn, tuple(code)),
            "extra": extra_key,
        }
        key = sha256_json(key_parts)
        final = self.stages_dir / name / key[:16]
        label = label or name
        meta_path = final / META
        rerun_reason = None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                rerun_reason = outputs_problem(final, meta) if isinstance(meta, dict) else "meta.json is not an object"
            except (OSError, UnicodeDecodeError, ValueError) as e:
                rerun_reason = f"meta.json is unreadable ({type(e).__name__})"
            if rerun_reason is None:
                _refresh_output_stats(final, meta)
                rec = self._record(name, label, key, final, meta, cached=True, seconds=0.0)
                self._say(f"[dim]✓ {{label}}{' ' * max(0, 32 - len(label))} cached[/dim]", label)
                return rec
            from rich.markup import escape

            self._say(f"[yellow]↻ {{label}}: cached output {escape(rerun_reason)}; rerunning[/yellow]", label)
        self._say("[bold]→ {label}[/bold]", label)
        t0 = time.perf_counter()
        peak_reset = reset_peak()
        with atomic_dir(final) as tmp:
            ctx = StageContext(dir=tmp)
            fn(ctx)
            peak = peak_rss_mb() if peak_reset else None
            if self.fault_stage == name:  # fault-injection hook for the resume tests
                os.kill(os.getpid(), 9)
            outputs = {p.relative_to(tmp).as_posix(): sha256_file(p)
                       for p in sorted(tmp.rglob("*")) if p.is_file()}
            meta = {
                "stage": name,
                "label": label,
                "key": key,
                "key_parts": key_parts,
                "outputs": outputs,
                "outputs_sha256": sha256_json(outputs),
                "output_stats": output_stats(tmp, outputs),
                "metrics": ctx.metrics,
                "notes": ctx.notes,
                "seconds": round(time.perf_counter() - t0, 3),
                # this process's peak RSS during the stage (measured, VmHWM; child processes not included)
                "peak_rss_mb": peak,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if rerun_reason:
                meta["rerun_reason"] = rerun_reason
            atomic_write_json(tmp / META, meta)
        seconds = time.perf_counter() - t0
        self._say(f"[green]✓ {{label}}{' ' * max(0, 32 - len(label))} {seconds:6.1f} s[/green]", label)
        return self._record(name, label, key, final, meta, cached=False, seconds=seconds)

    def _record(self, name, label, key, final, meta, cached, seconds) -> StageResult:
        rec = StageResult(name=name, key=key, dir=final, meta=meta, cached=cached, seconds=seconds)
        self.records.append({"name": label, "stage": name, "cached": cached, "seconds": round(seconds, 3),
                             "peak_rss_mb": None if cached else meta.get("peak_rss_mb"),
                             "key": key, "dir": str(final.relative_to(self.out)),
                             "notes": meta.get("notes", [])})
        return rec


def _host_isa() -> str | None:
    from targets.isa import host_isa

    return host_isa()


def environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "isa": _host_isa(),
        "tools": tool_versions(["torch", "onnx", "onnxruntime", "openvino", "nncf", "litert-torch",
                                "ai-edge-litert", "torch-pruning", "tensorrt", "tensorrt-rtx", "numpy",
                                "torchvision", "timm"]),
    }


def file_digest(path: Path) -> str:
    return sha256_tree(path)
