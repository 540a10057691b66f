#!/usr/bin/env python3
"""Build the TensorRT engine for this bundle ON THE DEVICE (Jetson), with TensorRT's Python API.

Standalone: needs only the Python standard library and the device's ``tensorrt`` module (JetPack). Engines are not
portable across GPUs or TensorRT versions, which is why the bundle ships the ONNX and builds here.

    python3 build_engine.py --onnx model.onnx --plan model.plan [--expect-trt 10.3] [--timing-cache cache.bin]

The expected TensorRT major.minor comes from ``--expect-trt`` or from ``manifest.json`` (key
``toolchain.tensorrt_expected``) found next to the ONNX, next to this script or one folder up. When the installed
TensorRT differs the script refuses (exit 2) unless ``--allow-version-mismatch``.

Exit codes: 0 built, 1 build failed, 2 bad input or TensorRT version mismatch, 3 TensorRT not installed.
``--allow-rtx`` also accepts pip ``tensorrt_rtx`` (for tests on a GPU-less host; its plans do not run on a Jetson).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

# TensorRT major.minor -> the JetPack release that ships it (Jetson Orin / Xavier).
JETPACK_FOR_TRT = {
    "10.3": "JetPack 6.1 or 6.2 (L4T r36.4)",
    "8.6": "JetPack 6.0 (L4T r36.3)",
    "8.5": "JetPack 5.1.x (L4T r35.2-r35.6)",
    "8.4": "JetPack 5.0.2 (L4T r35.1)",
    "8.2": "JetPack 4.6.x (L4T r32.6-r32.7)",
}


def jetpack_hint(trt_version: str) -> str:
    return JETPACK_FOR_TRT.get(trt_version, f"the JetPack release that ships TensorRT {trt_version}")


def major_minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def find_manifest(explicit: str | None, onnx_path: Path) -> Path | None:
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve().parent
    for cand in (onnx_path.resolve().parent / "manifest.json", here / "manifest.json", here.parent / "manifest.json"):
        if cand.is_file():
            return cand
    return None


def expected_version(args, onnx_path: Path) -> tuple[str | None, str]:
    if args.expect_trt:
        return major_minor(args.expect_trt), "--expect-trt"
    manifest = find_manifest(args.manifest, onnx_path)
    if manifest is None:
        return None, "no manifest.json found"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read {manifest}: {exc}") from None
    value = (data.get("toolchain") or {}).get("tensorrt_expected")
    return (major_minor(value) if value else None), str(manifest)


def import_trt(allow_rtx: bool):
    names = ["tensorrt"] + (["tensorrt_rtx"] if allow_rtx else [])
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = __import__(name)
            getattr(mod, "Builder")
            return mod, name
        except Exception:  # a TensorRT flavour that does not import: try the next one
            continue
    return None, None


def make_logger(trt, verbose: bool):
    sev = trt.ILogger.Severity
    shown = {sev.INTERNAL_ERROR, sev.ERROR} | ({sev.WARNING, sev.INFO} if verbose else {sev.WARNING})

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(str(msg))
            if severity in shown:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Logger()


def atomic_write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build(trt, onnx_path: Path, plan_path: Path, *, timing_cache=None, batch_profile=(1, 1, 32),
          workspace_mb=1024, strongly_typed=True, fp16_fallback=True, verbose=False) -> dict:
    """Same logic as the project's targets.tensorrt_api.build_engine (kept small: the bundle cannot import it)."""
    logger = make_logger(trt, verbose)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    flag_enum = trt.NetworkDefinitionCreationFlag
    typed = strongly_typed and hasattr(flag_enum, "STRONGLY_TYPED")
    if typed:
        flags = 1 << int(flag_enum.STRONGLY_TYPED)
    else:
        flags = 1 << int(flag_enum.EXPLICIT_BATCH) if hasattr(flag_enum, "EXPLICIT_BATCH") else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return {"ok": False, "stage": "parse", "errors": errs or logger.errors}
    config = builder.create_builder_config()
    if hasattr(config, "profiling_verbosity") and hasattr(trt, "ProfilingVerbosity"):
        # layer information with the ONNX node names (bench_engine.py --layer-profile, the engine inspector)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    bmin, bopt, bmax = batch_profile
    profile = builder.create_optimization_profile()
    dynamic = False
    inputs = []
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if any(d < 0 for d in shape[1:]):
            return {"ok": False, "stage": "config",
                    "errors": [f"input '{inp.name}' has dynamic non-batch dims {shape}"]}
        if shape and shape[0] < 0:
            dynamic = True
            profile.set_shape(inp.name, [bmin] + shape[1:], [bopt] + shape[1:], [bmax] + shape[1:])
        inputs.append({"name": inp.name, "shape": shape})
    if dynamic:
        config.add_optimization_profile(profile)
    flags_set = []
    if not typed:  # weakly typed (TensorRT 8.x, or --weakly-typed): INT8 for Q/DQ, FP16 for the rest
        for name in ["INT8"] + (["FP16"] if fp16_fallback else []):
            if hasattr(trt.BuilderFlag, name):
                config.set_flag(getattr(trt.BuilderFlag, name))
                flags_set.append(name)
    if timing_cache is not None and hasattr(config, "create_timing_cache"):
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            config.set_timing_cache(config.create_timing_cache(blob), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return {"ok": False, "stage": "build", "errors": logger.errors or ["build_serialized_network failed"]}
    data = memoryview(serialized).cast("B")
    atomic_write(plan_path, data)
    if timing_cache is not None and hasattr(config, "get_timing_cache"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            atomic_write(Path(timing_cache), memoryview(config.get_timing_cache().serialize()).cast("B"))
    return {"ok": True, "stage": "done", "plan": str(plan_path), "plan_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "seconds": round(time.perf_counter() - t0, 3),
            "strongly_typed": typed, "builder_flags": flags_set, "inputs": inputs}


def parse_profile(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError("expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, e.g. 1,1,32")
    return parts[0], parts[1], parts[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build a strongly typed TensorRT engine from the bundle's ONNX.")
    ap.add_argument("--onnx", default="model.onnx")
    ap.add_argument("--plan", default="model.plan")
    ap.add_argument("--expect-trt", help="expected TensorRT major.minor, e.g. 10.3 (default: from manifest.json)")
    ap.add_argument("--manifest", help="manifest.json path (default: next to the ONNX or this script)")
    ap.add_argument("--timing-cache", help="timing cache file, loaded if present and saved after the build")
    ap.add_argument("--batch-profile", type=parse_profile, default=(1, 1, 32), help="MIN,OPT,MAX batch (1,1,32)")
    ap.add_argument("--workspace-mb", type=int, default=1024)
    ap.add_argument("--weakly-typed", action="store_true",
                    help="weakly typed network with INT8+FP16 builder flags (TensorRT 10.x; the default on 8.x)")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    ap.add_argument("--allow-rtx", action="store_true", help="accept pip tensorrt_rtx (testing only)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    onnx_path, plan_path = Path(args.onnx), Path(args.plan)
    if not onnx_path.is_file():
        print(f"error: {onnx_path}: no such ONNX file", file=sys.stderr)
        return 2
    trt, flavor = import_trt(args.allow_rtx)
    if trt is None:
        print("error: TensorRT is not installed: the python3 'tensorrt' module cannot be imported "
              "(on a Jetson install JetPack, e.g. 'sudo apt install nvidia-jetpack' or 'python3-libnvinfer')",
              file=sys.stderr)
        return 3
    installed = str(getattr(trt, "__version__", "unknown"))
    try:
        expected, source = expected_version(args, onnx_path)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if expected is None:
        print(f"warning: no expected TensorRT version ({source}); building with {flavor} {installed}",
              file=sys.stderr)
    elif flavor != "tensorrt" or major_minor(installed) != expected:
        what = f"{flavor} {installed}" if flavor != "tensorrt" else f"TensorRT {installed}"
        msg = (f"TensorRT version mismatch: this bundle expects TensorRT {expected} (from {source}) but the "
               f"installed module is {what}. Install {jetpack_hint(expected)}, which ships TensorRT {expected}, "
               f"or re-export the bundle for this TensorRT")
        if not args.allow_version_mismatch:
            print(f"error: {msg} (or pass --allow-version-mismatch).", file=sys.stderr)
            return 2
        print(f"warning: {msg}; continuing (--allow-version-mismatch).", file=sys.stderr)

    try:
        info = build(trt, onnx_path, plan_path, timing_cache=args.timing_cache, batch_profile=args.batch_profile,
                     workspace_mb=args.workspace_mb, strongly_typed=not args.weakly_typed, verbose=args.verbose)
    except Exception as exc:  # the build failed: recorded in the JSON report with its reason
        info = {"ok": False, "stage": "build", "errors": [f"{type(exc).__name__}: {exc}"]}
    info.update(tensorrt_module=flavor, tensorrt_version=installed, expected_tensorrt=expected)
    print(json.dumps(info, indent=2))
    if not info["ok"]:
        print(f"error: engine build failed at {info['stage']}: " + "; ".join(info["errors"])[:2000], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
