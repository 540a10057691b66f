"""The TensorRT API (parse check, engine build) for the Jetson backend; needs neither the pipeline nor (mostly) a GPU.

Written against the real TensorRT Python API and usable with either module:

* ``tensorrt`` - the TensorRT that ships with JetPack (10.3 on JetPack 6.1/6.2) or a GPU host's wheel;
* ``tensorrt_rtx`` - pip ``tensorrt-rtx``. Its ONNX parser *and* its builder run without a GPU (the builder does a
  CPU-only "ahead-of-time" compile; by default for SM 8.0/8.6/8.9/12.0), so on a GPU-less host it gives a real
  parse check and a real serialized plan. It is a *proxy*: a different builder than the Jetson's TensorRT, no
  SM87/SM72 target, and its plans only run under TensorRT-RTX. Engines for the Jetson are built on the Jetson
  (``targets/standalone/tensorrt/build_engine.py`` / ``build_engine.sh`` in the bundle).

Public functions
----------------
``import_tensorrt(prefer=("tensorrt", "tensorrt_rtx")) -> (module, flavor) | (None, None)``
``gpu_available() -> (bool, reason)``
``parse_check(onnx_path, *, trt=None, expected_trt="10.3") -> dict``
``build_engine(onnx_path, plan_path, *, trt=None, timing_cache_path=None, fp16_fallback=True, workspace_mb=1024,
               batch_profile=(1, 1, 32), strongly_typed=True) -> dict``
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

# the bundle's standalone builder writes plans the same way (it ships without the project: shared from there)
from targets.standalone.tensorrt.build_engine import atomic_write

__all__ = [
    "EXPECTED_JETSON_TRT",
    "TensorRTUnavailable",
    "import_tensorrt",
    "gpu_available",
    "parse_check",
    "build_engine",
]

EXPECTED_JETSON_TRT = "10.3"  # JetPack 6.1 / 6.2 on Orin


class TensorRTUnavailable(RuntimeError):
    """Neither ``tensorrt`` nor ``tensorrt_rtx`` can be imported (pipeline exit code 3)."""


# ------------------------------------------------------------------------------------------------- imports

def import_tensorrt(prefer: Iterable[str] = ("tensorrt", "tensorrt_rtx")):
    """First importable TensorRT module of ``prefer``: ``(module, flavor)`` with flavor the module name, or
    ``(None, None)``. A ``tensorrt`` wheel whose native libraries are missing fails here too and is skipped."""
    for name in prefer:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
            getattr(mod, "Builder")  # the pip "tensorrt" stub without libs has no Builder
        except Exception:
            continue
        return mod, name
    return None, None


def _resolve(trt):
    if trt is not None:
        return trt, getattr(trt, "__name__", "tensorrt").split(".")[0]
    mod, flavor = import_tensorrt()
    if mod is None:
        raise TensorRTUnavailable("TensorRT is not installed: neither 'tensorrt' (JetPack / GPU host) nor "
                                  "'tensorrt_rtx' (pip install tensorrt-rtx) can be imported")
    return mod, flavor


def _major_minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def _proxy_note(flavor: str, version: str, expected_trt: str) -> str | None:
    if flavor != "tensorrt_rtx":
        return None
    return (f"tensorrt-rtx {version} parse is a proxy for the Jetson's TensorRT {expected_trt}: different builder, "
            f"cannot target SM87")


# -------------------------------------------------------------------------------------------------- logger

def _make_logger(trt, min_severity: str = "WARNING"):
    """An ILogger that keeps what TensorRT says (so errors end up in the returned dicts)."""
    sev = trt.ILogger.Severity
    order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
    keep = {getattr(sev, n) for n in order[: order.index(min_severity) + 1] if hasattr(sev, n)}
    errors = {getattr(sev, n) for n in ("INTERNAL_ERROR", "ERROR") if hasattr(sev, n)}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.records: list[tuple[str, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if severity in keep:
                self.records.append(("error" if severity in errors else str(severity).split(".")[-1].lower(),
                                     str(msg)))

        def errors(self) -> list[str]:
            return [m for s, m in self.records if s == "error"]

        def warnings(self) -> list[str]:
            return [m for s, m in self.records if s == "warning"]

    return _Logger()


# ---------------------------------------------------------------------------------------------- networking

def _network_flags(trt, strongly_typed: bool) -> tuple[int, bool]:
    flag_enum = trt.NetworkDefinitionCreationFlag
    if strongly_typed and hasattr(flag_enum, "STRONGLY_TYPED"):
        return 1 << int(flag_enum.STRONGLY_TYPED), True
    if hasattr(flag_enum, "EXPLICIT_BATCH"):  # TensorRT 8.x needs it; deprecated no-op in 10.x
        return 1 << int(flag_enum.EXPLICIT_BATCH), False
    return 0, False


def _parse(trt, onnx_path: str, logger, strongly_typed: bool = True):
    builder = trt.Builder(logger)
    if builder is None:
        raise RuntimeError("trt.Builder returned None")
    flags, typed = _network_flags(trt, strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = bool(parser.parse_from_file(os.fspath(onnx_path)))
    perrs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    return builder, network, parser, ok, perrs, typed


def _tensor_info(t) -> dict:
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": str(t.dtype).split(".")[-1].lower()}


def _network_summary(trt, network) -> dict:
    types: dict[str, int] = {}
    out_dtypes: dict[str, int] = {}
    int8_tensors = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        t = str(layer.type).split(".")[-1]
        types[t] = types.get(t, 0) + 1
        for k in range(layer.num_outputs):
            dt = layer.get_output(k).dtype
            name = str(dt).split(".")[-1].lower()
            out_dtypes[name] = out_dtypes.get(name, 0) + 1
            int8_tensors += int(dt == trt.DataType.INT8)
    return {
        "layers": network.num_layers,
        "layer_types": types,
        "quantize_layers": types.get("QUANTIZE", 0),
        "dequantize_layers": types.get("DEQUANTIZE", 0),
        "int8_layers": int8_tensors,  # layers with an INT8 output (constants holding int8 weights, Quantize)
        "precisions": sorted(out_dtypes),
        "inputs": [_tensor_info(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_tensor_info(network.get_output(i)) for i in range(network.num_outputs)],
    }


def parse_check(onnx_path, *, trt=None, expected_trt: str = EXPECTED_JETSON_TRT) -> dict:
    """Parse ``onnx_path`` with the module's OnnxParser into a strongly typed network (where the flag exists).

    Returns ``{"ok", "tensorrt_module", "tensorrt_version", "proxy_note", "errors", "warnings", "layers",
    "int8_layers", "quantize_layers", "dequantize_layers", "precisions", "layer_types", "inputs", "outputs",
    "strongly_typed"}``. Never raises for a bad model; raises TensorRTUnavailable when no TensorRT is importable.
    """
    trt, flavor = _resolve(trt)
    version = str(getattr(trt, "__version__", "unknown"))
    out: dict[str, Any] = {"ok": False, "tensorrt_module": flavor, "tensorrt_version": version,
                           "proxy_note": _proxy_note(flavor, version, expected_trt), "errors": [], "warnings": [],
                           "layers": 0, "onnx": os.fspath(onnx_path)}
    if not os.path.isfile(onnx_path):
        out["errors"] = [f"{onnx_path}: no such file"]
        return out
    logger = _make_logger(trt)
    try:
        _builder, network, _parser, ok, perrs, typed = _parse(trt, onnx_path, logger)
    except Exception as exc:
        out["errors"] = [f"{type(exc).__name__}: {exc}"] + logger.errors()
        return out
    out["strongly_typed"] = typed
    out["errors"] = perrs
    out["warnings"] = logger.warnings()
    if ok:
        out.update(_network_summary(trt, network))
        if network.num_outputs == 0:
            ok = False
            out["errors"].append("the parsed network has no outputs")
    out["ok"] = ok and not perrs
    return out


# ---------------------------------------------------------------------------------------------------- build

def _add_profile(trt, builder, config, network, batch_profile) -> list[dict]:
    """One optimization profile: dynamic axis 0 of every input gets (min, opt, max) = batch_profile."""
    bmin, bopt, bmax = (int(b) for b in batch_profile)
    if not 1 <= bmin <= bopt <= bmax:
        raise ValueError(f"batch_profile must satisfy 1 <= min <= opt <= max, got {batch_profile}")
    profile = builder.create_optimization_profile()
    dynamic = False
    shapes = []
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = [int(d) for d in inp.shape]
        if any(d < 0 for d in shape[1:]):
            raise ValueError(f"input '{inp.name}' has dynamic non-batch dimensions {shape}; export the ONNX with "
                             f"only the batch axis dynamic")
        if shape and shape[0] < 0:
            dynamic = True
            mins, opts, maxs = ([b] + shape[1:] for b in (bmin, bopt, bmax))
            profile.set_shape(inp.name, mins, opts, maxs)
            shapes.append({"name": inp.name, "min": mins, "opt": opts, "max": maxs})
        else:
            shapes.append({"name": inp.name, "min": shape, "opt": shape, "max": shape})
    if dynamic:
        config.add_optimization_profile(profile)
    return shapes


def build_engine(onnx_path, plan_path, *, trt=None, timing_cache_path=None, fp16_fallback: bool = True,
                 workspace_mb: int = 1024, batch_profile=(1, 1, 32), strongly_typed: bool = True,
                 expected_trt: str = EXPECTED_JETSON_TRT) -> dict:
    """Build a serialized TensorRT plan from ``onnx_path`` and write it atomically to ``plan_path``.

    * Network: strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT >= 9 and TensorRT-RTX):
      every tensor's precision comes from the ONNX types, INT8 from its explicit Q/DQ nodes.
    * Optimization profile: the dynamic batch axis (axis 0) of each ONNX input gets ``batch_profile`` =
      (min, opt, max); other axes are read from the ONNX and must be static.
    * ``timing_cache_path``: loaded when the file exists, saved (atomically) after a successful build. TensorRT-RTX
      treats timing caches as deprecated no-ops; the file is still written so that the call is uniform.
    * ``fp16_fallback``: only acts on a *weakly* typed network (``strongly_typed=False``, or a TensorRT without
      STRONGLY_TYPED such as 8.x on JetPack 5 / 6.0): sets ``BuilderFlag.INT8`` (needed there for the Q/DQ layers)
      and ``BuilderFlag.FP16`` so that layers left unquantized may run in FP16 instead of FP32. In strongly typed
      mode precision flags are not allowed (TensorRT 10 rejects them, TensorRT 11 and RTX removed them), so the
      flag is recorded as not applied. Missing flags are skipped (``hasattr`` checks), never an error.

    Returns a dict: ok, stage (where it failed), tensorrt_module/version, proxy_note, plan_path, plan_bytes, sha256,
    seconds, strongly_typed, builder_flags, inputs (profile shapes), timing_cache, errors, warnings.
    Raises TensorRTUnavailable when no TensorRT module is importable; never raises for a failed build.
    """
    trt, flavor = _resolve(trt)
    version = str(getattr(trt, "__version__", "unknown"))
    plan_path = Path(plan_path)
    info: dict[str, Any] = {"ok": False, "stage": "parse", "tensorrt_module": flavor, "tensorrt_version": version,
                            "proxy_note": _proxy_note(flavor, version, expected_trt), "onnx": os.fspath(onnx_path),
                            "plan_path": os.fspath(plan_path), "errors": [], "warnings": [], "builder_flags": [],
                            "fp16_fallback": {"requested": bool(fp16_fallback), "applied": False}}
    if not os.path.isfile(onnx_path):
        info["errors"] = [f"{onnx_path}: no such file"]
        return info
    logger = _make_logger(trt)
    t0 = time.perf_counter()
    try:
        builder, network, _parser, ok, perrs, typed = _parse(trt, onnx_path, logger, strongly_typed)
    except Exception as exc:  # e.g. trt.Builder without a GPU on classic TensorRT
        info.update(stage="builder", errors=[f"{type(exc).__name__}: {exc}"] + logger.errors())
        return info
    info["strongly_typed"] = typed
    if not ok or perrs:
        info["errors"] = perrs or logger.errors() or ["ONNX parse failed"]
        return info

    info["stage"] = "config"
    try:
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        elif hasattr(config, "max_workspace_size"):  # TensorRT < 8.4
            config.max_workspace_size = int(workspace_mb) << 20
        info["inputs"] = _add_profile(trt, builder, config, network, batch_profile)
        if not typed:
            bf = trt.BuilderFlag
            wanted = ["INT8"] + (["FP16"] if fp16_fallback else [])
            missing = []
            for name in wanted:
                if hasattr(bf, name):
                    config.set_flag(getattr(bf, name))
                    info["builder_flags"].append(name)
                else:
                    missing.append(name)
            info["fp16_fallback"]["applied"] = "FP16" in info["builder_flags"]
            if missing:
                info["fp16_fallback"]["note"] = (f"BuilderFlag {'/'.join(missing)} not in {flavor} {version} "
                                                 f"(removed in TensorRT 11 and TensorRT-RTX): skipped")
        else:
            info["fp16_fallback"]["note"] = ("strongly typed network: precisions come from the ONNX types "
                                             "(INT8 from Q/DQ); builder precision flags do not apply")
        tc_info: dict[str, Any] = {"path": None, "loaded": False, "saved": False}
        if timing_cache_path is not None and hasattr(config, "create_timing_cache"):
            tc_path = Path(timing_cache_path)
            blob = tc_path.read_bytes() if tc_path.is_file() else b""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                cache = config.create_timing_cache(blob)
                config.set_timing_cache(cache, False)
            tc_info.update(path=os.fspath(tc_path), loaded=bool(blob))
            if flavor == "tensorrt_rtx":
                tc_info["note"] = "TensorRT-RTX: timing cache APIs are deprecated no-ops"
        info["timing_cache"] = tc_info
    except Exception as exc:
        info["errors"] = [f"{type(exc).__name__}: {exc}"] + logger.errors()
        return info

    info["stage"] = "build"
    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as exc:
        serialized = None
        logger.records.append(("error", f"{type(exc).__name__}: {exc}"))
    if serialized is None:
        info["errors"] = logger.errors() or ["build_serialized_network returned None"]
        return info
    data = memoryview(serialized).cast("B") if not isinstance(serialized, (bytes, bytearray)) else serialized
    info["stage"] = "write"
    atomic_write(plan_path, data)
    if timing_cache_path is not None and info["timing_cache"]["path"]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                blob = config.get_timing_cache().serialize()
            atomic_write(Path(timing_cache_path), memoryview(blob).cast("B"))
            info["timing_cache"]["saved"] = True
        except Exception as exc:
            info["warnings"].append(f"timing cache not saved: {type(exc).__name__}: {exc}")
    info.update(ok=True, stage="done", seconds=round(time.perf_counter() - t0, 3), plan_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest())
    info["warnings"] += logger.warnings()
    return info


def gpu_available() -> tuple[bool, str]:
    """Whether an NVIDIA GPU is usable here, through the CUDA driver (libcuda) - no torch/cuda-python needed.

    Uses the driver wrapper of the bundle's bench_engine.py (the one timing path, run on the device)."""
    from targets.standalone.tensorrt.bench_engine import CudaDriver

    try:
        drv = CudaDriver()
    except Exception as exc:
        return False, str(exc)
    try:
        return True, f"CUDA device 0: {drv.name()}"
    except Exception as exc:
        return False, str(exc)
    finally:
        drv.close()
