"""Mixed precision by measured latency (pipeline/mixed_precision.py): the chooser keeps the set of float
layers that holds the budget at the least measured latency, not the fewest layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import fast_args, read_run, run_cli, x86_source
from pipeline.mixed_precision import Trial, choose, measure_latencies, plan_sets

# Measured inputs fed in: layer "a" alone recovers the budget but costs 0.30 ms in float; "b" and "c"
# together recover it for 0.05 ms.
GAINS = {"a": 0.040, "b": 0.022, "c": 0.021, "d": 0.001}
COSTS = {"a": 0.30, "b": 0.02, "c": 0.03, "d": 0.01}


def test_plan_puts_the_cheaper_holding_set_first():
    sets = plan_sets(base_drop=0.045, budget=0.01, gains=GAINS, costs=COSTS, max_layers=3, limit=4)
    assert sets[0] == ("b", "c")  # predicted drop 0.002, cost 0.05 ms
    assert ("a",) in sets  # holds too, but costs more
    assert sets.index(("b", "c")) < sets.index(("a",))


def test_choose_takes_the_lower_latency_set_not_the_fewer_layers():
    trials = [Trial([], 0.045, latency_ms=1.00, kind="int8"),
              Trial(["a"], 0.005, latency_ms=1.31),
              Trial(["b", "c"], 0.008, latency_ms=1.06),
              Trial(["b"], 0.023, latency_ms=1.02)]  # fastest of all but misses the budget
    assert choose(trials, budget=0.01).float_layers == ["b", "c"]
    assert choose(trials, budget=0.006).float_layers == ["a"]  # only "a" holds a tighter budget
    assert choose(trials, budget=0.001) is None


def test_plan_falls_back_to_gain_per_ms_when_nothing_is_predicted_to_hold():
    sets = plan_sets(base_drop=0.2, budget=0.01, gains=GAINS, costs=COSTS, max_layers=2, limit=3)
    # gain per ms: b 1.1, c 0.7, a 0.13, d 0.1 -> greedy ("b",), ("b", "c")
    assert sets[:2] == [("b",), ("b", "c")]


def test_plan_still_adds_layers_when_none_recovers_anything_alone():
    # A calibration that wrecks every layer: no single layer helps, only keeping several in float does.
    sets = plan_sets(base_drop=0.8, budget=0.01, gains={"a": 0.0, "b": 0.0, "c": -0.01},
                     costs={"a": 0.02, "b": 0.01, "c": 0.0}, max_layers=3, limit=5)
    assert sets == [("b",), ("a", "b"), ("a", "b", "c")]  # by gain, then cheaper first


def test_measure_latencies_times_real_models(tmp_path):
    import torch

    small, big = torch.nn.Conv2d(1, 4, 3), torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1)
                                                                   for _ in range(4)])
    for name, m, c in (("small", small, 1), ("big", big, 64)):
        torch.onnx.export(m, (torch.zeros(1, c, 16, 16),), str(tmp_path / f"{name}.onnx"), dynamo=False)
    # One shared input shape is not needed: each model is timed on its own example below.
    lat_small = measure_latencies({"s": tmp_path / "small.onnx"}, np.zeros((1, 1, 16, 16), np.float32), 1,
                                  runs=10, rounds=3)
    lat_big = measure_latencies({"b": tmp_path / "big.onnx"}, np.zeros((1, 64, 16, 16), np.float32), 1,
                                runs=10, rounds=3)
    assert lat_small["s"] > 0 and lat_big["b"] > lat_small["s"]  # 4x 64-channel convs vs one 4-channel conv


# 95th-percentile clipping hurts INT8 while some layers in float recover it (see tests/test_accuracy_budget.py)
BAD_CALIBRATION = ["calibration.method=percentile", "calibration.percentile=95", "quantize.max_accuracy_drop=0.005",
                   "quantize.max_fallback_layers=8", "quantize.max_fallback_trials=6", "quantize.mode=ptq"]


def test_real_run_records_the_frontier_and_ships_the_fastest_holding_set(tmp_path):
    out = tmp_path / "mp"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *fast_args(BAD_CALIBRATION))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    q = read_run(out)["targets"]["onnxruntime"]["quantize"]
    front = q["frontier"]
    assert front[0]["kind"] == "int8" and front[0]["float_layers"] == []
    built = [f for f in front if not f.get("skipped")]  # skipped: a set that leaves no INT8 layer
    assert all(f["latency_ms"] > 0 and f["source"] == x86_source() and f["runtime"].startswith("onnxruntime")
               for f in built)
    chosen = [f for f in front if f["chosen"]]
    assert len(chosen) == 1 and chosen[0]["holds_budget"]
    assert sorted(chosen[0]["float_layers"]) == sorted(q["kept_in_float"])
    holding = [f for f in front if f["holds_budget"] and f["float_layers"]]
    assert chosen[0]["latency_ms"] == min(f["latency_ms"] for f in holding)
    assert Path(out / "report.html").read_text().count("Mixed precision") >= 1


def test_tensorrt_latencies_are_labelled_as_the_onnxruntime_reference():
    from pipeline.mixed_precision import latency_source
    from targets.base import get_backend

    source, runtime = latency_source(get_backend("tensorrt"), "onnxruntime (reference numerics for TensorRT)")
    assert source == "host-measured" and "onnxruntime" in runtime and "not TensorRT" in runtime
    assert latency_source(get_backend("onnxruntime"), "onnxruntime") == ("measured", "onnxruntime")
