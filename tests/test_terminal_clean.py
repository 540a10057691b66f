"""The terminal shows the pipeline's own lines; third-party output of a run is in runs/<name>/logs/run.log.

Real runs: x86 (OpenVINO + NNCF) and rpi (litert-torch, whose import prints absl/oneDNN/torchao lines) in one
run, and the shared fast_run (ONNX Runtime, whose quantizer logs its pre-processing hint)."""
from __future__ import annotations

import re

import pytest

from conftest import fast_args, run_cli

# What third-party output looks like; none of the pipeline's own lines has any of these.
THIRD_PARTY = [
    re.compile(p) for p in (
        r"WARNING", r"^[IWEF]\d{4} ", r"I0000", r"W0000", r"absl", r"oneDNN", r"torchao", r"pre-processing",
        r"UserWarning", r"FutureWarning", r"DeprecationWarning", r"INFO:", r"nncf", r"LiteRT-Torch Convert",
        r"Statistics collection", r"XNNPACK", r"Failed to load",
    )
]


def third_party_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in THIRD_PARTY)]


def _available(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.skipif(not _available("openvino", "nncf", "litert_torch", "ai_edge_litert"),
                    reason="needs the openvino and tflite extras (pip install -e '.[openvino,tflite]')")
def test_x86_and_rpi_run_prints_only_our_lines(tmp_path):
    out = tmp_path / "run"
    p = run_cli("run", "--target", "x86", "--target", "rpi", "--out", str(out), *fast_args())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert third_party_lines(p.stdout) == [] and third_party_lines(p.stderr) == [], p.stdout + p.stderr
    assert "✓ bundle [raspberry-pi-5]" in p.stdout and "run.json" in p.stdout  # our lines still there
    log = (out / "logs" / "run.log").read_text()
    # What the libraries said is kept, in the log: NNCF's progress, LiteRT-Torch's converter, a warning.
    for marker in ("Statistics collection", "LiteRT-Torch Convert", "Warning"):
        assert marker in log, f"{marker!r} not in {out / 'logs' / 'run.log'}"


def test_onnxruntime_run_prints_only_our_lines(fast_run):
    stdout = (fast_run.parent / "terminal.stdout").read_text()
    stderr = (fast_run.parent / "terminal.stderr").read_text()
    assert third_party_lines(stdout) == [] and third_party_lines(stderr) == [], stdout + stderr
    assert "pre-processing before quantization" in (fast_run / "logs" / "run.log").read_text()
