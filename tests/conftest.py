"""Shared test helpers: run the real CLI in a child process with a fast recipe.

FAST_SETS shrinks the default recipe (fewer epochs, 16x16 inputs, short benchmarks) without
changing any code path; tests that need the real default sizes say so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAST_SETS = [
    "teacher.train.epochs=3",
    # A 3-epoch teacher on a few hundred images can sit within sampling error of chance: the default gate
    # (teacher.min_accuracy=chance) is tested on its own (tests/test_pretrained.py, tests/test_vision_models.py).
    "teacher.min_accuracy=0",
    "distill.epochs=4",
    "data.input_size=16",
    "benchmark.repeats=1",
    "benchmark.warmup=3",
    "benchmark.min_iters=20",
    "benchmark.min_time_s=0.05",
    "calibration.samples=64",
    # One benchmark repeat of a 16x16 model: INT8 and FP32 take ~25 us and either may read faster, so the
    # default quantize.ship=faster would ship either; the tests that check INT8 bundles pin it (ship=faster and
    # ship=fp32 are tested in tests/test_ship.py).
    "quantize.ship=int8",
]


# The ISA lane of .ci/run: INT8 accuracy computed with an AVX2 host's kernels (qemu-x86_64 -cpu Haswell).
if os.environ.get("PIPELINE_TEST_EMULATE") == "1":
    FAST_SETS.append("quantize.emulate=true")


def x86_source() -> str:
    """The source of an x86 target's INT8 or latency figure here: its profiles deploy to x86-64-v3 (AVX2), so on a
    host of another instruction-set class (a VNNI machine) the figure is host-measured, not measured."""
    from targets.isa import host_isa

    return "measured" if host_isa() == "x86-64-v3" else "host-measured"


def fast_args(extra_sets: list[str] = ()) -> list[str]:
    args = []
    for s in [*FAST_SETS, *extra_sets]:
        args += ["--set", s]
    return args


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIPELINE_QUIET"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # `make test` runs two pytest workers on two cores: a pipeline run with 2 torch threads beside another
    # worker oversubscribes the cores and trains several times slower than with 1 thread.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a child process; returns the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or ROOT, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def read_run(out: Path) -> dict:
    return json.loads((Path(out) / "run.json").read_text())


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory) -> Path:
    """One fast end-to-end run for the onnxruntime and jetson targets, shared by many tests."""
    out = tmp_path_factory.mktemp("fast_run") / "run"
    p = run_cli("run", "--target", "onnxruntime", "--target", "jetson", "--out", str(out), *fast_args())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (out.parent / "terminal.stdout").write_text(p.stdout)  # what the user saw (tests/test_terminal_clean.py)
    (out.parent / "terminal.stderr").write_text(p.stderr)
    return out


def artifact(summary: dict, name: str) -> dict:
    return next(a for a in summary["artifacts"] if a["name"] == name)
