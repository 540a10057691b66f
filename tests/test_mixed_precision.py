"""Mixed precision by measured latency (pipeline/mixed_precision.py): the chooser keeps the set of float
layers that holds the budget at the least measured latency, not the fewest layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import fast_args, read_run, run_cli, x86_source
from pipeline.measure.core import from_blocks
from pipeline.mixed_precision import Trial, choose, layer_costs, measure_latencies, measure_models, plan_sets

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


def test_candidates_within_the_noise_tie_and_the_simpler_set_wins():
    # Per-round blocks (ms): {"b", "c"} reads 1% faster than {"a"} by the median, but the rounds scatter by
    # ~5%: the paired difference's interval includes zero -> a tie, broken by fewer float layers.
    rng = np.random.default_rng(7)
    base = 1.0 + rng.normal(0, 0.05, 15)
    m = from_blocks({"a": list(base + rng.normal(0, 0.05, 15)), "b|c": list(base - 0.01 + rng.normal(0, 0.05, 15))})
    assert m.difference("a", "b|c").verdict == "tie"
    trials = [Trial(["a"], 0.005, latency_ms=m.figures["a"].median_ms),
              Trial(["b", "c"], 0.004, latency_ms=m.figures["b|c"].median_ms)]
    assert trials[1].latency_ms < trials[0].latency_ms  # the bare medians would pick {"b", "c"}
    best = choose(trials, budget=0.01, measurement=m)
    assert best.float_layers == ["a"] and "tie" in best.decision and "simplicity" in best.decision
    # the same two sets, {"b", "c"} measurably faster in every round: the faster one is chosen
    m = from_blocks({"a": list(base + 0.5), "b|c": list(base)})
    best = choose(trials, budget=0.01, measurement=m)
    assert best.float_layers == ["b", "c"] and "measurably faster" in best.decision


def test_a_layer_cost_is_never_negative():
    rng = np.random.default_rng(2)
    base = 1.0 + rng.normal(0, 0.02, 12)
    m = from_blocks({"": list(base), "faster": list(base - 0.2), "same": list(base + rng.normal(0, 0.02, 12)),
                     "slower": list(base + 0.3)})
    costs = layer_costs(m, ["faster", "same", "slower"])
    assert costs["faster"] == 0.0 and costs["same"] == 0.0 and abs(costs["slower"] - 0.3) < 1e-9
    # a negative figure fed to the planner counts as 0: it does not make a set look cheaper than all-INT8
    sets = plan_sets(base_drop=0.03, budget=0.01, gains={"x": 0.025, "y": 0.025}, costs={"x": -0.5, "y": 0.0},
                     max_layers=1, limit=2)
    assert sets == [("x",), ("y",)]  # equal costs (0): order by gain, then name


def test_a_real_2x_difference_picks_the_faster_set(tmp_path):
    import torch

    # The same input for both; the "big" model is many times slower than the "small" one on any host.
    small = torch.nn.Conv2d(8, 4, 3)
    big = torch.nn.Sequential(torch.nn.Conv2d(8, 64, 3, padding=1),
                              *[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(3)])
    for name, mod in (("small", small), ("big", big)):
        torch.onnx.export(mod, (torch.zeros(1, 8, 16, 16),), str(tmp_path / f"{name}.onnx"), dynamo=False)
    m = measure_models({"a": tmp_path / "big.onnx", "b|c": tmp_path / "small.onnx"},
                       np.zeros((1, 8, 16, 16), np.float32), 1)
    fa, fb = m.figures["a"], m.figures["b|c"]
    assert fa.ci95_ms is not None and fa.ci95_ms[0] <= fa.median_ms <= fa.ci95_ms[1] and fa.samples >= fa.blocks
    assert m.difference("a", "b|c").verdict == "slower"
    trials = [Trial(["a"], 0.005, latency_ms=fa.median_ms, latency_ci95_ms=list(fa.ci95_ms)),
              Trial(["b", "c"], 0.004, latency_ms=fb.median_ms, latency_ci95_ms=list(fb.ci95_ms))]
    best = choose(trials, budget=0.01, measurement=m)
    assert best.float_layers == ["b", "c"]  # more float layers, but measurably faster: latency wins
    assert m.stopped in ("converged", "time cap", "max blocks")


# 95th-percentile clipping hurts INT8 while some layers in float recover it (see tests/test_accuracy_budget.py)
# threads=1 pins the trained student whatever OMP_NUM_THREADS is (tests/test_accuracy_budget.py says why)
BAD_CALIBRATION = ["threads=1", "calibration.method=percentile", "calibration.percentile=95", "quantize.max_accuracy_drop=0.005",
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
    # every measured row carries its interval and sample count; the chosen one says why it was chosen
    assert all(f["latency_ci95_ms"][0] <= f["latency_ms"] <= f["latency_ci95_ms"][1] and f["samples"] > 0
               for f in built)
    assert "decision" in chosen[0]
    # the fastest holding set, or one not measurably slower (a declared tie) with no more float layers
    fastest = min(holding, key=lambda f: f["latency_ms"])
    c = chosen[0]
    assert c is fastest or ("tie" in c["decision"] and len(c["float_layers"]) <= len(fastest["float_layers"]))
    html = Path(out / "report.html").read_text()
    assert html.count("Mixed precision") >= 1
    assert "p50 ms [95% CI]" in html and "Decision:" in html  # the report states the intervals and the rule


def test_tensorrt_latencies_are_labelled_as_the_onnxruntime_reference():
    from pipeline.mixed_precision import latency_source
    from targets.base import get_backend

    source, runtime = latency_source(get_backend("tensorrt"), "onnxruntime (reference numerics for TensorRT)")
    assert source == "host-measured" and "onnxruntime" in runtime and "not TensorRT" in runtime
    assert latency_source(get_backend("onnxruntime"), "onnxruntime") == ("measured", "onnxruntime")
