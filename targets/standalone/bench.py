#!/usr/bin/env python3
"""Benchmark one model in this process and print one JSON "case result" (pipeline/measure/schema.json).

STANDALONE: copied into deployment bundles beside runtime.py; needs only the standard library, numpy
and the model's runtime package. The host harness (pipeline/measure/harness.py) runs this same script in a
fresh child process per repeat, so host, device and CI numbers share one protocol and one schema.

    python bench.py model.onnx --batch 1 --threads 2 --json result.json
    python bench.py model.xml --precision-hint f32 --min-time 2 --source device-measured

Protocol: load (timed) -> first run (timed) -> warm-up -> timed iterations until at least --min-iters
iterations AND --min-time seconds have passed AND the running median is stable (the p50 of the last
half of the samples is within --stability (2%) of the p50 of all of them), or --max-time / --max-iters
is reached (then "stable": false). Statistics in milliseconds; throughput = batch * 1000 / p50.
peak_rss_mb is this process's peak resident set size (VmHWM on Linux, else getrusage ru_maxrss).

Exit codes: 0 done, 1 the model failed while running, 2 bad arguments or model file,
3 the runtime package is missing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import math
import os
import platform
import sys
import time
from array import array

import numpy as np

try:  # imported as targets.standalone.bench inside the project
    from . import runtime as _rt  # type: ignore[no-redef]
except ImportError:  # run as a script, in a bundle or from the project tree
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import runtime as _rt  # type: ignore[no-redef]

SCHEMA_VERSION = "1"
TOOL_VERSION = "1"
SOURCES = ("measured", "host-measured", "device-measured")


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's name: /proc/cpuinfo 'model name' (x86), 'Hardware'/'Model' or MIDR (ARM), else platform."""
    info = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip().lower(), v.strip())
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        val = fields.get(key)
        if val and not val.isdigit():
            return val
    if "cpu part" in fields:
        return f"ARM implementer {fields.get('cpu implementer', '?')} part {fields['cpu part']}"
    return platform.processor() or platform.machine() or "unknown"


def environment(
    runtime: str | None = None,
    runtime_version: str | None = None,
    threads: int | None = None,
    precision_hint: str | None = None,
) -> dict:
    """Where the numbers were taken. The hostname is stored hashed (sha256, 12 hex digits)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        load1 = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load1 = None
    mem_total = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            try:
                mem_total = round(int(line.split()[1]) / 1024.0, 1)
            except (IndexError, ValueError):
                pass
    env = {
        "cpu_model": cpu_model(),
        "isa": _rt.cpu_isa(),  # instruction-set class: decides which INT8 kernels ran (and their numbers)
        "machine": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "logical_cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "threads": threads,
        "memory_total_mb": mem_total,
        "load_average_1m": load1,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "runtime": runtime,
        "runtime_version": runtime_version,
        "precision_hint": precision_hint,
        "hostname_sha256": hashlib.sha256(platform.node().encode()).hexdigest()[:12],
    }
    board = _read("/proc/device-tree/model")  # Jetson, Raspberry Pi
    if board:
        env["board"] = board
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if gov:
        env["cpu_governor"] = gov
    return env


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def peak_rss() -> tuple[float, str]:
    """Peak resident set size of this process in MB, and how it was read.

    Linux: VmHWM of /proc/self/status, the peak of this program's own memory map. getrusage's ru_maxrss
    is the fallback (KiB on Linux, bytes on macOS); on Linux it also carries the peak of the process this
    one was forked from, so a child of a big parent would report the parent's size."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            try:
                return int(line.split()[1]) / 1024.0, "VmHWM"
            except (IndexError, ValueError):
                break
    import resource

    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (v / (1024.0 * 1024.0) if sys.platform == "darwin" else v / 1024.0), "ru_maxrss"


def peak_rss_mb() -> float:
    return peak_rss()[0]


def summarize(samples_ms) -> dict:
    """min/max/mean/std/cv and p50/p90/p99 (linear interpolation) of latency samples in ms."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    r = lambda v: float(f"{v:.7g}")  # noqa: E731  (7 significant digits: ns resolution stays visible)
    return {
        "min": r(float(a.min())),
        "p50": r(p50),
        "p90": r(p90),
        "p99": r(p99),
        "max": r(float(a.max())),
        "mean": r(mean),
        "std": r(std),
        "cv": r(std / mean) if mean > 0 else 0.0,
    }


def is_stable(samples_ms, tolerance: float) -> bool:
    """True when the median of the last half is within ``tolerance`` (relative) of the overall median."""
    a = np.frombuffer(samples_ms, dtype=np.float64) if isinstance(samples_ms, array) else np.asarray(samples_ms)
    if a.size < 4:
        return False
    p_all = float(np.median(a))
    p_last = float(np.median(a[a.size // 2 :]))
    return p_all > 0 and abs(p_last - p_all) / p_all < tolerance


def file_digest(path: str) -> tuple[str, int]:
    """sha256 and size of a model; for OpenVINO IR both the .xml and its .bin (in that order)."""
    files = [path]
    if path.lower().endswith(".xml"):
        b = os.path.splitext(path)[0] + ".bin"
        if os.path.exists(b):
            files.append(b)
    h = hashlib.sha256()
    size = 0
    for p in files:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def _input_array(model, batch: int, input_npy: str | None, seed: int) -> tuple[np.ndarray, str]:
    if not input_npy:
        return model.example_input(batch, seed=seed), "random"
    x = np.load(input_npy, allow_pickle=False)
    if model.input_shape and x.ndim == len(model.input_shape) - 1:
        x = x[None]
    if x.shape[0] != batch:  # tile or cut the given samples to the requested batch
        reps = -(-batch // x.shape[0])
        x = np.concatenate([x] * reps, axis=0)[:batch]
    return np.ascontiguousarray(x.astype(model.input_dtype)), "npy"


def measure(
    model_path: str,
    *,
    batch: int = 1,
    threads: int | None = None,
    precision_hint: str | None = None,
    warmup: int = 20,
    min_iters: int = 50,
    min_time: float = 1.0,
    max_time: float = 30.0,
    max_iters: int = 100_000,
    stability: float = 0.02,
    input_npy: str | None = None,
    source: str = "measured",
    name: str | None = None,
    seed: int = 0,
) -> dict:
    """Run the protocol on ``model_path`` in this process and return the case result dict."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1 (got {batch})")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)} (got {source!r})")
    if min_iters < 1 or warmup < 0 or min_time < 0 or max_time <= 0 or max_iters < 1:
        raise ValueError("need min_iters >= 1, warmup >= 0, min_time >= 0, max_time > 0, max_iters >= 1")
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    t0 = time.perf_counter()
    model = _rt.load_model(model_path, threads=threads, precision_hint=precision_hint)
    load_ms = (time.perf_counter() - t0) * 1e3

    x, x_from = _input_array(model, batch, input_npy, seed)
    t0 = time.perf_counter()
    y = model.run(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, warmup - 1)):
        model.run(x)

    samples = array("d")
    clock = time.perf_counter_ns
    run = model.run
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    stable = False
    next_check = min_iters
    try:
        start = clock()
        deadline_ns = start + int(max_time * 1e9)
        min_ns = int(min_time * 1e9)
        while True:
            t = clock()
            run(x)
            t1 = clock()
            samples.append((t1 - t) / 1e6)
            n = len(samples)
            if t1 >= deadline_ns or n >= max_iters:
                stable = is_stable(samples, stability)
                break
            if n >= next_check and t1 - start >= min_ns:
                if is_stable(samples, stability):
                    stable = True
                    break
                next_check = n + max(10, n // 10)
        measure_s = (clock() - start) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()

    lat = summarize(samples)
    info = dict(model.info)
    try:
        precisions = _rt.runtime_precisions(model)
        info["runtime_precisions"] = {k: dict(v) for k, v in precisions.items()}
    except Exception as e:  # informational only
        info["runtime_precisions_error"] = str(e)
    # the hint the runtime really got (OpenVINO: "f32" unless asked otherwise); None where ignored
    effective_hint = info.get("precision_hint", precision_hint)
    rss, rss_method = peak_rss()
    sha, size = file_digest(model.path)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "case-result",
        "name": name or os.path.basename(model_path),
        "created": created,
        "tool": {"name": "bench.py", "version": TOOL_VERSION},
        "model": {
            "path": model_path,
            "file": os.path.basename(model_path),
            "sha256": sha,
            "file_size_bytes": size,
        },
        "runtime": model.runtime,
        "runtime_version": model.runtime_version,
        "source": source,
        "batch": batch,
        "threads": threads,
        "precision_hint": effective_hint,
        "input": {
            "name": model.input_name,
            "shape": [int(d) for d in x.shape],
            "dtype": str(x.dtype),
            "layout": model.layout,
            "from": x_from,
        },
        "output_shape": [int(d) for d in np.shape(y)],
        "protocol": {
            "warmup": warmup,
            "min_iters": min_iters,
            "min_time_s": min_time,
            "max_time_s": max_time,
            "max_iters": max_iters,
            "stability_tolerance": stability,
        },
        "load_time_ms": round(load_ms, 3),
        "first_run_ms": round(first_ms, 3),
        "iterations": len(samples),
        "measure_time_s": round(measure_s, 4),
        "stable": bool(stable),
        "latency_ms": lat,
        "throughput": {"value": round(batch * 1000.0 / lat["p50"], 3) if lat["p50"] > 0 else 0.0, "unit": "images/s"},
        "peak_rss_mb": round(rss, 3),
        "peak_rss_method": rss_method,
        "runtime_info": _jsonable(info),
        "environment": environment(model.runtime, model.runtime_version, threads, effective_hint),
    }


def _finite(v):
    """Non-finite floats as null (JSON has no NaN/Infinity): json's own round trip, parse_constant -> None."""
    return json.loads(json.dumps(v), parse_constant=lambda _: None)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return str(v)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {s})")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark one model (.onnx, .xml, .tflite, .plan/.engine) and print a JSON case result.",
    )
    p.add_argument("model", help="model file: .onnx (onnxruntime), .xml (openvino), .tflite (LiteRT), .plan/.engine")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--threads", type=_positive_int, default=None, help="runtime threads (default: runtime's own)")
    p.add_argument("--precision-hint", default=None, help="OpenVINO INFERENCE_PRECISION_HINT (default f32)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up runs (default 20)")
    p.add_argument("--min-iters", type=_positive_int, default=50, help="at least this many timed runs (50)")
    p.add_argument("--min-time", type=float, default=1.0, help="at least this many seconds of timed runs (1.0)")
    p.add_argument("--max-time", type=float, default=30.0, help="stop after this many seconds (30)")
    p.add_argument("--max-iters", type=_positive_int, default=100_000, help="stop after this many runs")
    p.add_argument("--stability", type=float, default=0.02, help="relative median stability to stop (0.02)")
    p.add_argument("--input-npy", default=None, help="input array (.npy); default: seeded random input")
    p.add_argument("--source", choices=SOURCES, default="measured", help="label of the figures (measured)")
    p.add_argument("--name", default=None, help="case name (default: the model's file name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", default=None, help="write the JSON here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = measure(
            args.model,
            batch=args.batch,
            threads=args.threads,
            precision_hint=args.precision_hint,
            warmup=args.warmup,
            min_iters=args.min_iters,
            min_time=args.min_time,
            max_time=args.max_time,
            max_iters=args.max_iters,
            stability=args.stability,
            input_npy=args.input_npy,
            source=args.source,
            name=args.name,
            seed=args.seed,
        )
    except _rt.RuntimeLoadError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, OSError) as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the runtime failed while running
        print(f"bench.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    text = json.dumps(_finite(result), indent=2, allow_nan=False)  # strict JSON: never NaN/Infinity literals
    if args.json_out and os.path.exists(args.json_out) and not os.path.isfile(args.json_out):
        with open(args.json_out, "w") as f:  # /dev/null or a FIFO: never rename over a device
            f.write(text + "\n")
    elif args.json_out:
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.json_out)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    if not args.quiet:
        lat = result["latency_ms"]
        print(
            f"{result['name']}: {result['runtime']} batch {result['batch']} p50 {lat['p50']:.3f} ms "
            f"p90 {lat['p90']:.3f} p99 {lat['p99']:.3f} cv {lat['cv']:.3f} n={result['iterations']}"
            f"{'' if result['stable'] else ' (not stable)'} peak RSS {result['peak_rss_mb']:.1f} MB",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
