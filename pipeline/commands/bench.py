"""`python -m pipeline bench PATH`: benchmark what a run folder or a deployment bundle holds.

    python -m pipeline bench runs/default --json bench.json --repeats 3
    python -m pipeline bench runs/default/stages/bundle-x86-cpu/<key>/default-x86-cpu.tar.gz --json b.json
    python -m pipeline bench bundle.tar.gz --source device-measured --json device.json   # on the device

PATH is a run folder (every artifact of run.json whose model file runs on this host: the FP32 teacher and
student ONNX, each target's INT8/FP32 model), a bundle folder or a bundle .tar.gz (SHA256SUMS verified
first; a mismatch exits 1 naming the file; the archive is extracted safely into a temporary folder and
the children run the bundle's own bench.py).

Each case is timed by pipeline.measure.harness (fresh child per repeat, median of medians; threads and batch
sizes from the device profile, threads capped at this host's cores), each artifact's accuracy from
run.json (or the bundle manifest) is attached with its source, and the report follows
pipeline/measure/schema.json, so `python -m pipeline compare` can gate latency and accuracy.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import BundleError, DataError, MissingDependency, PipelineError

# The acceptance figure for stable host numbers (docs/CI.md): p50 CV between repeats. One constant with the
# measurement core's noisy flag (pipeline/measure/core.py CV_NOISY).
from pipeline.measure.core import CV_NOISY as CV_TARGET  # noqa: E402
_RUNTIME_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert",
                   "tensorrt": "tensorrt"}
SOURCES = ("measured", "host-measured", "device-measured")
_TRT_NOTE = ("ONNX Runtime CPU on the TensorRT QDQ ONNX (reference numerics): not a TensorRT figure; the engine "
             "is built and timed on the device")
# Keys of a planned case that are not bench_case arguments (added to the case after measuring).
_EXTRA_KEYS = ("notes", "artifact_label", "accuracy_samples", "device_measured")


@dataclass
class Settings:
    """What the user asked for; None means 'from the device profile / the recipe'."""

    batches: list[int] | None = None
    threads: int | None = None
    profile: str | None = None
    source: str | None = None
    only: list[str] = field(default_factory=list)


@dataclass
class Plan:
    subject: dict[str, Any]  # {"kind": "run"|"bundle", "path", "name"}
    cases: list[dict[str, Any]]  # pipeline.measure.harness.bench_case keyword arguments (+ "notes")
    skipped: list[dict[str, str]]  # {"name", "reason"}
    bench_py: Path | None = None  # a bundle's own bench.py (None: the project's)


# --------------------------------------------------------------------------- helpers


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runtime_of(model: Path) -> str | None:
    from targets.standalone.runtime import SUFFIX_RUNTIME

    return SUFFIX_RUNTIME.get(model.suffix.lower())


def runtime_missing(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (None when it can)."""
    from targets.standalone.runtime import RUNTIME_PACKAGE

    mod = _RUNTIME_MODULE.get(runtime)
    if mod is None:
        return f"unknown runtime {runtime!r}"
    if importlib.util.find_spec(mod) is None:
        return f"the {runtime} runtime is not installed here (pip install {RUNTIME_PACKAGE[runtime].split()[0]})"
    return None


def _load_profile(name: str | None, *, required: bool):
    """The device profile called ``name`` (None when absent and not required)."""
    if not name:
        return None
    from targets.profiles import load_profiles, resolve_profile

    try:
        return resolve_profile(name, load_profiles())
    except PipelineError:
        if required:
            raise
        return None


def host_source(backend: str | None, isa: str | None = None) -> str:
    """Label of a number timed on this host for a target of ``backend`` (docs/CI.md: sources) whose CPU is of
    instruction-set class ``isa``. TensorRT's host path is an estimate; running its QDQ ONNX here is a host
    measurement of the artifact; a host of another class than the target's runs other kernels (host-measured)."""
    if not backend:
        return "measured"
    from targets.isa import host_isa

    if isa and isa != host_isa():
        return "host-measured"
    try:
        from targets.base import get_backend

        src = get_backend(backend).host_source
    except (KeyError, ImportError):
        return "host-measured"
    return "host-measured" if src == "estimated" else src


def _threads_batches(settings: Settings, profile, fallback_threads: int, fallback_batches: list[int]):
    """Explicit options win; else the profile's threads (capped at this host's cores) and batch sizes."""
    threads = settings.threads
    if threads is None:
        want = profile.threads if profile is not None else fallback_threads
        threads = max(1, min(int(want), host_cores()))
    batches = settings.batches or (list(profile.batch_sizes) if profile is not None else list(fallback_batches))
    return threads, batches


def _wanted(name: str, only: list[str]) -> bool:
    return not only or any(fnmatch.fnmatchcase(name, pat) for pat in only)


def _case_name(artifact: str, batch: int) -> str:
    return f"{artifact}@b{batch}"


# --------------------------------------------------------------------------- run folders


def plan_run(run_dir: Path, settings: Settings) -> Plan:
    """Cases for every artifact of ``run_dir/run.json`` with a model file that runs on this host."""
    from pipeline.artifacts import sha256_file

    run_json = run_dir / "run.json"
    try:
        from pipeline.device_results import merge_into

        run = merge_into(json.loads(run_json.read_text()), run_dir)  # with the imported device results
        artifacts = run["artifacts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{run_json}: not a readable run summary ({e})",
                        hint="point bench at a run folder written by `python -m pipeline run`") from None
    forced = _load_profile(settings.profile, required=True)
    bcfg = (run.get("recipe") or {}).get("benchmark") or {}
    # Teacher and student: the same host settings the run's own benchmark used.
    base_threads, base_batches = int(bcfg.get("threads") or 1), [int(bcfg.get("batch") or 1)]
    test_samples = (run.get("data") or {}).get("test")
    targets = run.get("targets") or {}
    cases, skipped = [], []
    for a in artifacts:
        name = a["name"]
        if not _wanted(name, settings.only):
            continue
        rel = a.get("model_path")
        if not rel:
            raise DataError(f"{run_json}: artifact {name!r} has no model_path (run.json from an older version)",
                            hint="run the same `python -m pipeline run ... --out RUN` again: finished stages are "
                                 "reused and run.json is rewritten")
        model = Path(rel) if Path(rel).is_absolute() else run_dir / rel
        if not model.is_file():
            skipped.append({"name": name, "reason": f"model file missing: {model}"})
            continue
        runtime = runtime_of(model)
        why = runtime_missing(runtime) if runtime else f"no runtime runs {model.suffix} files"
        if why:
            skipped.append({"name": name, "reason": why})
            continue
        if a.get("sha256") and sha256_file(model) != a["sha256"]:
            raise BundleError(f"{model}: sha256 differs from run.json (artifact {name!r} changed after the run)",
                              hint="rerun `python -m pipeline run` to rebuild it", exit_code=1)
        target = a.get("target")
        backend = (targets.get(target) or {}).get("backend") if target else None
        profile = forced or _load_profile(target, required=False)
        threads, batches = _threads_batches(settings, profile, base_threads, base_batches)
        hint = None
        if runtime == "openvino":
            hint = {"bf16": "bf16", "fp32": "f32"}.get(a.get("precision"))
        notes = []
        if backend == "tensorrt":
            notes.append(_TRT_NOTE if a.get("precision") == "int8" else
                         "ONNX Runtime CPU on the FP32 ONNX: not a TensorRT figure")
        if target and profile is None and settings.threads is None:
            notes.append(f"profile {target!r} not found here: threads/batch from the recipe")
        acc, acc_source = a.get("accuracy"), None
        if acc is not None:
            who = {"teacher": "PyTorch", "student": "onnxruntime on the FP32 ONNX"}.get(a.get("role"),
                                                                                     a.get("numerics") or runtime)
            acc_source = f"run.json: {who}, test split"
        dev = a.get("device_latency_ms") if isinstance(a.get("device_latency_ms"), dict) else None
        for b in batches:
            cases.append({
                "device_measured": dev if dev and dev.get("batch") in (None, b) else None,
                "model_path": str(model), "name": _case_name(name, b), "batch": b, "threads": threads,
                "precision_hint": hint, "precision": a.get("precision"),
                "source": settings.source or host_source(backend, ((targets.get(target) or {}).get("isa") or {})
                                                         .get("target") if target else None),
                "accuracy": acc, "accuracy_source": acc_source, "accuracy_samples": test_samples,
                "profile": (forced.name if forced else target) or None, "notes": notes,
            })
    subject = {"kind": "run", "path": str(run_dir), "name": run.get("name", run_dir.name)}
    return Plan(subject, cases, skipped)


# --------------------------------------------------------------------------- bundles


def verified_copy(path: Path, workdir: Path) -> Path:
    """A verified working copy of a bundle folder or archive: what runs is exactly what SHA256SUMS lists.

    An archive is extracted safely (bundle_io.safe_extract); a folder is copied file by file from its
    SHA256SUMS (so a device-built engine, __pycache__ or anything else added to the folder is neither
    verified nor run, and the children never write into the user's bundle). Then bundle_io.open_bundle
    checks every sum (a mismatch exits 1 naming the file), the manifest and their agreement."""
    import shutil

    from pipeline.bundle_io import SUMS, open_bundle, read_checksums, safe_extract

    dest = workdir / "bundle"
    if path.is_dir():
        root = dest / path.name
        for name in [*read_checksums(path), SUMS]:  # names are checked safe (no '..', not absolute)
            src, dst = path / name, root / name
            if not src.is_file():
                break  # open_bundle names the missing file
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    else:
        root = safe_extract(path, dest)
    return open_bundle(root)


def plan_bundle(root: Path, label: str, settings: Settings, *, original: Path | None = None,
                model_override: Path | None = None) -> Plan:
    """Cases for a verified bundle copy ``root``: what the device runs (``model_override``, or a device-built
    model such as model.plan found in the ``original`` folder), else the bundle's model."""
    from pipeline.bundle_io import load_manifest

    manifest = load_manifest(root)
    model, prof = manifest["model"], manifest["profile"]
    forced = _load_profile(settings.profile, required=True)
    profile = forced or _load_profile(prof.get("name"), required=False)
    threads, batches = _threads_batches(settings, profile, int(prof.get("threads") or 1), [1])
    device_files = []
    if model_override is not None:
        if not model_override.is_file():
            raise DataError(f"{model_override}: no such model file", hint="give the engine/model built on this device")
        device_files = [model_override]
    elif original is not None:
        device_files = [original / f for f in manifest.get("device_model_files") or [] if (original / f).is_file()]
    skipped = []
    if device_files:
        files = device_files
        skipped.append({"name": model["file"], "reason": f"bundle model replaced by {device_files[0]}"})
    else:
        files = [root / model["file"]]
    acc = (manifest.get("metrics") or {}).get("accuracy") or {}
    acc_source = None
    if acc.get("value") is not None:
        acc_source = (f"bundle manifest: {acc.get('source') or 'unknown'} with "
                      f"{acc.get('numerics', model.get('runtime'))}, {acc.get('split', 'test')} split")
    name = prof["name"]
    artifact = f"{name}:{model.get('precision', 'unspecified')}"
    cases = []
    for f in files if _wanted(artifact, settings.only) else []:
        runtime = runtime_of(f)
        why = runtime_missing(runtime) if runtime else f"no runtime runs {f.suffix} files"
        if why:
            skipped.append({"name": f.name, "reason": why})
            continue
        notes = [f"{f} is not part of the verified bundle (a device-built engine or --model): SHA256SUMS does not "
                 "cover it"] if f in device_files else []
        if prof.get("backend") == "tensorrt" and runtime != "tensorrt":
            notes.append(_TRT_NOTE)
        label_f = str(f) if f in device_files else f"{label}:{f.relative_to(root).as_posix()}"
        for b in batches:
            cases.append({
                "model_path": str(f), "name": _case_name(artifact, b), "batch": b, "threads": threads,
                "precision_hint": model.get("precision_hint"), "precision": model.get("precision"),
                "source": settings.source or host_source(prof.get("backend"), prof.get("isa")),
                "accuracy": acc.get("value"), "accuracy_source": acc_source,
                "accuracy_samples": acc.get("samples"), "profile": name, "notes": notes, "artifact_label": label_f,
            })
    subject = {"kind": "bundle", "path": label, "name": manifest.get("name", root.name)}
    bench_py = root / "bench.py"
    return Plan(subject, cases, skipped, bench_py if bench_py.is_file() else None)


def plan_for(path: Path, settings: Settings, workdir: Path, model_override: Path | None = None) -> Plan:
    """Plan for a run folder, a bundle folder or a bundle archive."""
    from pipeline.bundle_io import is_archive

    hint = "give a run folder (with run.json), a bundle folder or a bundle .tar.gz"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder", hint=hint)
    if path.is_dir() and (path / "run.json").is_file():
        if model_override is not None:
            raise DataError("--model applies to a bundle, not to a run folder", hint="bench the bundle instead")
        return plan_run(path, settings)
    if path.is_dir() and ((path / "manifest.json").is_file() or (path / "SHA256SUMS").is_file()):
        return plan_bundle(verified_copy(path, workdir), str(path), settings, original=path,
                           model_override=model_override)
    if path.is_file() and is_archive(path):
        return plan_bundle(verified_copy(path, workdir), str(path), settings, model_override=model_override)
    raise DataError(f"{path}: not a run folder, a bundle folder or a bundle archive", hint=hint)


# --------------------------------------------------------------------------- measuring


def _bench_with_script(spec: dict, bench_py: Path, repeats: int, protocol: dict, say) -> dict:
    """bench_case, but the children run ``bench_py`` (a bundle's own copy of bench.py)."""
    from pipeline.measure import harness

    model = Path(spec["model_path"])
    runtime = runtime_of(model)
    notes = list(spec.get("notes") or [])
    base = None
    try:
        if runtime is None:
            raise harness.BenchError(f"no runtime runs {model}")
        base = harness.baseline_rss_mb(runtime, threads=spec["threads"], precision_hint=spec["precision_hint"])
    except (MissingDependency, harness.BenchError, RuntimeError) as e:
        if runtime != "tensorrt":
            raise
        notes.append(f"no TensorRT baseline child ({e}): peak RSS is absolute")
    results = []
    for i in range(repeats):
        results.append(harness.run_bench_child(
            model, bench_py=bench_py, batch=spec["batch"], threads=spec["threads"],
            precision_hint=spec["precision_hint"], source=spec["source"], name=spec["name"], **protocol))
        say(f"{spec['name']}: repeat {i + 1}/{repeats} p50 {results[-1]['latency_ms']['p50']:.4f} ms")
    case = harness.case_from_results(
        results, name=spec["name"], artifact=spec.get("artifact_label", str(model)), precision=spec["precision"],
        baseline_mb=base, source=spec["source"], accuracy=spec["accuracy"], accuracy_source=spec["accuracy_source"],
        profile=spec["profile"], notes=notes)
    return _finish_case(case, {**spec, "notes": []})


def _finish_case(case: dict, spec: dict) -> dict:
    """Add what bench_case takes no argument for: the plan's notes and the accuracy's sample count."""
    notes = list(spec.get("notes") or []) + list(case.get("notes") or [])
    if notes:
        case["notes"] = list(dict.fromkeys(notes))
    if spec.get("device_measured"):  # imported earlier (import-results): shown beside the host figure
        case["device_measured"] = spec["device_measured"]
    if case.get("accuracy") and spec.get("accuracy_samples"):
        case["accuracy"]["samples"] = int(spec["accuracy_samples"])
        case["accuracy"].setdefault("metric", "top-1")
    return case


def execute(plan: Plan, *, repeats: int = 3, protocol: dict | None = None, progress: bool = True) -> dict:
    """Measure the plan's cases; return a validated benchmark report (schema.json)."""
    from pipeline.measure import harness

    protocol = {k: v for k, v in (protocol or {}).items() if v is not None}
    if plan.bench_py is not None:
        def say(msg: str) -> None:
            if progress:
                print(msg, file=sys.stderr, flush=True)

        from pipeline.reference_kernel import Recorder

        reference = Recorder([s.get("threads") for s in plan.cases])
        reference.measure_once()  # before and after the cases (needs ONNX Runtime; else recorded as unavailable)
        cases = [_bench_with_script(s, plan.bench_py, repeats, protocol, say) for s in plan.cases]
        reference.measure_once()
        report = harness.make_report(cases)
        report["reference_kernel"] = reference.record()
    else:
        specs = [{k: v for k, v in s.items() if k not in _EXTRA_KEYS} for s in plan.cases]
        report = harness.bench_many(specs, progress=progress, repeats=repeats, **protocol)
        for case, spec in zip(report["cases"], plan.cases):
            _finish_case(case, spec)
    report["tool"] = {"name": "python -m pipeline bench", "version": harness.HARNESS_VERSION}
    report["subject"] = plan.subject
    if plan.skipped:
        report["skipped"] = plan.skipped
    harness.validate(report, "benchmark report")
    return report


# --------------------------------------------------------------------------- output


def cv_lines(report: dict) -> list[str]:
    """One line per case: the acceptance figure (p50 CV between repeats)."""
    env = report.get("environment") or {}
    load, cores = env.get("load_average_1m"), env.get("logical_cores")
    busy = f" (1-min load average {load:.1f} on {cores} cores)" if load is not None and cores else ""
    lines = []
    for c in report["cases"]:
        lat = c["latency_ms"]
        n = lat.get("n_repeats", len(c.get("repeats", [])))
        if n < 2:
            lines.append(f"{c['name']}: p50 CV across {n} repeat: n/a (use --repeats 3)")
            continue
        cv = lat["cv_between_repeats"]
        flag = "" if cv <= CV_TARGET else (f"  above {CV_TARGET:.0%}: a noisy host{busy}; rerun on a quiet "
                                          "machine, or raise --repeats / --min-time")
        lines.append(f"{c['name']}: p50 CV across {n} repeats: {cv * 100:.2f}%{flag}")
    return lines


def print_report(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    subj = report.get("subject") or {}
    table = Table(title=f"bench {subj.get('kind', '')} {subj.get('name', '')}".strip())
    for col, just in (("case", "left"), ("runtime", "left"), ("precision", "left"), ("batch", "right"),
                      ("threads", "right"), ("p50 ms", "right"), ("p90 ms", "right"), ("p99 ms", "right"),
                      ("CV repeats", "right"), ("peak MB", "right"), ("latency/memory source", "left"),
                      ("accuracy", "right"), ("accuracy source", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]  # "left"/"right" literals
    for c in report["cases"]:
        lat, rss = c["latency_ms"], c["peak_rss_mb"]
        mem = rss["value"] if rss["value"] is not None else rss["absolute_mb"]
        acc = c.get("accuracy") or {}
        table.add_row(
            escape(c["name"]), c["runtime"], c["precision"], str(c["batch"]), str(c["threads"] or "-"),
            f"{lat['p50']:.4f}", f"{lat['p90']:.4f}", f"{lat['p99']:.4f}", f"{lat['cv_between_repeats'] * 100:.2f}%",
            f"{mem:.1f}" + ("" if rss["value"] is not None else " abs"), c["source"],
            "—" if not acc else f"{acc['value']:.4f}", escape(acc.get("source", "—")))
    console.print(table)
    for line in cv_lines(report):
        console.print(line, markup=False, highlight=False)
    seen: dict[str, list[str]] = {}
    for c in report["cases"]:  # one line per note, naming the cases it applies to
        for n in c.get("notes") or []:
            seen.setdefault(n, []).append(c["name"])
    for n, names in seen.items():
        console.print(f"note ({', '.join(names)}): {n}", markup=False, highlight=False)
    for s in report.get("skipped") or []:
        console.print(f"skipped {s['name']}: {s['reason']}", markup=False, highlight=False)
    for c in report["cases"]:
        d = c.get("device_measured")
        if d:
            console.print(f"{c['name']}: device-measured p50 {d.get('p50')} ms on {d.get('device')} "
                          f"({d.get('runtime')}, imported {d.get('imported_at')})", markup=False, highlight=False)


# --------------------------------------------------------------------------- CLI


def _positive(text: str) -> int:
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def cmd_bench(args) -> int:
    from pipeline.artifacts import atomic_write_json
    from pipeline.console import console as _console

    path = Path(args.path)
    settings = Settings(batches=args.batch, threads=args.threads, profile=args.profile, source=args.source,
                        only=args.only or [])
    protocol = {"warmup": args.warmup, "min_iters": args.min_iters, "min_time": args.min_time,
                "max_time": args.max_time}
    quiet = os.environ.get("PIPELINE_QUIET") == "1" or args.no_progress
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        plan = plan_for(path, settings, Path(tmp), Path(args.model) if args.model else None)
        if not plan.cases:
            reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in plan.skipped) or "nothing matched --only"
            err = MissingDependency if any("not installed" in s["reason"] for s in plan.skipped) else DataError
            raise err(f"{path}: no model here can be benchmarked on this host ({reasons})",
                      hint="install the runtime named above, or check --only")
        report = execute(plan, repeats=args.repeats, protocol=protocol, progress=not quiet)
    if args.json_out:
        atomic_write_json(args.json_out, report)
    console = _console()
    print_report(report, console)
    if args.json_out:
        console.print(f"report: {args.json_out}", markup=False, highlight=False)
    return 0


def add_parser(sub) -> None:
    """Register `bench` on the CLI's subparsers."""
    from pipeline.measure import harness

    p = sub.add_parser("bench", help="benchmark a run folder or a bundle (schema-valid JSON report)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="run folder, bundle folder or bundle .tar.gz")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="write the benchmark report here")
    p.add_argument("--repeats", type=_positive, default=3, help="fresh child processes per case (3)")
    p.add_argument("--batch", type=_positive, nargs="+", help="batch sizes (default: the device profile's)")
    p.add_argument("--threads", type=_positive, help="runtime threads (default: the profile's, capped at this "
                                                     "host's cores)")
    p.add_argument("--profile", help="take threads/batch sizes from this device profile for every artifact")
    p.add_argument("--only", action="append", metavar="GLOB", help="artifacts to bench, e.g. 'student' or "
                                                                    "'*:int8' (repeatable)")
    p.add_argument("--source", choices=SOURCES, help="label of the figures (default: measured / host-measured by "
                                                     "target; device-measured on the device)")
    p.add_argument("--warmup", type=int, default=harness.DEFAULT_WARMUP)
    p.add_argument("--min-iters", type=_positive, default=harness.DEFAULT_MIN_ITERS)
    p.add_argument("--min-time", type=float, default=harness.DEFAULT_MIN_TIME, help="seconds of timed runs per "
                                                                                   "repeat at least (1.0)")
    p.add_argument("--max-time", type=float, default=harness.DEFAULT_MAX_TIME)
    p.add_argument("--model", metavar="FILE", help="bundle only: time this model instead of the bundle's, e.g. the "
                                                  "engine build_engine.py built on the device (the verified bundle "
                                                  "gives the case name, accuracy and bench.py)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_bench)
