"""LiteRT (TFLite) for ARM CPUs, converted from the torch module with litert-torch.

docs/TOOLCHAIN.md: litert-torch converts the nn.Module directly; INT8 goes through its PT2E quantizer
(per-channel symmetric weights, static activations). Calibrate at the export's batch size (1).
`litert_torch.to_channel_last_io` gives an NHWC input. Run with ai-edge-litert (XNNPACK).
The ARM board is not this host, so host numbers are `host-measured`.

Measured with litert-torch 0.10.0: in its default QDQ conversion a PT2E static model comes out
with INT8 input and output (the boundary quantize/dequantize are folded into the signature),
and a conv left unannotated between DQ and Q is re-quantized by the converter, so excluding a
layer has no effect. With the converter's `strict_qdq_mode` the I/O stays float32 (QUANTIZE
after the input, DEQUANTIZE before the output, everything inside int8) and excluded layers
stay float. Hence: `io_dtype="float"` (default, the bundle feeds the same float tensors as
every other target) and any exclusion use strict mode; `io_dtype="int8"` keeps the native
integer I/O (scale/zero point in info). If strict mode is unavailable, float I/O falls back to
inserting QUANTIZE/DEQUANTIZE at the I/O in the flatbuffer (`float_io_rewrite`).

Calibration methods (activation observers of the PT2E quantizer; weights are always per-channel
symmetric min/max): minmax -> MinMaxObserver (exact); percentile -> a HistogramObserver whose
range is the requested percentile of the histogram of all calibration values (exact up to the
bin width); entropy -> torchao HistogramObserver with `bins` (an L2 quantization-error search,
not KL divergence: no KL observer exists for PT2E).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from calibration.adapters import torch_batches
from targets.base import Backend, BuiltModel, QuantizeRequest, pin, write_check_report

_COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D",
                "BATCH_MATMUL", "CONV_3D_TRANSPOSE")
_INT_DTYPES = ("int8", "uint8", "int16", "int4")


class LiteRTBackend(Backend):
    name = "litert"
    extra = "tflite"
    modules = ("litert_torch", "ai_edge_litert")
    host_source = "host-measured"

    def __init__(self, io_dtype: str = "float"):
        if io_dtype not in ("float", "int8"):
            raise ValueError("io_dtype must be 'float' or 'int8'")
        self.io_dtype = io_dtype

    # -- artifacts -------------------------------------------------------------------------
    def fp32(self, req: QuantizeRequest) -> BuiltModel:
        import litert_torch

        req.out_dir.mkdir(parents=True, exist_ok=True)
        module, sample, layout = _prepare_module(req)
        edge = litert_torch.convert(module, (sample,))
        out = req.out_dir / "model_fp32.tflite"
        _export_quietly(edge, out)
        info = {"format": "tflite", "tool": f"litert-torch {litert_torch.__version__}",
                "layout": layout, "input_shape": list(sample.shape), "io_dtype": "float32"}
        return BuiltModel(model_file=out, files=[out], precision="fp32", numerics="litert",
                          info=info)

    def quantize(self, req: QuantizeRequest) -> BuiltModel:
        import litert_torch
        import torch
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        req.out_dir.mkdir(parents=True, exist_ok=True)
        io_dtype = getattr(req.profile, "io_dtype", None) or self.io_dtype
        module, sample, layout = _prepare_module(req)
        skip = resolve_module_names(req.torch_model, req.exclude_layers)
        config, calib_note = pt2e_config(req.calib.method, req.calib.percentile, req.calib.bins)
        quantizer = skip_modules_quantizer(skip, prefix="wrapped." if layout == "nhwc" else "")
        quantizer.set_global(config)

        exported = torch.export.export(module, (sample,)).module()
        prepared = move_exported_model_to_eval(prepare_pt2e(exported, quantizer))
        # Same batch size as the export (docs/TOOLCHAIN.md): a different batch breaks the static shapes.
        batch = int(sample.shape[0])
        calib = req.calibration
        used = (len(calib) // batch) * batch
        if used == 0:
            raise ValueError(f"calibration set ({len(calib)}) smaller than the batch ({batch})")
        with torch.no_grad():
            for x in torch_batches(calib[:used], batch):
                prepared(x.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else x)
        converted = convert_pt2e(prepared, fold_quantize=False)
        converted.training = False  # attribute only: exported GraphModules refuse .eval()

        # Strict QDQ conversion keeps float whatever has no Q/DQ around it (the excluded
        # layers) and gives float I/O; the default mode re-quantizes a float conv sitting
        # between DQ and Q (measured: an excluded conv came out int8) and folds the boundary
        # Q/DQ into int8 I/O.
        want_strict = io_dtype == "float" or bool(skip)
        out = req.out_dir / "model_int8.tflite"
        with tempfile.TemporaryDirectory() as tmp:
            native = Path(tmp) / "native.tflite"
            with strict_qdq_conversion(want_strict) as strict:
                if skip and not strict:
                    raise RuntimeError("this litert-torch has no strict QDQ conversion mode: "
                                       "layers cannot be kept in float")
                edge = litert_torch.convert(converted, (sample,),
                                            quant_config=QuantConfig(pt2e_quantizer=quantizer))
                _export_quietly(edge, native)
            native_io = _io_dtypes(native)
            rewritten = io_dtype == "float" and native_io != {"float32"}
            if rewritten:  # fallback when strict mode is unavailable
                float_io_rewrite(native, out)
            else:
                shutil.copyfile(native, out)
        check = check_full_integer(out)
        precision = "mixed" if skip else "int8"
        info = {
            "format": "tflite", "tool": f"litert-torch {litert_torch.__version__} PT2EQuantizer",
            "layout": layout, "input_shape": list(sample.shape),
            "weights": "int8 per-channel symmetric", "activations": "int8 static per-tensor affine",
            "calibration": req.calib.method, "calibration_mapping": calib_note,
            "calibration_samples": used, "calibration_batch": batch,
            "io_dtype": check["io"]["input"][0]["dtype"] if check["io"]["input"] else None,
            "io": check["io"], "requested_io_dtype": io_dtype,
            "strict_qdq_conversion": strict, "float_io_rewritten": rewritten,
            "kept_in_float": skip, "full_integer": check["full_integer"],
        }
        return BuiltModel(model_file=out, files=[out], precision=precision, numerics="litert",
                          info=info)

    def quantizable_layers(self, fp32_onnx: Path, torch_model: Any = None) -> list[str]:
        """Torch module names of the Conv/Linear layers (what `quantize` can keep in float).

        Without `torch_model` it returns the ONNX node names; `quantize` maps those back to
        torch module names ('/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1')."""
        if torch_model is None:
            return super().quantizable_layers(fp32_onnx)
        import torch.nn as nn

        kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.Linear)
        return [n for n, m in torch_model.named_modules() if n and isinstance(m, kinds)]

    # -- compile and verify ----------------------------------------------------------------
    def compile(self, built: BuiltModel, profile: Any, out_dir: Path) -> dict[str, Any]:
        """Nothing to compile ahead of time for the ARM CPU: load the model here with XNNPACK
        (profile threads) to check it runs, and verify full-integer execution for INT8."""
        from ai_edge_litert.interpreter import Interpreter

        threads = getattr(profile, "threads", None) or None
        it = Interpreter(model_path=str(built.model_file), num_threads=threads)
        it.allocate_tensors()
        delegated = _delegated(it)
        check = check_full_integer(built.model_file)
        report = {
            "host_source": self.host_source,
            "loads": True,
            "threads": threads,
            "xnnpack_delegate": delegated,
            "full_integer": check["full_integer"],
            "full_integer_check": check,
            "io": check["io"],
        }
        return write_check_report(out_dir, built.model_file, "check", report)

    def requirements(self) -> list[str]:
        return [pin("ai-edge-litert"), pin("numpy")]


# -- quantizer ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _skip_quantizer_cls():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class SkipModulesPT2EQuantizer(PT2EQuantizer):
        """litert-torch's PT2EQuantizer leaving the named modules (and children) in float.

        `PT2EQuantizer.set_module_name(name, None)` asserts on None in litert-torch 0.10.0,
        and its name filter strips a 'L__self___' prefix while torch 2.13 exports keys as
        'L__self__conv1'; this filter reads the module paths from the nodes'
        nn_module_stack values instead.
        """

        def __init__(self, skip=(), prefix: str = ""):
            super().__init__()
            self.skip = tuple(prefix + s for s in skip)

        def _keep(self, node) -> bool:
            if not self.skip:
                return True
            for path, _ in node.meta.get("nn_module_stack", {}).values():
                p = _norm_path(path)
                if any(p == s or p.startswith(s + ".") for s in self.skip):
                    return False
            return True

        def _annotate_for_static_quantization_config(self, model):
            self._annotate_all_static_patterns(model, self.global_config, self._keep)
            return model

        def _annotate_for_dynamic_quantization_config(self, model):
            self._annotate_all_dynamic_patterns(model, self.global_config, self._keep)
            return model

    return SkipModulesPT2EQuantizer


def skip_modules_quantizer(skip: list[str], prefix: str = ""):
    """A litert-torch PT2EQuantizer that keeps the torch modules `skip` in float."""
    return _skip_quantizer_cls()(skip, prefix=prefix)


def _norm_path(path: str) -> str:
    """'L['self'].layer1[0].conv1' or 'layer1.0.conv1' -> 'layer1.0.conv1'."""
    import re

    p = path.replace("L['self'].", "").replace("L['self']", "")
    p = re.sub(r"\[(\d+)\]", r".\1", p)
    p = re.sub(r"\['([^']+)'\]", r".\1", p)
    return p.strip(".")


@functools.lru_cache(maxsize=None)
def _percentile_observer_cls():
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        """Range = [100-p, p] percentiles of the histogram of every observed value."""

        def __init__(self, *args, percentile: float = 99.99, **kwargs):
            super().__init__(*args, **kwargs)
            self.percentile = float(percentile)

        def _non_linear_param_search(self):
            import torch

            hist = self.histogram.to(torch.float64)
            total = hist.sum()
            if total <= 0:
                return self.min_val, self.max_val
            cdf = torch.cumsum(hist, 0) / total
            q = self.percentile / 100.0
            lo = int(torch.searchsorted(cdf, torch.tensor(1.0 - q, dtype=torch.float64)))
            hi = int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)))
            width = (self.max_val - self.min_val) / self.bins
            new_min = self.min_val + width * lo
            new_max = self.min_val + width * min(hi + 1, self.bins)
            return new_min, new_max

    return PercentileObserver


def pt2e_config(method: str, percentile: float, bins: int):
    """Per-channel symmetric static config with the activation observer of our method."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    base = get_symmetric_quantization_config(is_per_channel=True, is_qat=False, is_dynamic=False)
    eps = 2 ** -12  # litert-torch's own choice
    if method == "minmax":
        ctr = MinMaxObserver.with_args(eps=eps)
        note = "exact: MinMaxObserver over the calibration set"
    elif method == "percentile":
        ctr = _percentile_observer_cls().with_args(eps=eps, bins=int(bins), percentile=float(percentile))
        note = (f"percentile {percentile} of a {bins}-bin histogram of all calibration values "
                "(HistogramObserver subclass)")
    elif method == "entropy":
        ctr = HistogramObserver.with_args(eps=eps, bins=int(bins))
        note = ("approximate: torchao HistogramObserver (L2 quantization-error search, not KL "
                "divergence; litert-torch's default observer)")
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(base, input_activation=act, output_activation=act), note


# -- module preparation ---------------------------------------------------------------------
def _prepare_module(req: QuantizeRequest):
    """(module to convert, sample input, layout); NHWC wraps with to_channel_last_io."""
    import litert_torch
    import torch

    module = req.torch_model.eval()
    shape = tuple(int(s) for s in req.input_shape)
    layout = str(getattr(req.profile, "input_layout", "nchw") or "nchw").lower()
    if layout == "nhwc":
        module = litert_torch.to_channel_last_io(module, args=[0]).eval()
        n, c, h, w = shape
        sample = torch.randn(n, h, w, c)
    elif layout == "nchw":
        sample = torch.randn(*shape)
    else:
        raise ValueError(f"unknown input layout {layout!r}")
    return module, sample, layout


def resolve_module_names(model: Any, names: list[str]) -> list[str]:
    """Torch module names to keep in float; also accepts legacy-exporter ONNX node names
    ('/conv1/Conv' -> 'conv1', '/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1')."""
    if not names:
        return []
    modules = dict(model.named_modules())
    out = []
    for name in names:
        hit: str | None
        if name in modules and name:
            hit = name
        else:
            parts = [p for p in name.split("/") if p]
            path = ""
            for comp in parts[:-1]:  # the last component is the op type ('Conv', 'Gemm')
                path = comp if (not path or comp.startswith(path + ".")) else f"{path}.{comp}"
            hit = path if path in modules else None
        if not hit:
            raise ValueError(f"layer {name!r} is not a module of the torch model")
        if hit not in out:
            out.append(hit)
    return out


@contextlib.contextmanager
def strict_qdq_conversion(enabled: bool):
    """Run litert-torch's converter with `strict_qdq_mode=True` (yields whether it is on).

    litert-torch 0.10.0 builds its `ConvertToTFLConfig` inside
    `litert_converter.exported_programs_to_flatbuffer` and exposes no argument for this flag
    (its V2 converter always sets it but rejects quant_config), so the config factory is
    swapped for the duration of the call. Private API: when it is missing, yields False.
    """
    if not enabled:
        yield False
        return
    try:
        from litert_torch._convert import litert_converter as lc

        ext = lc.converter_api_ext
        orig = ext.ConvertToTFLConfig
        if not hasattr(orig(), "strict_qdq_mode"):
            raise AttributeError("strict_qdq_mode")
    except (ImportError, AttributeError):
        yield False
        return

    def strict_config():
        cfg = orig()
        cfg.strict_qdq_mode = True
        return cfg

    ext.ConvertToTFLConfig = strict_config
    try:
        yield True
    finally:
        ext.ConvertToTFLConfig = orig


# -- flatbuffer: float I/O around an integer model ------------------------------------------
def float_io_rewrite(src: Path, dst: Path) -> None:
    """Give a full-integer tflite float32 inputs/outputs: QUANTIZE after each quantized input,
    DEQUANTIZE before each quantized output (what TF's converter does with float I/O)."""
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(src))
    if any(getattr(b, "offset", 0) for b in model.buffers):
        raise RuntimeError("float I/O rewrite needs a tflite without external buffer offsets")
    quantized = (s.TensorType.INT8, s.TensorType.UINT8, s.TensorType.INT16)

    def opcode(builtin: int) -> int:
        for i, oc in enumerate(model.operatorCodes):
            if fbu.get_builtin_code_from_operator_code(oc) == builtin:
                return i
        oc = s.OperatorCodeT()
        oc.builtinCode = builtin
        oc.deprecatedBuiltinCode = min(builtin, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        oc.version = 1
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def float_twin(sg, idx: int) -> int:
        old = sg.tensors[idx]
        t = s.TensorT()
        t.shape = old.shape
        t.shapeSignature = old.shapeSignature
        t.type = s.TensorType.FLOAT32
        t.name = old.name
        old.name = (old.name.decode() if isinstance(old.name, bytes) else old.name) + "_int8"
        model.buffers.append(s.BufferT())
        t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    remap: dict[tuple[int, int], int] = {}
    for si, sg in enumerate(model.subgraphs):
        new_ops_front, new_ops_back = [], []
        for pos, idx in enumerate(list(sg.inputs)):
            if sg.tensors[idx].type not in quantized or sg.tensors[idx].quantization is None:
                continue
            f = float_twin(sg, idx)
            op = s.OperatorT()
            op.opcodeIndex = opcode(s.BuiltinOperator.QUANTIZE)
            op.inputs, op.outputs = [f], [idx]
            op.builtinOptionsType = s.BuiltinOptions.QuantizeOptions
            op.builtinOptions = s.QuantizeOptionsT()
            new_ops_front.append(op)
            sg.inputs[pos] = f
            remap[(si, idx)] = f
        for pos, idx in enumerate(list(sg.outputs)):
            if sg.tensors[idx].type not in quantized or sg.tensors[idx].quantization is None:
                continue
            f = float_twin(sg, idx)
            op = s.OperatorT()
            op.opcodeIndex = opcode(s.BuiltinOperator.DEQUANTIZE)
            op.inputs, op.outputs = [idx], [f]
            op.builtinOptionsType = s.BuiltinOptions.DequantizeOptions
            op.builtinOptions = s.DequantizeOptionsT()
            new_ops_back.append(op)
            sg.outputs[pos] = f
            remap[(si, idx)] = f
        sg.operators = new_ops_front + list(sg.operators or []) + new_ops_back
    for sd in model.signatureDefs or []:
        for tm in list(sd.inputs or []) + list(sd.outputs or []):
            tm.tensorIndex = remap.get((sd.subgraphIndex, tm.tensorIndex), tm.tensorIndex)
    fbu.write_model(model, str(dst))


# -- verification ---------------------------------------------------------------------------
def _interpreter(path: Path, delegates: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if delegates else {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_path=str(path), **kw)
    it.allocate_tensors()
    return it


def _dtype(d) -> str:
    return np.dtype(d).name


def _io_dtypes(path: Path) -> set[str]:
    it = _interpreter(path)
    return {_dtype(d["dtype"]) for d in it.get_input_details() + it.get_output_details()}


def _delegated(it) -> bool:
    try:
        return any(o["op_name"] == "DELEGATE" for o in it._get_ops_details())
    except Exception:  # best effort: a private interpreter helper, absent in some versions
        return False


def _io_desc(d: dict) -> dict[str, Any]:
    scale, zp = d.get("quantization", (0.0, 0))
    return {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": _dtype(d["dtype"]),
            "scale": float(scale), "zero_point": int(zp)}


def check_full_integer(tflite_path: Path) -> dict[str, Any]:
    """Is every conv / fully-connected op integer, with float32 only at the graph's I/O?

    Reads tensor and op details from ai_edge_litert's Interpreter without the default XNNPACK
    delegate (so the original ops are listed, not one DELEGATE node)."""
    it = _interpreter(Path(tflite_path))
    tensors = it.get_tensor_details()
    inputs, outputs = it.get_input_details(), it.get_output_details()
    io_idx = {d["index"] for d in inputs + outputs}
    by_index = {d["index"]: d for d in tensors}
    dtype_counts = Counter(_dtype(d["dtype"]) for d in tensors)
    float_inside = [d["name"] for d in tensors
                    if _dtype(d["dtype"]) in ("float32", "float16") and d["index"] not in io_idx]
    try:
        ops = it._get_ops_details()
    except Exception:  # pragma: no cover - interpreter without the private helper
        ops = None

    op_counts: dict[str, int] = {}
    compute = []
    boundary_ops = []
    float_ops = []
    if ops is not None:
        op_counts = dict(Counter(o["op_name"] for o in ops))
        for o in ops:
            ins = [by_index[i] for i in o["inputs"] if i >= 0 and i in by_index]
            outs = [by_index[i] for i in o["outputs"] if i in by_index]
            in_types = [_dtype(d["dtype"]) for d in ins]
            out_types = [_dtype(d["dtype"]) for d in outs]
            if o["op_name"] in _COMPUTE_OPS:
                # input activation and weight integer (bias is int32), output integer
                ok = (len(in_types) >= 2 and in_types[0] in _INT_DTYPES
                      and in_types[1] in _INT_DTYPES and all(t in _INT_DTYPES for t in out_types))
                compute.append({"op": o["op_name"], "index": int(o["index"]), "integer": ok,
                                "input": in_types[:2], "output": out_types})
            at_boundary = (o["op_name"] == "QUANTIZE" and all(d["index"] in io_idx for d in ins)) \
                or (o["op_name"] == "DEQUANTIZE" and all(d["index"] in io_idx for d in outs))
            if at_boundary:
                boundary_ops.append(o["op_name"])
            elif any(t in ("float32", "float16") for t in in_types + out_types):
                float_ops.append(o["op_name"])

    io = {"input": [_io_desc(d) for d in inputs], "output": [_io_desc(d) for d in outputs]}
    compute_integer = bool(compute) and all(c["integer"] for c in compute)
    full_integer = (not float_inside) and (ops is None or (compute_integer and not float_ops))
    return {
        "full_integer": bool(full_integer),
        "tensor_dtypes": dict(dtype_counts),
        "float32_tensors_inside": float_inside,
        "io": io,
        "io_dtype": sorted({d["dtype"] for d in io["input"] + io["output"]}),
        "ops": op_counts,
        "compute_ops": compute,
        "compute_ops_integer": compute_integer,
        "float_ops": float_ops,
        "io_boundary_ops": boundary_ops,
    }


def _export_quietly(edge, path) -> None:
    """litert-torch prints its temporary folder to stdout while exporting; keep the run's output clean."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        edge.export(str(path))
