"""Shared timing helpers for the per-layer profilers."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def interleaved(plain: Callable[[], object], profiled: Callable[[int], object], iterations: int, warmup: int,
                rounds: int = 5) -> list[float]:
    """Run the plain (profiling off) and the profiled model in alternating blocks, so that load from other
    processes hits both alike; returns the plain per-call times in ms. ``profiled(i)`` gets the index of
    the profiled inference (the first ``warmup`` are warm-up)."""
    for _ in range(warmup):
        plain()
    for i in range(warmup):
        profiled(i)
    per = max(1, iterations // rounds)
    times: list[float] = []
    k = warmup
    for _ in range(rounds):
        for _ in range(per):
            t0 = time.perf_counter()
            plain()
            times.append((time.perf_counter() - t0) * 1e3)
        for _ in range(per):
            profiled(k)
            k += 1
    return times


def relu_onnx(shape: list[int]) -> bytes:
    """A one-op ONNX model (Relu) on ``shape``: timing it gives a runtime's fixed cost per call."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"], name="relu")], "call_overhead", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
