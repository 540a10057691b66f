"""ONNX Runtime per-op profile: SessionOptions.enable_profiling, the JSON trace's Node events.

Each `*_kernel_time` event is one node run in one inference (name, op_name, provider, input dtypes,
dur in whole microseconds, truncated). Two things make the raw durations wrong for microsecond kernels,
both measured here on the default student (INT8 rows summed to 1.2x the unprofiled end-to-end time):
- resolution: a per-run median of whole microseconds is a whole number; the 10%-trimmed mean over the
  profiled inferences keeps the sub-microsecond part the rounding spreads over runs;
- the profiler's own cost inside each event (it sizes the outputs and formats thread statistics before
  it stops the clock): a Relu on one element is reported at about 2 us. That floor is measured in the same
  process (a profiled one-op session, the same statistic) and subtracted from every node, never below 0.
The end-to-end p50 is measured with a second session (profiling off, same threads), timing
`session.run`, in blocks alternating with the profiled session's runs so both see the same machine load.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict

import numpy as np

from pipeline.profile.schema import OpTime, VariantProfile, short_precision
from pipeline.profile.timing import interleaved, median, relu_onnx

LEFT_OUT = ("session.run overhead outside the kernels beyond a one-op model's (that part is the call-overhead "
            "row): per-node executor bookkeeping, allocation; the Python call")


def _session(path, threads: int, profile_prefix: str | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=["CPUExecutionProvider"])


def _trimmed_mean(values: list[float]) -> float:
    from scipy.stats import trim_mean

    return float(trim_mean(values, 0.1)) if values else 0.0


def parse_trace(events: list[dict], skip: int = 0, floor_ms: float = 0.0) -> list[OpTime]:
    """Node kernel events -> one OpTime per node: the 10%-trimmed mean over runs (the first ``skip`` runs
    dropped) less the profiler's per-event floor, never below 0."""
    durs: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, str | None]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args") or {}
        durs[name].append(float(e.get("dur", 0)) / 1e3)
        if name not in info:
            ins = args.get("input_type_shape") or [{}]
            dtype = next(iter(ins[0]), None) if ins and isinstance(ins[0], dict) else None
            info[name] = (args.get("op_name", "?"), short_precision(dtype))
    return [OpTime(name=n, type=info[n][0], ms=max(0.0, _trimmed_mean(d[skip:] or d) - floor_ms),
                   precision=info[n][1]) for n, d in durs.items()]


def profiler_floor_ms(threads: int, iterations: int, warmup: int, tmp: str) -> float:
    """What the profiler reports for a node that does almost nothing: a Relu on one element, in a
    profiled session of its own, the same statistic as parse_trace."""
    shape = [1]
    sess = _session(relu_onnx(shape), threads, os.path.join(tmp, "floor"))
    feed = {"input": np.zeros(shape, np.float32)}
    for _ in range(warmup + iterations):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        ops = parse_trace(json.load(f), skip=warmup)
    return ops[0].ms if ops else 0.0


def profile(path, threads: int, iterations: int = 200, warmup: int = 20) -> VariantProfile:
    import onnxruntime as ort

    plain = _session(path, threads, None)
    inp = plain.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    with tempfile.TemporaryDirectory(prefix="ortprof-") as tmp:
        sess = _session(path, threads, os.path.join(tmp, "ort"))
        one_op = _session(relu_onnx(shape), threads, None)
        one_feed = {"input": x}
        overhead = median(interleaved(lambda: one_op.run(None, one_feed), lambda i: None, iterations, warmup))
        total = median(interleaved(lambda: plain.run(None, feed), lambda i: sess.run(None, feed), iterations, warmup))
        trace = sess.end_profiling()
        with open(trace) as f:
            events = json.load(f)
        floor = profiler_floor_ms(threads, iterations, warmup, tmp)
    ops = parse_trace(events, skip=warmup, floor_ms=floor)
    return VariantProfile(ops=ops, total_ms=total, runtime="onnxruntime", runtime_version=ort.__version__,
                          method=f"onnxruntime profiler (enable_profiling): 10%-trimmed mean kernel time per node "
                                 f"less the profiler's own {floor * 1e3:.2f} us per event (measured on a one-element "
                                 "Relu)",
                          iterations=iterations, left_out=LEFT_OUT, call_overhead_ms=overhead)
