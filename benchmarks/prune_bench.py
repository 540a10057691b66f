"""Structured pruning benchmark: distill the default student, prune it, recover it, measure both.

Runs the pipeline's own stages (data -> teacher -> distill -> prune) with the default recipe plus
``prune.enabled=true prune.ratio=RATIO`` (and any ``--set``), in a run folder whose stage cache makes a
second invocation only re-measure. Then it exports the distilled student and the pruned student to
FP32 ONNX and measures both with ONNX Runtime in this process, interleaved repeat by repeat (so both see
the same machine load), at batch 1 and batch 32: the median of the per-repeat medians.

    python benchmarks/prune_bench.py [--ratio 0.5] [--out runs/prune-bench] [--threads 1] [--repeats 7]
                                     [--set key=value ...] [--json OUT]

Issue acceptance (checked and printed, exit 1 when missed): MACs <= 0.6x, batch-32 latency <= 0.85x,
test accuracy drop <= 0.01 after recovery.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

ACCEPT = {"macs_ratio": 0.6, "latency_ratio_batch32": 0.85, "accuracy_drop": 0.01}


def run(ratio: float, out: Path, sets: list[str], threads: int, repeats: int, min_time_s: float) -> dict:
    import torch

    from pipeline.measure.in_process import measure_ort_latency
    from pipeline.recipe import load_recipe
    from pipeline.runner import Runner, environment
    from pipeline.stages.data import read_splits, run_data
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import export_onnx
    from pipeline.stages.models import load_model
    from pipeline.stages.prune import run_prune
    from pipeline.stages.teacher import run_teacher

    recipe = load_recipe(None, sets=["prune.enabled=true", f"prune.ratio={ratio}", *sets])
    runner = Runner(out)
    data = run_data(runner, recipe)
    teacher = run_teacher(runner, recipe, data)
    student = run_distill(runner, recipe, data, teacher)
    pruned = run_prune(runner, recipe, data, teacher, student)
    splits = read_splits(data)
    example = torch.from_numpy(splits.x_test[:1])
    with tempfile.TemporaryDirectory(prefix="prune-bench-") as tmp:
        paths = {"distilled": Path(tmp) / "distilled.onnx", "pruned": Path(tmp) / "pruned.onnx"}
        export_onnx(load_model(student.dir), example, paths["distilled"], recipe.export.opset)
        export_onnx(load_model(pruned.dir), example, paths["pruned"], recipe.export.opset)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        lat = measure_ort_latency(paths, splits.x_test[:32], (1, 32), threads=threads, repeats=repeats, warmup=50,
                                  min_iters=100, min_time_s=min_time_s, max_time_s=30.0)
    pm = pruned.metrics
    rows = {
        "distilled": {"params": pm["params_before"], "macs": pm["macs_before"], "onnx_bytes": sizes["distilled"],
                      "val_accuracy": pm["val_accuracy_before"], "test_accuracy": pm["test_accuracy_before"],
                      "latency_ms": lat["distilled"]},
        "pruned": {"params": pm["params"], "macs": pm["macs"], "onnx_bytes": sizes["pruned"],
                   "val_accuracy": pm["val_accuracy"], "test_accuracy": pm["test_accuracy"],
                   "test_accuracy_no_recovery": pm["test_accuracy_no_recovery"], "latency_ms": lat["pruned"]},
    }
    ratios = {
        "params_ratio": pm["params"] / pm["params_before"],
        "macs_ratio": pm["macs"] / pm["macs_before"],
        "latency_ratio_batch1": lat["pruned"]["batch1"]["p50_ms"] / lat["distilled"]["batch1"]["p50_ms"],
        "latency_ratio_batch32": lat["pruned"]["batch32"]["p50_ms"] / lat["distilled"]["batch32"]["p50_ms"],
        "accuracy_drop": pm["test_accuracy_before"] - pm["test_accuracy"],
    }
    accept = {k: {"value": ratios[k], "limit": lim, "ok": ratios[k] <= lim} for k, lim in ACCEPT.items()}
    return {
        "kind": "prune-benchmark",
        "recipe": {"student": recipe.student.model, "data": recipe.data.source, "input_size": recipe.data.input_size,
                   "distill_epochs": recipe.distill.epochs, "prune": recipe.prune.model_dump(mode="json")},
        "measurement": {"runtime": "onnxruntime", "precision": "fp32", "threads": threads, "repeats": repeats,
                        "protocol": "in-process, interleaved per repeat, warm-up 50, >=100 runs and >= "
                                    f"{min_time_s}s per case; median of per-repeat medians", "source": "measured"},
        "models": rows,
        "ratios": ratios,
        "acceptance": accept,
        "channels": pm.get("channels"),
        "recovery": pm.get("recovery"),
        "stage_latency_ms": pm.get("latency_ms"),
        "notes": pruned.meta.get("notes", []),
        "environment": environment() | {"machine": platform.machine(), "cpu_count": os.cpu_count()},
        "run_folder": str(out),
    }


def table(res: dict) -> str:
    m = res["models"]
    lines = ["| model | params | MACs | ONNX KB | batch-1 ms | batch-32 ms | val acc | test acc |",
             "|---|---|---|---|---|---|---|---|"]
    for k in ("distilled", "pruned"):
        r = m[k]
        lines.append(f"| {k} | {r['params']:,} | {r['macs']:,} | {r['onnx_bytes'] / 1024:.0f} | "
                     f"{r['latency_ms']['batch1']['p50_ms']:.3f} | {r['latency_ms']['batch32']['p50_ms']:.3f} | "
                     f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |")
    t = res["ratios"]
    lines.append(f"| pruned / distilled | {t['params_ratio']:.3f}x | {t['macs_ratio']:.3f}x | | "
                 f"{t['latency_ratio_batch1']:.3f}x | {t['latency_ratio_batch32']:.3f}x | | "
                 f"drop {t['accuracy_drop']:+.4f} |")
    lines.append("")
    lines.append(f"latency: {res['measurement']['protocol']}; ONNX Runtime FP32, "
                 f"{res['measurement']['threads']} thread(s) (source: measured)")
    lines.append(f"pruned test accuracy before recovery: {m['pruned']['test_accuracy_no_recovery']:.4f}")
    for k, a in res["acceptance"].items():
        lines.append(f"acceptance {k}: {a['value']:.4f} <= {a['limit']} {'OK' if a['ok'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=_ROOT / "runs" / "prune-bench", help="run folder (stage cache)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per case and repeat")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override key=value")
    ap.add_argument("--json", type=Path, help="write the full result here")
    a = ap.parse_args(argv)
    os.environ.setdefault("PIPELINE_QUIET", "1")
    from pipeline.errors import PipelineError

    try:
        res = run(a.ratio, a.out, a.sets, a.threads, a.repeats, a.min_time)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(table(res))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2, default=str))
    return 0 if all(v["ok"] for v in res["acceptance"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
