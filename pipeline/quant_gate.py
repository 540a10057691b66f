"""Decide whether a target's INT8 model passes: the accuracy budget on the validation split (where the
per-layer fallback defends it), then the test-split gate (pipeline.stats.decide_test_gate).

`decide_target` returns the record kept in run.json under targets.<name>.gate (what was decided and why)
and `gate_error` turns a failed record into the GateError that stops the target (exit 1, no bundle).
"""
from __future__ import annotations

from typing import Any

from pipeline.errors import GateError
from pipeline.stats import PairedChange, decide_test_gate, wilson_interval

HINT = ("raise the budget, use more calibration samples or another calibration.method, "
        "or allow more layers in float (quantize.max_fallback_layers)")


def _tried_lines(tried: list[dict[str, Any]]) -> str:
    def line(t: dict[str, Any]) -> str:
        head = f"kept {t['kept_in_float'] or 'none'} in float -> "
        if t.get("val_accuracy_drop") is None:  # a candidate the backend refused, or with no INT8 layer left
            return head + f"skipped ({t.get('skipped') or 'not built'})"
        return head + f"val drop {t['val_accuracy_drop']:.4f}"

    return "; ".join(line(t) for t in tried)


def decide_target(qcfg: Any, quant_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> dict[str, Any]:
    """qcfg: the recipe's quantize section; quant_metrics / eval_metrics: the stages' metrics."""
    budget = float(qcfg.max_accuracy_drop)
    val_drop = float(quant_metrics["val_accuracy_drop"])
    val_held = bool(quant_metrics.get("budget_held", val_drop <= budget))
    validation = {"drop": val_drop, "budget": budget, "budget_held": val_held,
                  "kept_in_float": quant_metrics.get("kept_in_float", []),
                  "attempts": len(quant_metrics.get("tried", []))}
    ev = eval_metrics["int8"]
    p = ev.get("paired_vs_fp32_student")
    if p is None:  # an evaluate entry written before the paired statistics existed
        raise GateError("the evaluate stage has no paired statistics; rerun without the old cache entry")
    change = PairedChange(**{k: p[k] for k in ("samples", "reference_correct", "candidate_correct", "b", "c",
                                               "p_value")})
    test = decide_test_gate(qcfg.test_gate, budget, change)
    test["accuracy"] = ev["accuracy"]
    test["accuracy_ci95"] = ev.get("accuracy_ci95") or list(wilson_interval(change.candidate_correct,
                                                                            change.samples))
    test["fp32_student_accuracy_ci95"] = eval_metrics.get("fp32_student_accuracy_ci95")
    if not val_held:
        decision, decided_on = "fail", "validation"
        reason = (f"INT8 accuracy drop {val_drop:.4f} on the validation split exceeds quantize.max_accuracy_drop="
                  f"{budget} after the fallback")
    elif test["decision"] == "fail":
        decision, decided_on = "fail", "test"
        reason = f"test split: {test['reason']}"
    else:
        decision, decided_on = "pass", "validation" if qcfg.test_gate != "hard" else "validation+test"
        reason = (f"validation drop {val_drop:.4f} within the budget {budget}; test split: {test['reason']}")
    return {"decision": decision, "decided_on": decided_on, "reason": reason, "validation": validation,
            "test": test, "tried": quant_metrics.get("tried", [])}


def gate_error(profile_name: str, record: dict[str, Any]) -> GateError:
    t = record["test"]
    what = (f"INT8 accuracy drop {record['validation']['drop']:.4f} on the validation split"
            if record["decided_on"] == "validation" else
            f"INT8 accuracy drop {t['drop']:.4f} on the test split ({t['b']} lost, {t['c']} gained of "
            f"{t['samples']}, McNemar p={t['p_value']:.3g}, gate {t['mode']})")
    return GateError(f"{profile_name}: {what} exceeds quantize.max_accuracy_drop={record['validation']['budget']}. "
                     f"Tried: {_tried_lines(record['tried'])}", hint=HINT)
