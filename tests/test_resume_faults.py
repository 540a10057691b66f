"""Resume after a SIGKILL at several points of a real run, and the run lock.

One run folder is killed again and again, each time further along, then finished:
1. from outside (os.kill SIGKILL) while the distill stage is running (its temporary folder exists);
2. PIPELINE_FAULT_STAGE=distill: SIGKILL right after distill's work, before its folder is renamed;
3. PIPELINE_FAULT_STAGE=export;
4. PIPELINE_FAULT_STAGE=bundle-onnxruntime;
5. the same command without a fault: exit 0.
After each kill the stages that finished before it are reported cached on the next run; at the end
no temporary or partial file remains, run.json marks the finished stages cached, and the deterministic
stages (data, calibration, teacher, distill, prune, export) have the same artifact hashes as an
uninterrupted run in another folder (CPU, fixed seed, same thread count).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, fast_args, read_run, run_cli

SETS = ["data.limit=100", "teacher.train.epochs=1", "distill.epochs=2", "benchmark.enabled=false",
        "calibration.samples=32"]
DETERMINISTIC = ["data", "calibration", "teacher", "distill", "prune", "export", "export-teacher"]
BEFORE = {  # stage -> the stages that finish before it (cached on the run after a kill there)
    "distill": ["data", "calibration", "teacher"],
    "export": ["data", "calibration", "teacher", "distill", "prune"],
    "bundle-onnxruntime": ["data", "calibration", "teacher", "distill", "prune", "export", "export-teacher",
                           "convert-onnxruntime", "quantize-onnxruntime", "compile-onnxruntime",
                           "evaluate-onnxruntime"],
}


def run_args(out: Path) -> list[str]:
    return ["run", "--target", "onnxruntime", "--out", str(out), *fast_args(SETS)]


def env_with(**extra: str) -> dict:
    env = cli_env()
    env.pop("PIPELINE_FAULT_STAGE", None)
    env.update(extra)
    return env


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name]


def finished(out: Path, stage: str) -> list[Path]:
    return [m.parent for m in (out / "stages" / stage).glob("*/meta.json")]


def outputs(out: Path, stage: str) -> dict:
    metas = list((out / "stages" / stage).glob("*/meta.json"))
    assert len(metas) == 1, f"{stage}: {metas}"
    return json.loads(metas[0].read_text())["outputs"]


def cached_lines(stdout: str) -> set[str]:
    """Stage labels the console reported as reused ('✓ data   cached')."""
    return {line.split()[1] for line in stdout.splitlines() if line.strip().startswith("✓") and
            line.rstrip().endswith("cached")}


def label(stage: str) -> str:
    return stage.split("-")[0] if stage.endswith("-onnxruntime") else stage


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume_ref") / "run"
    p = run_cli(*run_args(out), env=env_with())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


def kill_while_running(args: list[str], out: Path, stage: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Start the CLI and SIGKILL it from outside as soon as `stage`'s temporary folder appears."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env_with(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if list((out / "stages" / stage).glob("*.tmp-*")):
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the {stage} stage did not start within {timeout} s")
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_resume_after_kills(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    args = run_args(out)

    # 1. killed from outside while distill runs: its temporary folder is left behind, nothing else of it
    p = kill_while_running(args, out, "distill")
    assert p.returncode == -signal.SIGKILL, p.stdout[-2000:] + p.stderr[-2000:]
    assert temporaries(out), "the kill should have left distill's temporary folder"
    assert not finished(out, "distill")
    assert not (out / "run.json").exists()

    # 2.-4. kill right after a stage's work, before its rename; the next run reuses what finished before
    for stage in ("distill", "export", "bundle-onnxruntime"):
        p = run_cli(*args, env=env_with(PIPELINE_FAULT_STAGE=stage))
        assert p.returncode == -signal.SIGKILL, f"{stage}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr
        reused = cached_lines(p.stdout)
        # every stage that finished before the previous kill is reused (never redone)
        prev = {"distill": ["data", "calibration", "teacher"], "export": BEFORE["distill"],
                "bundle-onnxruntime": BEFORE["export"]}[stage]
        assert set(prev) <= reused, f"{stage}: reused {reused}, expected at least {prev}"
        assert not finished(out, stage), f"{stage} must not be complete after a kill before its rename"
        assert [t for t in temporaries(out) if t.parent.name == stage], f"{stage}: no temporary left by the kill"
        for before in BEFORE[stage]:
            assert finished(out, before), f"{before} should be complete before {stage}"
        assert not (out / "run.json").exists()

    # 5. the same command completes and reuses everything that finished
    p = run_cli(*args, env=env_with())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = read_run(out)
    cached = {s["stage"]: s["cached"] for s in summary["stages"]}
    for stage in BEFORE["bundle-onnxruntime"]:
        assert cached[stage] is True, f"{stage} finished before the last kill: must be reused ({cached})"
    assert cached["bundle-onnxruntime"] is False
    assert not temporaries(out), temporaries(out)
    assert not [q for q in out.rglob("*") if q.is_dir() and q.parent.parent == out / "stages"
                and not (q / "meta.json").exists()], "a stage folder without meta.json (partial) remains"
    assert list(out.rglob("*.tar.gz"))
    # the deterministic stages match an uninterrupted run in another folder
    for stage in DETERMINISTIC:
        assert outputs(out, stage) == outputs(reference, stage), f"{stage}: artifacts differ from the reference run"
    ref_keys = {s["stage"]: s["key"] for s in read_run(reference)["stages"]}
    assert {s["stage"]: s["key"] for s in summary["stages"]} == ref_keys


def test_second_run_on_same_out_is_refused(tmp_path: Path) -> None:
    """While a run holds <out>/.lock, another run on the same --out exits 2 naming the other pid."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--target", "onnxruntime", "--out", str(out),
                              *fast_args(["teacher.train.epochs=200", "data.limit=100"])],
                             cwd=ROOT, env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".lock"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            assert first.poll() is None, first.stderr.read()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("the first run never took the lock")
        p = run_cli(*run_args(out), env=env_with())
        assert first.poll() is None, "the first run ended before the second was tried: make it longer"
        assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
        assert "Traceback" not in p.stderr
        assert f"in use by process {first.pid}" in p.stderr, p.stderr
        assert "fix:" in p.stderr
    finally:
        first.kill()
        first.wait()
    # the killed holder's lock is released with its process: the folder is usable again
    assert not (out / "run.json").exists()
