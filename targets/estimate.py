"""Roofline latency estimate of an ONNX model on a device profile.

Cost (``model_cost``) comes from the ONNX graph after shape inference at a static batch:

* MACs of Conv (grouped and depthwise included), ConvTranspose, Gemm, MatMul and their integer/QLinear
  forms: ``MACs = elements of the output x reduction length``;
* weight bytes by stored dtype (int8 = 1, fp16 = 2, fp32 = 4; in a QDQ model the integer tensor behind a
  DequantizeLinear counts, so quantized weights count as 1 byte);
* activation elements read and written per layer.

Layers are grouped into three kinds:

* ``compute``: the MAC-carrying ops above;
* ``memory``: other data-moving ops (pooling, Concat, Resize, Transpose, Softmax, ...);
* ``fused``: elementwise ops (activations, Add/Mul, BatchNormalization, Clip, ...), assumed fused into the
  layer that produced their input, as TensorRT, OpenVINO and XNNPACK do: they add no launch overhead and
  only their extra operand (e.g. the residual of an Add) counts as bytes moved;
* shape-only ops (Reshape, Flatten, Q/DQ, Cast, integer shape arithmetic) are ignored.

``estimate_latency`` then sums over layers::

    t_layer = max(2 * MACs / (peak * efficiency), bytes / (bandwidth * memory_efficiency))
    latency = sum(t_layer) + layer_overhead * (number of compute + memory layers)

with the peak for the requested precision, the efficiencies and the overhead taken from the profile
(each with its source there). The result is labelled ``source="estimated"``: never show it as measured.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, shape_inference

from pipeline.errors import ConfigError
from targets.profiles import PEAK_FIELD, Profile

BYTES_PER_ELEMENT = {"int8": 1, "fp16": 2, "fp32": 4}

COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
               "QLinearMatMul"}
FUSED_OPS = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
             "Selu", "Celu", "Gelu", "Erf", "Softplus", "Softsign", "Mish", "Exp", "Log", "Sqrt",
             "Reciprocal", "Neg", "Abs", "Pow", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean",
             "BatchNormalization", "Where", "Not", "And", "Or", "Equal", "Greater", "Less", "Floor", "Ceil",
             "Round", "Sign"}
FREE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant",
            "ConstantOfShape", "Cast", "CastLike", "QuantizeLinear", "DequantizeLinear",
            "DynamicQuantizeLinear", "Dropout", "Range", "NonZero"}

_INT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.UINT16,
              TensorProto.BOOL}
_QUANT_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}


@dataclass(frozen=True)
class LayerCost:
    name: str
    op_type: str
    kind: str  # "compute" | "memory" | "fused"
    macs: int
    params: int  # weight elements used by this layer
    weight_bytes: int  # as stored (int8 behind a DequantizeLinear counts 1 byte)
    activation_elems: int  # activation elements read + written (batch included)
    quantized: bool  # weights stored as 8-bit (or narrower) integers

    def bytes_at(self, precision: str) -> float:
        """Bytes moved when the layer runs at ``precision``: weights at the narrower of their stored size
        and the precision, activations at the precision."""
        b = BYTES_PER_ELEMENT[precision]
        return min(self.weight_bytes, self.params * b) + self.activation_elems * b


@dataclass
class Cost:
    macs: int
    params: int
    weight_bytes: int
    activation_bytes: int  # at ``precision``
    layers: list[LayerCost]
    batch: int = 1
    precision: str = "fp32"  # precision the activation bytes were counted at
    warnings: list[str] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def summary(self) -> str:
        n = sum(1 for layer in self.layers if layer.kind != "fused")
        return (f"{self.macs / 1e6:.1f} MMAC, {self.params / 1e6:.2f} M params, weights "
                f"{self.weight_bytes / 1e6:.2f} MB, activations {self.activation_bytes / 1e6:.2f} MB "
                f"({self.precision}), {n} layers, batch {self.batch}")


@dataclass
class LayerEstimate:
    name: str
    op_type: str
    compute_ms: float
    memory_ms: float
    bound: str


@dataclass
class Estimate:
    latency_ms: float
    compute_ms: float  # sum over layers of the compute term
    memory_ms: float  # sum over layers of the memory term
    overhead_ms: float  # layer_overhead x layers
    bound: str  # "compute" | "memory": which term dominates the summed per-layer maxima
    precision: str
    efficiency: float
    memory_efficiency: float
    profile: str
    batch: int
    formula: str
    source: str = "estimated"
    layers: list[LayerEstimate] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("latency_ms", "compute_ms", "memory_ms", "overhead_ms", "bound",
                                              "precision", "efficiency", "memory_efficiency", "profile",
                                              "batch", "formula", "source")}


# --------------------------------------------------------------------------------------------------------
# cost


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    path = Path(model)
    if not path.is_file():
        raise ConfigError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ConfigError(f"cannot read ONNX model {path}: {e}") from None


def _fix_batch(model: onnx.ModelProto, batch: int) -> int:
    """Give the first dimension of graph inputs/outputs the static ``batch`` when it is dynamic.

    Returns the batch the graph is counted at: ``batch``, or the model's own static batch when its first
    input has one (a static batch is not rewritten: reshapes may hard-code it)."""
    inits = {i.name for i in model.graph.initializer}
    effective = batch
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.shape.dim:
            continue
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.HasField("dim_value") and d0.dim_value > 0:
            effective = int(d0.dim_value)
        break
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) == 0:
            continue
        d0 = shape.dim[0]
        if d0.HasField("dim_param") or not d0.HasField("dim_value") or d0.dim_value <= 0:
            d0.Clear()
            d0.dim_value = effective
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise ConfigError(
                    f"input '{vi.name}' has a dynamic dimension {i} ({d.dim_param or '?'}): the estimator "
                    "needs static shapes except the batch", hint="export with a fixed input size")
    return effective


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int | None, ...], int]]:
    """name -> (shape, elem_type) for every typed value after shape inference."""
    out: dict[str, tuple[tuple[int | None, ...], int]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        out[vi.name] = (dims, tt.elem_type)
    for init in model.graph.initializer:
        out[init.name] = (tuple(init.dims), init.data_type)
    return out


def _numel(shape: tuple[int | None, ...] | None) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return int(np.prod([int(d) for d in shape if d is not None], dtype=np.int64)) if shape else 1


def _elem_size(elem_type: int) -> int:
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def model_cost(model: str | Path | onnx.ModelProto, batch: int = 1, precision: str = "fp32") -> Cost:
    """MACs, parameters and bytes of an ONNX model at a static ``batch``.

    A dynamic first input dimension is fixed to ``batch``; a model with a static batch is counted at its
    own batch (``Cost.batch`` says which, ``Cost.warnings`` notes the difference).
    ``precision`` only sets the bytes per activation element reported in ``Cost.activation_bytes``;
    ``estimate_latency`` recounts bytes at the precision it estimates for.
    """
    if precision not in BYTES_PER_ELEMENT:
        raise ConfigError(f"unknown precision '{precision}'", hint="use one of int8, fp16, fp32")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    m = _load(model)
    counted = _fix_batch(m, batch)
    del m.graph.value_info[:]  # stale symbolic shapes from the exporter would conflict with the fixed batch
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx shape inference raises several types: ConfigError naming it
        raise ConfigError(f"ONNX shape inference failed: {e}") from None
    shapes = _shapes(m)
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    # Constant nodes hold weights too (some exporters emit them instead of initializers)
    const_dims: dict[str, tuple[tuple[int, ...], int]] = {}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    const_dims[n.output[0]] = (tuple(a.t.dims), a.t.data_type)

    def weight_of(name: str) -> tuple[int, int] | None:
        """(elements, stored bytes) if ``name`` is a weight (constant, possibly behind DequantizeLinear)."""
        seen = 0
        while seen < 4:  # follow DQ / Transpose / Reshape / Cast / Identity of a constant
            seen += 1
            if name in inits:
                t = inits[name]
                n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
                return n, n * _elem_size(t.data_type)
            if name in const_dims:
                dims, dt = const_dims[name]
                n = int(np.prod(dims, dtype=np.int64)) if dims else 1
                return n, n * _elem_size(dt)
            p = producer.get(name)
            if p is None or p.op_type not in {"DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity",
                                              "Unsqueeze", "Squeeze"}:
                return None
            name = p.input[0]
        return None

    def is_quant_weight(name: str) -> bool:
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            src = p.input[0]
            dt = inits[src].data_type if src in inits else const_dims.get(src, ((), 0))[1]
            return dt in _QUANT_TYPES
        return name in inits and inits[name].data_type in _QUANT_TYPES

    warnings: list[str] = []
    if counted != batch:
        warnings.append(f"the model has a static batch of {counted}: counted at batch {counted}, not {batch} "
                        "(estimate_latency scales to the batch it is asked for)")
    layers: list[LayerCost] = []
    seen_weights: set[str] = set()
    total_params = 0

    def act_numel(name: str) -> int:
        n = _numel(shapes.get(name, (None, 0))[0]) if name in shapes else None
        if n is None:
            warnings.append(f"unknown shape of '{name}': counted as 0 bytes")
            return 0
        return n

    for node in m.graph.node:
        op = node.op_type
        out_types = [shapes[o][1] for o in node.output if o in shapes]
        if op in FREE_OPS or (out_types and all(t in _INT_TYPES for t in out_types)):
            continue
        kind = "compute" if op in COMPUTE_OPS else "fused" if op in FUSED_OPS else "memory"
        params = wbytes = 0
        acts_in: list[str] = []
        quantized = False
        for i, name in enumerate(node.input):
            if not name or (name in inits and inits[name].data_type in (TensorProto.INT64, TensorProto.BOOL)):
                continue  # absent optional input, or shape/index data (pads, axes, sizes)
            w = weight_of(name)
            if w is not None:
                params += w[0]
                wbytes += w[1]
                quantized = quantized or (i == _weight_index(op) and is_quant_weight(name))
                if name not in seen_weights:
                    seen_weights.add(name)
                    total_params += w[0]
            elif shapes.get(name, ((), TensorProto.FLOAT))[1] not in _INT_TYPES:
                acts_in.append(name)
        if kind == "fused":
            # the first activation input comes from the producing layer it is fused into
            act = sum(act_numel(a) for a in acts_in[1:])
        else:
            act = sum(act_numel(a) for a in acts_in) + sum(act_numel(o) for o in node.output if o)
        macs = _macs(node, shapes, warnings) if kind == "compute" else 0
        layers.append(LayerCost(name=node.name or f"{op}_{len(layers)}", op_type=op, kind=kind, macs=macs,
                                params=params, weight_bytes=wbytes, activation_elems=act, quantized=quantized))

    b = BYTES_PER_ELEMENT[precision]
    return Cost(
        macs=sum(layer.macs for layer in layers),
        params=total_params,
        weight_bytes=sum(layer.weight_bytes for layer in layers),
        activation_bytes=sum(layer.activation_elems for layer in layers) * b,
        layers=layers,
        batch=counted,
        precision=precision,
        warnings=sorted(set(warnings)),
    )


def _weight_index(op: str) -> int:
    return {"QLinearConv": 3, "QLinearMatMul": 3}.get(op, 1)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _macs(node: onnx.NodeProto, shapes: dict, warnings: list[str]) -> int:
    op = node.op_type

    def shape(name: str) -> tuple[int | None, ...] | None:
        return shapes[name][0] if name in shapes else None

    out = shape(node.output[0])
    n_out = _numel(out)
    if op in {"Conv", "ConvInteger", "QLinearConv"}:
        w = shape(node.input[3 if op == "QLinearConv" else 1])
        per_out = _numel(w[1:]) if w is not None else None
        if n_out is None or per_out is None:
            warnings.append(f"{node.name or op}: unknown shapes, MACs counted as 0")
            return 0
        return n_out * per_out  # output elements x (Cin/groups x kernel)
    if op == "ConvTranspose":
        x, w = shape(node.input[0]), shape(node.input[1])
        n_in = _numel(x)
        per_in = _numel(w[1:]) if w is not None else None
        if n_in is None or per_in is None:
            warnings.append(f"{node.name or op}: unknown shapes, MACs counted as 0")
            return 0
        return n_in * per_in  # input elements x (Cout/groups x kernel)
    # Gemm / MatMul: output elements x reduction length
    a = shape(node.input[0])
    if n_out is None or not a or a[-1] is None:
        warnings.append(f"{node.name or op}: unknown shapes, MACs counted as 0")
        return 0
    if op == "Gemm" and _attr(node, "transA", 0):
        k = a[0] if len(a) == 2 else a[-1]
    else:
        k = a[-1]
    if k is None:
        warnings.append(f"{node.name or op}: unknown shapes, MACs counted as 0")
        return 0
    return n_out * int(k)


# --------------------------------------------------------------------------------------------------------
# estimate


def estimate_latency(cost: Cost, profile: Profile, precision: str | None = None, batch: int = 1) -> Estimate:
    """Roofline latency of ``cost`` on ``profile`` at ``precision`` (default: the profile's
    ``estimate_precision``) and ``batch`` (MACs and activations scale from the batch the cost was
    counted at; weights and per-layer overhead do not)."""
    precision = precision or profile.estimate_precision
    if precision not in BYTES_PER_ELEMENT:
        raise ConfigError(f"unknown precision '{precision}'", hint="use one of int8, fp16, fp32")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    fig = profile.peak_figure(precision)
    if fig is None or not fig.value:
        have = [p for p in PEAK_FIELD if (f := profile.peak_figure(p)) is not None and f.value]
        raise ConfigError(f"profile '{profile.name}' has no {precision} compute peak",
                          hint=f"estimate at one of: {', '.join(have)}")
    peak_ops = fig.value * 1e12
    eff = profile.efficiency.value
    bw = profile.peaks.memory_bandwidth_gbs.value
    mem_eff = profile.memory_efficiency.value
    bw_eff = bw * 1e9 * mem_eff if bw else None
    overhead_s = (profile.layer_overhead_us.value or 0.0) * 1e-6
    scale = batch / cost.batch
    b = BYTES_PER_ELEMENT[precision]

    per_layer: list[LayerEstimate] = []
    compute_s = memory_s = total_s = 0.0
    bound_time = {"compute": 0.0, "memory": 0.0}
    n_launch = 0
    for layer in cost.layers:
        t_c = 2.0 * layer.macs * scale / (peak_ops * eff)
        moved = min(layer.weight_bytes, layer.params * b) + layer.activation_elems * scale * b
        t_m = moved / bw_eff if bw_eff else 0.0
        if layer.kind != "fused":
            n_launch += 1
        if layer.macs == 0 and moved == 0:
            continue
        which = "compute" if t_c >= t_m else "memory"
        bound_time[which] += max(t_c, t_m)
        compute_s += t_c
        memory_s += t_m
        total_s += max(t_c, t_m)
        per_layer.append(LayerEstimate(layer.name, layer.op_type, t_c * 1e3, t_m * 1e3, which))
    overhead_total = n_launch * overhead_s
    bound = "compute" if bound_time["compute"] >= bound_time["memory"] else "memory"
    mem_txt = (f"bytes/({bw:g} GB/s x {mem_eff:g})" if bw_eff
               else "0 (profile has no memory bandwidth figure: memory term omitted)")
    unit = "TOPS int8" if precision == "int8" else f"TFLOPS {precision}"
    formula = (f"sum over layers of max(2*MACs/({fig.value:g} {unit} x {eff:g}), {mem_txt})"
               f" + {n_launch} layers x {profile.layer_overhead_us.value:g} us"
               f" [profile {profile.name}, batch {batch}]")
    return Estimate(
        latency_ms=(total_s + overhead_total) * 1e3,
        compute_ms=compute_s * 1e3,
        memory_ms=memory_s * 1e3,
        overhead_ms=overhead_total * 1e3,
        bound=bound,
        precision=precision,
        efficiency=eff,
        memory_efficiency=mem_eff,
        profile=profile.name,
        batch=batch,
        formula=formula,
        layers=per_layer,
    )


def estimate_model(model: str | Path | onnx.ModelProto, profile: Profile, precision: str | None = None,
                   batch: int = 1) -> Estimate:
    """Convenience: ``estimate_latency(model_cost(model, batch), profile, precision, batch)``."""
    return estimate_latency(model_cost(model, batch=batch), profile, precision, batch)


__all__ = ["BYTES_PER_ELEMENT", "Cost", "Estimate", "LayerCost", "LayerEstimate", "estimate_latency",
           "estimate_model", "model_cost"]
