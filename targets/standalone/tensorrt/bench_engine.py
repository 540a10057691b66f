#!/usr/bin/env python3
"""Time this bundle's TensorRT engine ON THE DEVICE and print one JSON record (the project's benchmark schema).

Standalone: Python standard library + numpy + the device's ``tensorrt``; CUDA is reached through the driver library
(libcuda) with ctypes, so neither cuda-python nor pycuda nor torch is needed.

    python3 bench_engine.py --plan model.plan [--batch 1] [--warmup 50] [--iterations 200] [--out bench.json]
                            [--layer-profile DIR]

--layer-profile DIR also times every layer with the TensorRT Python API's IProfiler and writes, in trtexec's
formats, DIR/profile.json (per-layer medianMs), DIR/layers.json (the engine inspector's layer information; the
plan must be built with detailed profiling verbosity, as build_engine.py does), DIR/times.json and
DIR/trt_profile.json, which `python -m pipeline import-results RUN_DIR DIR/trt_profile.json` brings back.

Timing: host wall clock around ``execute_async_v3`` + stream synchronize, inputs copied to the GPU once before the
loop (like ``trtexec --noDataTransfers``). Exit codes: 0 ok, 1 run failed, 2 bad input, 3 TensorRT or GPU missing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path


class CudaDriver:
    """Minimal CUDA driver API (primary context, device memory, one stream) over ctypes."""

    def __init__(self, device: int = 0):
        first = None
        for name in ("libcuda.so.1", "libcuda.so"):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError as exc:
                first = first or exc
        else:
            raise RuntimeError(f"no NVIDIA driver ({first})")
        L, u64, vp = self.lib, ctypes.c_uint64, ctypes.c_void_p
        sigs = {
            "cuInit": [ctypes.c_uint], "cuDeviceGetCount": [ctypes.POINTER(ctypes.c_int)],
            "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
            "cuDeviceGetName": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
            "cuDevicePrimaryCtxRetain": [ctypes.POINTER(vp), ctypes.c_int],
            "cuDevicePrimaryCtxRelease_v2": [ctypes.c_int], "cuCtxSetCurrent": [vp],
            "cuMemAlloc_v2": [ctypes.POINTER(u64), ctypes.c_size_t], "cuMemFree_v2": [u64],
            "cuMemcpyHtoDAsync_v2": [u64, vp, ctypes.c_size_t, vp],
            "cuMemcpyDtoHAsync_v2": [vp, u64, ctypes.c_size_t, vp],
            "cuStreamCreate": [ctypes.POINTER(vp), ctypes.c_uint], "cuStreamDestroy_v2": [vp],
            "cuStreamSynchronize": [vp], "cuGetErrorString": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        }
        for fn, argtypes in sigs.items():
            f = getattr(L, fn)
            f.argtypes, f.restype = argtypes, ctypes.c_int
        self.check(L.cuInit(0), "cuInit")
        count = ctypes.c_int(0)
        self.check(L.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        if count.value <= device:
            raise RuntimeError(f"no CUDA device {device} ({count.value} found)")
        self.dev = ctypes.c_int()
        self.check(L.cuDeviceGet(ctypes.byref(self.dev), device), "cuDeviceGet")
        self.ctx, self.stream, self.retained = vp(), vp(), False
        self.ptrs: list = []
        self.check(L.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.dev), "cuDevicePrimaryCtxRetain")
        self.retained = True
        self.check(L.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        self.check(L.cuStreamCreate(ctypes.byref(self.stream), 0), "cuStreamCreate")

    def check(self, rc, what):
        if rc != 0:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(msg))
            raise RuntimeError(f"{what} failed: CUDA error {rc} ({(msg.value or b'?').decode()})")

    def name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.check(self.lib.cuDeviceGetName(buf, 256, self.dev), "cuDeviceGetName")
        return buf.value.decode(errors="replace")

    def malloc(self, nbytes):
        p = ctypes.c_uint64()
        self.check(self.lib.cuMemAlloc_v2(ctypes.byref(p), max(int(nbytes), 1)), "cuMemAlloc")
        self.ptrs.append(p.value)
        return p.value

    def htod(self, ptr, arr):
        self.check(self.lib.cuMemcpyHtoDAsync_v2(ptr, arr.ctypes.data, arr.nbytes, self.stream), "cuMemcpyHtoD")

    def dtoh(self, arr, ptr):
        self.check(self.lib.cuMemcpyDtoHAsync_v2(arr.ctypes.data, ptr, arr.nbytes, self.stream), "cuMemcpyDtoH")

    def sync(self):
        self.check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def close(self):
        for p in self.ptrs:
            self.lib.cuMemFree_v2(p)
        self.ptrs = []
        if self.stream.value:
            self.lib.cuStreamDestroy_v2(self.stream)
        if self.retained:
            self.lib.cuDevicePrimaryCtxRelease_v2(self.dev)
            self.retained = False


def latency_stats(times_ms, np):
    a = np.asarray(times_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"min": float(a.min()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": mean, "std": std, "cv": std / mean if mean > 0 else 0.0}


def device_model() -> str | None:
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def import_trt(allow_rtx: bool):
    for name in ["tensorrt"] + (["tensorrt_rtx"] if allow_rtx else []):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = __import__(name)
            getattr(mod, "Runtime")
            return mod, name
        except Exception:  # a TensorRT flavour that does not import: try the next one
            continue
    return None, None


def bench(trt, np, plan: Path, batch: int, warmup: int, iterations: int, drv: CudaDriver,
          want_layers: bool = False) -> dict:
    errors = []

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                errors.append(str(msg))

    logger = Logger()
    t0 = time.perf_counter()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise RuntimeError("cannot deserialize the plan (built by another TensorRT version or for another GPU?): "
                           + "; ".join(errors))
    context = engine.create_execution_context()
    load_s = time.perf_counter() - t0
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    rng = np.random.default_rng(0)
    host, shapes = {}, {}
    for n in inputs:
        shape = list(engine.get_tensor_shape(n))
        if any(d < 0 for d in shape):
            opt = list(engine.get_tensor_profile_shape(n, 0)[1])
            shape = [batch if (i == 0 and d < 0) else (opt[i] if d < 0 else d) for i, d in enumerate(shape)]
        context.set_input_shape(n, shape)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
        host[n] = np.ascontiguousarray(rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                                       else np.zeros(shape, dtype))
        shapes[n] = shape
    for n in names:
        if n not in host:
            host[n] = np.empty([int(d) for d in context.get_tensor_shape(n)],
                               np.dtype(trt.nptype(engine.get_tensor_dtype(n))))
    ptrs = {}
    for n in names:
        ptrs[n] = drv.malloc(host[n].nbytes)
        context.set_tensor_address(n, ptrs[n])
        if n in inputs:
            drv.htod(ptrs[n], host[n])
    drv.sync()
    stream = int(drv.stream.value or 0)
    for _ in range(warmup):
        context.execute_async_v3(stream)
        drv.sync()
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        if not context.execute_async_v3(stream):
            raise RuntimeError("execute_async_v3 failed: " + "; ".join(errors))
        drv.sync()
        times.append((time.perf_counter() - t) * 1e3)
    for n in names:
        if n not in inputs:
            drv.dtoh(host[n], ptrs[n])
    drv.sync()
    stats = latency_stats(times, np)
    extra: dict = {}
    if want_layers:  # after the timed loop: the profiler's callbacks must not disturb the latency figures
        extra["_layer_profile"] = layer_profile(trt, np, engine, context, stream, drv, iterations)
        extra["_times"] = times
    return {**extra,
        "runtime": trt.__name__, "runtime_version": str(trt.__version__),
        "latency_ms": stats, "iterations": len(times), "warmup": warmup, "batch": batch,
        "throughput_ips": batch * 1e3 / stats["p50"] if stats["p50"] > 0 else None,
        "load_seconds": round(load_s, 4), "plan": str(plan), "plan_bytes": plan.stat().st_size,
        "inputs": {n: shapes[n] for n in inputs},
        "outputs": {n: {"shape": list(host[n].shape), "finite": bool(np.all(np.isfinite(host[n])))}
                    for n in names if n not in inputs},
        "device": drv.name(), "device_model": device_model(), "machine": platform.machine(),
        "python": platform.python_version(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": "device-measured",
    }


def layer_profile(trt, np, engine, context, stream: int, drv, iterations: int) -> tuple[list, dict | None]:
    """Per-layer times over ``iterations`` enqueues (IProfiler), in trtexec's --exportProfile format, and the
    engine inspector's layer information (trtexec's --exportLayerInfo format)."""
    per_layer: dict = {}

    class Profiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name, ms):
            per_layer.setdefault(layer_name, []).append(float(ms))

    context.profiler = Profiler()
    for _ in range(iterations):
        context.execute_async_v3(stream)
        drv.sync()
    context.profiler = None
    layers = None
    try:
        text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        layers = json.loads(text)
    except Exception:  # noqa: BLE001 - the timings are still useful without layer information
        pass
    return profile_records(per_layer, np), layers


def profile_records(per_layer: dict, np) -> list:
    """{layer: [ms per enqueue]} -> trtexec's --exportProfile list ({"count"} first, then one record per layer)."""
    total = sum(float(np.median(v)) for v in per_layer.values()) or 1.0
    count = max((len(v) for v in per_layer.values()), default=0)
    recs: list[dict] = [{"count": count}]
    for name, v in per_layer.items():
        med = float(np.median(v))
        recs.append({"name": name, "timeMs": float(np.sum(v)), "averageMs": float(np.mean(v)), "medianMs": med,
                     "percentage": 100.0 * med / total})
    return recs


def write_layer_profile(out_dir: Path, records: list, layers: dict | None, times_ms: list, source: dict | None,
                        runtime_version: str, device: str | None) -> Path:
    """profile.json, layers.json, times.json and the trt_profile.json that ties them to the bundle's ONNX."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profile.json").write_text(json.dumps(records, indent=1))
    if layers is not None:
        (out_dir / "layers.json").write_text(json.dumps(layers, indent=1))
    (out_dir / "times.json").write_text(json.dumps([{"latencyMs": t} for t in times_ms]))
    side = {"kind": "trt-layer-profile", "onnx": (source or {}).get("file"), "onnx_sha256": (source or {}).get("sha256"),
            "profile": "profile.json", "layers": "layers.json" if layers is not None else None, "times": "times.json",
            "tensorrt_version": runtime_version, "device": device, "method": "IProfiler (bench_engine.py)"}
    path = out_dir / "trt_profile.json"
    path.write_text(json.dumps(side, indent=1))
    return path


def source_model(manifest: Path) -> dict | None:
    """The bundle's ONNX (file + sha256) the engine was built from, so the host can tie this timing to its run."""
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
        name = m["model"]["file"]
        return {"file": name, "sha256": m["files"][name], "profile": m.get("profile", {}).get("name")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time a TensorRT engine at batch 1 and print JSON.")
    ap.add_argument("--plan", default="model.plan")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--out", help="also write the JSON record to this file")
    ap.add_argument("--layer-profile", metavar="DIR", help="also write per-layer times (IProfiler) and layer "
                    "information here, for `python -m pipeline import-results RUN_DIR DIR/trt_profile.json`")
    ap.add_argument("--allow-rtx", action="store_true", help="accept pip tensorrt_rtx (testing only)")
    ap.add_argument("--manifest", default=None,
                    help="bundle manifest.json (default: next to the plan); names the ONNX the engine was built from")
    args = ap.parse_args(argv)
    plan = Path(args.plan)
    if not plan.is_file():
        print(f"error: {plan}: no such plan file (build it first with build_engine.py or build_engine.sh)",
              file=sys.stderr)
        return 2
    if args.batch < 1 or args.iterations < 1 or args.warmup < 0:
        print("error: --batch and --iterations must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    try:
        import numpy as np
    except ImportError:
        print("error: numpy is not installed (pip install numpy)", file=sys.stderr)
        return 3
    trt, _flavor = import_trt(args.allow_rtx)
    if trt is None:
        print("error: TensorRT is not installed: the python3 'tensorrt' module cannot be imported", file=sys.stderr)
        return 3
    try:
        drv = CudaDriver()
    except Exception as exc:  # no usable GPU/driver: exit 3 with the reason
        print(f"error: needs an NVIDIA GPU: {exc}", file=sys.stderr)
        return 3
    try:
        record = bench(trt, np, plan, args.batch, args.warmup, args.iterations, drv, bool(args.layer_profile))
    except Exception as exc:  # the device run failed: exit 1 with the reason (device script, no pipeline imports)
        print(f"error: benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        drv.close()
    record["source_model"] = source_model(Path(args.manifest) if args.manifest else plan.parent / "manifest.json")
    if "_layer_profile" in record:
        (recs, layers), times = record.pop("_layer_profile"), record.pop("_times")
        side = write_layer_profile(Path(args.layer_profile), recs, layers, times, record["source_model"],
                                   record["runtime_version"], record.get("device_model") or record.get("device"))
        print(f"layer profile: {side}", file=sys.stderr)
    record["kind"] = "engine-result"
    text = json.dumps(record, indent=2)
    print(text)
    if args.out and os.path.exists(args.out) and not os.path.isfile(args.out):
        Path(args.out).write_text(text + "\n")  # /dev/null or a FIFO: never rename over a device
    elif args.out:
        tmp = f"{args.out}.tmp{os.getpid()}"
        Path(tmp).write_text(text + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
