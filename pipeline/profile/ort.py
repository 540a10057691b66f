"""ONNX Runtime per-op profile: SessionOptions.enable_profiling, the JSON trace's Node events.

Each `*_kernel_time` event is one node run in one inference (name, op_name, provider, input dtypes,
dur in whole microseconds, truncated). Two things make the raw durations wrong for microsecond kernels,
both measured here on the default student (INT8 rows summed to 1.2x the unprofiled end-to-end time):
- resolution: a per-run median of whole microseconds is a whole number; the 10%-trimmed mean over the
  profiled inferences keeps the sub-microsecond part the rounding spreads over runs;
- the profiler's own cost inside each event (it sizes the inputs and outputs and formats thread statistics
  before it stops the clock): a Relu on one element is reported at about 1.4-2 us, a Sum of 9 inputs at 3.2.
  That floor is measured in the same process per input count (a profiled one-op session, the same
  statistic) and subtracted from every node with that many inputs, never below 0.
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


def input_counts(events: list[dict]) -> set[int]:
    """The input counts of the nodes in a trace (the profiler's own cost per event grows with them)."""
    return {len((e.get("args") or {}).get("input_type_shape") or [{}]) for e in events
            if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")}


def parse_trace(events: list[dict], skip: int = 0, floor_ms: float | dict[int, float] = 0.0) -> list[OpTime]:
    """Node kernel events -> one OpTime per node: the 10%-trimmed mean over runs (the first ``skip`` runs
    dropped) less the profiler's per-event floor (one figure, or one per input count), never below 0."""
    durs: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, str | None]] = {}
    n_inputs: dict[str, int] = {}
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
            n_inputs[name] = len(ins)

    def floor(n: str) -> float:
        if isinstance(floor_ms, dict):
            k = n_inputs.get(n, 1)
            return floor_ms.get(k, floor_ms[min(floor_ms, key=lambda c: abs(c - k))] if floor_ms else 0.0)
        return floor_ms

    return [OpTime(name=n, type=info[n][0], ms=max(0.0, _trimmed_mean(d[skip:] or d) - floor(n)),
                   precision=info[n][1]) for n, d in durs.items()]


def _sum_onnx(k: int) -> bytes:
    """A one-op model: Sum of k one-element inputs (its kernel does k-1 float adds: nothing)."""
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1]) for i in range(k)]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Sum", [f"x{i}" for i in range(k)], ["y"], name="floor")], "floor",
                              ins, [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def profiler_floor_ms(threads: int, iterations: int, warmup: int, tmp: str,
                      counts: set[int] | None = None) -> dict[int, float]:
    """What the profiler reports for a node that does almost nothing, per input count: a Relu on one element
    (1 input) or a Sum of k one-element inputs, each in a profiled session of its own, the same statistic as
    parse_trace. Per input count because the profiler's own cost per event grows with the inputs it sizes
    (measured here: 1.4 us at 1 input, 2.0 at 3, 3.2 at 9: QLinearConv has 8-9, and with one Relu floor for
    all the INT8 rows summed to 1.2-1.45x the end-to-end p50)."""
    out = {}
    for k in sorted(counts or {1}):
        content = relu_onnx([1]) if k == 1 else _sum_onnx(k)
        sess = _session(content, threads, os.path.join(tmp, f"floor{k}"))
        feed = {"input": np.zeros([1], np.float32)} if k == 1 else {f"x{i}": np.zeros([1], np.float32)
                                                                    for i in range(k)}
        for _ in range(warmup + iterations):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            ops = parse_trace(json.load(f), skip=warmup)
        out[k] = ops[0].ms if ops else 0.0
    return out


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
        floor = profiler_floor_ms(threads, iterations, warmup, tmp, input_counts(events))
    ops = parse_trace(events, skip=warmup, floor_ms=floor)
    return VariantProfile(ops=ops, total_ms=total, runtime="onnxruntime", runtime_version=ort.__version__,
                          method="onnxruntime profiler (enable_profiling): 10%-trimmed mean kernel time per node "
                                 "less the profiler's own cost per event, measured per input count on a one-op model "
                                 "(Relu / Sum of one-element inputs): "
                                 + ", ".join(f"{k} in {v * 1e3:.2f} us" for k, v in sorted(floor.items())),
                          iterations=iterations, left_out=LEFT_OUT, call_overhead_ms=overhead)
