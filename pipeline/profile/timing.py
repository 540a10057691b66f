"""Shared timing helpers for the per-layer profilers: median of per-iteration times."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def p50_ms(fn: Callable[[], object], iterations: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms (perf_counter around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
