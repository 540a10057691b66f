"""The whole run: data -> teacher -> distill -> prune -> export -> per target, then run.json.

Stages talk through artifacts (StageResult folders); this module only wires them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from pipeline.artifacts import atomic_write_json
from pipeline.errors import GateError, MissingDependency, PipelineError
from pipeline.logs import capture_run_output, third_party
from pipeline.provenance import figure, float_compute_layers, host_class, precision_label, runtime_label
from pipeline.quant_gate import decide_target, gate_error
from pipeline.runner import Runner, RunLock, StageContext, StageResult, environment
from pipeline.stages.bundle import run_bundle
from pipeline.stages.calibration import run_calibration
from pipeline.stages.data import run_data
from pipeline.stages.distill import run_distill
from pipeline.stages.export import run_export
from pipeline.stages.prune import run_prune
from pipeline.stages.target import (TargetOutcome, built_from, estimate_for, host_threads, run_benchmark,
                                    run_compile, run_convert, run_evaluate, run_quantize)
from pipeline.stages.teacher import run_teacher
from pipeline.stats import wilson_interval
from targets.isa import host_isa
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
            with third_party():  # import-time banners (absl, oneDNN, torchao) go to the run's log
                importlib.import_module(m)
        except Exception as e:  # any import failure: the caller raises MissingDependency (exit 3) with it
            return False, f"{m} is installed but does not import ({type(e).__name__}: {e})"
    return True, why


def select_profiles(requested: list[str], profile_paths: Sequence[str] = (),
                    isa: dict[str, str] | None = None) -> tuple[list, dict[str, str]]:
    """Resolve names/aliases; `all` means every profile whose backend can be prepared here. `isa` (the
    recipe's `isa:` section) overrides the instruction-set class of the named profiles."""
    from targets.profiles import apply_isa_overrides, load_profiles, resolve_profile

    profiles = apply_isa_overrides(load_profiles(profile_paths), isa or {})
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


def run_pipeline(recipe, out: Path, profile_paths: Sequence[str] = (), console=None) -> RunResult:
    out = Path(out)
    from pipeline.models.conventions import apply_conventions

    # A torchvision/timm model's normalisation and input size, for the data fields the recipe leaves unset
    recipe, convention_notes = apply_conventions(recipe)
    profiles, skipped = select_profiles(recipe.targets, profile_paths, recipe.isa)
    if recipe.quantize.emulate:  # a missing qemu stops the run here (exit 3), before any stage runs
        from pipeline.numerics import numerics_for, qemu_path

        if any(numerics_for(p, get_backend(p.backend), None, True).mode == "emulated" for p in profiles):
            qemu_path()
    from pipeline.device import from_recipe

    from_recipe(recipe)  # device=cuda without a GPU stops here (exit 3), before any stage runs
    t0 = time.perf_counter()
    with RunLock(out / ".lock"), capture_run_output(out):  # third-party output -> out/logs/run.log
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
            oc = run_target(runner, recipe, profile, data, calib, pruned, export, teacher=teacher)
            outcomes.append(oc)
            if oc.failed:
                failed[profile.name] = oc.failed
        summary = build_summary(recipe, runner, data, teacher, student, pruned, export, teacher_onnx, host_bench,
                                outcomes, skipped, failed, time.perf_counter() - t0)
        summary["notes"] = [*convention_notes, *summary["notes"]]
        atomic_write_json(out / "run.json", summary)
        from pipeline.report import write_report_safe

        write_report_safe(out, summary, console)  # report.md/.html + plots; a failure only warns
    return RunResult(out, summary, failed, skipped)


def run_target(runner: Runner, recipe, profile, data, calib, pruned, export, teacher=None) -> TargetOutcome:
    backend = get_backend(profile.backend)
    oc = TargetOutcome(profile)
    if not recipe.quantize.enabled:
        raise PipelineError("quantize.enabled=false is not supported by the per-target stages yet",
                            hint="keep quantize.enabled=true")
    try:
        oc.stages["convert"] = conv = run_convert(runner, recipe, profile, backend, export, calib, pruned)
        oc.stages["quantize"] = quant = run_quantize(runner, recipe, profile, backend, data, export, calib, pruned)
        variants_qad, quant = _maybe_qad(runner, recipe, profile, data, calib, pruned, export, teacher, quant, oc)
        oc.stages["compile"] = comp = run_compile(runner, recipe, profile, backend, quant)
        variants = {"int8": built_from(quant, "int8"), "fp32": built_from(conv, "fp32"), **variants_qad}
        oc.stages["evaluate"] = ev = run_evaluate(runner, recipe, profile, data, export, variants,
                                                  {"quantize": quant, "convert": conv})
        # Decided on the validation split (budget + fallback); the test split gates only a real drop.
        oc.gate = decide_target(recipe.quantize, quant.metrics, ev.metrics)
        if oc.gate["decision"] == "fail":
            raise gate_error(profile.name, oc.gate)
        estimate = estimate_for(profile, export.path("model.onnx"), profile.estimate_precision)
        oc.stages["estimate"] = estimate  # type: ignore[assignment]
        bench = None
        if recipe.benchmark.enabled and backend.host_source != "estimated":
            threads = host_threads(profile, recipe.benchmark)
            # A host of another instruction-set class runs other kernels: its timings are host-measured.
            src = backend.host_source if not profile.isa or profile.isa == host_isa() else "host-measured"
            cases = [{"name": "int8", "model": variants["int8"].model_file, "threads": threads, "source": src},
                     {"name": "fp32", "model": variants["fp32"].model_file, "threads": threads,
                      "source": src, "precision_hint": "f32"}]
            if profile.backend == "openvino":
                cases.append({"name": "bf16", "model": variants["fp32"].model_file, "threads": threads,
                              "source": src, "precision_hint": "bf16"})
            bench = run_benchmark(runner, recipe, f"benchmark-{profile.name}", f"benchmark [{profile.name}]", cases,
                                  inputs={"quantize": quant, "convert": conv}, extra_config=profile.name)
            oc.stages["benchmark"] = bench
        oc.stages["bundle"] = run_bundle(runner, recipe, profile, backend, data, quant, comp, ev, bench, estimate,
                                         {"export": export}, convert=conv)
    except GateError as e:
        oc.failed = str(e)
        if runner.console is not None:
            from rich.markup import escape

            runner.console.print(f"[red]✗ {escape(profile.name)}: {escape(str(e))}[/red]")
    return oc


def _maybe_qad(runner, recipe, profile, data, calib, pruned, export, teacher, ptq, oc):
    """QAD (pipeline/stages/qad.py) when PTQ missed the budget or quantize.mode is qat: the extra variants
    to evaluate on the test split, and the quantize stage whose INT8 artifact ships."""
    from pipeline.stages.qad import choose_quantized, qad_wanted, run_qad, run_quantize_qat

    if teacher is None or not qad_wanted(recipe, ptq):
        return {}, ptq
    oc.stages["qad"] = qad = run_qad(runner, recipe, profile.backend, data, teacher, pruned, export)
    oc.stages["quantize_qat"] = qat = run_quantize_qat(runner, recipe, profile, data, calib, pruned, qad)
    chosen, mode = choose_quantized(recipe, ptq, qat)
    oc.stages["quantize_mode"] = mode  # type: ignore[assignment]
    return {"int8_ptq": built_from(ptq, "int8"), "int8_qat": built_from(qat, "int8")}, chosen


# --------------------------------------------------------------------------- summary


def _row(name, role, target, precision, accuracy, params, macs, size, sha, latency, rss, bundle=None, **extra):
    return {"name": name, "role": role, "target": target, "precision": precision, "accuracy": accuracy,
            "params": params, "macs": macs, "size_bytes": size, "sha256": sha, "latency_ms": latency,
            "peak_rss_mb": rss, **extra, "bundle": bundle}


def _na(source: str = "not measured") -> dict:
    return {"p50": None, "p90": None, "source": source}


def _sum_size(files) -> int:
    return sum(Path(f).stat().st_size for f in files)


def _host_accuracy(acc: float, n_test: int, runtime: str) -> dict:
    """Teacher/student FP32 test accuracy: run here by `runtime`, with its 95% Wilson interval."""
    ci = list(wilson_interval(round(acc * n_test), n_test)) if n_test else None
    return {"accuracy_ci95": ci,
            "accuracy_provenance": figure(acc, "measured", runtime_label(runtime), host_class(), split="test",
                                          samples=n_test or None)}


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
    n_test = int(data.metrics.get("test") or 0)
    arts = []
    tb, sb = hb.get("teacher", {}), hb.get("student", {})
    arts.append(_row("teacher", "teacher", None, "fp32", teacher.metrics["test_accuracy"], teacher.metrics["params"],
                     teacher.metrics["macs"], teacher_onnx.path("model.onnx").stat().st_size,
                     sha256_file(teacher_onnx.path("model.onnx")),
                     tb.get("latency_ms", _na()), tb.get("peak_rss_mb", {"value": None, "source": "not measured"}),
                     val_accuracy=teacher.metrics["val_accuracy"], runtime="onnxruntime",
                     **_host_accuracy(teacher.metrics["test_accuracy"], n_test, "torch"),
                     model_path=_model_path(runner, teacher_onnx.path("model.onnx"))))
    arts.append(_row("student", "student", None, "fp32", export.metrics["test_accuracy"], pruned.metrics["params"],
                     pruned.metrics["macs"], export.metrics["size_bytes"], sha256_file(export.path("model.onnx")),
                     sb.get("latency_ms", _na()), sb.get("peak_rss_mb", {"value": None, "source": "not measured"}),
                     val_accuracy=student.metrics["val_accuracy"], runtime="onnxruntime",
                     **_host_accuracy(export.metrics["test_accuracy"], n_test, "onnxruntime"),
                     pruned=bool(pruned.metrics.get("enabled")),
                     model_path=_model_path(runner, export.path("model.onnx"))))
    targets = {}
    for oc in outcomes:
        p = oc.profile
        st = oc.stages
        entry: dict[str, Any] = {"profile": p.name, "backend": p.backend, "cpu_arch": p.cpu_arch, "failed": oc.failed,
                                 "isa": {"target": p.isa, "host": host_isa()}}
        if "quantize" in st:
            q = st["quantize"]
            entry["quantize"] = {k: q.metrics.get(k) for k in ("kept_in_float", "tried", "budget", "val_accuracy_drop",
                                                               "budget_held", "frontier")}
            from pipeline.stages.qad import quantize_summary

            entry["quantize"] = quantize_summary(st, entry["quantize"])
        if oc.gate is not None:
            entry["gate"] = oc.gate
        if "compile" in st:
            entry["compile"] = st["compile"].metrics.get("compile")
        if "evaluate" in st:
            ev = st["evaluate"].metrics
            bench = st["benchmark"].metrics if "benchmark" in st else {}
            if bench.get("int8_slower_than_fp32"):
                entry["int8_slower_than_fp32"] = bench["int8_slower_than_fp32"]
            est = st.get("estimate") or {}
            for variant in ("int8", "fp32"):
                b = built_from(st.get("quantize_qat") if st.get("quantize_mode") == "qat" else st["quantize"], variant) \
                    if variant == "int8" else built_from(st["convert"], variant)
                if variant == "int8":  # the INT8 scheme chosen for the target's ISA, and what computed the accuracy
                    entry["isa"].update(scheme=b.info.get("scheme"),
                                        evaluated_with=(ev[variant].get("isa") or {}).get("evaluated_with"),
                                        mode=(ev[variant].get("isa") or {}).get("mode"))
                bm = bench.get(variant)
                latency = bm["latency_ms"] if bm else (est.get("latency_ms") if variant == "int8" else _na())
                rss = bm["peak_rss_mb"] if bm else (est.get("peak_rss_mb") if variant == "int8" else
                                                    {"value": None, "source": "not measured"})
                bundle = None
                if "bundle" in st and (st["bundle"].metrics.get("shipped") or {}).get("variant", "int8") == variant:
                    bres = st["bundle"]
                    bundle = str(bres.dir / bres.metrics["bundle"])
                label = precision_label(b.precision, b.info.get("kept_in_float"),
                                        float_compute_layers((entry.get("compile") or {})))
                arts.append(_row(f"{p.name}:{variant}", "target", p.name, label if variant == "int8" else "fp32",
                                 ev[variant]["accuracy"], pruned.metrics["params"], pruned.metrics["macs"],
                                 _sum_size(b.files), sha256_file(b.model_file), latency, rss, bundle,
                                 runtime=b.numerics, numerics=ev[variant]["numerics"],
                                 top1_agreement=ev[variant]["top1_agreement"],
                                 accuracy_ci95=ev[variant].get("accuracy_ci95"),
                                 accuracy_provenance=figure(
                                     ev[variant]["accuracy"], ev[variant].get("source"), ev[variant].get("runtime"),
                                     ev[variant].get("host"), split="test", samples=ev[variant].get("samples"),
                                     isa=ev[variant].get("isa")),
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
    stages = [{k: r.get(k) for k in ("name", "stage", "cached", "seconds", "peak_rss_mb", "key", "dir", "notes")}
              for r in runner.records]
    # Per-target stages carry "[profile]" in their label: say which target a note is about, once.
    notes = list(dict.fromkeys(
        (f"{r['name'].split('[', 1)[1].rstrip(']')}: {n}" if "[" in r["name"] else n)
        for r in runner.records for n in r["notes"]))
    for name, t in targets.items():
        g = (t.get("gate") or {}).get("test") or {}
        if g.get("drop_exceeds_budget") and (t.get("gate") or {}).get("decision") == "pass":
            notes.append(f"{name}: {g['reason']}")
    from pipeline.device_results import merge_into  # imported device results outlive a rebuilt run.json
    from pipeline.prune_int8 import summary_record

    return merge_into({
        "schema_version": RUN_SCHEMA_VERSION,
        "name": recipe.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 2),
        # the pipeline process's peak RSS over the stages that ran now (measured; None when all were cached)
        "peak_rss_mb": max((s["peak_rss_mb"] for s in stages if s.get("peak_rss_mb") is not None), default=None),
        "recipe": recipe.model_dump(mode="json"),
        "stages": stages,
        "artifacts": arts,
        "targets": targets,
        "skipped_targets": skipped,
        "failed_targets": failed,
        "notes": notes,
        "prune": summary_record(pruned.metrics),
        "environment": environment(),
        "models": {"teacher": {"spec": recipe.teacher.model,
                               "head_replaced": teacher.metrics.get("head_replaced")},
                   "student": {"spec": recipe.student.model,
                               "head_replaced": student.metrics.get("head_replaced")}},
        "data": data.metrics,
    }, runner.out)
