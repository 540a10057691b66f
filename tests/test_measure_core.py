"""The measurement core (pipeline/measure/core.py): the order-statistic interval, paired differences and their
verdicts, the noisy flag, and a real interleaved measurement. No speed target here (benchmarks/decision_flips.py
prints those figures); every assertion is about what the core decides or reports."""
from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.measure import core
from pipeline.measure.core import Settings, difference_of, from_blocks, measure, median_ci, order_stat_ranks


def test_order_statistic_ranks_match_the_binomial():
    from scipy.stats import binom

    assert order_stat_ranks(5) is None  # 2 / 32 > 0.05: no 95% interval from 5 values
    assert order_stat_ranks(6) == (1, 6)
    assert order_stat_ranks(9) == (2, 8)
    for n in range(6, 60):
        k, hi = order_stat_ranks(n)
        assert hi == n - k + 1
        assert 2 * binom.cdf(k - 1, n, 0.5) <= 0.05 < 2 * binom.cdf(k, n, 0.5)  # the largest valid rank


def test_median_interval_covers_the_true_median_of_a_skewed_distribution():
    # Lognormal (right-skewed, like latencies): the interval must cover the true median ~95% of the time.
    rng = np.random.default_rng(1)
    true_median = 1.0
    hits = 0
    for _ in range(2000):
        lo, hi = median_ci(list(rng.lognormal(0.0, 0.8, size=15)))
        hits += lo <= true_median <= hi
    assert 0.94 <= hits / 2000 <= 0.995


def test_paired_difference_verdicts():
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 3.0, 20)  # a host getting slower: hits both alike, the pairing removes it
    a = list(drift + 0.10 + rng.normal(0, 0.005, 20))
    b = list(drift + rng.normal(0, 0.005, 20))
    d = difference_of("a", "b", a, b)
    assert d.verdict == "slower" and d.ci95_ms[0] > 0 and d.cost_ms == pytest.approx(0.10, abs=0.01)
    assert difference_of("b", "a", b, a).verdict == "faster"
    assert difference_of("b", "a", b, a).cost_ms == 0.0  # never a negative cost
    same = difference_of("a", "c", a, list(np.array(a) + rng.normal(0, 0.01, 20)))
    assert same.verdict == "tie" and same.cost_ms == 0.0
    assert difference_of("a", "b", a[:4], b[:4]).verdict == "tie"  # too few rounds for any interval: no claim


def test_noisy_flag_from_cv_and_load(monkeypatch):
    assert core.host_noise([0.01], 0.5, 2) == (False, None)
    noisy, why = core.host_noise([0.2], 0.5, 2)
    assert noisy and "CV" in why
    noisy, why = core.host_noise([0.01], 3.5, 2)
    assert noisy and "load average 3.50 > 2 cores" in why
    monkeypatch.setattr(core, "load_average", lambda: 9.0)
    m = from_blocks({"x": [1.0] * 10})
    assert m.noisy and m.load1 == 9.0


def test_bench_uses_the_same_noisy_threshold():
    from pipeline.commands.bench import CV_TARGET

    assert CV_TARGET == core.CV_NOISY


def test_measure_calibrates_interleaves_and_stops():
    calls: list[str] = []

    def fast():
        calls.append("f")

    def slow():
        calls.append("s")
        t_end = time.perf_counter() + 0.0002
        while time.perf_counter() < t_end:
            pass

    m = measure({"fast": fast, "slow": slow}, Settings(min_block_s=0.002, max_time_s=3.0, warmup=2))
    assert m.stopped in ("converged", "time cap", "max blocks")
    f, s = m.figures["fast"], m.figures["slow"]
    assert f.blocks == s.blocks >= core.MIN_BLOCKS  # round-robin: every function one block per round
    assert f.loops > s.loops >= 1 and f.samples == f.blocks * f.loops  # calibrated inner loops
    assert s.median_ms >= 0.2 * 0.9 and s.ci95_ms[0] <= s.median_ms <= s.ci95_ms[1]
    assert m.difference("slow", "fast").verdict == "slower"
    # interleaved: both functions appear in the timed part in alternation, not one after the other
    timed = calls[2 * 2:]
    first_slow = timed.index("s")
    assert "f" in timed[first_slow:]
    doc = m.to_json()
    assert doc["figures"]["slow"]["ci95_ms"] and doc["stopped"] == m.stopped and "load1" in doc


def test_measure_reports_the_time_cap():
    rng = np.random.default_rng(3)

    def jittery():
        t_end = time.perf_counter() + float(rng.uniform(0, 0.002))
        while time.perf_counter() < t_end:
            pass

    m = measure({"j": jittery}, Settings(min_block_s=0.0, rel_half_width=0.0001, max_time_s=0.3, warmup=0))
    assert m.stopped == "time cap" and m.figures["j"].blocks >= core.MIN_BLOCKS


def test_in_process_latency_goes_through_the_core(tmp_path):
    import torch

    from pipeline.measure.in_process import measure_ort_latency

    small = torch.nn.Conv2d(8, 4, 3)
    big = torch.nn.Sequential(torch.nn.Conv2d(8, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1))
    for name, mod in (("small", small), ("big", big)):
        torch.onnx.export(mod, (torch.zeros(1, 8, 16, 16),), str(tmp_path / f"{name}.onnx"), dynamo=False)
    lat = measure_ort_latency({"small": tmp_path / "small.onnx", "big": tmp_path / "big.onnx"},
                              np.zeros((1, 8, 16, 16), np.float32), (1,), threads=1, repeats=3, warmup=3,
                              min_iters=20, min_time_s=0.05, max_time_s=5.0)
    s, b = lat["small"]["batch1"], lat["big"]["batch1"]
    assert b["p50_ms"] > s["p50_ms"] > 0
    for e in (s, b):
        assert e["ci95_ms"][0] <= e["p50_ms"] <= e["ci95_ms"][1] and e["samples"] >= 20
        assert e["blocks"] >= core.MIN_BLOCKS and e["stopped"] in ("converged", "time cap", "max blocks")
    assert s["blocks"] == b["blocks"]  # one block of each per round


def test_preempted_blocks_are_left_out():
    assert core.preempted(0.002, 0.0005) and not core.preempted(0.002, 0.0019)
    assert not core.preempted(0.002, 0.004)  # worker threads: more CPU than wall, never marked
    # 12 rounds: "a" is 1.0 ms in its own blocks, 3.0 in the 4 preempted ones; "b" 1.0 throughout
    a = [1.0, 3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0]
    keep = [x == 1.0 for x in a]
    m = from_blocks({"a": a, "b": [1.0] * 12}, kept={"a": keep, "b": [True] * 12})
    assert m.figures["a"].median_ms == 1.0 and m.figures["a"].preempted == 4
    assert m.difference("a", "b").verdict == "tie" and m.difference("a", "b").rounds == 8
    # without the marks the preempted blocks are in the figure
    assert from_blocks({"a": a}).figures["a"].ci95_ms[1] == 3.0
    # mostly preempted: the host is noisy, whatever the CV says
    m = from_blocks({"a": [1.0] * 12}, kept={"a": [i < 6 for i in range(12)]})
    assert m.noisy and "preempted" in m.noisy_reason and m.figures["a"].clean
    # too few unpreempted blocks for an interval: all blocks count, and the figure is not clean (no convergence)
    m = from_blocks({"a": [1.0] * 12}, kept={"a": [i < 3 for i in range(12)]})
    assert not m.figures["a"].clean and m.figures["a"].blocks == 12


def test_too_few_clean_rounds_fall_back_to_an_unpaired_interval():
    # every other round preempted for "a", the others for "b": no round where both are clean
    a = [1.0 if i % 2 else 4.0 for i in range(14)]
    b = [2.0 if i % 2 == 0 else 5.0 for i in range(14)]
    m = from_blocks({"a": a, "b": b}, kept={"a": [i % 2 == 1 for i in range(14)], "b": [i % 2 == 0 for i in range(14)]})
    d = m.difference("a", "b")
    assert d.method == "unpaired" and d.median_ms == -1.0 and d.verdict == "faster"  # 1.0 vs 2.0, clean blocks
    assert d.ci95_ms == (-1.0, -1.0)


def test_a_paired_artifact_alone_is_not_a_difference():
    # identical figures, but one block position inflated in every kept round: the paired interval alone would
    # say "slower"; the figures' own intervals overlap, so the verdict is a tie
    a = [1.0] * 3 + [1.5] * 12
    b = [1.0] * 15
    rounds_d = difference_of("a", "b", a, b)
    assert rounds_d.verdict == "slower"  # paired only
    m = from_blocks({"a": a, "b": b})
    d = m.difference("a", "b")
    assert d.ci95_ms[0] > 0 and d.check_ci95_ms[0] <= 0 and d.verdict == "tie"


def test_a_measurable_but_tiny_difference_is_a_tie_and_slices_are_caught():
    rng = np.random.default_rng(5)
    base = list(1.0 + rng.normal(0, 0.001, 15))
    m = from_blocks({"a": [x * 1.01 for x in base], "b": base})  # 1% apart, every round: under TIE_MARGIN
    d = m.difference("a", "b")
    assert d.ci95_ms[0] > 0 and d.verdict == "tie" and d.margin_ms == pytest.approx(0.02, rel=0.01)
    m = from_blocks({"a": [x * 1.05 for x in base], "b": base})  # 5%: a real difference
    assert m.difference("a", "b").verdict == "slower"
    # blocks over 1.5x the function's median that the CPU check kept are slices too (measure() gives marks)
    a = [1.0] * 10 + [2.6] * 4
    m = from_blocks({"a": a}, kept={"a": [True] * 14})
    assert m.figures["a"].preempted == 4 and m.figures["a"].ci95_ms[1] == 1.0
