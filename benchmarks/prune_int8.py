"""Pruning + INT8: does a 0.5x-MACs pruned student also run faster in INT8? If not, which layers hold it back?

    python benchmarks/prune_int8.py [--out runs/prune-int8] [--target-macs 0.5 | --ratio R] [--round-to 8 16 32]
                                    [--threads 1] [--repeats 5] [--set key=value ...] [--json OUT]

Runs the pipeline's own stages (data -> teacher -> distill -> prune with prune.target_macs_ratio), once
per prune.round_to (channel counts rounded to multiples of it; the first value is the recipe default),
exports the unpruned and each pruned student to FP32 ONNX, quantizes each with the onnxruntime target's
U8S8 QDQ (same calibration), and measures FP32 and INT8 latency at batch 1 with ONNX Runtime in this
process, interleaved repeat by repeat (source: measured). Printed per round_to: the MACs ratio beside the
FP32 and INT8 latency ratios (pruned / unpruned). Where the INT8 ratio is above 0.75x, the per-layer
profile (pipeline.profile.ort) names the modules whose INT8 time shrank least and the Q/DQ/reformat rows
that do not shrink at all, and the round_to with the lowest INT8 ratio is offered as the fix. The measuring,
quantizing and comparing code is pipeline/prune_int8.py, which the prune stage itself runs after every
structured prune (prune.int8_check: a short version of this, round_to candidates pruned without recovery).
Distillation and recovery fine-tuning are shortened (distill.epochs 5, prune.recovery.epochs 3 here):
latency does not depend on them; accuracies go to --json only as a sanity check. The stage cache makes a
second invocation only re-measure. The resnet20 case (the one where INT8 does not follow the MACs):

    python benchmarks/prune_int8.py --out runs/prune-int8 --ratio 0.3 --round-to 4 8 16 \
        --set student.model=builtin:resnet20

Measured on a shared 2-core AMD EPYC (ONNX Runtime 1.32, 1 thread, digits 32x32, other jobs running):
  small_cnn (default student), --target-macs 0.5: round_to 8 -> 0.356x MACs, FP32 0.430x, INT8 0.640x.
  resnet20, --ratio 0.3: round_to 4 -> 0.365x MACs, FP32 0.697x, INT8 1.008x; the profile shows the layer1
  convs pruned from 16 to 8 channels running slower in INT8 (0.023 -> 0.033 ms each, 1.44x); round_to 8:
  0.294x MACs, INT8 0.930x; round_to 16 keeps layer1 at 16 channels: 0.523x MACs, FP32 0.526x, INT8 0.715x.
The prune stage's own check on that case (python -m pipeline run --target onnxruntime --set prune.enabled=true
--set prune.ratio=0.3 --set prune.round_to=4 --set student.model=builtin:resnet20, shortened epochs) noted
INT8 1.00x at 0.36x MACs, held by the layer1 convs (1.48x each), and offered prune.round_to=16: INT8 0.72x
at 0.52x MACs (round_to 8: 0.92x; 32 skipped, 0.77x MACs); the check took 8.4 s of a 32 s prune stage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=_ROOT / "runs" / "prune-int8")
    ap.add_argument("--target-macs", type=float, default=0.5, help="prune.target_macs_ratio (default 0.5)")
    ap.add_argument("--ratio", type=float, help="prune.ratio instead of a MACs target (for models whose "
                    "coupled groups cannot reach the target, e.g. CIFAR ResNets with round_to 8 on 16 channels)")
    ap.add_argument("--round-to", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--recovery-epochs", type=int, default=3)
    ap.add_argument("--distill-epochs", type=int, default=5, help="distill.epochs (latency does not depend on it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    os.environ.setdefault("PIPELINE_QUIET", "1")
    import torch

    from pipeline.prune_int8 import (THRESHOLD, choose_fix, compare_modules, holders, int8_rows, measure_batch1,
                                     quantize_int8, ratio)
    from pipeline.recipe import load_recipe
    from pipeline.runner import Runner
    from pipeline.stages.data import read_splits, run_data
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import export_onnx
    from pipeline.stages.models import load_model
    from pipeline.stages.prune import run_prune
    from pipeline.stages.teacher import run_teacher

    size = [f"prune.ratio={a.ratio}"] if a.ratio is not None else [f"prune.target_macs_ratio={a.target_macs}"]
    # prune.int8_check=false: this script measures every round_to itself, with longer runs than the stage's check
    base_sets = [*size, f"prune.recovery.epochs={a.recovery_epochs}", f"distill.epochs={a.distill_epochs}",
                 "prune.int8_check=false", *a.sets]
    runner = Runner(a.out)
    recipe0 = load_recipe(None, sets=["prune.enabled=true", *base_sets])
    data = run_data(runner, recipe0)
    teacher = run_teacher(runner, recipe0, data)
    student = run_distill(runner, recipe0, data, teacher)
    splits = read_splits(data)
    example = torch.from_numpy(splits.x_test[:1])
    calib = splits.x_train[:recipe0.calibration.samples]
    bench = recipe0.benchmark.model_copy(update={"repeats": a.repeats, "warmup": 50, "min_iters": 200,
                                                 "min_time_s": 0.5})
    result = {"kind": "prune-int8-benchmark", "prune": size, "threads": a.threads,
              "runtime": "onnxruntime (U8S8 QDQ, CPUExecutionProvider)", "batch": 1, "source": "measured",
              "variants": {}}
    with tempfile.TemporaryDirectory(prefix="prune-int8-") as tmp_name:
        tmp = Path(tmp_name)
        fp32, macs, info = {}, {}, {}
        export_onnx(load_model(student.dir), example, tmp / "unpruned.onnx", recipe0.export.opset)
        fp32["unpruned"] = tmp / "unpruned.onnx"
        for rt in a.round_to:
            recipe = load_recipe(None, sets=["prune.enabled=true", f"prune.round_to={rt}", *base_sets])
            pruned = run_prune(runner, recipe, data, teacher, student)
            pm = pruned.metrics
            macs[rt] = pm["macs"] / pm["macs_before"]
            info[rt] = {"channels": pm.get("channels"), "test_accuracy": pm.get("test_accuracy"),
                        "test_accuracy_before": pm.get("test_accuracy_before")}
            export_onnx(load_model(pruned.dir), example, tmp / f"pruned_r{rt}.onnx", recipe.export.opset)
            fp32[f"pruned_r{rt}"] = tmp / f"pruned_r{rt}.onnx"
        int8 = {k: quantize_int8(p, tmp / f"{k}_int8.onnx", calib, recipe0.calibration) for k, p in fp32.items()}
        lat = measure_batch1(fp32, int8, splits.x_test[:32], a.threads, bench)
        rows = {k: int8_rows(int8[k], fp32[k], a.threads, iterations=300) for k in int8}
    print(f"{'round_to':>8s} {'MACs':>7s} {'FP32 ratio':>10s} {'INT8 ratio':>10s}  unpruned INT8 "
          f"{lat['unpruned']['int8']['p50_ms']:.4f} ms, FP32 {lat['unpruned']['fp32']['p50_ms']:.4f} ms "
          f"({a.threads} thread(s), batch 1, measured)")
    for rt in a.round_to:
        k = f"pruned_r{rt}"
        v = {"round_to": rt, "macs_ratio": macs[rt], "fp32_ratio": ratio(lat, k, "unpruned", "fp32"),
             "int8_ratio": ratio(lat, k, "unpruned", "int8"), "fp32_ms": lat[k]["fp32"]["p50_ms"],
             "int8_ms": lat[k]["int8"]["p50_ms"], "layers": compare_modules(rows["unpruned"], rows[k], THRESHOLD),
             **info[rt]}
        result["variants"][rt] = v
        print(f"{rt:8d} {v['macs_ratio']:6.3f}x {v['fp32_ratio']:9.3f}x {v['int8_ratio']:9.3f}x  "
              f"channels {info[rt]['channels']}")
    first = a.round_to[0]
    v0 = result["variants"][first]
    above = v0["int8_ratio"] > THRESHOLD
    mods, fixed = holders(v0["layers"], n=6)
    print(f"\nINT8 ratio {v0['int8_ratio']:.3f}x {'>' if above else '<='} {THRESHOLD}x with round_to={first}. "
          "Per-layer profile (ONNX Runtime profiler, INT8 kernel ms): modules above the threshold's share of their "
          "unpruned time, then the Q/DQ/reformat/call-overhead rows that do not shrink:")
    for r in [*mods, *fixed]:
        print(f"  {r['module']:36s} {r['unpruned_ms']:.4f} -> {r['pruned_ms']:.4f} ms"
              + (f" ({r['ratio']:.2f}x)" if r["ratio"] is not None else ""))
    if above:
        best = choose_fix(v0, [v for rt, v in result["variants"].items() if rt != first])
        if best:
            print(f"fix found: prune.round_to={best['round_to']} -> INT8 ratio {best['int8_ratio']:.3f}x at "
                  f"{best['macs_ratio']:.3f}x MACs (was {v0['int8_ratio']:.3f}x); set --set "
                  f"prune.round_to={best['round_to']}")
            result["fix"] = {"prune.round_to": best["round_to"], "int8_ratio": best["int8_ratio"]}
        else:
            print("no round_to tried here lowers the INT8 ratio; the rows above are what stays")
            result["fix"] = None
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
