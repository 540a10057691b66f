"""OpenVINO per-layer counters: PERF_COUNT=YES, `request.profiling_info` after each inference.

Every node gives node_name, node_type, exec_type (the kernel and its precision, e.g.
brgconv_avx512_I8) and real_time. The CPU plugin's counter (intel_cpu PerfCount) truncates each run to
whole microseconds and real_time is the integer mean of those since compilation; a node whose runs
all take under 1 us reads 0 and is marked NOT_RUN although it ran. So: per node the median over the
profiled inferences is kept; a NOT_RUN node that has a kernel of its own (an exec_type other than
undef/unknown: fused nodes have none) is kept at 0 ms so its module and precision still show; and the
truncation, about 0.5 us per node with a kernel (its fraction of a microsecond, uniform over nodes),
is a row of its own labelled estimated (RESOLUTION_ROW), not spread over the measured rows. The runtime model's `originalLayersNames` lists the ONNX
nodes each executed node came from, used to map it to a module. End-to-end p50: a second compiled model
without PERF_COUNT, same config and threads, timing `request.infer`, in blocks alternating with the
profiled request so both see the same machine load.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from pipeline.profile.schema import OpTime, VariantProfile, short_precision
from pipeline.profile.timing import interleaved, median, relu_onnx

RESOLUTION_ROW = "(under the counters' 1 us resolution: estimated)"
TRUNCATION_MS = 0.0005  # expected loss per node of a counter that truncates to whole microseconds
LEFT_OUT = ("the input copy (the input tensor is set once, as in a zero-copy app); infer() overhead beyond a "
            "one-op model's (that part is the call-overhead row); the Python call")


def _config(threads: int, precision_hint: str | None, perf: bool) -> dict:
    # The same settings as targets/standalone/runtime.py (f32 hint unless told otherwise).
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": (precision_hint or "f32"),
           "INFERENCE_NUM_THREADS": int(threads)}
    if perf:
        cfg["PERF_COUNT"] = True
    return cfg


def _original_names(compiled) -> dict[str, tuple[str, ...]]:
    out = {}
    try:
        for op in compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            if "originalLayersNames" in rt:
                names = str(rt["originalLayersNames"].astype(str) if hasattr(rt["originalLayersNames"], "astype")
                            else rt["originalLayersNames"])
                out[op.get_friendly_name()] = tuple(n for n in names.split(",") if n)
    except Exception:  # noqa: BLE001 - older runtimes: map by node names only
        pass
    return out


def _has_kernel(p) -> bool:
    """A node that runs code of its own (fused nodes say 'undef', in-place/no-op ones 'unknown_*')."""
    et = str(p.exec_type)
    return p.node_type not in ("Parameter", "Result", "Constant") and et != "undef" and not et.startswith("unknown")


def profile(path, threads: int, iterations: int = 200, warmup: int = 20,
            precision_hint: str | None = None) -> VariantProfile:
    import openvino as ov

    # Measured here: the first compiled model of a process ran its nodes several times slower for its first
    # ~50-100 inferences (one conv at 0.06 ms instead of 0.007, the FC up to 1.35 ms); later ones did not.
    warmup = max(warmup, 150)
    core = ov.Core()
    model = core.read_model(str(path))
    port = model.inputs[0]
    shape = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    plain = core.compile_model(model, "CPU", _config(threads, precision_hint, False)).create_infer_request()
    plain.set_input_tensor(ov.Tensor(x))  # set once: the timed call is the inference, not the input copy
    compiled = core.compile_model(model, "CPU", _config(threads, precision_hint, True))
    req = compiled.create_infer_request()
    originals = _original_names(compiled)
    times: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, str]] = {}
    req.set_input_tensor(ov.Tensor(x))

    def profiled(i: int) -> None:
        req.infer()
        if i < warmup:
            return
        for p in req.profiling_info:
            if str(p.status).split(".")[-1] != "EXECUTED" and not _has_kernel(p):
                continue
            times[p.node_name].append(p.real_time.total_seconds() * 1e3)
            info[p.node_name] = (p.node_type, p.exec_type)

    total = median(interleaved(plain.infer, profiled, iterations, warmup))
    one_op = core.compile_model(core.read_model(relu_onnx(shape), b""), "CPU",
                                _config(threads, precision_hint, False)).create_infer_request()
    one_op.set_input_tensor(ov.Tensor(x))
    overhead = median(interleaved(one_op.infer, lambda i: None, iterations, warmup))
    ops = [OpTime(name=n, type=info[n][0], ms=median(t), precision=short_precision(info[n][1].rsplit("_", 1)[-1]),
                  names=originals.get(n, ())) for n, t in times.items()]
    return VariantProfile(ops=ops, total_ms=total, runtime="openvino", runtime_version=ov.get_version().split("-")[0],
                          method="OpenVINO PERF_COUNT profiling_info real_time (us resolution), median per node",
                          iterations=iterations, left_out=LEFT_OUT, call_overhead_ms=overhead,
                          extra_ms={RESOLUTION_ROW: (TRUNCATION_MS * len(ops), "estimated")})
