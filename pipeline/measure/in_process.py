"""ONNX Runtime latency of several ONNX files measured in this process, interleaved (source: measured).

The in-process counterpart of the child-process harness (pipeline/measure/harness.py): for ratios between
models measured side by side (pruned / unpruned, FP32 / INT8), where running them in one process with the
blocks interleaved (pipeline/measure/core.py) keeps a busy neighbour from favouring one of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def measure_ort_latency(models: dict[str, Path], x: np.ndarray, batches: tuple[int, ...] = (1, 32), threads: int = 1,
                        repeats: int = 3, warmup: int = 20, min_iters: int = 50, min_time_s: float = 0.5,
                        max_time_s: float = 20.0) -> dict[str, dict[str, Any]]:
    """ONNX Runtime latency of several ONNX files, measured in this process by the measurement core
    (pipeline/measure/core.py: every (model, batch) case one calibrated block per round, round-robin, so a busy
    neighbour slows all cases alike). It stops when every case has >= `min_iters` timed calls, >= max(repeats,
    9) blocks, `min_time_s` spent and a 95% interval within 5% of its median, or at `max_time_s` for all the
    cases together. Reported per case: p50_ms (median of the blocks) with ci95_ms, samples, blocks and how the
    measurement stopped; each entry says precision "fp32" (pipeline.prune_int8.measure_batch1 relabels the INT8
    files it times)."""
    import onnxruntime as ort

    from pipeline.measure.core import MIN_BLOCKS, Measurement, Settings, measure

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in models.items()}
    feeds = {b: np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])).astype(np.float32)) for b in batches}
    fns = {}
    for k, sess in sessions.items():
        inp = sess.get_inputs()[0].name
        for b in batches:
            fns[f"{k}@{b}"] = (lambda sess=sess, feed={inp: feeds[b]}: sess.run(None, feed))
    settings = Settings(warmup=warmup, min_blocks=max(repeats, MIN_BLOCKS), max_time_s=max_time_s)

    def done(m: Measurement) -> bool:
        return m.seconds >= min_time_s and all(f.samples >= min_iters and f.rel_half_width <= settings.rel_half_width
                                               for f in m.figures.values())

    m = measure(fns, settings, converged=done)
    out: dict[str, dict[str, Any]] = {}
    for k in models:
        out[k] = {}
        for b in batches:
            f = m.figures[f"{k}@{b}"]
            out[k][f"batch{b}"] = {"p50_ms": f.median_ms, "ci95_ms": None if f.ci95_ms is None else
                                   [round(v, 5) for v in f.ci95_ms], "samples": f.samples, "blocks": f.blocks,
                                   "repeat_p50_ms": [round(v, 5) for v in f.block_ms[:50]],
                                   "batch": b, "threads": threads, "runtime": "onnxruntime",
                                   "runtime_version": ort.__version__, "precision": "fp32",
                                   "source": "measured", "stopped": m.stopped, "noisy": m.noisy, "load1": m.load1}
    return out
