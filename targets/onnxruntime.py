"""ONNX Runtime on x86 CPUs: INT8 as U8S8 QDQ (uint8 activations, int8 per-channel weights).

docs/TOOLCHAIN.md: the default S8S8 form was slower than FP32 on this CPU (only some convs fused);
U8S8 ran every conv, add and the linear layer in integer, 2.6-2.8x faster at batch 1.

The scheme follows the profile's instruction-set class (`scheme_for`, from ONNX Runtime's own guidance in
onnxruntime/quantization/quantize.py, "Choosing parameters for CPU inference"): x86 without VNNI gets
7-bit weights (`reduce_range=True`), since its u8 x s8 kernels sum pairs in int16 and saturate.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.adapters import ort_calibration_args, ort_reader
from targets.base import Backend, BuiltModel, QuantizeRequest, pin


COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def layer_groups(model) -> dict[str, list[str]]:
    """A "layer" for the accuracy-budget fallback: a compute node plus the non-compute nodes that follow
    it (activation, pooling, flatten, residual add) up to the next compute node.

    ORT's nodes_to_exclude only skips the named node: its output would still be quantized for the pooling
    after it. Keeping a layer in float therefore excludes the whole group.
    """
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        group, frontier, seen = [n.name], list(n.output), set()
        while frontier:
            t = frontier.pop()
            for c in consumers.get(t, []):
                if c.op_type in COMPUTE_OPS or c.name in seen:
                    continue
                seen.add(c.name)
                group.append(c.name)
                frontier.extend(c.output)
        groups[n.name] = group
    return groups


def expand_exclusions(model, names: list[str]) -> list[str]:
    groups = layer_groups(model)
    out: list[str] = []
    for name in names:
        for n in groups.get(name, [name]):
            if n not in out:
                out.append(n)
    return out


def quantize_qdq(fp32_onnx, out_onnx, calibration: np.ndarray, *, method: str = "minmax", percentile: float = 99.99,
                 bins: int = 2048, activation: str = "u8", symmetric: bool = False, exclude: Sequence[str] = (),
                 batch_size: int = 16, reduce_range: bool = False, extra: dict | None = None) -> Path:
    """quantize_static to QDQ with per-channel int8 weights; activations 'u8' (ORT on x86) or 's8' (TensorRT).

    Symmetric mode also keeps biases in float (TensorRT's rule); ORT fuses them either way.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{fp32_onnx}: single-input models only, found {len(inputs)} inputs")
    dim0 = inputs[0].type.tensor_type.shape.dim[0]
    fixed = dim0.dim_value if dim0.HasField("dim_value") else 0
    calib = np.ascontiguousarray(calibration, dtype=np.float32)
    if len(calib) == 0:
        raise ValueError("calibration set is empty")
    if fixed:  # a fixed-batch model takes whole batches only
        calib = calib[: len(calib) // fixed * fixed]
    calib_method, calib_opts = ort_calibration_args(method, percentile, bins)
    quantize_static(
        str(fp32_onnx), str(out_onnx), ort_reader(calib, inputs[0].name, fixed or batch_size),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calib_method,
        nodes_to_exclude=expand_exclusions(model, list(exclude)),
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric,
                       **calib_opts, **(extra or {})},
    )
    return Path(out_onnx)


@dataclass(frozen=True)
class OrtScheme:
    """The QDQ form ONNX Runtime's documentation prescribes for a CPU class."""

    isa: str | None
    activation: str  # "u8" | "s8"
    reduce_range: bool
    why: str

    def to_json(self) -> dict:
        return {"isa": self.isa or "unspecified", "activations": "uint8 affine" if self.activation == "u8"
                else "int8 symmetric", "weights": "int8 per-channel" + (" in 7 bits (reduce_range)"
                                                                         if self.reduce_range else ""),
                "reduce_range": self.reduce_range, "why": self.why}


def scheme_for(isa: str | None) -> OrtScheme:
    """ONNX Runtime's CPU guidance by instruction set: x86 without VNNI -> U8S8 + reduce_range; x86 with VNNI
    -> U8S8; ARM -> S8S8. An unnamed class gets the choice that is exact everywhere (7-bit weights)."""
    from targets.isa import ISA_CLASSES

    c = ISA_CLASSES.get(isa) if isa else None
    if c is None:
        return OrtScheme(isa, "u8", True, "the profile names no instruction-set class: 7-bit weights, which no "
                                          "x86 kernel can saturate")
    if c.arch == "aarch64":
        return OrtScheme(isa, "s8", False, "ARM: S8S8 symmetric (ONNX Runtime's guidance for ARM CPUs)")
    if c.saturates:
        return OrtScheme(isa, "u8", True, f"{isa} has no VNNI: its u8 x s8 kernels sum pairs in int16 and "
                                          "saturate; 7-bit weights (reduce_range) keep every sum exact")
    return OrtScheme(isa, "u8", False, f"{isa} has VNNI: products accumulate in int32 without saturation")


def quantize_u8s8(fp32_onnx, out_onnx, calibration: np.ndarray, calib, exclude: Sequence[str] = (),
                  scheme: OrtScheme | None = None) -> Path:
    """This target's INT8 model: ORT's pre-pass, then U8S8 QDQ with the recipe's calibration settings
    (`calib`: method, percentile, bins) in the profile's `scheme` (default: the exact-everywhere one). The
    prune stage's INT8 check (pipeline/prune_int8.py) uses it too."""
    scheme = scheme or scheme_for(None)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_onnx = Path(out_onnx)
    pre = out_onnx.with_name(out_onnx.stem + ".preprocessed.onnx")  # ORT's recommended pre-pass (fusions, shapes)
    quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
    try:
        return quantize_qdq(pre, out_onnx, calibration, method=calib.method, percentile=calib.percentile,
                            bins=calib.bins, activation=scheme.activation, symmetric=scheme.activation == "s8",
                            reduce_range=scheme.reduce_range, exclude=exclude)
    finally:
        pre.unlink(missing_ok=True)


def fp32_onnx_copy(req: QuantizeRequest) -> BuiltModel:
    """The FP32 baseline of the ONNX-based backends is the exported ONNX itself."""
    req.out_dir.mkdir(parents=True, exist_ok=True)
    out = req.out_dir / "model_fp32.onnx"
    shutil.copyfile(req.fp32_onnx, out)
    return BuiltModel(model_file=out, files=[out], precision="fp32", numerics="onnxruntime")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    extra = "onnxruntime"
    modules = ("onnxruntime",)

    def fp32(self, req: QuantizeRequest) -> BuiltModel:
        return fp32_onnx_copy(req)

    def quantize(self, req: QuantizeRequest) -> BuiltModel:
        req.out_dir.mkdir(parents=True, exist_ok=True)
        scheme = scheme_for(getattr(req.profile, "isa", None))
        out = quantize_u8s8(req.fp32_onnx, req.out_dir / "model_int8.onnx", req.calibration, req.calib,
                            exclude=req.exclude_layers, scheme=scheme)
        sj = scheme.to_json()
        return BuiltModel(model_file=out, files=[out], precision="mixed" if req.exclude_layers else "int8",
                          numerics="onnxruntime",
                          info={"format": "QDQ", "activations": sj["activations"], "weights": sj["weights"],
                                "scheme": sj, "calibration": req.calib.method,
                                "kept_in_float": list(req.exclude_layers)})

    def requirements(self) -> list[str]:
        return [pin("onnxruntime"), pin("numpy")]
