"""The PTQ vs QAD section of the quality benchmark (`python benchmarks/quality.py --only qad --out DIR`).

Per seed on MNIST: the KD student of the quality benchmark (same recipe, same stage cache), then per target
(onnxruntime, jetson QDQ) the plain PTQ INT8 model (every layer quantized, no fallback) and the QAD INT8 model
(pipeline/stages/qad.py: fake-quant fine-tuning with the KD loss), both evaluated on the test split in the
target's runtime on this host (ONNX Runtime; for jetson, ONNX Runtime as TensorRT's reference numerics).

Measured (`OMP_NUM_THREADS=1 python benchmarks/quality.py --only qad --out DIR`, 270 s on a 2-core AMD EPYC
beside another job; MNIST 16x16, 15 student epochs, seeds 0 1 2, 1,000 test images; drop vs the FP32 student
in points, mean +- std over seeds, positive = INT8 worse):
    target           FP32 %  PTQ drop       QAD drop
    onnxruntime      97.23   0.10 +- 0.17   -0.03 +- 0.06
    jetson (QDQ)     97.23  -0.03 +- 0.12    0.10 +- 0.17
On MNIST plain PTQ already loses nothing measurable (one test image is 0.1 point), so QAD cannot show a gain
here and does not lose either: both are within one or two images of the FP32 student. Where PTQ does miss a
budget (tests/test_qad.py: a layer with outlier activations), QAD brings the drop back within it.
"""
from __future__ import annotations

import json
import time
from typing import Any

QAD_TARGETS = ["onnxruntime", "jetson"]


def run_qad_section(a, say) -> dict[str, Any]:
    from benchmarks.quality_recipes import DATASETS, _mean_std, base_sets, losses_for
    from pipeline.orchestrate import run_target
    from pipeline.stages.calibration import run_calibration
    from pipeline.recipe import load_recipe
    from pipeline.runner import Runner
    from pipeline.stages.data import run_data
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import run_export
    from pipeline.stages.teacher import run_teacher
    from targets.profiles import load_profiles, resolve_profile

    name = "mnist"
    runner = Runner(a.out / "runs" / name, console=None)
    profiles = load_profiles([])
    rows: dict[str, list[dict]] = {}
    for seed in a.seeds:
        t0 = time.perf_counter()
        sets = base_sets(a, DATASETS[name], seed) + [f"distill.losses={json.dumps(losses_for('kd', a.epochs))}"]
        rk = load_recipe(None, sets)
        data = run_data(runner, rk)
        teacher = run_teacher(runner, rk, data)
        kd = run_distill(runner, rk, data, teacher)
        calib = run_calibration(runner, rk, data)
        export = run_export(runner, rk, data, kd)
        # Plain PTQ (no fallback) against QAD; no gate: both numbers are wanted whatever they are.
        rq = load_recipe(None, sets + ["quantize.mode=qat", "quantize.max_fallback_layers=0",
                                       "quantize.max_accuracy_drop=1.0", "benchmark.enabled=false"])
        for t in QAD_TARGETS:
            profile = resolve_profile(t, profiles)
            oc = run_target(runner, rq, profile, data, calib, kd, export, teacher=teacher)
            ev = oc.stages["evaluate"].metrics
            qad = oc.stages["qad"].metrics
            rows.setdefault(profile.name, []).append({
                "seed": seed, "fp32_test_accuracy": ev["fp32_student_accuracy"],
                "ptq_test_accuracy": ev["int8_ptq"]["accuracy"], "qat_test_accuracy": ev["int8_qat"]["accuracy"],
                "ptq_drop": ev["int8_ptq"]["accuracy_drop_vs_fp32_student"],
                "qat_drop": ev["int8_qat"]["accuracy_drop_vs_fp32_student"], "samples": ev["int8_qat"]["samples"],
                "numerics": ev["int8_qat"]["numerics"], "qat_epochs": qad["epochs"], "scheme": qad["scheme"]})
        say(f"[qad {name} seed {seed}] " + "  ".join(
            f"{p}: PTQ {r[-1]['ptq_test_accuracy']:.4f} QAD {r[-1]['qat_test_accuracy']:.4f}" for p, r in rows.items())
            + f"  ({time.perf_counter() - t0:.0f} s)")
    out: dict[str, Any] = {"dataset": name, "seeds": list(a.seeds), "targets": {}}
    for p, rs in rows.items():
        summary: dict[str, Any] = {"runs": rs}
        for k in ("fp32_test_accuracy", "ptq_drop", "qat_drop"):
            summary[f"{k}_mean"], summary[f"{k}_std"] = _mean_std([r[k] for r in rs])
        out["targets"][p] = summary
    return out


def qad_table(section: dict) -> str:
    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    lines = [f"PTQ vs QAD on {section['dataset']} (seeds {section['seeds']}), test split, drop vs the FP32 student "
             "(percentage points, mean ± std; positive = INT8 worse)",
             "| target | FP32 student % | PTQ drop | QAD drop | test images | numerics |", "|---|---|---|---|---|---|"]
    for p, s in section["targets"].items():
        r0 = s["runs"][0]
        lines.append(f"| {p} | {pct(s['fp32_test_accuracy_mean'])} | {pct(s['ptq_drop_mean'])} ± {pct(s['ptq_drop_std'])}"
                     f" | {pct(s['qat_drop_mean'])} ± {pct(s['qat_drop_std'])} | {r0['samples']} | {r0['numerics']} |")
    return "\n".join(lines)
