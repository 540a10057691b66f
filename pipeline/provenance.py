"""Where a number comes from: its source, the runtime (with version) and the host class that produced it.

Sources: `measured` (the target's runtime ran on a host of the target's CPU class), `host-measured` (the
artifact, or its reference numerics, ran on this host, which is not the target device), `estimated`
(roofline, not run), `device-measured` (imported from the device). A figure whose source was not recorded
is `unknown`, never assumed measured.
"""
from __future__ import annotations

import os
import platform
from typing import Any

UNKNOWN = "unknown"

# The python distribution whose version names the runtime behind a BuiltModel.numerics string.
_RUNTIME_DIST = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai-edge-litert",
                 "tensorrt": "tensorrt", "torch": "torch"}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def host_class() -> str:
    """`x86_64 Intel(R) Xeon(R) ... (2 cores, avx512-vnni)`: the machine architecture, CPU model, core count and
    instruction-set class (targets/isa.py: it decides which INT8 kernels ran)."""
    from targets.isa import host_isa

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    isa = host_isa()
    cores = f"({os.cpu_count()} cores{', ' + isa if isa else ''})"
    return " ".join(p for p in (platform.machine(), cpu, cores) if p)


def runtime_label(numerics: str) -> str:
    """'onnxruntime (reference numerics for TensorRT)' -> 'onnxruntime 1.22.0 (reference numerics for TensorRT)'."""
    head, _, rest = numerics.partition(" ")
    dist = _RUNTIME_DIST.get(head)
    ver = _version(dist) if dist else None
    name = dist if dist and dist != head else head
    label = f"{name} {ver}" if ver else name
    return f"{label} {rest}".strip()


def accuracy_source(backend_host_source: str, profile_cpu_arch: str | None, numerics: str) -> str:
    """`measured` only when the target's own runtime ran on a host of the target's CPU architecture;
    reference numerics (TensorRT QDQ through ONNX Runtime) or another architecture give `host-measured`."""
    same_arch = not profile_cpu_arch or profile_cpu_arch == platform.machine()
    own_runtime = "reference numerics" not in numerics
    return "measured" if backend_host_source == "measured" and same_arch and own_runtime else "host-measured"


def figure(value: Any, source: str | None, runtime: str | None, host: str | None, **extra: Any) -> dict[str, Any]:
    """One reported number with its provenance ({value, source, runtime, host, ...})."""
    return {"value": value, "source": source or UNKNOWN, "runtime": runtime or UNKNOWN, "host": host or UNKNOWN,
            **extra}


def precision_label(precision: str, kept_in_float: list[Any] | None = None,
                    float_compute_layers: list[Any] | None = None) -> str:
    """`int8` only when every compute layer is integer; a model with some float compute layers (kept by the
    accuracy fallback, or left float by the backend) is `mixed int8/fp32`."""
    if precision in ("int8", "mixed") and (kept_in_float or float_compute_layers or precision == "mixed"):
        return "mixed int8/fp32"
    return precision


def float_compute_layers(check: dict[str, Any]) -> list[Any]:
    """Compute layers a backend's compile check found running in float (OpenVINO runtime precisions,
    LiteRT compute ops); an empty list when the check does not say."""
    if check.get("float_layer_names"):
        return list(check["float_layer_names"])
    fic = check.get("full_integer_check") or {}
    return [c for c in fic.get("compute_ops", []) if not c.get("integer")]
