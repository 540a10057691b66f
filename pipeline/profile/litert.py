"""LiteRT per-op times on this host by prefix differences.

The ai_edge_litert Interpreter has no per-op profiler in its Python API (the C profiler of libLiteRt is
not exposed, and the wheel ships no benchmark_model binary), so per-op times are measured this way:
model k keeps the first k+1 ops of the execution order (its outputs: every tensor those ops produce
that no kept op consumes), each prefix model is timed with `invoke()` in the same Interpreter settings as
the benchmark (XNNPACK delegate, same threads), and op k's time is T(k) - T(k-1), with T(-1) the model
with no ops. One prefix interpreter lives at a time, timed in blocks alternating with the full model, each
block after an untimed settle (see below). These are marginal times in the
delegated graph: an op XNNPACK fuses into its producer costs about nothing, and noise can make a tiny op
slightly negative. The op rows sum to T(full) - T(empty) and T(empty) is the call-overhead row, so all
rows sum to T(full), to compare with the end-to-end figure (timed `set_tensor` + `invoke`).
"""
from __future__ import annotations

import copy
import statistics
import time

import numpy as np

from pipeline.profile.mapping import litert_module
from pipeline.profile.schema import OpTime, VariantProfile, short_precision

LEFT_OUT = ("set_tensor's input copy (timed in the end-to-end figure) and the Python call; invoke() with no ops "
            "(T(empty)) is the call-overhead row")


def _name(t) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n)


def _prefix_bytes(model, k: int) -> bytes:
    """The model with its first ``k`` ops (k=0: no ops; the output is the input)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = copy.deepcopy(model)
    sg = m.subgraphs[0]
    ops = list(sg.operators[:k])
    produced: list[int] = []
    consumed: set[int] = set()
    for op in ops:
        consumed.update(int(i) for i in op.inputs if int(i) >= 0)
        produced += [int(o) for o in op.outputs]
    outs = [t for t in produced if t not in consumed] or [int(i) for i in sg.inputs]
    sg.operators = ops
    sg.outputs = np.asarray(outs, dtype=np.int32)
    m.signatureDefs = []
    return bytes(fu.convert_object_to_bytearray(m))


def _interpreter(content: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=int(threads))
    it.allocate_tensors()
    return it


def _fill(it, x_float: np.ndarray):
    d = it.get_input_details()[0]
    dtype = np.dtype(d["dtype"])
    x = x_float.reshape(d["shape"])
    if dtype != np.float32:
        info = np.iinfo(dtype)
        x = np.clip(np.round(x * 10), info.min, info.max)
    it.set_tensor(d["index"], x.astype(dtype))
    return d


SETTLE_S = 0.015  # longer than a pool worker's spin after its last job (pthreadpool spins, then sleeps)


def _settle(fn) -> None:
    """Run ``fn`` untimed for SETTLE_S: the other interpreter's pool goes to sleep, this one is warm."""
    end = time.perf_counter() + SETTLE_S
    while time.perf_counter() < end:
        fn()


def profile(path, threads: int, iterations: int = 200, warmup: int = 20, rounds: int = 5) -> VariantProfile:
    import ai_edge_litert
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    sg = model.subgraphs[0]
    n = len(sg.operators)
    full = _interpreter(open(path, "rb").read(), threads)
    d = full.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32)
    xin = _fill(full, x)
    xq = full.tensor(xin["index"])().copy()

    def run_full():
        full.set_tensor(xin["index"], xq)
        full.invoke()

    for _ in range(warmup):
        run_full()

    # One prefix interpreter alive at a time, each timed in blocks alternating with the full model, and every
    # block after an untimed settle: an XNNPACK pool's worker keeps spinning for milliseconds after its last
    # job, so the first invokes of the other interpreter shared the cores with it. Measured with 2 threads on
    # 2 cores: unsettled, the full model's p50 came out 1.9x (INT8) and 1.7x (FP32) the sum of the rows.
    per_round = max(1, iterations // rounds)
    t: list[float] = []
    full_times: list[float] = []
    for k in range(n + 1):
        it = _interpreter(_prefix_bytes(model, k), threads)
        _fill(it, x)
        for _ in range(warmup):
            it.invoke()
        samples: list[float] = []
        for _ in range(rounds):
            _settle(run_full)
            for _ in range(max(3, per_round // 4)):
                t0 = time.perf_counter()
                run_full()
                full_times.append(time.perf_counter() - t0)
            _settle(it.invoke)
            for _ in range(per_round):
                t0 = time.perf_counter()
                it.invoke()
                samples.append(time.perf_counter() - t0)
        t.append(statistics.median(samples) * 1e3)
        del it
    total = statistics.median(full_times) * 1e3
    ops = []
    for k, op in enumerate(sg.operators):
        op_type = fu.opcode_to_name(model, op.opcodeIndex) or "?"
        outs = [sg.tensors[int(o)] for o in op.outputs]
        ins = [sg.tensors[int(i)] for i in op.inputs if int(i) >= 0]
        out_name = _name(outs[0]) if outs else f"op{k}"
        dtype = fu.type_to_name(ins[0].type) if ins else None
        hint = next((m for m in (litert_module(_name(tt)) for tt in outs + ins[1:] + ins[:1]) if m is not None), None)
        if hint is None and op_type in ("QUANTIZE", "DEQUANTIZE") and ins:
            hint = litert_module(_name(ins[0]))
        ops.append(OpTime(name=f"{k}:{op_type}:{out_name}", type=op_type, ms=t[k + 1] - t[k],
                          precision=short_precision(dtype), module_hint=hint))
    return VariantProfile(ops=ops, total_ms=total, runtime="litert",
                          runtime_version=getattr(ai_edge_litert, "__version__", "unknown"),
                          method="LiteRT prefix differences: T(first k+1 ops) - T(first k ops), invoke() medians, "
                                 "XNNPACK delegate as in the benchmark",
                          iterations=iterations, left_out=LEFT_OUT, call_overhead_ms=t[0])
