"""OpenVINO on x86 CPUs: FP32 IR, INT8 through NNCF post-training quantization of the IR.

docs/TOOLCHAIN.md:
- `ov.convert_model` from the ONNX file keeps the dynamic batch; `ov.save_model` stores FP16
  weights unless `compress_to_fp16=False`.
- This CPU's default inference precision is bf16: a true FP32 baseline is compiled with
  INFERENCE_PRECISION_HINT=f32, and the bf16 default is reported separately.
- `nncf.quantize` on the OpenVINO model gave the best INT8 throughput here with no accuracy loss.

Layer names: after `convert_model` an ONNX `Conv` named `/conv1/Conv` becomes a `Convolution`
named `/conv1/Conv/WithoutBiases` plus an `Add` named `/conv1/Conv` (the bias), and a `Gemm`
`/fc/Gemm` becomes a `MatMul` `/fc/Gemm/WithoutBiases`. `quantizable_layers` returns those
OpenVINO names (what `nncf.IgnoredScope(names=...)` matches); `quantize` also accepts the ONNX
node names and maps them onto the Convolution/MatMul they produced.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from calibration.adapters import nncf_dataset
from targets.base import Backend, BuiltModel, QuantizeRequest, pin, write_check_report

# OpenVINO op types (IR) whose inputs NNCF quantizes and the fallback may keep in float.
_IR_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData",
                    "GroupConvolutionBackpropData", "MatMul")
# Layer types of the CPU plugin's runtime model (rt_info["layerType"]) that carry the MACs.
_RUNTIME_COMPUTE_TYPES = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected",
                          "FullyConnectedCompressed", "MatMul")
_INTEGER_PRECISIONS = ("u8", "i8", "u4", "i4", "u16", "i16", "i32")


def default_inference_precision() -> str:
    """The CPU plugin's default INFERENCE_PRECISION_HINT on this host (bf16 on AVX-512 BF16/AMX)."""
    import openvino as ov

    return _type_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def _type_name(t: Any) -> str:
    """openvino.Type -> 'bf16' / 'f32' (str(Type) reads "<Type: 'bfloat16'>")."""
    name = getattr(t, "to_string", None)
    return name() if callable(name) else str(t)


def _rt(op: Any, key: str) -> str:
    ri = op.get_rt_info()
    if key not in ri:
        return ""
    v = ri[key]
    try:
        return str(v.astype(str))
    except Exception:  # pragma: no cover - older bindings
        return str(v)


def compile_config(precision: str, threads: int | None) -> dict[str, Any]:
    """CPU compile properties for an artifact of `precision` (fp32 | int8 | mixed).

    fp32 and mixed (layers kept in float by the accuracy fallback) are compiled with the f32
    hint, otherwise the CPU would run the float parts in bf16; int8 keeps the plugin's default.
    """
    cfg: dict[str, Any] = {}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if precision in ("fp32", "mixed"):
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    return cfg


def runtime_precisions(compiled: Any) -> dict[str, Any]:
    """Which precision each conv / fully-connected / matmul executes in, read from the compiled
    model's runtime graph (rt_info "layerType" and "runtimePrecision")."""
    per_type: dict[str, dict[str, int]] = {}
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        ltype = _rt(op, "layerType")
        if ltype not in _RUNTIME_COMPUTE_TYPES:
            continue
        prec = _rt(op, "runtimePrecision").lower()
        per_type.setdefault(ltype, {})
        per_type[ltype][prec] = per_type[ltype].get(prec, 0) + 1
        layers.append({
            "name": op.get_friendly_name(),
            "type": ltype,
            "precision": prec,
            "primitive": _rt(op, "primitiveType"),
            "output_precision": _rt(op, "outputPrecisions"),
            "original_layers": [s for s in _rt(op, "originalLayersNames").split(",") if s],
        })
    integer = [l for l in layers if l["precision"] in _INTEGER_PRECISIONS]
    floating = [l for l in layers if l["precision"] not in _INTEGER_PRECISIONS]
    return {
        "runtime_precisions": per_type,
        "integer_layers": len(integer),
        "float_layers": len(floating),
        "float_layer_names": [l["name"] for l in floating],
        "all_conv_fc_integer": bool(layers) and not floating,
        "layers": layers,
    }


class OpenVINOBackend(Backend):
    name = "openvino"
    extra = "openvino"
    modules = ("openvino", "nncf")

    def __init__(self, fast_bias_correction: bool = False):
        # Measured on the digits CNN of tests/test_openvino_backend.py (two trainings): NNCF's
        # default FastBiasCorrection shifted conv biases enough to cost top-1 (0.977 -> 0.879;
        # 0.965 -> 0.940), also with 300/1000 samples and a static batch; the full
        # BiasCorrection kept FP32 accuracy (0.977, 0.962) for +0.5 s. Full is the default.
        self.fast_bias_correction = fast_bias_correction

    # -- artifacts -------------------------------------------------------------------------
    def fp32(self, req: QuantizeRequest) -> BuiltModel:
        import openvino as ov

        req.out_dir.mkdir(parents=True, exist_ok=True)
        model = ov.convert_model(str(req.fp32_onnx))  # keeps the ONNX dynamic batch
        xml = req.out_dir / "model_fp32.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return BuiltModel(
            model_file=xml, files=[xml, xml.with_suffix(".bin")], precision="fp32",
            numerics="openvino",
            info={
                "format": "OpenVINO IR", "weights": "fp32",
                "input": _io_desc(model.inputs), "output": _io_desc(model.outputs),
                # A true FP32 baseline: this CPU's default inference precision is bf16.
                "inference_precision_hint": "f32",
                "compile_config": compile_config("fp32", None),
                "default_inference_precision": default_inference_precision(),
            })

    def quantize(self, req: QuantizeRequest) -> BuiltModel:
        import nncf
        import openvino as ov

        req.out_dir.mkdir(parents=True, exist_ok=True)
        model = ov.convert_model(str(req.fp32_onnx))
        ignored = resolve_layer_names(model, req.exclude_layers)
        isa = getattr(req.profile, "isa", None)
        overflow_fix, why = overflow_fix_for(isa)
        advanced, calib_note = nncf_calibration_params(req.calib.method, req.calib.percentile,
                                                       req.calib.bins, overflow_fix)
        n = len(req.calibration)
        fbc = getattr(req.profile, "nncf_fast_bias_correction", None)  # optional profile knob
        fbc = self.fast_bias_correction if fbc is None else bool(fbc)
        qmodel = nncf.quantize(
            model,
            nncf_dataset(req.calibration, 1),
            preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric weights and activations
            target_device=nncf.TargetDevice.CPU,
            subset_size=n,
            fast_bias_correction=fbc,
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
            advanced_parameters=advanced,
        )
        xml = req.out_dir / "model_int8.xml"
        ov.save_model(qmodel, str(xml), compress_to_fp16=False)
        precision = "mixed" if ignored else "int8"
        return BuiltModel(
            model_file=xml, files=[xml, xml.with_suffix(".bin")], precision=precision,
            numerics="openvino",
            info={
                "format": "OpenVINO IR (NNCF FakeQuantize)", "tool": f"nncf {nncf.__version__}",
                "preset": "performance", "target_device": "CPU", "subset_size": n,
                "bias_correction": "fast" if fbc else "full",
                "weights": "int8 per-channel symmetric", "activations": "8-bit symmetric",
                "calibration": req.calib.method, "calibration_mapping": calib_note,
                "scheme": {"isa": isa or "unspecified", "overflow_fix": overflow_fix, "why": why},
                "kept_in_float": ignored,
                "inference_precision_hint": "f32" if ignored else "default",
                "compile_config": compile_config(precision, None),
                "default_inference_precision": default_inference_precision(),
            })

    def quantizable_layers(self, fp32_onnx: Path, torch_model: Any | None = None) -> list[str]:
        """OpenVINO names of the Convolution / MatMul ops of the converted model: the names
        `nncf.IgnoredScope(names=...)` accepts (e.g. '/conv1/Conv/WithoutBiases'). The IR is
        converted from the ONNX file, so the torch module is not needed."""
        import openvino as ov

        model = ov.convert_model(str(fp32_onnx))
        return [op.get_friendly_name() for op in model.get_ordered_ops()
                if op.get_type_name() in _IR_WEIGHTED_OPS and _has_constant_weight(op)]

    # -- compile and verify ----------------------------------------------------------------
    def compile(self, built: BuiltModel, profile: Any, out_dir: Path) -> dict[str, Any]:
        import openvino as ov

        core = ov.Core()
        threads = getattr(profile, "threads", None)
        cfg = compile_config(built.precision, threads)
        compiled = core.compile_model(str(built.model_file), "CPU", cfg)
        report = runtime_precisions(compiled)
        report.update({
            "device": "CPU",
            "compile_config": cfg,
            "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "default_inference_precision": _type_name(
                core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "openvino": ov.get_version(),
        })
        return write_check_report(out_dir, built.model_file, "runtime", report)

    def requirements(self) -> list[str]:
        return [pin("openvino"), pin("numpy")]


# -- helpers --------------------------------------------------------------------------------
def _io_desc(ports) -> list[dict[str, Any]]:
    return [{"name": p.get_any_name(), "shape": str(p.get_partial_shape()),
             "dtype": _type_name(p.get_element_type())} for p in ports]


def _has_constant_weight(op: Any) -> bool:
    """A MatMul between two activations (attention) has no weight to quantize in NNCF's
    default scheme; conv ops always have one. Weights may sit behind a Convert/Reshape."""
    if op.get_type_name() != "MatMul":
        return True
    for i in range(op.get_input_size()):
        src = op.input_value(i).get_node()
        for _ in range(3):
            if src.get_type_name() == "Constant":
                return True
            if src.get_input_size() == 0:
                break
            src = src.input_value(0).get_node()
    return False


def resolve_layer_names(model: Any, names: list[str]) -> list[str]:
    """Map requested names to OpenVINO Convolution/MatMul names NNCF can ignore.

    Accepts OpenVINO names as returned by `quantizable_layers` and ONNX node names
    ('/conv1/Conv' -> '/conv1/Conv/WithoutBiases'). Unknown names raise ValueError.
    """
    if not names:
        return []
    weighted = [op.get_friendly_name() for op in model.get_ordered_ops()
                if op.get_type_name() in _IR_WEIGHTED_OPS]
    known = set(weighted)
    out: list[str] = []
    for name in names:
        if name in known:
            hit = [name]
        elif f"{name}/WithoutBiases" in known:
            hit = [f"{name}/WithoutBiases"]
        else:
            hit = [w for w in weighted if w.startswith(name.rstrip("/") + "/")]
        if not hit:
            raise ValueError(f"layer {name!r} is not a Convolution/MatMul of the OpenVINO model; "
                             f"known: {weighted}")
        out.extend(h for h in hit if h not in out)
    return out


def overflow_fix_for(isa: str | None) -> tuple[str, str]:
    """NNCF's OverflowFix value for a CPU class, and why. NNCF's docs: 8-bit kernels of SSE/AVX2/AVX-512 CPUs
    without VNNI saturate. ENABLE (every layer's weights in half range) rather than NNCF's FIRST_LAYER default,
    so that no layer can saturate and the accuracy measured here is the device's; with VNNI, DISABLE (full
    8-bit weights: int32 accumulation cannot overflow)."""
    from targets.isa import ISA_CLASSES

    c = ISA_CLASSES.get(isa) if isa else None
    if c is None:
        return "enable", "the profile names no instruction-set class: half-range weights, exact on every x86 CPU"
    if c.saturates:
        return "enable", f"{isa} has no VNNI: its int8 kernels saturate; half-range weights in every layer"
    return "disable", f"{isa} has VNNI: int32 accumulation, full 8-bit weights"


def nncf_calibration_params(method: str, percentile: float, bins: int, overflow_fix: str = "first_layer_only"):
    """Our calibration method -> NNCF AdvancedQuantizationParameters (activations only;
    weights always use NNCF's per-channel min/max). Returns (params, honest note)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import (AggregatorType, RangeEstimatorParameters,
                                                   RangeEstimatorParametersSet,
                                                   StatisticsCollectorParameters, StatisticsType)

    if method == "minmax":
        rep = RangeEstimatorParametersSet.MINMAX
        note = "exact: global min/max over the calibration set (NNCF's own default is MEAN_MINMAX)"
    elif method == "percentile":
        prob = max(0.0, 1.0 - float(percentile) / 100.0)
        stat = StatisticsCollectorParameters(statistics_type=StatisticsType.QUANTILE,
                                             aggregator_type=AggregatorType.MEAN,
                                             quantile_outlier_prob=prob)
        rep = RangeEstimatorParameters(min=stat, max=stat)
        note = (f"approximate: per-sample {prob:g}/{1 - prob:g} quantiles averaged over samples "
                "(NNCF MEAN_QUANTILE), not a percentile of one histogram of all samples")
    elif method == "entropy":
        rep = RangeEstimatorParametersSet.HISTOGRAM
        note = ("not available in NNCF: mapped to RangeEstimatorParametersSet.HISTOGRAM, a "
                "histogram search minimising the L2 quantization error (not KL divergence)"
                + ("" if int(bins) == 2048 else f"; NNCF fixes 2048 bins, {bins} requested"))
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    from nncf.quantization.advanced_parameters import OverflowFix

    return AdvancedQuantizationParameters(activations_range_estimator_params=rep,
                                          overflow_fix=OverflowFix(overflow_fix)), note
