"""How often a latency decision flips: the mixed-precision choice (pipeline/mixed_precision.py choose on the
measurement core's paired intervals) repeated 5 times on an idle host and 5 times beside one CPU-bound process.

Two comparisons, each a mixed-precision-style choice between two sets that both hold the accuracy budget:
- "2x": set {a} (1 float layer) runs a model >= 2x slower than set {b, c} (2 float layers): the right decision
  is {b, c} every time (measurably faster beats simpler);
- "same": both sets run the same graph (two files): no true difference, so the right decision is a declared
  tie, broken by simplicity ({a}), every time.

For each run it prints the decision on intervals (the pipeline's rule) and, for comparison, what the bare
medians would have picked (the rule before issue 22). A flip = a run whose decision differs from the most
common one in its 5 runs. The busy process is a child that spins on one core for the duration of the busy
runs only (it stops itself at a deadline and is terminated by its pid when the runs end).

    python benchmarks/decision_flips.py [--runs 5] [--max-time 10] [--json OUT]

Exit 0 when the "2x" decisions never flip and never pick the slower set, and the "same" decisions are ties
(no winner declared) in every run; else 1.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from pipeline.measure.core import Settings, cores, load_average  # noqa: E402
from pipeline.mixed_precision import Trial, choose, measure_models  # noqa: E402

SHAPE = (1, 16, 16, 16)


def _spin(deadline: float) -> None:
    """The busy neighbour: one CPU-bound loop that ends at `deadline` (time.time())."""
    x = 0
    while time.time() < deadline:
        x = (x * 1103515245 + 12345) % 2147483648


def build_models(d: Path) -> dict[str, Path]:
    import warnings

    import torch

    warnings.filterwarnings("ignore")

    def convs(n: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1),
                                   *[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(n - 1)])

    torch.manual_seed(0)
    fast, slow = convs(2), convs(6)
    out = {}
    for name, m in (("fast", fast), ("fast_copy", fast), ("slow", slow)):
        p = d / f"{name}.onnx"
        torch.onnx.export(m, (torch.zeros(*SHAPE),), str(p), dynamo=False)
        out[name] = p
    return out


def decide(models: dict[str, Path], a: str, bc: str, settings: Settings) -> dict[str, Any]:
    """One mixed-precision choice: {a} (simpler) vs {b, c}; returns the decisions and their figures."""
    m = measure_models({"a": models[a], "b|c": models[bc]}, np.zeros(SHAPE, np.float32), 1, settings)
    fa, fb = m.figures["a"], m.figures["b|c"]
    trials = [Trial(["a"], 0.004, latency_ms=fa.median_ms), Trial(["b", "c"], 0.004, latency_ms=fb.median_ms)]
    best = choose(trials, budget=0.01, measurement=m)
    assert best is not None
    d = m.difference("a", "b|c")
    bare = "{a}" if fa.median_ms <= fb.median_ms else "{b,c}"
    return {"chosen": "{" + ",".join(best.float_layers) + "}", "verdict": d.verdict,
            "tie": "tie" in (best.decision or ""), "bare_median_choice": bare,
            "a_ms": round(fa.median_ms, 5), "bc_ms": round(fb.median_ms, 5),
            "diff_ci95_ms": None if d.ci95_ms is None else [round(v, 5) for v in d.ci95_ms],
            "ratio": round(fa.median_ms / fb.median_ms, 3), "blocks": fa.blocks, "stopped": m.stopped,
            "noisy": m.noisy, "load1": m.load1}


def flips(values: list[str]) -> int:
    return len(values) - Counter(values).most_common(1)[0][1] if values else 0


def run_condition(models: dict[str, Path], runs: int, settings: Settings, busy: bool) -> dict[str, Any]:
    child = None
    if busy:
        deadline = time.time() + runs * 2 * (settings.max_time_s + 5) + 30
        child = mp.get_context("spawn").Process(target=_spin, args=(deadline,), daemon=True)
        child.start()
        time.sleep(1.0)
    try:
        load_before = load_average()
        res: dict[str, list[dict]] = {"2x": [], "same": []}
        for _ in range(runs):
            res["2x"].append(decide(models, "slow", "fast", settings))
            res["same"].append(decide(models, "fast", "fast_copy", settings))
        load_after = load_average()
    finally:
        if child is not None:
            child.terminate()
            child.join(5)
    out: dict[str, Any] = {"busy_process": busy, "load1_before": load_before, "load1_after": load_after,
                           "cores": cores(), "comparisons": {}}
    for name, rows in res.items():
        chosen = [r["chosen"] for r in rows]
        bare = [r["bare_median_choice"] for r in rows]
        out["comparisons"][name] = {
            "runs": rows, "decision_flips": flips(chosen), "ties_declared": sum(r["tie"] for r in rows),
            "wrong": sum(c != "{b,c}" for c in chosen) if name == "2x" else sum(not r["tie"] for r in rows),
            "bare_median_flips": flips(bare), "bare_median_choices": dict(Counter(bare)),
            "ratio_median": round(float(np.median([r["ratio"] for r in rows])), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-time", type=float, default=10.0, help="time cap of each measurement (s)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    settings = Settings(max_time_s=args.max_time)
    report: dict[str, Any] = {"command": " ".join(["python", "benchmarks/decision_flips.py", *(argv or sys.argv[1:])]),
                              "settings": {"max_time_s": settings.max_time_s, "rel_half_width": settings.rel_half_width,
                                           "min_block_s": settings.min_block_s}, "conditions": {}}
    with tempfile.TemporaryDirectory(prefix="flips-") as tmp:
        models = build_models(Path(tmp))
        for cond, busy in (("idle", False), ("busy", True)):
            report["conditions"][cond] = r = run_condition(models, args.runs, settings, busy)
            print(f"== {cond} ({'one CPU-bound child beside it' if busy else 'no extra process'}); load average "
                  f"{r['load1_before']} -> {r['load1_after']} on {r['cores']} cores")
            for name, c in r["comparisons"].items():
                print(f"  {name:4s}: true ratio {{a}}/{{b,c}} ~ {c['ratio_median']:.2f}; decisions "
                      f"{[x['chosen'] for x in c['runs']]}; flips {c['decision_flips']}/{args.runs}; ties declared "
                      f"{c['ties_declared']}/{args.runs}; wrong {c['wrong']}; bare medians would pick "
                      f"{c['bare_median_choices']} (flips {c['bare_median_flips']})")
                for x in c["runs"]:
                    print(f"        a {x['a_ms']:.4f} ms, b|c {x['bc_ms']:.4f} ms, paired a-b|c 95% CI "
                          f"{x['diff_ci95_ms']} -> {x['verdict']}; {x['blocks']} blocks, {x['stopped']}"
                          f"{', noisy' if x['noisy'] else ''}")
    ok = all(c["comparisons"]["2x"]["decision_flips"] == 0 and c["comparisons"]["2x"]["wrong"] == 0
             and c["comparisons"]["same"]["wrong"] == 0 for c in report["conditions"].values())
    report["ok"] = ok
    print("OK: no flip where the difference is >= 2x; ties declared where there is none" if ok else
          "FAIL: a decision flipped or a tie was not declared (see above)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
