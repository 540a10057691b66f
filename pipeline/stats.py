"""Accuracy on a finite split, with its uncertainty, and the test-split gate built on it.

- `wilson_interval`: 95% Wilson score interval of an accuracy (scipy's binomtest().proportion_ci).
- `paired_change`: the paired comparison of two models on the same images: discordant counts
  (b = the reference right and the candidate wrong, c = the reference wrong and the candidate right)
  and McNemar's exact p-value (a two-sided binomial test of b against b + c at 1/2, scipy's binomtest).
- `decide_test_gate`: the decision on the test split. The accuracy budget is defended on the validation split;
  on the test split a target fails only when the drop exceeds the budget AND is statistically real
  (mode `stats`), on any drop over the budget (mode `hard`), or never (mode `off`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

GateMode = Literal["stats", "hard", "off"]
ALPHA = 0.05
CONFIDENCE = 0.95


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of correct/total (the 0/0 case is the whole [0, 1])."""
    if total <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of b discordant pairs out of b + c at p = 1/2."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


@dataclass
class PairedChange:
    samples: int
    reference_correct: int
    candidate_correct: int
    b: int  # reference right, candidate wrong (lost by the candidate)
    c: int  # reference wrong, candidate right (gained by the candidate)
    p_value: float

    @property
    def drop(self) -> float:
        return (self.b - self.c) / self.samples if self.samples else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop}


def paired_change(labels: np.ndarray, reference_pred: np.ndarray, candidate_pred: np.ndarray) -> PairedChange:
    """Paired change of the candidate against the reference on the same images (predicted classes)."""
    y = np.asarray(labels)
    ref_ok = np.asarray(reference_pred) == y
    cand_ok = np.asarray(candidate_pred) == y
    b = int((ref_ok & ~cand_ok).sum())
    c = int((~ref_ok & cand_ok).sum())
    return PairedChange(samples=int(len(y)), reference_correct=int(ref_ok.sum()),
                        candidate_correct=int(cand_ok.sum()), b=b, c=c, p_value=mcnemar_exact_p(b, c))


def accuracy_with_interval(correct: int, total: int) -> dict[str, Any]:
    lo, hi = wilson_interval(correct, total)
    return {"value": correct / total if total else None, "ci95": [lo, hi], "method": "wilson",
            "correct": int(correct), "samples": int(total)}


def decide_test_gate(mode: GateMode, budget: float, change: PairedChange, alpha: float = ALPHA) -> dict[str, Any]:
    """Decide a target on the test split. Returns the record kept in run.json: decision (pass | fail),
    the reason in words, and the figures it rests on."""
    drop, p = change.drop, change.p_value
    over = drop > budget
    real = over and p < alpha and change.b > change.c
    if mode == "off":
        fail, why = False, "test gate off (quantize.test_gate=off): recorded, not gated"
    elif mode == "hard":
        fail = over
        why = (f"drop {drop:.4f} exceeds the budget {budget} (hard gate)" if over
               else f"drop {drop:.4f} within the budget {budget} (hard gate)")
    elif mode == "stats":
        fail = real
        if not over:
            why = f"drop {drop:.4f} within the budget {budget}"
        elif real:
            why = (f"drop {drop:.4f} exceeds the budget {budget} and is statistically real "
                   f"(McNemar exact p={p:.3g} < {alpha}; lost {change.b}, gained {change.c})")
        else:
            why = (f"drop {drop:.4f} exceeds the budget {budget} but is not statistically real "
                   f"(McNemar exact p={p:.3g} >= {alpha}; lost {change.b}, gained {change.c} of "
                   f"{change.samples}); the budget was defended on the validation split")
    else:
        raise ValueError(f"unknown test gate mode {mode!r}")
    return {"mode": mode, "decision": "fail" if fail else "pass", "reason": why, "budget": budget,
            "alpha": alpha, "drop": drop, "drop_exceeds_budget": over, "significant": real, **change.to_json()}


def format_ci(acc: float | None, ci: Any) -> str:
    """`0.9600 [0.86, 0.99]` for tables; the accuracy alone when no interval was recorded."""
    if acc is None:
        return "—"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{acc:.4f} [{ci[0]:.2f}, {ci[1]:.2f}]"
    return f"{acc:.4f}"


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (k1/n1 vs k2/n2): two independent splits (the
    teacher on validation vs test). A few lines of math, so the teacher check needs no scipy call."""
    import math

    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))
