"""The whole run: data -> teacher -> distill -> prune -> export -> per target, then run.json.

Stages talk through artifacts (StageResult folders); this module only wires them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.select import build_calibration_set
from pipeline.artifacts import atomic_write_json
from pipeline.errors import GateError, MissingDependency, PipelineError
from pipeline.runner import Runner, RunLock, StageContext, StageResult, environment
from pipeline.stages.bundle import run_bundle
from pipeline.stages.data import read_splits, run_data
from pipeline.stages.distill import run_distill
from pipeline.stages.export import run_export
from pipeline.stages.prune import run_prune
from pipeline.stages.target import (TargetOutcome, built_from, estimate_for, host_threads, run_benchmark,
                                    run_compile, run_convert, run_evaluate, run_quantize)
from pipeline.stages.teacher import run_teacher
from targets.base import get_backend

RUN_SCHEMA_VERSION = "1"


@dataclass
class RunResult:
    out: Path
    summary: dict[str, Any]
    failed_targets: dict[str, str] = field(default_factory=dict)
    skipped_targets: dict[str, str] = field(default_factory=dict)


def _importable(backend) -> tuple[bool, str]:
    """availability() only looks for the modules; a requested target's modules must also import
    (a broken install fails here, before any training, instead of in its convert stage)."""
    import importlib

    ok, why = backend.availability()
    if not ok:
        return ok, why
    for m in backend.modules:
        try:
            importlib.import_module(m)
        except Exception as e:
            return False, f"{m} is installed but does not import ({type(e).__name__}: {e})"
    return True, why


def select_profiles(requested: list[str], profile_paths: list[str] = ()) -> tuple[list, dict[str, str]]:
    """Resolve names/aliases; `all` means every profile whose backend can be prepared here."""
    from targets.profiles import load_profiles, resolve_profile

    profiles = load_profiles(profile_paths)
    chosen, skipped = [], {}
    if any(r == "all" for r in requested):
        for p in profiles.values():
            ok, why = _importable(get_backend(p.backend))
            if ok:
                chosen.append(p)
            else:
                skipped[p.name] = why
        return chosen, skipped
    for r in requested:
        p = resolve_profile(r, profiles)
        if p.name in [c.name for c in chosen]:
            continue
        backend = get_backend(p.backend)
        ok, why = _importable(backend)
        if not ok:
            raise MissingDependency(f"target {r} ({p.name}) needs the {p.backend} runtime: {why}",
                                    hint=backend.install_hint())
        chosen.append(p)
    return chosen, skipped


def run_calibration(runner: Runner, recipe, data: StageResult) -> StageResult:
    c = recipe.calibration

    def fn(ctx: StageContext) -> None:
        s = read_splits(data)
        ctx.metrics.update(build_calibration_set(s.x_train, s.y_train, c.samples, c.seed,
                                                 ctx.dir / "calibration.npz"))

    return runner.stage("calibration", fn, config={"samples": c.samples, "seed": c.seed},
                        inputs={"data": data}, tools=["numpy"])


def run_pipeline(recipe, out: Path, profile_paths: list[str] = (), console=None) -> RunResult:
    out = Path(out)
    profiles, skipped = select_profiles(recipe.targets, profile_paths)
    from pipeline.device import from_recipe

    from_recipe(recipe)  # device=cuda without a GPU stops here (exit 3), before any stage runs
    t0 = time.perf_counter()
    with RunLock(out / ".lock"):
        runner = Runner(out, console=console)
        data = run_data(runner, recipe)
        calib = run_calibration(runner, recipe, data)
        teacher = run_teacher(runner, recipe, data)
        if recipe.distill.nproc > 1:
            from pipeline.ddp import run_distill_ddp

            student = run_distill_ddp(runner, recipe, data, teacher)
        else:
            student = run_distill(runner, recipe, data, teacher)
        pruned = run_prune(runner, recipe, data, teacher, student)
        export = run_export(runner, recipe, data, pruned)
        teacher_onnx = run_export(runner, recipe, data, teacher, name="export-teacher", gate=False)
        b = recipe.benchmark
        host_bench = None
        if b.enabled:
            threads = max(1, min(b.threads or 1, os.cpu_count() or 1))
            host_bench = run_benchmark(runner, recipe, "benchmark-fp32", "benchmark [fp32 teacher, student]", [
                {"name": "teacher", "model": teacher_onnx.path("model.onnx"), "threads": threads, "source": "measured"},
                {"name": "student", "model": export.path("model.onnx"), "threads": threads, "source": "measured"},
            ], inputs={"teacher": teacher_onnx, "student": export})
        outcomes, failed = [], {}
        for profile in profiles:
            oc = run_target(runner, recipe, profile, data, calib, pruned, export)
            outcomes.append(oc)
            if oc.failed:
                failed[profile.name] = oc.failed
        summary = build_summary(recipe, runner, data, teacher, student, pruned, export, teacher_onnx, host_bench,
                                outcomes, skipped, failed, time.perf_counter() - t0)
        atomic_write_json(out / "run.json", summary)
        from pipeline.report import write_report_safe

        write_report_safe(out, summary, console)  # report.md/.html + plots; a failure only warns
    return RunResult(out, summary, failed, skipped)


def run_target(runner: Runner, recipe, profile, data, calib, pruned, export) -> TargetOutcome:
    backend = get_backend(profile.backend)
    oc = TargetOutcome(profile)
    if not recipe.quantize.enabled:
        raise PipelineError("quantize.enabled=false is not supported by the per-target stages yet",
                            hint="keep quantize.enabled=true")
    try:
        oc.stages["convert"] = conv = run_convert(runner, recipe, profile, backend, export, calib, pruned)
        oc.stages["quantize"] = quant = run_quantize(runner, recipe, profile, backend, data, export, calib, pruned)
        oc.stages["compile"] = comp = run_compile(runner, recipe, profile, backend, quant)
        variants = {"int8": built_from(quant, "int8"), "fp32": built_from(conv, "fp32")}
        oc.stages["evaluate"] = ev = run_evaluate(runner, recipe, profile, data, export, variants,
                                                  {"quantize": quant, "convert": conv})
        drop = ev.metrics["int8"]["accuracy_drop_vs_fp32_student"]
        tried = quant.metrics.get("tried", [])
        if drop > recipe.quantize.max_accuracy_drop:
            lines = "; ".join(f"kept {t['kept_in_float'] or 'none'} in float -> val drop {t['val_accuracy_drop']:.4f}"
                              for t in tried)
            raise GateError(f"{profile.name}: INT8 accuracy drop {drop:.4f} on the test split exceeds "
                            f"quantize.max_accuracy_drop={recipe.quantize.max_accuracy_drop}. Tried: {lines}",
                            hint="raise the budget, use more calibration samples or another calibration.method, "
                                 "or allow more layers in float (quantize.max_fallback_layers)")
        estimate = estimate_for(profile, export.path("model.onnx"), profile.estimate_precision)
        oc.stages["estimate"] = estimate  # type: ignore[assignment]
        bench = None
        if recipe.benchmark.enabled and backend.host_source != "estimated":
            threads = host_threads(profile, recipe.benchmark)
            cases = [{"name": "int8", "model": variants["int8"].model_file, "threads": threads,
                      "source": backend.host_source},
                     {"name": "fp32", "model": variants["fp32"].model_file, "threads": threads,
                      "source": backend.host_source, "precision_hint": "f32"}]
            if profile.backend == "openvino":
                cases.append({"name": "bf16", "model": variants["fp32"].model_file, "threads": threads,
                              "source": backend.host_source, "precision_hint": "bf16"})
            bench = run_benchmark(runner, recipe, f"benchmark-{profile.name}", f"benchmark [{profile.name}]", cases,
                                  inputs={"quantize": quant, "convert": conv}, extra_config=profile.name)
            oc.stages["benchmark"] = bench
        oc.stages["bundle"] = run_bundle(runner, recipe, profile, backend, data, quant, comp, ev, bench, estimate,
                                         {"export": export})
    except GateError as e:
        oc.failed = str(e)
        if runner.console is not None:
            from rich.markup import escape

            runner.console.print(f"[red]✗ {escape(profile.name)}: {escape(str(e))}[/red]")
    return oc


# --------------------------------------------------------------------------- summary


def _row(name, role, target, precision, accuracy, params, macs, size, sha, latency, rss, bundle=None, **extra):
    return {"name": name, "role": role, "target": target, "precision": precision, "accuracy": accuracy,
            "params": params, "macs": macs, "size_bytes": size, "sha256": sha, "latency_ms": latency,
            "peak_rss_mb": rss, **extra, "bundle": bundle}


def _na(source: str = "not measured") -> dict:
    return {"p50": None, "p90": None, "source": source}


def _sum_size(files) -> int:
    return sum(Path(f).stat().st_size for f in files)


def _model_path(runner, path) -> str:
    """The model file relative to the run folder (so a moved run folder still benches)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(runner.out.resolve()).as_posix()
    except ValueError:
        return str(path)


def build_summary(recipe, runner, data, teacher, student, pruned, export, teacher_onnx, host_bench, outcomes,
                  skipped, failed, seconds) -> dict:
    from pipeline.artifacts import sha256_file

    hb = host_bench.metrics if host_bench else {}
    arts = []
    tb, sb = hb.get("teacher", {}), hb.get("student", {})
    arts.append(_row("teacher", "teacher", None, "fp32", teacher.metrics["test_accuracy"], teacher.metrics["params"],
                     teacher.metrics["macs"], teacher_onnx.path("model.onnx").stat().st_size,
                     sha256_file(teacher_onnx.path("model.onnx")),
                     tb.get("latency_ms", _na()), tb.get("peak_rss_mb", {"value": None, "source": "not measured"}),
                     val_accuracy=teacher.metrics["val_accuracy"], runtime="onnxruntime",
                     model_path=_model_path(runner, teacher_onnx.path("model.onnx"))))
    arts.append(_row("student", "student", None, "fp32", export.metrics["test_accuracy"], pruned.metrics["params"],
                     pruned.metrics["macs"], export.metrics["size_bytes"], sha256_file(export.path("model.onnx")),
                     sb.get("latency_ms", _na()), sb.get("peak_rss_mb", {"value": None, "source": "not measured"}),
                     val_accuracy=student.metrics["val_accuracy"], runtime="onnxruntime",
                     pruned=bool(pruned.metrics.get("enabled")),
                     model_path=_model_path(runner, export.path("model.onnx"))))
    targets = {}
    for oc in outcomes:
        p = oc.profile
        st = oc.stages
        entry: dict[str, Any] = {"profile": p.name, "backend": p.backend, "failed": oc.failed}
        if "quantize" in st:
            q = st["quantize"]
            entry["quantize"] = {k: q.metrics.get(k) for k in ("kept_in_float", "tried", "budget", "val_accuracy_drop",
                                                               "budget_held")}
        if "compile" in st:
            entry["compile"] = st["compile"].metrics.get("compile")
        if "evaluate" in st:
            ev = st["evaluate"].metrics
            bench = st["benchmark"].metrics if "benchmark" in st else {}
            est = st.get("estimate") or {}
            for variant in ("int8", "fp32"):
                b = built_from(st["quantize"] if variant == "int8" else st["convert"], variant)
                bm = bench.get(variant)
                latency = bm["latency_ms"] if bm else (est.get("latency_ms") if variant == "int8" else _na())
                rss = bm["peak_rss_mb"] if bm else (est.get("peak_rss_mb") if variant == "int8" else
                                                    {"value": None, "source": "not measured"})
                bundle = None
                if variant == "int8" and "bundle" in st:
                    bres = st["bundle"]
                    bundle = str(bres.dir / bres.metrics["bundle"])
                arts.append(_row(f"{p.name}:{variant}", "target", p.name, b.precision if variant == "int8" else "fp32",
                                 ev[variant]["accuracy"], pruned.metrics["params"], pruned.metrics["macs"],
                                 _sum_size(b.files), sha256_file(b.model_file), latency, rss, bundle,
                                 runtime=b.numerics, numerics=ev[variant]["numerics"],
                                 top1_agreement=ev[variant]["top1_agreement"],
                                 estimated_latency_ms=est.get("latency_ms") if variant == "int8" else None,
                                 model_path=_model_path(runner, b.model_file)))
            if "bf16" in bench:
                bm = bench["bf16"]
                b = built_from(st["convert"], "fp32")
                arts.append(_row(f"{p.name}:bf16", "target", p.name, "bf16", None, pruned.metrics["params"],
                                 pruned.metrics["macs"], _sum_size(b.files), sha256_file(b.model_file),
                                 bm["latency_ms"], bm["peak_rss_mb"], None, runtime="openvino",
                                 note="FP32 IR run with the bf16 inference hint (this CPU's default); accuracy not evaluated",
                                 model_path=_model_path(runner, b.model_file)))
        targets[p.name] = entry
    stages = [{k: r[k] for k in ("name", "stage", "cached", "seconds", "key", "dir", "notes")} for r in runner.records]
    # Per-target stages carry "[profile]" in their label: say which target a note is about, once.
    notes = list(dict.fromkeys(
        (f"{r['name'].split('[', 1)[1].rstrip(']')}: {n}" if "[" in r["name"] else n)
        for r in runner.records for n in r["notes"]))
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "name": recipe.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 2),
        "recipe": recipe.model_dump(mode="json"),
        "stages": stages,
        "artifacts": arts,
        "targets": targets,
        "skipped_targets": skipped,
        "failed_targets": failed,
        "notes": notes,
        "environment": environment(),
        "data": data.metrics,
    }
