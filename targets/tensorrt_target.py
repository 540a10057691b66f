"""TensorRT for Jetson: a strongly-typed INT8 QDQ ONNX that obeys TensorRT's Q/DQ rules.

Engines are not portable across GPUs or TensorRT versions, so the engine is built on the device
by the bundle's scripts. Here the QDQ model is linted (targets/qdq_lint.py), parsed where a
TensorRT module imports (tensorrt-rtx is a proxy for the Jetson's TensorRT), and its accuracy
is evaluated with ONNX Runtime as the reference numerics: graph optimizations off, so the QDQ model runs as
DequantizeLinear then float ops (exact fake-quant numerics, the same on every host), never with this CPU's fused
integer kernels (on AVX2 without VNNI they saturate: 0.82 top-1 agreement with FP32 instead of 0.985). With `tensorrt` and a GPU present the
same code builds the engine here.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from targets.base import Backend, BuiltModel, QuantizeRequest, pin

STANDALONE_TRT = Path(__file__).resolve().parent / "standalone" / "tensorrt"
NUMERICS = "onnxruntime (exact fake-quant reference numerics for TensorRT)"


class TensorRTBackend(Backend):
    name = "tensorrt"
    extra = "tensorrt"
    modules = ("onnxruntime", "onnx")  # what the host side needs; the engine build needs the device
    host_source = "estimated"
    exact_reference = True  # TensorRT computes the QDQ math exactly; this CPU's int8 kernels may saturate

    def availability(self) -> tuple[bool, str]:
        ok, why = super().availability()
        if not ok:
            return ok, why
        from targets.tensorrt_api import gpu_available, import_tensorrt

        trt, flavor = import_tensorrt()
        gpu, _ = gpu_available()
        if flavor == "tensorrt" and gpu:
            return True, "engine built and timed here (tensorrt + GPU)"
        parse = f"parse check with {flavor}" if trt is not None else "no TensorRT here"
        return True, f"QDQ ONNX + lint ({parse}); engine built on the device"

    def fp32(self, req: QuantizeRequest) -> BuiltModel:
        from targets.onnxruntime import fp32_onnx_copy

        return fp32_onnx_copy(req)

    def quantize(self, req: QuantizeRequest) -> BuiltModel:
        from targets.tensorrt_qdq import make_trt_qdq

        req.out_dir.mkdir(parents=True, exist_ok=True)
        out = make_trt_qdq(req.fp32_onnx, req.out_dir / "model_int8_qdq.onnx", req.calibration,
                           method=req.calib.method, nodes_to_exclude=list(req.exclude_layers),
                           percentile=req.calib.percentile, bins=req.calib.bins)
        return BuiltModel(model_file=Path(out), files=[Path(out)], precision="mixed" if req.exclude_layers else "int8",
                          numerics=NUMERICS,
                          info={"format": "QDQ (strongly typed)", "activations": "int8 symmetric",
                                "weights": "int8 per-channel axis 0", "biases": "float",
                                "calibration": req.calib.method, "kept_in_float": list(req.exclude_layers)})

    def compile(self, built: BuiltModel, profile: Any, out_dir: Path) -> dict[str, Any]:
        from targets.qdq_lint import lint_qdq
        from targets.tensorrt_api import build_engine, gpu_available, import_tensorrt, parse_check

        lint = lint_qdq(built.model_file)
        info: dict[str, Any] = {"qdq_lint": {"ok": lint.ok, "errors": lint.errors, "warnings": lint.warnings,
                                             "stats": lint.stats}, "notes": []}
        if not lint.ok:
            from pipeline.errors import GateError

            raise GateError(f"the INT8 QDQ model breaks TensorRT's Q/DQ rules: {'; '.join(lint.errors[:5])}")
        expected = getattr(profile.runtime, "tensorrt", None) or "10.3"
        trt, flavor = import_tensorrt()
        if trt is None:
            info["parse_check"] = {"ok": None, "skipped": "no tensorrt or tensorrt-rtx module importable here"}
        else:
            info["parse_check"] = parse_check(built.model_file, trt=trt, expected_trt=expected)
        gpu, why = gpu_available()
        if flavor == "tensorrt" and gpu:
            plan = out_dir / "model.plan"
            info["engine"] = build_engine(built.model_file, plan, trt=trt, timing_cache_path=out_dir / "timing.cache",
                                          expected_trt=expected)
        else:
            info["engine"] = {"built": False, "reason": f"engine is built on the device ({'no GPU: ' + why if not gpu else 'tensorrt not installed'}); "
                                                        "run build_engine.sh or build_engine.py from the bundle"}
            info["notes"].append(f"TensorRT engine is built on the device (TensorRT {expected}, bundle scripts); "
                                 f"not here: {why if not gpu else 'the tensorrt package is not installed'}")
        return info

    def requirements(self) -> list[str]:
        # TensorRT itself comes with JetPack on the device; onnxruntime runs the QDQ reference check.
        return [pin("onnxruntime"), pin("numpy")]

    def bundle_extras(self, built: BuiltModel, profile: Any, bundle_dir: Path, manifest: dict) -> list[str]:
        for f in sorted(STANDALONE_TRT.iterdir()):
            if f.is_file():
                shutil.copyfile(f, bundle_dir / f.name)
        manifest["device_model_files"] = ["model.plan"]
        rt = profile.runtime
        manifest["toolchain"]["tensorrt_expected"] = getattr(rt, "tensorrt", None)
        manifest["toolchain"]["jetpack_expected"] = getattr(rt, "jetpack", None)
        shape = "x".join(str(d) for d in manifest["input"]["shape"])
        return [
            f"Build the engine on the device (JetPack {getattr(rt, 'jetpack', '?')}, TensorRT {getattr(rt, 'tensorrt', '?')}): "
            f"`bash build_engine.sh` (trtexec --stronglyTyped, shapes {manifest['input']['name']}:{shape}) or "
            "`python3 build_engine.py --onnx model_int8_qdq.onnx --plan model.plan`; a mismatched TensorRT is refused.",
            "Time it with `python3 bench_engine.py model.plan` (device-measured); run.py uses model.plan when present.",
            "Accuracy in this bundle was computed with ONNX Runtime on the QDQ model (exact fake-quant reference "
            "numerics for TensorRT: graph optimizations off).",
        ]
