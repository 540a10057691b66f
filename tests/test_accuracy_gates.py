"""The INT8 accuracy gate: decided on the validation split, the test split gated only on a real drop (or
always, with quantize.test_gate=hard). Asserts what was decided, why, and what run.json records; never the
accuracy of a small split."""
from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import pytest

from conftest import artifact, fast_args, read_run, run_cli, x86_source
from pipeline.errors import GateError
from pipeline.quant_gate import decide_target, gate_error


def _stage_metrics(run, summary, stage):
    rec = next(s for s in summary["stages"] if s["stage"] == stage)
    return json.loads((run / rec["dir"] / "meta.json").read_text())["metrics"]


def _one_image_lost(ev: dict) -> dict:
    """The evaluate metrics of a run, changed so INT8 loses exactly one test image against the FP32 student."""
    ev = copy.deepcopy(ev)
    p = ev["int8"]["paired_vs_fp32_student"]
    n, ref = p["samples"], p["reference_correct"]
    from pipeline.stats import mcnemar_exact_p

    p.update(b=1, c=0, candidate_correct=ref - 1, p_value=mcnemar_exact_p(1, 0), drop=1 / n)
    ev["int8"]["accuracy"] = (ref - 1) / n
    return ev


def test_run_json_records_what_the_gate_decided_and_why(fast_run):
    s = read_run(fast_run)
    for name in ("onnxruntime", "jetson-orin-nano"):
        g = s["targets"][name]["gate"]
        assert g["decision"] == "pass" and g["decided_on"] == "validation" and g["reason"]
        v, t = g["validation"], g["test"]
        assert v["budget_held"] and v["drop"] <= v["budget"] == s["recipe"]["quantize"]["max_accuracy_drop"]
        assert t["mode"] == "stats" and t["alpha"] == 0.05
        # The paired counts are those of the evaluated split and explain the recorded drop.
        assert t["samples"] == s["data"]["test"]
        assert t["reference_correct"] - t["b"] + t["c"] == t["candidate_correct"]
        assert t["drop"] == pytest.approx((t["b"] - t["c"]) / t["samples"])
        assert 0.0 <= t["p_value"] <= 1.0
        lo, hi = t["accuracy_ci95"]
        assert lo <= t["accuracy"] <= hi
        row = artifact(s, f"{name}:int8")
        assert row["accuracy_ci95"] == t["accuracy_ci95"]


def test_one_image_over_the_budget_does_not_fail_by_default_and_fails_when_hard(fast_run):
    s = read_run(fast_run)
    quant = _stage_metrics(fast_run, s, "quantize-onnxruntime")
    ev = _one_image_lost(_stage_metrics(fast_run, s, "evaluate-onnxruntime"))
    n = ev["int8"]["paired_vs_fp32_student"]["samples"]
    budget = 0.5 / n  # one image is over the budget
    quant = {**quant, "val_accuracy_drop": 0.0, "budget_held": True}
    default = decide_target(SimpleNamespace(max_accuracy_drop=budget, test_gate="stats"), quant, ev)
    assert default["decision"] == "pass" and default["test"]["drop_exceeds_budget"]
    assert not default["test"]["significant"] and default["test"]["p_value"] == 1.0
    assert "not statistically real" in default["reason"]
    hard = decide_target(SimpleNamespace(max_accuracy_drop=budget, test_gate="hard"), quant, ev)
    assert hard["decision"] == "fail" and hard["decided_on"] == "test"
    err = gate_error("onnxruntime", hard)
    assert isinstance(err, GateError) and "on the test split" in str(err) and "gate hard" in str(err)
    off = decide_target(SimpleNamespace(max_accuracy_drop=budget, test_gate="off"), quant, ev)
    assert off["decision"] == "pass"


def test_a_budget_missed_on_validation_fails_whatever_the_test_split_says(fast_run):
    s = read_run(fast_run)
    quant = _stage_metrics(fast_run, s, "quantize-onnxruntime")
    ev = _stage_metrics(fast_run, s, "evaluate-onnxruntime")
    quant = {**quant, "val_accuracy_drop": 0.2, "budget_held": False}
    for mode in ("stats", "hard", "off"):
        rec = decide_target(SimpleNamespace(max_accuracy_drop=0.01, test_gate=mode), quant, ev)
        assert rec["decision"] == "fail" and rec["decided_on"] == "validation"
        assert "on the validation split" in str(gate_error("x", rec))


def test_test_gate_setting_reaches_the_gate_without_requantizing(fast_run, tmp_path):
    """quantize.test_gate is not part of the quantize stage's key: a rerun re-decides from the cached stages."""
    out = tmp_path / "run"
    shutil.copytree(fast_run, out)
    p = run_cli("run", "--target", "onnxruntime", "--target", "jetson", "--out", str(out),
                *fast_args(["quantize.test_gate=hard"]))
    s = read_run(out)
    for name in ("onnxruntime", "jetson-orin-nano"):
        q = next(st for st in s["stages"] if st["stage"] == f"quantize-{name}")
        assert q["cached"], q
        g = s["targets"][name]["gate"]
        assert g["test"]["mode"] == "hard"
        over = g["test"]["drop"] > g["validation"]["budget"]
        assert g["decision"] == ("fail" if over else "pass")
        assert (name in s["failed_targets"]) == over
    assert p.returncode == (1 if s["failed_targets"] else 0), p.stdout[-2000:] + p.stderr[-2000:]


def test_recipe_refuses_an_unknown_test_gate():
    from pipeline.errors import ConfigError
    from pipeline.recipe import load_recipe

    assert load_recipe(None, []).quantize.test_gate == "stats"
    with pytest.raises(ConfigError):
        load_recipe(None, ["quantize.test_gate=soft"])


def test_summary_and_report_show_intervals_and_sources(fast_run):
    from pipeline.summary import summary_rows

    s = read_run(fast_run)
    rows = {r["artifact"]: r for r in summary_rows(s)}
    row = rows["jetson-orin-nano:int8"]
    assert "[" in row["accuracy"] and row["accuracy source"] == "host-measured"
    assert rows["onnxruntime:int8"]["accuracy source"] == x86_source()
    md = (fast_run / "report.md").read_text()
    assert "accuracy gate pass" in md
