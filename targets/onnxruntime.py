"""ONNX Runtime on x86 CPUs: INT8 as U8S8 QDQ (uint8 activations, int8 per-channel weights).

FACTS.md: the default S8S8 form was slower than FP32 on this CPU (only some convs fused);
U8S8 ran every conv, add and the linear layer in integer, 2.6-2.8x faster at batch 1.
"""
from __future__ import annotations

import shutil

from calibration.adapters import ort_calibration_args, ort_reader
from targets.base import Backend, BuiltModel, QuantizeRequest, pin


def ort_quantize_qdq(req: QuantizeRequest, out_name: str, *, activation: str, symmetric: bool) -> BuiltModel:
    """quantize_static to QDQ with per-channel weights; activation 'u8' or 's8'."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    req.out_dir.mkdir(parents=True, exist_ok=True)
    pre = req.out_dir / "preprocessed.onnx"
    quant_pre_process(str(req.fp32_onnx), str(pre), skip_symbolic_shape=True)
    input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    method, calib_opts = ort_calibration_args(req.calib.method, req.calib.percentile, req.calib.bins)
    out = req.out_dir / out_name
    quantize_static(
        str(pre), str(out), ort_reader(req.calibration, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=list(req.exclude_layers),
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            # TensorRT: biases stay float; harmless for ORT, which fuses them anyway.
            "QuantizeBias": not symmetric,
            **calib_opts,
        },
    )
    pre.unlink()
    precision = "mixed" if req.exclude_layers else "int8"
    return BuiltModel(model_file=out, files=[out], precision=precision, numerics="onnxruntime",
                      info={"format": "QDQ", "activations": "uint8" if activation == "u8" else "int8",
                            "weights": "int8 per-channel", "calibration": req.calib.method,
                            "kept_in_float": list(req.exclude_layers)})


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    extra = "onnxruntime"
    modules = ("onnxruntime",)

    def fp32(self, req: QuantizeRequest) -> BuiltModel:
        req.out_dir.mkdir(parents=True, exist_ok=True)
        out = req.out_dir / "model_fp32.onnx"
        shutil.copyfile(req.fp32_onnx, out)
        return BuiltModel(model_file=out, files=[out], precision="fp32", numerics="onnxruntime")

    def quantize(self, req: QuantizeRequest) -> BuiltModel:
        return ort_quantize_qdq(req, "model_int8.onnx", activation="u8", symmetric=False)

    def requirements(self) -> list[str]:
        return [pin("onnxruntime"), pin("numpy")]
