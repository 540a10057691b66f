"""Per-target stages: convert (FP32 in the backend's format) -> quantize (with the accuracy
budget's fallback) -> compile -> evaluate -> benchmark. The bundle stage is in bundle.py.

Stage names carry the profile name (`quantize-jetson-orin-nano`) so every target has its own
cache entries.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.select import load_calibration_set
from pipeline import strict_json
from pipeline.provenance import accuracy_source, host_class, runtime_label
from pipeline.mixed_precision import CandidateSkipped
from pipeline.numerics import Numerics, numerics_for
from pipeline.numerics import logits as numerics_logits
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits
from pipeline.stages.models import load_model
from pipeline.stats import paired_change, wilson_interval
from targets.base import Backend, BuiltModel, CalibrationSpec, QuantizeRequest, get_backend
from targets.isa import host_isa


log = logging.getLogger(__name__)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


BACKEND_TOOLS = {
    "onnxruntime": ["onnxruntime", "onnx"],
    "openvino": ["openvino", "nncf", "onnx"],
    "litert": ["litert-torch", "ai-edge-litert", "torch", "torchao"],
    "tensorrt": ["onnxruntime", "onnx", "tensorrt", "tensorrt-rtx"],
}


@dataclass
class TargetOutcome:
    profile: Any
    stages: dict[str, StageResult] = field(default_factory=dict)
    failed: str | None = None  # why this target stopped (a gate), else None
    gate: dict[str, Any] | None = None  # what the accuracy gate decided and why (pipeline.quant_gate)


def _built_to_json(built: BuiltModel, root: Path) -> dict:
    return {"model_file": built.model_file.relative_to(root).as_posix(),
            "files": [f.relative_to(root).as_posix() for f in built.files],
            "precision": built.precision, "numerics": built.numerics, "info": built.info}


def built_from(res: StageResult, variant: str) -> BuiltModel:
    d = res.meta["metrics"][variant]
    return BuiltModel(model_file=res.dir / d["model_file"], files=[res.dir / f for f in d["files"]],
                      precision=d["precision"], numerics=d["numerics"], info=d["info"])


def host_threads(profile, bench_cfg) -> int:
    want = bench_cfg.threads or profile.threads
    return max(1, min(want, os.cpu_count() or 1))


def logits_of(model_file: Path, x: np.ndarray, threads: int | None = None, batch: int = 64,
              numerics: Numerics | None = None) -> np.ndarray:
    """Logits with `numerics` (pipeline/numerics.py; default: this host's own kernels)."""
    n = numerics or Numerics("native", "native", None, None)
    return numerics_logits(model_file, x, threads, n, batch)


def target_numerics(recipe, profile, backend: Backend, model_file: Path | None = None) -> Numerics:
    """How this target's INT8 accuracy is computed on this host (exact, native or emulated)."""
    return numerics_for(profile, backend, model_file, emulate=recipe.quantize.emulate)


def figure_source(backend: Backend, profile, numerics_used: str, n: Numerics, integer: bool = True) -> str:
    """`measured` only for the target's own runtime on a host of the target's arch and, for INT8 figures (whose
    kernels depend on it), of the target's instruction-set class."""
    src = accuracy_source(backend.host_source, profile.cpu_arch, numerics_used)
    if integer and (n.mode != "native" or (n.target_isa and n.target_isa != n.host_isa)):
        return "host-measured"
    return src


def _request(recipe, profile, export: StageResult, calib: StageResult, model_stage: StageResult, out: Path,
             exclude: list[str]) -> QuantizeRequest:
    c = recipe.calibration
    shape = tuple(json.loads(export.path("input.json").read_text())["shape"]) if export.path("input.json").exists() \
        else None
    x = load_calibration_set(calib.path("calibration.npz"))
    return QuantizeRequest(fp32_onnx=export.path("model.onnx"), torch_model=load_model(model_stage.dir),
                           input_shape=shape or (1, *x.shape[1:]), calibration=x,
                           calib=CalibrationSpec(c.method, c.percentile, c.bins), profile=profile, out_dir=out,
                           exclude_layers=list(exclude), threads=host_threads(profile, recipe.benchmark))


def backend_code(backend: Backend) -> tuple:
    """Modules whose code decides a target stage's output: the backend, the protocol, the shared loader."""
    import importlib

    import targets.base
    import targets.standalone.runtime

    return (importlib.import_module(type(backend).__module__), targets.base, targets.standalone.runtime)


def _profile_key(profile) -> dict:
    return profile.model_dump(mode="json")


def run_convert(runner: Runner, recipe, profile, backend: Backend, export, calib, model_stage) -> StageResult:
    def fn(ctx: StageContext) -> None:
        built = backend.fp32(_request(recipe, profile, export, calib, model_stage, ctx.dir / "fp32", []))
        ctx.metrics["fp32"] = _built_to_json(built, ctx.dir)

    return runner.stage(f"convert-{profile.name}", fn, config={"profile": _profile_key(profile)},
                        inputs={"export": export, "model": model_stage}, tools=BACKEND_TOOLS[profile.backend],
                        code=backend_code(get_backend(profile.backend)),
                        label=f"convert [{profile.name}]")


def run_quantize(runner: Runner, recipe, profile, backend: Backend, data, export, calib, model_stage) -> StageResult:
    """INT8 with the accuracy budget defended on the validation split (the test split stays unseen)."""
    q = recipe.quantize

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        ref = _torch_val_logits(model_stage, splits)
        ref_acc = float((ref.argmax(1) == splits.y_val).mean())
        threads = host_threads(profile, recipe.benchmark)

        quantizable: list[str] = []

        def attempt(exclude: list[str], tag: str) -> tuple[BuiltModel, float]:
            """Build and evaluate one configuration. A candidate (some layers kept in float) that the backend
            refuses, or that would leave no INT8 layer, raises CandidateSkipped: a fallback or search loop
            records it and goes on. The all-INT8 model itself is not a candidate: its failure is the stage's."""
            out = ctx.dir / tag
            if out.exists():
                shutil.rmtree(out)
            if exclude:
                if not quantizable:
                    quantizable.extend(backend.quantizable_layers(export.path("model.onnx"), load_model(model_stage.dir)))
                if set(quantizable) <= set(exclude):
                    raise CandidateSkipped("keeps every quantizable layer in float: no INT8 layer would be left")
                try:
                    built = backend.quantize(_request(recipe, profile, export, calib, model_stage, out, exclude))
                except Exception as e:  # any backend's refusal (lint, converter, NNCF): a skip, never a crash
                    log.warning("quantize candidate %s refused by %s", exclude, profile.backend, exc_info=True)
                    raise CandidateSkipped(f"{profile.backend} refused it: {one_line(e)}") from None
            else:
                built = backend.quantize(_request(recipe, profile, export, calib, model_stage, out, exclude))
            n = target_numerics(recipe, profile, backend, built.model_file)
            acc = float((logits_of(built.model_file, splits.x_val, threads, numerics=n).argmax(1)
                         == splits.y_val).mean())
            built.info["evaluated_with"] = n.to_json()
            return built, ref_acc - acc

        built, drop = attempt([], "int8")
        tried = [{"kept_in_float": [], "val_accuracy_drop": round(drop, 5)}]
        fallback, frontier = None, None
        if drop > q.max_accuracy_drop and q.fallback and q.max_fallback_layers > 0:
            if q.fallback_objective == "latency":  # mixed precision by measured latency
                from pipeline.mixed_precision import latency_fallback

                layers = backend.quantizable_layers(export.path("model.onnx"), load_model(model_stage.dir))
                fallback, frontier = latency_fallback(layers, attempt, built, drop, ref_acc, q, tried, backend,
                                                      splits.x_val[:1], threads, profile.isa)
            else:
                fallback = _fallback(backend, export, model_stage, attempt, drop, q, tried)
            if fallback is not None:
                built, drop = fallback
        ctx.metrics.update(int8=_built_to_json(built, ctx.dir), val_accuracy_fp32=ref_acc, frontier=frontier,
                           val_accuracy_drop=drop, budget=q.max_accuracy_drop, tried=tried,
                           kept_in_float=list(built.info.get("kept_in_float", [])),
                           budget_held=drop <= q.max_accuracy_drop)
        # Remove the attempts that were not kept.
        keep = built.model_file.parent
        for d in ctx.dir.iterdir():
            if d.is_dir() and d != keep:
                shutil.rmtree(d)

    # test_gate decides on the test split after evaluate: it does not change the quantized model.
    config = {"profile": _profile_key(profile), "quantize": q.model_dump(mode="json", exclude={"test_gate", "mode", "qat"}),
              "calibration": recipe.calibration.model_dump(mode="json"),
              # the kernels that compute the accuracy (another host class may compute other numbers)
              "numerics": target_numerics(recipe, profile, backend).to_json()}
    import pipeline.mixed_precision

    return runner.stage(f"quantize-{profile.name}", fn, config=config,
                        inputs={"export": export, "calibration": calib, "model": model_stage, "data": data},
                        tools=BACKEND_TOOLS[profile.backend],
                        code=(*backend_code(get_backend(profile.backend)), pipeline.mixed_precision),
                        label=f"quantize [{profile.name}]")


def _torch_val_logits(model_stage: StageResult, splits) -> np.ndarray:
    from pipeline.train import predict

    return predict(load_model(model_stage.dir), splits.x_val)


def _fallback(backend: Backend, export: StageResult, model_stage: StageResult, attempt, drop, q, tried):
    """Per-layer sensitivity (accuracy recovered by keeping that one layer in float), then keep the
    most sensitive layers in float one by one until the budget holds. Skipped candidates are recorded."""
    layers = backend.quantizable_layers(export.path("model.onnx"), load_model(model_stage.dir))
    sens = []
    for i, layer in enumerate(layers):
        try:
            _, d = attempt([layer], f"sens-{i}")
        except CandidateSkipped as e:
            tried.append({"kept_in_float": [layer], "val_accuracy_drop": None, "kind": "sensitivity",
                          "skipped": e.reason})
            continue
        sens.append((drop - d, layer))
        tried.append({"kept_in_float": [layer], "val_accuracy_drop": round(d, 5), "kind": "sensitivity"})
    sens.sort(key=lambda t: -t[0])
    kept: list[str] = []
    for gain, layer in sens[:q.max_fallback_layers]:
        kept.append(layer)
        try:
            built, d = attempt(list(kept), f"keep-{len(kept)}")
        except CandidateSkipped as e:
            tried.append({"kept_in_float": list(kept), "val_accuracy_drop": None, "kind": "fallback",
                          "skipped": e.reason})
            kept.pop()  # go on with the next layer instead of this one
            continue
        tried.append({"kept_in_float": list(kept), "val_accuracy_drop": round(d, 5), "kind": "fallback"})
        if d <= q.max_accuracy_drop:
            return built, d
    return None


def run_compile(runner: Runner, recipe, profile, backend: Backend, quant: StageResult) -> StageResult:
    def fn(ctx: StageContext) -> None:
        built = built_from(quant, "int8")
        info = backend.compile(built, profile, ctx.dir)
        ctx.metrics["compile"] = info
        for n in info.get("notes", []):
            ctx.notes.append(n)

    return runner.stage(f"compile-{profile.name}", fn, config={"profile": _profile_key(profile)},
                        inputs={"quantize": quant}, tools=BACKEND_TOOLS[profile.backend],
                        code=backend_code(get_backend(profile.backend)),
                        label=f"compile [{profile.name}]")


def run_evaluate(runner: Runner, recipe, profile, data: StageResult, export: StageResult,
                 variants: dict[str, BuiltModel], inputs: dict[str, StageResult]) -> StageResult:
    """Every artifact evaluated by its own runtime on the test split, against the FP32 student."""

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        backend = get_backend(profile.backend)
        ref = np.load(export.path("test_logits.npy"))
        student_acc = float((ref.argmax(1) == splits.y_test).mean())
        threads = host_threads(profile, recipe.benchmark)
        for name, built in variants.items():
            n = target_numerics(recipe, profile, backend, built.model_file) if built.precision != "fp32" else \
                Numerics("native", f"native {host_isa() or 'unknown ISA'}", profile.isa, host_isa())
            got = logits_of(built.model_file, splits.x_test, threads, numerics=n)
            acc = float((got.argmax(1) == splits.y_test).mean())
            # A small split's accuracy carries its uncertainty; the paired change feeds the test gate.
            change = paired_change(splits.y_test, ref.argmax(1), got.argmax(1))
            ctx.metrics[name] = {
                "accuracy": acc, "accuracy_drop_vs_fp32_student": student_acc - acc,
                "accuracy_ci95": list(wilson_interval(change.candidate_correct, change.samples)),
                "paired_vs_fp32_student": change.to_json(),
                "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                "max_abs_logit_diff": float(np.abs(got - ref).max()),
                "numerics": built.numerics, "samples": int(len(got)),
                "source": figure_source(backend, profile, built.numerics, n, integer=built.precision != "fp32"),
                "runtime": runtime_label(built.numerics), "host": host_class(),
                "isa": {"target": profile.isa, "host": host_isa(), "evaluated_with": n.label, "mode": n.mode},
            }
            if built.precision != "fp32":
                ctx.notes.append(f"{name} accuracy computed with {n.label}")
        ctx.metrics["fp32_student_accuracy"] = student_acc
        ctx.metrics["fp32_student_accuracy_ci95"] = list(
            wilson_interval(int((ref.argmax(1) == splits.y_test).sum()), len(splits.y_test)))

    config = {"profile": profile.name, "isa": profile.isa,
              "numerics": target_numerics(recipe, profile, get_backend(profile.backend)).to_json()}
    return runner.stage(f"evaluate-{profile.name}", fn, config=config,
                        inputs={"data": data, "export": export, **inputs}, tools=BACKEND_TOOLS[profile.backend],
                        code=backend_code(get_backend(profile.backend)),
                        label=f"evaluate [{profile.name}]")


def run_benchmark(runner: Runner, recipe, name: str, label: str, cases: list[dict], inputs: dict[str, StageResult],
                  extra_config: Any = None) -> StageResult:
    """Measure each case in child processes (pipeline/measure/harness.py); cached on the artifacts' hashes
    and this host, since a measurement is only reusable on the same machine."""
    b = recipe.benchmark

    def fn(ctx: StageContext) -> None:
        from pipeline.measure.harness import bench_case

        results = {}
        for case in cases:
            results[case["name"]] = bench_case(
                case["model"], name=case["name"], batch=b.batch, threads=case["threads"],
                precision_hint=case.get("precision_hint"), repeats=b.repeats, warmup=b.warmup,
                min_iters=b.min_iters, min_time=b.min_time_s, source=case["source"])
        (ctx.dir / "bench.json").write_text(strict_json.dumps(results, indent=2))
        ctx.metrics.update({k: _bench_summary(v) for k, v in results.items()})
        slower = int8_slower_than_fp32(ctx.metrics)
        if slower:
            ctx.metrics["int8_slower_than_fp32"] = slower
            ctx.notes.append("warning: " + slower["reason"])

    from pipeline.runner import environment

    env = environment()
    host = {"cpu": env["cpu"], "cores": env["cores"], "node": os.uname().nodename}
    config = {"benchmark": b.model_dump(mode="json"), "cases": [{k: v for k, v in c.items() if k != "model"}
                                                                for c in cases], "host": host,
              "extra": extra_config}
    return runner.stage(name, fn, config=config, inputs=inputs, tools=["onnxruntime", "openvino", "ai-edge-litert"],
                        # harness, runtime and bench.py: in the closure of this module (code_closure)
                        label=label)


SPREAD_K = 2.0  # INT8 counts as slower only beyond this many times the measured relative spread


def shipped_variant(ship: str, bench_metrics: dict | None) -> tuple[str, str]:
    """(variant the bundle ships, why): quantize.ship, and for `faster` the benchmark's INT8-slower record."""
    if ship == "fp32":
        return "fp32", "quantize.ship=fp32"
    if ship == "int8":
        return "int8", "quantize.ship=int8"
    slower = (bench_metrics or {}).get("int8_slower_than_fp32")
    if slower:
        return "fp32", (f"INT8 measured slower than FP32 here ({slower['int8_p50_ms']:.4g} vs {slower['fp32_p50_ms']:.4g} "
                        "ms p50): the faster FP32 model ships (quantize.ship=int8 ships INT8 anyway)")
    return "int8", "INT8 is the faster precision (or it was not measured here)"


def int8_slower_than_fp32(bench: dict) -> dict | None:
    """A record when the measured INT8 p50 is not faster than the FP32 p50 (same runtime, batch, host) by more
    than the measurements' own spread: INT8 p50 >= FP32 p50 * (1 + SPREAD_K * max(cv_between_repeats of the two))
    (with one repeat there is no spread: INT8 p50 >= FP32 p50). None when faster, or not both measured."""
    i8, f32 = (bench.get("int8") or {}).get("latency_ms"), (bench.get("fp32") or {}).get("latency_ms")
    if not i8 or not f32 or not i8.get("p50") or not f32.get("p50"):
        return None
    if (bench["int8"].get("batch"), i8.get("runtime")) != (bench["fp32"].get("batch"), f32.get("runtime")):
        return None
    spread = max(float(i8.get("cv_between_repeats") or 0.0), float(f32.get("cv_between_repeats") or 0.0))
    limit = f32["p50"] * (1 + SPREAD_K * spread)
    if i8["p50"] < limit:
        return None
    ratio = i8["p50"] / f32["p50"]
    spread_txt = f", beyond {SPREAD_K:g}x the measured spread ({spread:.1%})" if spread else ""
    return {"int8_p50_ms": i8["p50"], "fp32_p50_ms": f32["p50"], "ratio": round(ratio, 3), "spread": spread,
            "reason": f"INT8 is not faster than FP32 here: p50 {i8['p50']:.4g} ms vs {f32['p50']:.4g} ms "
                      f"({ratio:.2f}x{spread_txt}, {i8.get('runtime')}, batch {bench['int8'].get('batch')}); the "
                      "FP32 model is in the run as well: ship it, or keep the slow layers in float "
                      "(quantize.fallback_objective=latency)"}


def _bench_summary(case: dict) -> dict:
    lat = case["latency_ms"]
    rss = case.get("peak_rss_mb") or {}
    runtime = " ".join(str(v) for v in (case.get("runtime"), case.get("runtime_version")) if v) or None
    where = {"runtime": runtime or "unknown", "host": host_class()}
    return {"latency_ms": {"p50": lat["p50"], "p90": lat["p90"], "p99": lat.get("p99"),
                           "cv_between_repeats": lat.get("cv_between_repeats"), "ci95_ms": lat.get("ci95_ms"),
                           "median_range_ms": lat.get("median_range_ms"),
                           "median_range_coverage": lat.get("median_range_coverage"),
                           "repeats": lat.get("n_repeats"), "source": case["source"], **where},
            "peak_rss_mb": {"value": rss.get("value"), "source": rss.get("source", case["source"]), **where},
            "file_size_bytes": case.get("file_size_bytes"), "threads": case.get("threads"),
            "batch": case.get("batch")}


def estimate_for(profile, onnx_file: Path, precision: str) -> dict:
    """Roofline figures from the profile's published peaks: labelled `estimated`, never measured."""
    from targets.estimate import estimate_latency, model_cost

    cost = model_cost(onnx_file)
    est = estimate_latency(cost, profile, precision=precision)
    mem_mb = (cost.weight_bytes + cost.activation_bytes) / 1e6
    where = {"runtime": "roofline estimate (targets/estimate.py), not run",
             "host": f"{profile.name} ({profile.cpu_arch}), from the profile's published peaks"}
    return {"latency_ms": {"p50": round(est.latency_ms, 4), "p90": None, "source": "estimated",
                           "bound": est.bound, "precision": est.precision, **where},
            "peak_rss_mb": {"value": round(mem_mb, 3), "source": "estimated", **where,
                            "note": "weights + activations moved; excludes the runtime itself"},
            "macs": cost.macs}
