"""Host benchmark harness: every repeat of every case runs ``targets/standalone/bench.py`` in a fresh
child process, so one case cannot warm caches or grow memory for the next, and the numbers come from the
same script a deployment bundle runs on its device.

    from pipeline.measure.harness import bench_case, bench_many
    case = bench_case("student_int8.xml", name="student-int8-ov", threads=2, repeats=3)
    report = bench_many([{"model_path": "a.onnx", "name": "a"}, {"model_path": "a.xml", "name": "a-ov"}])

    python -m pipeline.measure.harness a.onnx a.xml --threads 2 --repeats 3 --json report.json

Memory: the peak RSS of each case child comes from ``os.wait4`` (ru_maxrss), taken by a tiny launcher
process so that the harness's own size does not leak into it (see ``_LAUNCHER``); one baseline child per
(runtime, threads, precision hint, interpreter) runs the same script on a trivial one-op model of the same
runtime, and the case's ``peak_rss_mb.value`` is the median child peak minus that baseline peak (what the
model itself costs, without the interpreter, numpy and the runtime's own libraries and plugins).

Latency: median of medians over the repeats (see schema.json "caseLatency").
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import DataError, MissingDependency, PipelineError
from pipeline import strict_json
from pipeline.measure.core import median_ci

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_PY = REPO_ROOT / "targets" / "standalone" / "bench.py"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
SCHEMA_VERSION = "1"
HARNESS_VERSION = "1"
BASELINE_VERSION = "v1"  # bump when the trivial models change: the cache key includes it

DEFAULT_WARMUP = 20
DEFAULT_MIN_ITERS = 50
DEFAULT_MIN_TIME = 1.0
DEFAULT_MAX_TIME = 30.0

_SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert", ".plan": "tensorrt", ".engine": "tensorrt"}
_BASELINE_SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml", "litert": ".tflite", "tensorrt": ".plan"}


class BenchError(PipelineError):
    """A benchmark child failed (bad model, runtime error, timeout)."""

    exit_code = 2


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
_SCHEMA: dict | None = None


def load_schema() -> dict:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_PATH.read_text())
    return _SCHEMA


def validation_errors(doc: Any) -> list[str]:
    """Messages (``path: problem``) for everything in ``doc`` that breaks schema.json; [] when valid."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a test/CI dependency
        raise MissingDependency("validating benchmark JSON needs jsonschema", hint="pip install jsonschema") from None
    schema = load_schema()
    # Validate against the branch the document names, so the messages are precise (no oneOf noise).
    kind = doc.get("kind") if isinstance(doc, dict) else None
    target = {"case-result": "caseResult", "benchmark-report": "report"}.get(str(kind))
    if target is None:
        return [f"kind: expected 'case-result' or 'benchmark-report', got {kind!r}"]
    sub = {"$ref": f"#/$defs/{target}", "$defs": schema["$defs"]}
    validator = jsonschema.Draft202012Validator(sub)
    errors = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        errors.append(f"{where}: {err.message}")
    return errors


def validate(doc: Any, what: str = "benchmark JSON") -> None:
    """Raise DataError (exit code 2) when ``doc`` does not follow schema.json."""
    errors = validation_errors(doc)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(f"{what} does not follow pipeline/measure/schema.json: {errors[0]}{more}")


# ---------------------------------------------------------------------------------------------
# Trivial baseline models
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    from pipeline.artifacts import user_cache_dir

    return user_cache_dir("bench-baselines", "EDGE_BENCH_CACHE")


def write_tflite_single_op(
    path: str | os.PathLike,
    *,
    op: str = "RELU",
    shape: tuple[int, ...] = (1, 1, 4, 4),
    in_dtype: str = "float32",
    out_dtype: str = "float32",
    in_quant: tuple[float, int] | None = None,
    out_quant: tuple[float, int] | None = None,
) -> Path:
    """Write a one-op .tflite (RELU, QUANTIZE, DEQUANTIZE...) with the flatbuffer schema that ships in
    ai_edge_litert, without a converter. ``*_quant`` = (scale, zero_point) for int8/uint8 tensors."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    types = {"float32": s.TensorType.FLOAT32, "int8": s.TensorType.INT8, "uint8": s.TensorType.UINT8}

    def tensor(name: str, dtype: str, quant: tuple[float, int] | None) -> Any:
        t = s.TensorT()
        t.name, t.type, t.buffer = name, types[dtype], 0
        t.shape = list(shape)
        t.shapeSignature = [-1] + list(shape[1:])
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint, q.quantizedDimension = [float(quant[0])], [int(quant[1])], 0
            t.quantization = q
        return t

    code = getattr(s.BuiltinOperator, op)
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    o = s.OperatorT()
    o.opcodeIndex, o.inputs, o.outputs = 0, [0], [1]
    sg = s.SubGraphT()
    sg.tensors = [tensor("input", in_dtype, in_quant), tensor("output", out_dtype, out_quant)]
    sg.inputs, sg.outputs, sg.operators, sg.name = [0], [1], [o], "main"
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [oc], [sg], [s.BufferT()]
    m.description = f"one-op {op} model (edge-pipeline benchmark baseline)"
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path = Path(path)
    path.write_bytes(bytes(b.Output()))
    return path


def _write_onnx_relu(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "baseline", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-pipeline")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_openvino_relu(path: Path) -> None:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    p = ops.parameter([-1, 1, 4, 4], np.float32, name="input")
    r = ops.relu(p)
    r.output(0).get_tensor().set_names({"output"})
    ov.save_model(ov.Model([r], [p], "baseline"), str(path), compress_to_fp16=False)


def _write_tensorrt_relu(path: Path) -> None:  # pragma: no cover - needs a GPU and tensorrt
    import tensorrt as trt

    onnx_path = path.with_suffix(".onnx")
    _write_onnx_relu(onnx_path)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        raise RuntimeError("TensorRT could not parse the baseline ONNX")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 4, 4), (1, 1, 4, 4), (64, 1, 4, 4))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT could not build the baseline engine")
    path.write_bytes(bytes(engine))


def baseline_model(runtime: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the trivial one-op model for ``runtime`` (created once, then reused from the cache)."""
    if runtime not in _BASELINE_SUFFIX:
        raise DataError(f"no baseline model for runtime {runtime!r}")
    d = Path(cache_dir) if cache_dir else default_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    name = f"baseline-{BASELINE_VERSION}"
    target = d / f"{name}{_BASELINE_SUFFIX[runtime]}"
    if target.exists() and (runtime != "openvino" or target.with_suffix(".bin").exists()):
        return target
    with tempfile.TemporaryDirectory(dir=d, prefix=".tmp-") as tmp:
        tmp_target = Path(tmp) / target.name
        try:
            if runtime == "onnxruntime":
                _write_onnx_relu(tmp_target)
            elif runtime == "openvino":
                _write_openvino_relu(tmp_target)
            elif runtime == "litert":
                write_tflite_single_op(tmp_target, op="RELU")
            else:
                _write_tensorrt_relu(tmp_target)
        except ImportError as e:
            raise MissingDependency(f"cannot write the {runtime} baseline model: {e}") from None
        if runtime == "openvino":  # .bin first: a present .xml means both are complete
            os.replace(tmp_target.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(tmp_target, target)
    return target


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------
def _maxrss_mb(maxrss: int) -> float:
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


# Why a launcher: on Linux a child's ru_maxrss starts at the high-water RSS of the process it was
# forked/vforked from (the kernel carries the old mm's peak across exec). Spawned straight from a big
# parent (pytest with torch loaded, the pipeline), every child would report the parent's size and the
# case-minus-baseline difference would be 0. This tiny launcher is exec'ed first (a ~10 MB interpreter
# without site), spawns bench.py itself and reads bench.py's own peak with os.wait4.
_LAUNCHER = """
import json, os, sys
out, cmd = sys.argv[1], sys.argv[2:]
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"ru_maxrss": ru.ru_maxrss, "exit_code": code}, f)
sys.exit(code if 0 <= code < 256 else 1)
"""


def run_bench_child(
    model_path: str | os.PathLike,
    *,
    python: str = sys.executable,
    batch: int = 1,
    threads: int | None = None,
    precision_hint: str | None = None,
    warmup: int = DEFAULT_WARMUP,
    min_iters: int = DEFAULT_MIN_ITERS,
    min_time: float = DEFAULT_MIN_TIME,
    max_time: float = DEFAULT_MAX_TIME,
    input_npy: str | os.PathLike | None = None,
    source: str = "measured",
    name: str | None = None,
    timeout: float | None = None,
    bench_py: str | os.PathLike = BENCH_PY,
) -> dict:
    """Run bench.py once in a fresh process; return its case result with ``child`` added
    (peak RSS from os.wait4 on that process, wall time, return code)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out_json = os.path.join(tmp, "result.json")
        rusage_json = os.path.join(tmp, "rusage.json")
        cmd = [
            str(python), str(bench_py), str(model_path), "--json", out_json, "--quiet",
            "--batch", str(batch), "--warmup", str(warmup), "--min-iters", str(min_iters),
            "--min-time", str(min_time), "--max-time", str(max_time), "--source", source,
        ]
        if threads:
            cmd += ["--threads", str(threads)]
        if precision_hint:
            cmd += ["--precision-hint", str(precision_hint)]
        if input_npy:
            cmd += ["--input-npy", str(input_npy)]
        if name:
            cmd += ["--name", name]
        if timeout is None:
            timeout = max_time + 300.0  # load + warm-up + slack
        log_path = os.path.join(tmp, "child.log")
        launcher = [str(python), "-I", "-S", "-c", _LAUNCHER, rusage_json, *cmd]
        t0 = time.monotonic()
        timed_out = False
        with open(log_path, "wb") as log:
            # own session: a timeout kills the launcher and bench.py together
            proc = subprocess.Popen(launcher, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
                rc = proc.wait()
        wall = time.monotonic() - t0
        log_text = Path(log_path).read_text(errors="replace")
        if timed_out:
            raise BenchError(f"{model_path}: benchmark child timed out after {timeout:.0f} s")
        if rc != 0 or not os.path.exists(out_json):
            lines = [ln for ln in log_text.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else "(no output)"
            if rc == 3:
                raise MissingDependency(f"{model_path}: {last}")
            raise BenchError(f"{model_path}: benchmark child failed (exit {rc}): {last}")
        result = json.loads(Path(out_json).read_text())
        try:
            peak = _maxrss_mb(json.loads(Path(rusage_json).read_text())["ru_maxrss"])
            method = "os.wait4 ru_maxrss"
        except (OSError, ValueError, KeyError):  # pragma: no cover - launcher could not write
            peak, method = result["peak_rss_mb"], "self-reported"
    result["child"] = {"peak_rss_mb": round(peak, 3), "wall_time_s": round(wall, 3), "returncode": rc,
                       "method": method}
    return result


_BASELINE_RSS: dict[tuple, float] = {}


def clear_baseline_cache() -> None:
    """Forget the baseline peaks measured in this process (they are re-measured on next use)."""
    _BASELINE_RSS.clear()


def baseline_rss_mb(
    runtime: str,
    *,
    threads: int | None = None,
    precision_hint: str | None = None,
    python: str = sys.executable,
    cache_dir: str | os.PathLike | None = None,
) -> float:
    """Peak RSS (MB, os.wait4) of one child running bench.py on the runtime's trivial model.
    Measured once per (runtime, threads, precision hint, python) in this process."""
    key = (runtime, threads, precision_hint, str(python))
    if key not in _BASELINE_RSS:
        path = baseline_model(runtime, cache_dir)
        r = run_bench_child(
            path, python=python, threads=threads, precision_hint=precision_hint,
            warmup=2, min_iters=5, min_time=0.0, max_time=2.0, name=f"baseline-{runtime}",
        )
        _BASELINE_RSS[key] = r["child"]["peak_rss_mb"]
    return _BASELINE_RSS[key]


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
def _median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def summarize_repeats(repeats: list[dict]) -> dict:
    """Median of medians over case results (see schema.json caseLatency)."""
    if not repeats:
        raise DataError("no repeats to summarize")
    lat = [r["latency_ms"] for r in repeats]
    p50s = [x["p50"] for x in lat]
    mean_p50 = statistics.fmean(p50s)
    cv_between = statistics.stdev(p50s) / mean_p50 if len(p50s) > 1 and mean_p50 > 0 else 0.0
    sig = lambda v: float(f"{v:.7g}")  # noqa: E731  (significant digits, as bench.py)
    return {
        "p50": sig(_median(p50s)),
        "p90": sig(_median(x["p90"] for x in lat)),
        "p99": sig(_median(x["p99"] for x in lat)),
        "min": sig(min(x["min"] for x in lat)),
        "mean": sig(_median(x["mean"] for x in lat)),
        "cv_between_repeats": sig(cv_between),
        "cv_within_repeats": sig(_median(x["cv"] for x in lat)),
        "iterations": int(min(r["iterations"] for r in repeats)),
        "n_repeats": len(repeats),
        "method": "median-of-medians",
        # 95% order-statistic interval of the repeats' p50 (pipeline/measure/core.py); null under 6 repeats
        "ci95_ms": None if (ci := median_ci(p50s)) is None else [sig(ci[0]), sig(ci[1])],
        # Under 6 repeats: the repeats' p50 range, an interval for the median at the coverage n repeats give
        # (1 - 2 * 0.5**n: 75% at 3, 93.75% at 5; the sign test's order statistics at their extremes)
        "median_range_ms": [sig(min(p50s)), sig(max(p50s))] if len(p50s) >= 2 else None,
        "median_range_coverage": round(1 - 2 * 0.5 ** len(p50s), 4) if len(p50s) >= 2 else None,
    }


def infer_precision(result: dict) -> str:
    """fp32 / bf16 / fp16 / int8 / mixed from the runtime's execution precisions, or 'unspecified'."""
    precs = (result.get("runtime_info") or {}).get("runtime_precisions") or {}
    seen: set[str] = set()
    for counter in precs.values():
        seen.update(k for k, n in counter.items() if n)
    if not seen:
        return "unspecified"
    if any(("i8" in p or "u8" in p) for p in seen):
        # u8/i8 layers beside float ones (e.g. layers kept in float) are a mix, not int8.
        return "mixed int8/fp32" if seen & {"f32", "bf16", "f16"} else "int8"
    names = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
    mapped = {names.get(p, p) for p in seen}
    return mapped.pop() if len(mapped) == 1 else "mixed"


def _precision_of(result: dict, artifact: str | os.PathLike | None) -> str:
    p = infer_precision(result)
    if p == "unspecified" and result.get("runtime") == "onnxruntime" and artifact and Path(artifact).is_file():
        p = onnx_precision(artifact)
    return p


def onnx_precision(path: str | os.PathLike) -> str:
    """int8 / fp16 / fp32 of an ONNX graph from its operators and initializers ('unspecified' when the
    onnx package is absent): ONNX Runtime does not report what it executes."""
    try:
        import onnx
    except ImportError:
        return "unspecified"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return "unspecified"
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
              "MatMulInteger", "DynamicQuantizeLinear"}:
        return "int8"
    types = {init.data_type for init in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types:
        return "fp16"
    return "fp32"


def case_from_results(
    repeats: list[dict],
    *,
    name: str,
    artifact: str | os.PathLike | None = None,
    precision: str | None = None,
    baseline_mb: float | None = None,
    source: str | None = None,
    accuracy: float | None = None,
    accuracy_source: str | None = None,
    profile: str | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Build a report case from case results (harness children, or bench.py JSON brought back from a
    device). Peak RSS per repeat is the parent's wait4 figure where present, else the child's own."""
    if not repeats:
        raise DataError(f"case {name!r}: no results")
    for r in repeats:
        validate(r, f"case result of {name!r}")
    first = repeats[0]
    keys = {(r["runtime"], r["batch"], r["threads"], (r.get("model") or {}).get("sha256")) for r in repeats}
    if len(keys) > 1:
        raise DataError(f"case {name!r}: repeats differ in runtime/batch/threads/model: {sorted(map(str, keys))}")
    latency = summarize_repeats(repeats)
    peaks = [(r.get("child") or {}).get("peak_rss_mb", r["peak_rss_mb"]) for r in repeats]
    absolute = _median(peaks)
    src = source or first["source"]
    if baseline_mb is not None:
        rss = {
            "value": round(absolute - baseline_mb, 3),
            "absolute_mb": round(absolute, 3),
            "baseline_mb": round(baseline_mb, 3),
            "method": "median peak RSS of fresh case children minus the peak of a baseline child on a one-op "
            "model of the same runtime (os.wait4 ru_maxrss)",
            "source": src,
        }
    else:
        rss = {
            "value": None,
            "absolute_mb": round(absolute, 3),
            "baseline_mb": None,
            "method": "median peak RSS of the benchmark processes (no baseline taken)",
            "source": src,
        }
    model = first.get("model") or {}
    case: dict[str, Any] = {
        "name": name,
        "artifact": str(artifact) if artifact is not None else model.get("path", model.get("file", "")),
        "sha256": model.get("sha256", ""),
        "file_size_bytes": model.get("file_size_bytes", 0),
        "runtime": first["runtime"],
        "runtime_version": first["runtime_version"],
        "precision": precision or _precision_of(first, artifact),
        "precision_hint": first.get("precision_hint"),
        "batch": first["batch"],
        "threads": first["threads"],
        "repeats": repeats,
        "latency_ms": latency,
        "peak_rss_mb": rss,
        "load_time_ms": round(_median(r["load_time_ms"] for r in repeats), 3),
        "throughput": {
            "value": round(first["batch"] * 1000.0 / latency["p50"], 3) if latency["p50"] > 0 else 0.0,
            "unit": "images/s",
        },
        "source": src,
    }
    if accuracy is not None:
        case["accuracy"] = {"value": float(accuracy), "source": accuracy_source or "provided"}
    if profile:
        case["profile"] = profile
    unstable = sum(1 for r in repeats if not r.get("stable", True))
    notes = list(notes or [])
    if unstable:
        notes.append(f"{unstable} of {len(repeats)} repeats hit max-time before the median was stable")
    if notes:
        case["notes"] = notes
    return case


def _noop(*_a: Any, **_k: Any) -> None:
    pass


def bench_case(
    model_path: str | os.PathLike,
    *,
    name: str,
    batch: int = 1,
    threads: int | None = None,
    precision_hint: str | None = None,
    repeats: int = 3,
    warmup: int = DEFAULT_WARMUP,
    min_iters: int = DEFAULT_MIN_ITERS,
    min_time: float = DEFAULT_MIN_TIME,
    max_time: float = DEFAULT_MAX_TIME,
    source: str = "measured",
    python: str = sys.executable,
    input_npy: str | os.PathLike | None = None,
    precision: str | None = None,
    accuracy: float | None = None,
    accuracy_source: str | None = None,
    profile: str | None = None,
    baseline: bool = True,
    cache_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    on_child: Any = None,
) -> dict:
    """Benchmark one model: ``repeats`` fresh bench.py children plus (once per runtime/threads/hint)
    a baseline child; returns one report case (schema.json $defs/case).

    precision: label for the case (fp32/int8/...); inferred from the runtime's execution precisions
    when None. accuracy: a fraction in [0, 1] measured elsewhere, with ``accuracy_source``.
    on_child(label): called after each child (progress)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{model_path}: no such model file")
    runtime = _SUFFIX_RUNTIME.get(model_path.suffix.lower())
    if runtime is None:
        raise DataError(f"{model_path}: unknown model suffix {model_path.suffix!r}")
    if repeats < 1:
        raise DataError(f"repeats must be >= 1 (got {repeats})")
    on_child = on_child or _noop
    base = None
    if baseline:
        try:
            base = baseline_rss_mb(runtime, threads=threads, precision_hint=precision_hint, python=python,
                                   cache_dir=cache_dir)
        except (MissingDependency, BenchError, RuntimeError) as e:
            if runtime != "tensorrt":
                raise
            print(f"warning: no TensorRT baseline ({e}); peak RSS is absolute", file=sys.stderr)
        on_child(f"{name}: baseline")
    results = []
    for i in range(repeats):
        results.append(
            run_bench_child(
                model_path, python=python, batch=batch, threads=threads, precision_hint=precision_hint,
                warmup=warmup, min_iters=min_iters, min_time=min_time, max_time=max_time,
                input_npy=input_npy, source=source, name=name, timeout=timeout,
            )
        )
        on_child(f"{name}: repeat {i + 1}/{repeats} p50 {results[-1]['latency_ms']['p50']:.3f} ms")
    return case_from_results(
        results, name=name, artifact=str(model_path), precision=precision, baseline_mb=base, source=source,
        accuracy=accuracy, accuracy_source=accuracy_source, profile=profile,
    )


def make_report(cases: list[dict], *, suite: str | None = None, environment: dict | None = None) -> dict:
    """Wrap cases into a benchmark report (validated)."""
    names = [c["name"] for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"case names must be unique in a report; repeated: {', '.join(dup)}")
    if environment is None:
        from targets.standalone import bench as _bench

        environment = _bench.environment()
        for k in ("runtime", "runtime_version", "precision_hint", "threads"):
            environment.pop(k, None)
        first_env = next((c["repeats"][0]["environment"] for c in cases if c.get("repeats")), None)
        if first_env:  # the children's view wins where it differs (e.g. a device import)
            environment.update({k: v for k, v in first_env.items() if k not in ("runtime", "runtime_version",
                                                                             "precision_hint", "threads")})
    environment = dict(environment)
    environment["runtimes"] = {c["runtime"]: c.get("runtime_version", "") for c in cases}
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": "benchmark-report",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "pipeline.measure.harness", "version": HARNESS_VERSION},
        "environment": environment,
        "cases": cases,
    }
    if suite:
        report["suite"] = suite
    validate(report, "benchmark report")
    return report


class _Progress:
    """tqdm (or rich, or plain lines) on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, unit="proc", desc="bench", leave=False)
        except ImportError:
            self.bar = None
        self.done, self.total = 0, total

    def __call__(self, label: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(label[-60:])
            self.bar.update(1)
        else:
            self.done += 1
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def bench_many(
    cases: list[dict], *, suite: str | None = None, progress: bool = True, **defaults: Any
) -> dict:
    """Benchmark several cases (each a dict of ``bench_case`` keyword arguments with at least
    ``model_path`` and ``name``; ``defaults`` fill what a case leaves out) into one validated report."""
    specs = []
    for i, c in enumerate(cases):
        spec = {**defaults, **c}
        if "model_path" not in spec or "name" not in spec:
            raise DataError(f"case #{i + 1} needs model_path and name (got {sorted(spec)})")
        specs.append(spec)
    baselines = {
        (_SUFFIX_RUNTIME.get(Path(s["model_path"]).suffix.lower()), s.get("threads"), s.get("precision_hint"))
        for s in specs if s.get("baseline", True)
    }
    total = sum(int(s.get("repeats", 3)) for s in specs) + len(baselines)
    bar = _Progress(total, progress)
    seen: set = set()
    out = []
    from pipeline.reference_kernel import Recorder

    reference = Recorder([s.get("threads") for s in specs], python=defaults.get("python", sys.executable))
    reference.measure_once()  # before and after the cases, in fresh children like theirs
    try:
        for s in specs:
            key = (_SUFFIX_RUNTIME.get(Path(s["model_path"]).suffix.lower()), s.get("threads"), s.get("precision_hint"))
            first = key not in seen
            seen.add(key)

            def tick(label: str, _first: bool = first) -> None:
                if label.endswith(": baseline") and not _first:
                    return  # measured once per key; counted once in total
                bar(label)

            out.append(bench_case(**s, on_child=tick))
        reference.measure_once()
    finally:
        bar.close()
    report = make_report(out, suite=suite)
    report["reference_kernel"] = reference.record()  # what pipeline/measure/compare.py normalises latency by
    return report


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _summary_lines(report: dict) -> list[str]:
    lines = [f"{'case':32} {'runtime':12} {'prec':6} {'b':>3} {'p50 ms':>10} {'p90 ms':>10} {'cv_rep':>7} {'RSS MB':>8}"]
    for c in report["cases"]:
        lat, rss = c["latency_ms"], c["peak_rss_mb"]
        v = rss["value"] if rss["value"] is not None else rss["absolute_mb"]
        lines.append(
            f"{c['name'][:32]:32} {c['runtime']:12} {c['precision'][:6]:6} {c['batch']:>3} {lat['p50']:>10.4f} "
            f"{lat['p90']:>10.4f} {lat['cv_between_repeats']:>7.3f} {v:>8.1f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.measure.harness", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model files (.onnx, .xml, .tflite, .plan/.engine)")
    p.add_argument("--name", action="append", default=None, help="case name per model (default: file name)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="one case per batch size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision-hint", default=None, help="OpenVINO INFERENCE_PRECISION_HINT (default f32)")
    p.add_argument("--precision", default=None, help="precision label (default: inferred)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    p.add_argument("--min-iters", type=int, default=DEFAULT_MIN_ITERS)
    p.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME)
    p.add_argument("--max-time", type=float, default=DEFAULT_MAX_TIME)
    p.add_argument("--input-npy", default=None)
    p.add_argument("--source", default="measured", choices=["measured", "host-measured", "device-measured"])
    p.add_argument("--suite", default=None)
    p.add_argument("--cache-dir", default=None, help="where the trivial baseline models live")
    p.add_argument("--no-baseline", action="store_true", help="report absolute peak RSS only")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", dest="json_out", default=None, help="write the report here (default: stdout)")
    args = p.parse_args(argv)
    if args.name and len(args.name) != len(args.models):
        print("error: give one --name per model", file=sys.stderr)
        return 2
    cases = []
    for i, m in enumerate(args.models):
        base_name = args.name[i] if args.name else os.path.basename(m)
        for b in args.batch:
            cases.append({
                "model_path": m,
                "name": base_name if len(args.batch) == 1 else f"{base_name}@b{b}",
                "batch": b,
            })
    try:
        report = bench_many(
            cases, suite=args.suite, progress=not args.no_progress, threads=args.threads,
            precision_hint=args.precision_hint, precision=args.precision, repeats=args.repeats,
            warmup=args.warmup, min_iters=args.min_iters, min_time=args.min_time, max_time=args.max_time,
            input_npy=args.input_npy, source=args.source, cache_dir=args.cache_dir, baseline=not args.no_baseline,
        )
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    text = strict_json.dumps(report, indent=2) + "\n"
    if args.json_out and os.path.exists(args.json_out) and not os.path.isfile(args.json_out):
        Path(args.json_out).write_text(text)  # /dev/null or a FIFO: never rename over a device
    elif args.json_out:
        tmp = args.json_out + ".tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, args.json_out)
    else:
        sys.stdout.write(text)
    for line in _summary_lines(report):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
