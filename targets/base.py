"""The small protocol every backend implements, and the backend registry.

A backend turns the FP32 student (ONNX file plus the torch module) and the shared
calibration set into the artifact its runtime executes, checks that artifact (for example
that convolutions really run in integer precision) and says how to run it on the device.
Running a model goes through `targets/standalone/runtime.py`, the same code the bundles ship.
"""
from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np


@dataclass
class CalibrationSpec:
    """How to calibrate: the method and its knobs (see calibration/)."""

    method: str = "minmax"  # minmax | percentile | entropy
    percentile: float = 99.99
    bins: int = 2048


@dataclass
class QuantizeRequest:
    fp32_onnx: Path
    torch_model: Any  # the FP32 student nn.Module (LiteRT converts from torch), eval mode
    input_shape: tuple[int, ...]  # (1, C, H, W)
    calibration: np.ndarray  # float32 NCHW, preprocessed like the model's input
    calib: CalibrationSpec
    profile: Any  # targets.profiles.Profile
    out_dir: Path
    exclude_layers: list[str] = field(default_factory=list)  # kept in higher precision (accuracy budget)
    threads: Optional[int] = None


@dataclass
class BuiltModel:
    """A backend's artifact: files live in one folder, `model_file` is what a runtime loads."""

    model_file: Path
    files: list[Path]
    precision: str  # int8 | fp32 | fp16 | mixed
    numerics: str  # runtime that produced the accuracy on this host, e.g. "openvino"
    info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """The typed protocol of a backend; mypy (`make test`) checks that every backend's overrides match it.

    The pipeline calls exactly these methods with these arguments (pipeline/stages/target.py and bundle.py).
    """

    name: str = ""
    extra: str = ""  # pip extra that installs its runtime
    modules: tuple[str, ...] = ()  # import names that must be present
    # The runtime host numbers come from: `measured` when the host is the target's CPU class,
    # `host-measured` when the artifact runs here but the target is another device.
    host_source: str = "measured"
    # True: the device's INT8 numerics are the exact fake-quant ones of the QDQ model (TensorRT on a GPU), so
    # accuracy is computed with ONNX Runtime's graph optimizations off, never with this CPU's integer kernels.
    exact_reference: bool = False

    def availability(self) -> tuple[bool, str]:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"missing {', '.join(missing)}: pip install 'edge-pipeline[{self.extra}]'"
        return True, "installed"

    def install_hint(self) -> str:
        return f"pip install -e '.[{self.extra}]'"

    @abstractmethod
    def fp32(self, req: QuantizeRequest) -> BuiltModel:
        """The FP32 baseline in this backend's format."""

    @abstractmethod
    def quantize(self, req: QuantizeRequest) -> BuiltModel:
        """The INT8 artifact, calibrated on req.calibration, keeping req.exclude_layers in float."""

    def quantizable_layers(self, fp32_onnx: Path, torch_model: Optional[Any] = None) -> list[str]:
        """Layer names the accuracy-budget fallback may keep in float, in the form `quantize` accepts in
        `QuantizeRequest.exclude_layers` (ONNX node names by default). `torch_model` is the FP32 student,
        for backends that convert from torch."""
        import onnx

        m = onnx.load(str(fp32_onnx), load_external_data=False)
        return [n.name for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]

    def compile(self, built: BuiltModel, profile: Any, out_dir: Path) -> dict[str, Any]:
        """Backend checks and compilation beyond quantize (e.g. TensorRT lint/parse/engine)."""
        return {}

    def requirements(self) -> list[str]:
        """Pinned runtime requirements for the bundle (runtime + numpy only)."""
        return [_pin("numpy")]

    def bundle_extras(self, built: BuiltModel, profile: Any, bundle_dir: Path, manifest: dict[str, Any]) -> list[str]:
        """Copy extra files (scripts) into a bundle; returns notes for its README."""
        return []


def write_check_report(out_dir: Path | None, model_file: Path, suffix: str, report: dict[str, Any]) -> dict[str, Any]:
    """Keep a backend's compile/check report next to the stage's outputs (when a folder is given)."""
    import json

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # strict JSON (targets may use only pipeline.errors): json itself turns NaN/Infinity into null on a round trip
        finite = json.loads(json.dumps(report, default=str), parse_constant=lambda _: None)
        (out_dir / f"{Path(model_file).stem}_{suffix}.json").write_text(json.dumps(finite, indent=2, allow_nan=False))
    return report


def _pin(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return dist


_BACKENDS: dict[str, str] = {
    "onnxruntime": "targets.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "targets.tensorrt_target:TensorRTBackend",
    "openvino": "targets.openvino:OpenVINOBackend",
    "litert": "targets.litert:LiteRTBackend",
}


def get_backend(name: str) -> Backend:
    mod, _, cls = _BACKENDS[name].partition(":")
    backend = getattr(importlib.import_module(mod), cls)()
    assert isinstance(backend, Backend)
    return backend


def backend_names() -> list[str]:
    return list(_BACKENDS)


def pin(dist: str) -> str:
    return _pin(dist)
