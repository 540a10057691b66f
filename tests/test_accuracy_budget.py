"""The accuracy budget: a deliberately bad calibration forces the per-layer fallback, which must
keep the most sensitive layers in float until the budget holds and report them."""
from __future__ import annotations

from conftest import artifact, fast_args, read_run, run_cli

# Clipping every activation at its 95th percentile hurts INT8 accuracy on purpose (val drop 0.074 measured),
# while keeping some layers in float recovers it. (The 51st percentile wrecked every layer: only the set with no
# INT8 layer left held the budget, and that set is now a recorded skip, not a shipped "INT8" model.)
# threads=1: the scenario depends on the trained student, whose numbers change with the training threads (under
# OMP_NUM_THREADS=2 only the set with no INT8 layer left held the budget); one thread pins it on every host.
BAD_CALIBRATION = ["threads=1", "calibration.method=percentile", "calibration.percentile=95",
                   "quantize.max_accuracy_drop=0.005",
                   "quantize.max_fallback_layers=8"]


def test_fallback_keeps_sensitive_layers_and_reports_them(tmp_path):
    out = tmp_path / "budget"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *fast_args(BAD_CALIBRATION))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    s = read_run(out)
    q = s["targets"]["onnxruntime"]["quantize"]
    first = q["tried"][0]
    assert first["kept_in_float"] == [] and first["val_accuracy_drop"] > 0.005  # the bad calibration did hurt
    assert any(t.get("kind") == "sensitivity" for t in q["tried"])
    assert q["kept_in_float"], "the fallback must name the layers it kept in float"
    assert q["budget_held"] and q["val_accuracy_drop"] <= 0.005
    row = artifact(s, "onnxruntime:int8")
    assert row["precision"] == "mixed int8/fp32"  # some compute layers are float: not called int8
    # Decided on validation (where the fallback held the budget); the test split's change is recorded.
    gate = s["targets"]["onnxruntime"]["gate"]
    assert gate["decision"] == "pass" and gate["decided_on"] == "validation"
    assert gate["validation"]["kept_in_float"] == q["kept_in_float"]
    assert {"b", "c", "p_value", "accuracy_ci95"} <= set(gate["test"])
    assert "kept in float" in p.stdout


def test_budget_that_cannot_hold_stops_the_target_with_exit_1(tmp_path):
    out = tmp_path / "nobudget"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out),
                *fast_args([*BAD_CALIBRATION, "quantize.max_fallback_layers=0", "quantize.mode=ptq"]))  # no QAD
    assert p.returncode == 1
    assert "on the validation split exceeds quantize.max_accuracy_drop" in p.stdout + p.stderr
    assert "Tried:" in p.stdout + p.stderr
    s = read_run(out)
    assert "onnxruntime" in s["failed_targets"]
    gate = s["targets"]["onnxruntime"]["gate"]
    assert gate["decision"] == "fail" and gate["decided_on"] == "validation" and not gate["validation"]["budget_held"]
    assert not any(a["name"] == "onnxruntime:int8" and a["bundle"] for a in s["artifacts"])
