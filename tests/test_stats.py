"""The statistics of the test-split gate against known values (textbook examples, hand-computed binomials)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.stats import (PairedChange, accuracy_with_interval, decide_test_gate, format_ci, mcnemar_exact_p,
                            paired_change, wilson_interval)


def test_wilson_interval_known_values():
    # Wilson 95% for 8/10: 0.4902..0.9433 (Newcombe 1998 style closed form, z=1.959964).
    lo, hi = wilson_interval(8, 10)
    z = 1.959963984540054
    n, p = 10, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert lo == pytest.approx(centre - half, abs=1e-9) and hi == pytest.approx(centre + half, abs=1e-9)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # All right on 50 images still leaves room below 1: 0.9287..1.
    lo, hi = wilson_interval(50, 50)
    assert lo == pytest.approx(0.92865, abs=1e-4) and hi == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(1, 0) == pytest.approx(1.0)            # one image lost: 2 * 0.5
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 * 0.5 ** 10)  # 0.001953
    assert mcnemar_exact_p(5, 1) == pytest.approx(2 * (1 + 6) / 64)  # 0.21875
    assert mcnemar_exact_p(1, 5) == pytest.approx(mcnemar_exact_p(5, 1))


def test_paired_change_counts_discordant_pairs():
    y = np.array([0, 1, 2, 3, 4, 5])
    ref = np.array([0, 1, 2, 3, 9, 9])   # 4 right
    cand = np.array([0, 1, 9, 9, 4, 9])  # lost 2, 3; gained 4
    ch = paired_change(y, ref, cand)
    assert (ch.b, ch.c, ch.samples, ch.reference_correct, ch.candidate_correct) == (2, 1, 6, 4, 3)
    assert ch.drop == pytest.approx(1 / 6)
    assert ch.p_value == pytest.approx(1.0)


def test_accuracy_with_interval_records_counts():
    a = accuracy_with_interval(8, 10)
    assert a["value"] == 0.8 and a["correct"] == 8 and a["samples"] == 10 and a["method"] == "wilson"
    assert a["ci95"][0] < 0.8 < a["ci95"][1]
    assert format_ci(0.8, a["ci95"]) == "0.8000 [0.49, 0.94]"
    assert format_ci(0.8, None) == "0.8000" and format_ci(None, None) == "—"


ONE_IMAGE = PairedChange(samples=50, reference_correct=50, candidate_correct=49, b=1, c=0, p_value=1.0)
MANY_IMAGES = PairedChange(samples=50, reference_correct=50, candidate_correct=40, b=10, c=0,
                           p_value=mcnemar_exact_p(10, 0))


def test_one_image_over_the_budget_passes_the_stats_gate_and_fails_the_hard_gate():
    d = decide_test_gate("stats", 0.01, ONE_IMAGE)
    assert d["decision"] == "pass" and d["drop_exceeds_budget"] and not d["significant"]
    assert "not statistically real" in d["reason"] and d["b"] == 1 and d["c"] == 0 and d["p_value"] == 1.0
    h = decide_test_gate("hard", 0.01, ONE_IMAGE)
    assert h["decision"] == "fail" and "hard gate" in h["reason"]
    assert decide_test_gate("off", 0.01, MANY_IMAGES)["decision"] == "pass"


def test_a_real_drop_fails_the_stats_gate():
    d = decide_test_gate("stats", 0.01, MANY_IMAGES)
    assert d["decision"] == "fail" and d["significant"] and d["p_value"] < 0.05
    assert "statistically real" in d["reason"]
    # Within the budget nothing fails, whatever the p-value.
    assert decide_test_gate("stats", 0.5, MANY_IMAGES)["decision"] == "pass"
    assert decide_test_gate("hard", 0.5, MANY_IMAGES)["decision"] == "pass"


def test_a_significant_gain_never_fails():
    gain = PairedChange(samples=50, reference_correct=40, candidate_correct=50, b=0, c=10,
                        p_value=mcnemar_exact_p(0, 10))
    assert decide_test_gate("stats", 0.0, gain)["decision"] == "pass"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        decide_test_gate("soft", 0.01, ONE_IMAGE)  # type: ignore[arg-type]
