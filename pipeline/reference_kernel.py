"""A reference kernel timed beside every benchmark: an int8 GEMM (ONNX Runtime MatMulInteger) and an fp32 GEMM
of fixed size, each in a fresh child process like the benchmark cases.

Why: a baseline recorded on one CPU says little about absolute milliseconds on another (a GitHub-hosted runner
against the dev host). The ratio of a model's p50 to the time of the same kind of arithmetic measured in the
same session on the same machine moves much less with the CPU and with the load of the moment, so
pipeline/measure/compare.py gates on that ratio (and on the absolute figure too when the host fingerprint matches).

    python pipeline/reference_kernel.py --threads 1 --json ref.json     # one child's measurement

This file imports nothing from the project (it runs as a script in the child: numpy, onnx, onnxruntime).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHAPE = (256, 256, 256)  # M, K, N: ~16.8 M multiply-adds, about a millisecond on one core
KERNEL_VERSION = "1"  # bump when SHAPE or the models change: old and new figures are not comparable
WARMUP = 10
MIN_TIME_S = 0.3
MIN_ITERS = 30


def _models() -> dict[str, bytes]:
    import onnx
    from onnx import TensorProto, helper

    m, k, n = SHAPE
    out = {}
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_gemm", [a, b], [y])
    out["int8_gemm"] = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "fp32_gemm", [a, b], [y])
    out["fp32_gemm"] = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    for v in out.values():
        onnx.checker.check_model(onnx.load_from_string(v))
    return out


def measure(threads: int = 1) -> dict:
    """Time both GEMMs in this process: median milliseconds per call after a warm-up."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    m, k, n = SHAPE
    feeds = {"int8_gemm": {"a": rng.integers(0, 256, (m, k), dtype=np.uint8),
                           "b": rng.integers(-128, 128, (k, n), dtype=np.int8)},
             "fp32_gemm": {"a": rng.standard_normal((m, k), dtype=np.float32),
                           "b": rng.standard_normal((k, n), dtype=np.float32)}}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    result = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "threads": threads}
    for name, model in _models().items():
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for _ in range(WARMUP):
            sess.run(None, feeds[name])
        times: list[float] = []
        t_end = time.perf_counter() + MIN_TIME_S
        while len(times) < MIN_ITERS or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            sess.run(None, feeds[name])
            times.append((time.perf_counter() - t0) * 1000.0)
        result[f"{name}_ms"] = round(statistics.median(times), 6)
        result[f"{name}_iterations"] = len(times)
    return result


def measure_in_child(threads: int = 1, python: str = sys.executable, timeout: float = 120.0) -> dict:
    """measure() in a fresh process (as the benchmark cases are: no warm caches from the parent)."""
    with tempfile.TemporaryDirectory(prefix="refkernel-") as tmp:
        out = os.path.join(tmp, "ref.json")
        p = subprocess.run([python, os.path.abspath(__file__), "--threads", str(threads), "--json", out],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0 or not os.path.exists(out):
            lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
            raise RuntimeError(f"reference kernel child failed (exit {p.returncode}): "
                               f"{lines[-1] if lines else '(no output)'}")
        with open(out) as f:
            return json.load(f)


def summarize(children: list[dict]) -> dict:
    """One thread count's figures from its children: the median of their medians, and their spread."""
    out: dict = {"children": children}
    for key in ("int8_gemm_ms", "fp32_gemm_ms"):
        vals = [c[key] for c in children]
        med = statistics.median(vals)
        out[key] = round(med, 6)
        out[key.replace("_ms", "_cv")] = round(statistics.pstdev(vals) / med, 4) if med > 0 and len(vals) > 1 else 0.0
    return out


def record(children_by_threads: dict[int, list[dict]]) -> dict:
    """The report's `reference_kernel` block."""
    first = next((c for cs in children_by_threads.values() for c in cs), {})
    return {
        "version": KERNEL_VERSION,
        "shape_mkn": list(SHAPE),
        "runtime": first.get("runtime", "onnxruntime"),
        "runtime_version": first.get("runtime_version"),
        "method": "ONNX Runtime CPU: MatMulInteger uint8 x int8 and MatMul fp32, median ms per call, one fresh "
                  "child before and one after the benchmark cases; the figure is the median of the children",
        "by_threads": {str(t): summarize(cs) for t, cs in sorted(children_by_threads.items())},
    }


class Recorder:
    """Children of the reference kernel for each thread count the cases use: call measure_once() before and
    after the cases, then record(). A machine without ONNX Runtime records why there is no figure."""

    def __init__(self, threads: list[int | None], python: str = sys.executable):
        self.threads = sorted({int(t or 1) for t in threads}) or [1]
        self.python = python
        self.children: dict[int, list[dict]] = {t: [] for t in self.threads}
        self.error: str | None = None

    def measure_once(self) -> None:
        if self.error:
            return
        for t in self.threads:
            try:
                self.children[t].append(measure_in_child(t, self.python))
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
                self.error = str(e)
                return

    def record(self) -> dict:
        if self.error or not all(self.children.values()):
            return {"version": KERNEL_VERSION, "unavailable": self.error or "not measured"}
        return record(self.children)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="time the reference GEMMs once (one child of the harness)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", dest="json_out", required=True)
    args = p.parse_args(argv)
    res = measure(max(1, args.threads))
    tmp = args.json_out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, allow_nan=False)  # strict JSON: the timings are finite (a NaN would be refused here)
    os.replace(tmp, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
