"""The recipes the quality benchmarks share (benchmarks/quality.py and benchmarks/qad_quality.py): datasets,
KD loss terms per method, the --set lines of one seeded run, and mean/std over seeds."""
from __future__ import annotations

import statistics

DATASETS = {"digits": "builtin:digits", "mnist": "builtin:mnist"}
TARGETS = ["onnxruntime", "jetson", "x86", "rpi"]
METHODS = ("scratch", "kd", "dkd")
# mdistiller: 20 warm-up epochs of 240 for DKD; scaled to the epochs run here.
DKD_WARMUP_FRACTION = 20 / 240


def losses_for(method: str, epochs: int) -> list[dict]:
    if method == "scratch":
        return [{"name": "ce", "weight": 1.0}]
    if method == "kd":
        return [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}]
    if method == "dkd":
        warm = max(1, round(epochs * DKD_WARMUP_FRACTION))
        return [{"name": "ce", "weight": 1.0},
                {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": warm}]
    raise ValueError(method)


def base_sets(a, source: str, seed: int) -> list[str]:
    return [f"data.source={source}", f"data.input_size={a.input_size}", f"seed={seed}",
            f"teacher.train.epochs={a.teacher_epochs}", f"distill.epochs={a.epochs}",
            f"prune.recovery.epochs={a.recovery_epochs}", f"prune.ratio={a.prune_ratio}",
            "benchmark.repeats=3", "benchmark.warmup=10", "benchmark.min_iters=50", "benchmark.min_time_s=0.2",
            *a.sets]


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
