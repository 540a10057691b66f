"""ONNX Runtime latency of several ONNX files measured in this process, interleaved (source: measured).

The in-process counterpart of the child-process harness (pipeline/measure/harness.py): for ratios between
models measured side by side (pruned / unpruned, FP32 / INT8), where running them in one process with the
repeats interleaved keeps a busy neighbour from favouring one of them.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure_ort_latency(models: dict[str, Path], x: np.ndarray, batches: tuple[int, ...] = (1, 32), threads: int = 1,
                        repeats: int = 3, warmup: int = 20, min_iters: int = 50, min_time_s: float = 0.5,
                        max_time_s: float = 20.0) -> dict[str, dict[str, Any]]:
    """ONNX Runtime latency of several ONNX files, measured in this process, interleaved (each entry says
    precision "fp32"; pipeline.prune_int8.measure_batch1 relabels the INT8 files it times).

    Every repeat runs every (model, batch) case once in turn (order reversed on odd repeats), so a busy
    neighbour slows all cases alike; a case = `warmup` runs, then timed runs until `min_iters` and
    `min_time_s` are both met (or `max_time_s`). Reported: median of the per-repeat medians.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    feeds = {b: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])).astype(np.float32)) for b in batches}
    per_repeat: dict[tuple[str, int], list[float]] = {(k, b): [] for k in models for b in batches}
    names = list(models)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            sess = sessions[k]
            inp = sess.get_inputs()[0].name
            for b in batches:
                feed = {inp: feeds[b]}
                for _ in range(warmup):
                    sess.run(None, feed)
                times: list[float] = []
                start = time.perf_counter()
                while True:
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times.append(time.perf_counter() - t0)
                    spent = time.perf_counter() - start
                    if (len(times) >= min_iters and spent >= min_time_s) or spent >= max_time_s:
                        break
                per_repeat[(k, b)].append(statistics.median(times) * 1000.0)
    out: dict[str, dict[str, Any]] = {}
    for k in names:
        out[k] = {}
        for b in batches:
            reps = per_repeat[(k, b)]
            out[k][f"batch{b}"] = {"p50_ms": statistics.median(reps), "repeat_p50_ms": [round(v, 5) for v in reps],
                                   "batch": b, "threads": threads, "runtime": "onnxruntime",
                                   "runtime_version": ort.__version__, "precision": "fp32",
                                   "source": "measured"}
    return out
