"""Lint an ONNX model against TensorRT's explicit-quantization (Q/DQ) rules.

Works on any ONNX file, no TensorRT needed. The rules (TensorRT INT8 through explicit Q/DQ, the only INT8
route left in TensorRT 11 and the recommended one on JetPack 6 / TensorRT 10.3):

* default-domain opset >= 13 (per-channel QuantizeLinear/DequantizeLinear appeared in opset 13);
* every QuantizeLinear/DequantizeLinear is symmetric (zero point 0) and INT8 (not UINT8, not INT16/FP8/INT4:
  Jetson Orin's TensorRT INT8 path is what this project targets). A QuantizeLinear without a zero point
  produces UINT8 by the ONNX spec, so it is reported too;
* scales are constant and strictly positive;
* activations are quantized per tensor (a single scale);
* weights (a constant, optionally through a QuantizeLinear, feeding the weight input of
  Conv/ConvTranspose/Gemm/MatMul through a DequantizeLinear) are quantized per channel along the output-channel
  axis: 0 for Conv and Gemm with transB=1, 1 for Gemm with transB=0 and for 2-D MatMul weights (the last axis in
  general), 1 for ConvTranspose (its weight layout is [C_in, C_out/group, kH, kW]);
* no operator-style quantized ops (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, com.microsoft QGemm...):
  TensorRT does not import them;
* biases are not quantized (no DequantizeLinear on a Conv/ConvTranspose/Gemm bias, no INT32 DequantizeLinear);
* the model has Q/DQ at all (a model without any is reported as "not quantized").

``lint_qdq(path_or_model) -> LintReport``; ``python -m targets.qdq_lint model.onnx [--json]`` prints the report and
exits 0 when it passes, 1 when it does not, 2 when the file cannot be read as ONNX.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LintReport", "OnnxLoadError", "lint_qdq", "main"]

MIN_OPSET = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Operator-style quantized ops (ONNX standard and ORT contrib): TensorRT's ONNX parser rejects them.
FORBIDDEN_OPS = {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
    # com.microsoft contrib ops written by ORT's QOperator format
    "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
    "QLinearConvTranspose", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QEmbedLayerNormalization",
}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
MAX_LISTED = 10


class OnnxLoadError(ValueError):
    """The input could not be read as an ONNX model."""


@dataclass
class LintReport:
    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        head = f"TensorRT Q/DQ lint of {self.path or '<model>'}: {'PASS' if self.ok else 'FAIL'}"
        lines = [head]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.stats:
            lines.append("  stats: " + ", ".join(f"{k}={v}" for k, v in self.stats.items()))
        return "\n".join(lines)

    __str__ = format


# --------------------------------------------------------------------------------------------------- loading

def _load(path_or_model: Any):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, None
    if isinstance(path_or_model, (bytes, bytearray)):
        try:
            model = onnx.load_model_from_string(bytes(path_or_model))
        except Exception as exc:  # protobuf DecodeError and friends
            raise OnnxLoadError(f"not an ONNX model: {type(exc).__name__}: {exc}") from None
        path = None
    else:
        path = os.fspath(path_or_model)
        if not os.path.isfile(path):
            raise OnnxLoadError(f"{path}: no such file")
        try:
            model = onnx.load(path)
        except Exception as exc:  # weights in a missing/odd side file: retried without them below
            try:  # weights in a missing/odd side file: the graph is still lintable
                model = onnx.load(path, load_external_data=False)
            except Exception:  # not ONNX at all: OnnxLoadError naming the file
                raise OnnxLoadError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.opset_import and not model.graph.node:
        raise OnnxLoadError(f"{path or '<bytes>'}: not an ONNX model (no graph, no opset)")
    return model, path


# ------------------------------------------------------------------------------------------------ the linter

class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.nodes = list(self.graph.node)
        self._np = numpy_helper
        self.const: dict[str, Any] = {i.name: i for i in self.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.const[node.output[0]] = attr.t
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for idx, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, idx))
        self.value_types: dict[str, int] = {}
        for vi in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            if vi.type.HasField("tensor_type"):
                self.value_types[vi.name] = vi.type.tensor_type.elem_type

    def is_const(self, name: str) -> bool:
        return name in self.const

    def array(self, name: str):
        """numpy value of a constant, or None when it is not a constant or not loadable (external data)."""
        tensor = self.const.get(name)
        if tensor is None:
            return None
        try:
            return self._np.to_array(tensor)
        except Exception:  # best effort: an initializer that cannot be read is treated as unknown
            return None

    def const_dtype(self, name: str) -> int | None:
        tensor = self.const.get(name)
        return None if tensor is None else tensor.data_type

    def const_dims(self, name: str) -> list[int] | None:
        tensor = self.const.get(name)
        return None if tensor is None else list(tensor.dims)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _dtype_name(dt: int | None) -> str:
    if dt is None:
        return "unknown"
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(dt).lower()
    except ValueError:
        return f"type{dt}"


def _label(node, idx: int) -> str:
    name = node.name or (f"#{idx} -> {node.output[0]}" if node.output else f"#{idx}")
    return f"node '{name}' ({node.op_type})"


def _qdq_dtype(g: _Graph, node) -> int | None:
    """Integer type a QuantizeLinear produces / a DequantizeLinear consumes."""
    from onnx import TensorProto

    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "QuantizeLinear":
        if zp:
            dt = g.const_dtype(zp) or g.value_types.get(zp)
            if dt:
                return dt
        out_dt = _attr(node, "output_dtype", 0)
        return out_dt or TensorProto.UINT8  # ONNX: no zero point and no output_dtype -> uint8
    x = node.input[0]
    dt = g.const_dtype(x)
    if dt:
        return dt
    prod = g.producer.get(x)
    if prod is not None and prod.op_type == "QuantizeLinear":
        return _qdq_dtype(g, prod)
    if zp:
        dt = g.const_dtype(zp) or g.value_types.get(zp)
        if dt:
            return dt
    return g.value_types.get(x)


def _weight_source(g: _Graph, dq) -> str | None:
    """Name of the constant weight behind a DequantizeLinear (directly or through a QuantizeLinear), else None."""
    x = dq.input[0]
    if g.is_const(x):
        return x
    prod = g.producer.get(x)
    if prod is not None and prod.op_type == "QuantizeLinear" and g.is_const(prod.input[0]):
        return prod.input[0]
    return None


def _expected_weight_axis(op: str, node, rank: int) -> int:
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if int(_attr(node, "transB", 0) or 0) else 1
    return rank - 1  # MatMul: [.., K, N], output channels on the last axis


def lint_qdq(path_or_model: Any, *, require_per_channel_weights: bool = True) -> LintReport:
    """Check an ONNX model (path, bytes or onnx.ModelProto) against TensorRT's Q/DQ rules.

    ``require_per_channel_weights``: TensorRT itself accepts per-tensor weight scales, but per-channel weights
    on the output-channel axis are this project's rule (far smaller accuracy loss); False turns per-tensor
    weights into a warning. Raises OnnxLoadError when the input cannot be read as ONNX.
    """
    from onnx import TensorProto

    model, path = _load(path_or_model)
    g = _Graph(model)
    errors: list[str] = []
    warnings: list[str] = []

    # ---- opset
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset is None:
        errors.append("model imports no default-domain (ai.onnx) opset; TensorRT needs opset >= 13")
    elif opset < MIN_OPSET:
        errors.append(f"opset {opset} < {MIN_OPSET}: TensorRT explicit quantization (per-channel Q/DQ) needs "
                      f"opset >= {MIN_OPSET}; re-export with opset_version>={MIN_OPSET}")

    n_q = n_dq = 0
    forbidden: list[str] = []
    handled_dq: set[int] = set()  # ids of DequantizeLinear nodes already reported as quantized biases

    # ---- biases and weights (looked at from the weighted ops)
    stats_w = {"weight_dequantize": 0, "per_channel_weights": 0, "per_tensor_weights": 0}
    convs = qconvs = gemms = qgemms = 0
    float_linear: list[str] = []
    weight_dq_ids: set[int] = set()
    for idx, node in enumerate(g.nodes):
        op = node.op_type
        if op not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        label = _label(node, idx)
        # bias
        bi = BIAS_INPUT.get(op)
        if bi is not None and len(node.input) > bi and node.input[bi]:
            prod = g.producer.get(node.input[bi])
            if prod is not None and prod.op_type == "DequantizeLinear":
                dt = _qdq_dtype(g, prod)
                errors.append(f"{label}: bias '{node.input[bi]}' is quantized (DequantizeLinear '{prod.name}' of "
                              f"{_dtype_name(dt)} '{prod.input[0]}'); TensorRT wants float biases - quantize with "
                              f"extra_options QuantizeBias=False")
                handled_dq.add(id(prod))
        if len(node.input) < 2:
            continue
        a_in, w_in = node.input[0], node.input[1]
        w_prod = g.producer.get(w_in)
        w_is_dq = w_prod is not None and w_prod.op_type == "DequantizeLinear"
        w_const = g.is_const(w_in) or (w_is_dq and _weight_source(g, w_prod) is not None)
        if op == "MatMul" and not w_const:
            # activation x activation MatMul (attention): both inputs are activations, per-tensor rules apply
            gemms += 1
            a_prod = g.producer.get(a_in)
            if w_is_dq and a_prod is not None and a_prod.op_type == "DequantizeLinear":
                qgemms += 1
            continue
        a_prod = g.producer.get(a_in)
        a_is_dq = a_prod is not None and a_prod.op_type == "DequantizeLinear"
        if op in ("Conv", "ConvTranspose"):
            convs += 1
            qconvs += int(w_is_dq and a_is_dq)
        else:
            gemms += 1
            qgemms += int(w_is_dq and a_is_dq)
        if not w_is_dq:
            float_linear.append(node.name or f"#{idx}")
            continue
        assert w_prod is not None  # w_is_dq
        if not a_is_dq:
            warnings.append(f"{label}: weight '{w_in}' is quantized but input '{a_in}' is not (no DequantizeLinear); "
                            f"TensorRT cannot run it as an INT8 layer")
        src = _weight_source(g, w_prod)
        if src is None:
            continue
        weight_dq_ids.add(id(w_prod))
        stats_w["weight_dequantize"] += 1
        dims = g.const_dims(src) or []
        rank = len(dims)
        expected = _expected_weight_axis(op, node, rank)
        scale_name = w_prod.input[1]
        scale_dims = g.const_dims(scale_name)
        if scale_dims is None:
            errors.append(f"{_label(w_prod, g.nodes.index(w_prod))}: weight scale '{scale_name}' of '{src}' "
                          f"(feeding {label}) is not a constant")
            continue
        n_scales = int(np.prod(scale_dims)) if scale_dims else 1
        dq_label = _label(w_prod, g.nodes.index(w_prod))
        if n_scales <= 1:
            if rank and dims[expected] == 1:
                stats_w["per_channel_weights"] += 1  # one output channel: per-tensor is per-channel
                continue
            stats_w["per_tensor_weights"] += 1
            msg = (f"{dq_label}: weight '{src}' {dims} of {label} is quantized per tensor (one scale "
                   f"'{scale_name}'); use per-channel scales on axis {expected} (output channels, "
                   f"{dims[expected] if rank else '?'} scales) - quantize_static(per_channel=True)")
            if require_per_channel_weights:
                errors.append(msg)
            else:
                warnings.append(msg + " (TensorRT accepts per-tensor weights, at an accuracy cost)")
            continue
        axis = int(_attr(w_prod, "axis", 1))
        if axis < 0:
            axis += rank
        if len(scale_dims) != 1:
            errors.append(f"{dq_label}: weight scale '{scale_name}' has shape {scale_dims}; TensorRT wants a 1-D "
                          f"per-channel scale (block quantization is not INT8-for-Jetson)")
            continue
        if axis != expected:
            errors.append(f"{dq_label}: weight '{src}' {dims} of {label} is quantized per channel on axis {axis}; "
                          f"TensorRT wants the output-channel axis {expected}")
            continue
        if rank and n_scales != dims[expected]:
            errors.append(f"{dq_label}: weight scale '{scale_name}' has {n_scales} values but weight '{src}' has "
                          f"{dims[expected]} output channels on axis {expected}")
            continue
        stats_w["per_channel_weights"] += 1

    # ---- every Q/DQ node
    for idx, node in enumerate(g.nodes):
        op = node.op_type
        if op in FORBIDDEN_OPS or (node.domain == "com.microsoft" and op.startswith("QLinear")):
            forbidden.append(f"{node.name or '#' + str(idx)} ({op})")
            continue
        if op not in QDQ_OPS:
            continue
        label = _label(node, idx)
        if op == "QuantizeLinear":
            n_q += 1
        else:
            n_dq += 1
        if node.domain not in ("", "ai.onnx"):
            errors.append(f"{label}: {op} from domain '{node.domain}' (ORT contrib op, UseQDQContribOps); "
                          f"TensorRT parses only the standard ai.onnx {op}")
        if id(node) in handled_dq:
            continue
        x_prod = g.producer.get(node.input[0])
        if (op == "DequantizeLinear" and x_prod is not None and x_prod.op_type == "QuantizeLinear"
                and list(x_prod.input[1:]) == list(node.input[1:])):
            continue  # same scale/zero point as its QuantizeLinear: already checked there
        dt = _qdq_dtype(g, node)
        x = node.input[0]
        tensor = node.output[0] if op == "QuantizeLinear" else x
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if dt == TensorProto.INT32 and op == "DequantizeLinear":
            errors.append(f"{label}: dequantizes int32 tensor '{x}' (a quantized bias?); TensorRT takes no int32 "
                          f"DequantizeLinear - keep biases float (QuantizeBias=False)")
            continue
        if dt != TensorProto.INT8:
            why = (" (QuantizeLinear without a zero point produces uint8)" if op == "QuantizeLinear" and not zp
                   else "")
            hint = "asymmetric/unsigned activations (U8S8); use activation_type=QInt8" if dt == TensorProto.UINT8 \
                else "TensorRT INT8 on Jetson wants int8"
            errors.append(f"{label}: quantized tensor '{tensor}' is {_dtype_name(dt)}{why}, not int8: {hint}")
        if zp:
            zv = g.array(zp)
            if zv is None:
                if not g.is_const(zp):
                    errors.append(f"{label}: zero point '{zp}' is not a constant; TensorRT needs constant zeros")
            elif np.any(zv.astype(np.int64) != 0):
                nz = zv.reshape(-1)[zv.reshape(-1) != 0]
                errors.append(f"{label}: zero point '{zp}' of tensor '{tensor}' is non-zero "
                              f"({', '.join(str(int(v)) for v in nz[:4])}{'...' if nz.size > 4 else ''}): "
                              f"TensorRT needs symmetric quantization (zero point 0); use ActivationSymmetric/"
                              f"WeightSymmetric=True")
        scale = node.input[1]
        sv = g.array(scale)
        if sv is None:
            if not g.is_const(scale):
                errors.append(f"{label}: scale '{scale}' is not a constant; TensorRT needs build-time scales")
        else:
            if not np.all(np.isfinite(sv)) or np.any(sv <= 0):
                errors.append(f"{label}: scale '{scale}' of tensor '{tensor}' has non-positive or non-finite values "
                              f"(min {float(np.min(sv)):.3g}); TensorRT needs strictly positive scales")
            is_weight = id(node) in weight_dq_ids or g.is_const(x) or (
                op == "QuantizeLinear" and any(id(c) in weight_dq_ids for c, _ in g.consumers.get(node.output[0], [])))
            if sv.size > 1 and not is_weight:
                errors.append(f"{label}: activation '{tensor}' is quantized per channel ({sv.size} scales on axis "
                              f"{_attr(node, 'axis', 1)}); TensorRT quantizes activations per tensor")

    if forbidden:
        shown = ", ".join(forbidden[:MAX_LISTED]) + (f" and {len(forbidden) - MAX_LISTED} more"
                                                     if len(forbidden) > MAX_LISTED else "")
        errors.append(f"operator-style quantized ops TensorRT cannot import: {shown}; export QDQ instead "
                      f"(quant_format=QuantFormat.QDQ)")
    if n_q + n_dq == 0 and not forbidden:
        errors.insert(0, "not quantized: the model has no QuantizeLinear/DequantizeLinear nodes; TensorRT would "
                         "build it in FP32/FP16, not INT8")
    elif n_q + n_dq and float_linear:
        shown = ", ".join(float_linear[:MAX_LISTED]) + (f" and {len(float_linear) - MAX_LISTED} more"
                                                        if len(float_linear) > MAX_LISTED else "")
        warnings.append(f"{len(float_linear)} Conv/Gemm/MatMul layer(s) have float weights and will not run in "
                        f"INT8: {shown}")
    if any(a.type in (5, 10) for n in g.nodes for a in n.attribute):  # GRAPH / GRAPHS attributes
        warnings.append("model has subgraphs (If/Loop/Scan); their Q/DQ nodes were not linted")

    stats = {
        "opset": opset,
        "nodes": len(g.nodes),
        "quantize_linear": n_q,
        "dequantize_linear": n_dq,
        **stats_w,
        "convs": convs,
        "quantized_convs": qconvs,
        "gemms": gemms,
        "quantized_gemms": qgemms,
        "forbidden_ops": len(forbidden),
    }
    return LintReport(ok=not errors, errors=errors, warnings=warnings, stats=stats, path=path)


# ------------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m targets.qdq_lint",
                                     description="Lint an ONNX model against TensorRT's explicit Q/DQ rules.")
    parser.add_argument("model", help="ONNX file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--allow-per-tensor-weights", action="store_true",
                        help="report per-tensor weight scales as a warning, not an error")
    args = parser.parse_args(argv)
    try:
        report = lint_qdq(Path(args.model), require_per_channel_weights=not args.allow_per_tensor_weights)
    except OnnxLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for a bad file
        print(f"error: {args.model}: cannot lint ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
