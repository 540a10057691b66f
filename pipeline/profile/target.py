"""Profile one target of a run folder on this host and store it in run.json (`targets.<profile>.layer_profile`;
`targets.<profile>.profile` already holds the profile name)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from pipeline.errors import ConfigError, DataError, MissingDependency
from pipeline.profile.mapping import OnnxIndex
from pipeline.profile.intervals import RepeatSettings, interval_doc, repeat_profiles

HOST_BACKENDS = ("onnxruntime", "openvino", "litert")


def host_name() -> str:
    from pipeline.runner import environment

    env = environment()
    return f"{env['cpu']} ({env['cores']} cores, {platform.machine()})"


def _artifact(run: dict, profile: str, variant: str) -> dict | None:
    return next((a for a in run.get("artifacts", []) if a.get("target") == profile
                 and a.get("name") == f"{profile}:{variant}"), None)


def _model_file(run_dir: Path, art: dict) -> Path:
    p = Path(art.get("model_path") or "")
    p = p if p.is_absolute() else run_dir / p
    if not p.is_file():
        raise DataError(f"{art['name']}: model file {p} is missing from the run folder",
                        hint="run the pipeline again (finished stages are reused)")
    return p


def resolve_target(run: dict, name: str) -> str:
    """A profile name or alias -> the profile name used in run.json."""
    if name in (run.get("targets") or {}):
        return name
    from targets.profiles import load_profiles, resolve_profile

    prof: str | None
    try:
        prof = resolve_profile(name, load_profiles()).name
    except Exception:  # noqa: BLE001 - reported below with the run's targets
        prof = None
    if prof is None or prof not in (run.get("targets") or {}):
        raise ConfigError(f"target {name!r} is not in this run (targets: {', '.join(run.get('targets') or {}) or 'none'})",
                          hint="pass one of the run's targets to --target")
    return prof


def default_threads(run: dict, profile_name: str) -> int:
    """The benchmark's threads for this target: recipe benchmark.threads or the profile's, capped at the cores."""
    from targets.profiles import load_profiles, resolve_profile

    want = ((run.get("recipe") or {}).get("benchmark") or {}).get("threads")
    if not want:
        try:
            want = resolve_profile(profile_name, load_profiles()).threads
        except Exception:  # noqa: BLE001
            want = 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, min(int(want), cores))


def profile_models(backend: str, models: dict[str, Path], threads: int, iterations: int, warmup: int) -> dict:
    """{variant: VariantProfile} for the float and int8 model files of a host backend."""
    import importlib
    import importlib.util

    mod_name = {"onnxruntime": "ort", "openvino": "openvino", "litert": "litert"}[backend]
    pkg = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}[backend]
    if importlib.util.find_spec(pkg) is None:
        raise MissingDependency(f"{pkg} is not installed: cannot profile a {backend} target here",
                                hint=f"pip install -e '.[{'tflite' if backend == 'litert' else backend}]'")
    mod = importlib.import_module(f"pipeline.profile.{mod_name}")
    return {v: mod.profile(p, threads, iterations=iterations, warmup=warmup) for v, p in models.items()}


def profile_target(run_dir: Path, run: dict, target: str, threads: int | None = None, iterations: int = 200,
                   warmup: int = 20, repeat: RepeatSettings | None = None) -> dict:
    """The target's per-layer profile: the backend profiler run in repeats (pipeline/profile/intervals.py), every
    row with its 95% interval; `iterations` profiled inferences per model per repeat."""
    prof = resolve_target(run, target)
    t = run["targets"][prof]
    backend = t.get("backend")
    if backend == "tensorrt":
        raise ConfigError(f"{prof}: a TensorRT engine cannot be profiled on this host (it needs the device's GPU)",
                          hint="on the device run the bundle's build_engine.sh (it exports profile.json and "
                               "layers.json), then `python -m pipeline import-results RUN_DIR trt_profile.json`")
    if backend not in HOST_BACKENDS:
        raise ConfigError(f"{prof}: no host profiler for backend {backend!r}", hint="profile an onnxruntime, "
                          "openvino or litert target")
    models = {}
    for variant, art_variant in (("float", "fp32"), ("int8", "int8")):
        art = _artifact(run, prof, art_variant)
        if art is not None:
            models[variant] = _model_file(run_dir, art)
    if "int8" not in models:
        raise DataError(f"{prof}: the run has no INT8 artifact for this target", hint="run the pipeline again")
    student = next((a for a in run.get("artifacts", []) if a.get("role") == "student"), None)
    index = OnnxIndex.from_onnx(_model_file(run_dir, student)) if student else None
    threads = threads or default_threads(run, prof)
    from pipeline.commands.bench import host_source

    order = [0]

    def run_once() -> dict:
        # float and INT8 alternate which goes first, so a drift of the host favours neither
        names = list(models) if order[0] % 2 == 0 else list(models)[::-1]
        order[0] += 1
        got = profile_models(backend, {v: models[v] for v in names}, threads, iterations, warmup)
        return {v: got[v] for v in models}

    repeats, info = repeat_profiles(run_once, index, repeat or RepeatSettings())
    doc = interval_doc(prof, backend, host_source(backend, (t.get("isa") or {}).get("target")), host_name(), threads,
                       repeats, index, info)
    bench = {v: (_artifact(run, prof, a) or {}).get("latency_ms", {}).get("p50") for v, a in
             (("float", "fp32"), ("int8", "int8"))}
    doc["benchmark_p50_ms"] = bench  # the run's own benchmark (child processes, Model.run), for comparison
    doc["models"] = {v: str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p) for v, p in models.items()}
    return doc


def store_profile(run_dir: Path, doc: dict) -> None:
    """run.json `targets.<profile>.layer_profile` = doc (rewritten atomically)."""
    from pipeline.artifacts import atomic_write_json

    path = run_dir / "run.json"
    from pipeline import strict_json

    run = strict_json.loads(path.read_text(encoding="utf-8"), path, hint="rerun `python -m pipeline run` to rewrite it")
    run.setdefault("targets", {}).setdefault(doc["target"], {})["layer_profile"] = doc
    atomic_write_json(path, run)
