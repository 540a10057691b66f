"""Tests of targets.qdq_lint: TensorRT's explicit-quantization (Q/DQ) rules on real ORT-quantized models and on
small hand-built graphs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from targets.qdq_lint import LintReport, OnnxLoadError, lint_qdq

REPO = Path(__file__).resolve().parents[1]
H = W = 16


# ------------------------------------------------------------------------------------------- model fixtures

def export_tiny_cnn(path: Path) -> Path:
    """conv-bn-relu x2, flatten, linear; legacy exporter, opset 17, dynamic batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU())
            self.fc = nn.Linear(16 * (H // 2) * (W // 2), 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.features(x), 1))

    model = TinyCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics (folded into the convs by the exporter)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deprecated, and 8x faster
        torch.onnx.export(model, torch.randn(1, 3, H, W), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def ort_quantize(fp32: Path, out: Path, *, fmt="QDQ", activation="QInt8", per_channel=True, symmetric=True,
                 quantize_bias=False) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    data = [{"input": np.random.default_rng(i).standard_normal((2, 3, H, W)).astype(np.float32)} for i in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    extra = {"QuantizeBias": quantize_bias}
    if symmetric:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True)
    quantize_static(str(fp32), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
                    extra_options=extra)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lint_models")
    fp32 = export_tiny_cnn(d / "fp32.onnx")
    return {
        "fp32": fp32,
        # (a) TensorRT style: S8S8 symmetric, per-channel weights, float biases
        "s8s8": ort_quantize(fp32, d / "s8s8.onnx"),
        # (b) ORT's x86 favourite: U8S8 asymmetric activations, quantized (int32) biases
        "u8s8": ort_quantize(fp32, d / "u8s8.onnx", activation="QUInt8", symmetric=False, quantize_bias=True),
        "qoperator": ort_quantize(fp32, d / "qop.onnx", fmt="QOperator"),
        "per_tensor": ort_quantize(fp32, d / "per_tensor.onnx", per_channel=False),
    }


# --------------------------------------------------------------------------------------- real ORT models

def test_trt_style_s8s8_passes(models):
    report = lint_qdq(models["s8s8"])
    assert isinstance(report, LintReport)
    assert report.ok, report.format()
    assert report.errors == []
    s = report.stats
    assert s["opset"] == 17
    assert s["quantized_convs"] == s["convs"] == 2
    assert s["quantized_gemms"] == s["gemms"] == 1
    assert s["per_channel_weights"] == 3 and s["per_tensor_weights"] == 0
    assert s["quantize_linear"] > 0 and s["dequantize_linear"] > s["quantize_linear"]


def test_lint_accepts_model_proto_and_bytes(models):
    proto = onnx.load(str(models["s8s8"]))
    assert lint_qdq(proto).ok
    assert lint_qdq(models["s8s8"].read_bytes()).ok


def test_asymmetric_u8s8_fails(models):
    report = lint_qdq(models["u8s8"])
    assert not report.ok
    text = "\n".join(report.errors)
    assert "uint8" in text and "not int8" in text
    assert "non-zero" in text and "input_zero_point" in text  # names the tensor
    assert "node 'input_QuantizeLinear' (QuantizeLinear)" in text  # names the node
    # quantized biases: DequantizeLinear of int32 feeding the Conv/Gemm bias
    bias_errors = [e for e in report.errors if "bias" in e]
    assert len(bias_errors) == 3
    assert any("fc.bias" in e and "int32" in e for e in bias_errors)


def test_qoperator_model_fails(models):
    report = lint_qdq(models["qoperator"])
    assert not report.ok
    assert any("QLinearConv" in e for e in report.errors)
    assert report.stats["forbidden_ops"] >= 2


def test_per_tensor_weights_fail_by_default_and_warn_when_relaxed(models):
    report = lint_qdq(models["per_tensor"])
    assert not report.ok
    assert report.stats["per_tensor_weights"] == 3
    assert any("per tensor" in e and "axis 0" in e for e in report.errors)
    relaxed = lint_qdq(models["per_tensor"], require_per_channel_weights=False)
    assert relaxed.ok, relaxed.format()
    assert any("per tensor" in w for w in relaxed.warnings)


def test_unquantized_model_fails(models):
    report = lint_qdq(models["fp32"])
    assert not report.ok
    assert report.errors[0].startswith("not quantized")
    assert report.stats["quantize_linear"] == report.stats["dequantize_linear"] == 0


def test_unreadable_input_raises(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(OnnxLoadError):
        lint_qdq(bad)
    with pytest.raises(OnnxLoadError):
        lint_qdq(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------------- hand-built graphs

def _c(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _linear_model(op: str, w_shape, axis, n_scales, *, trans_b=None, opset=17, zp_dtype=np.int8, act_zp=True,
                  act_scales=1, domain="", scale_value=0.05) -> onnx.ModelProto:
    """x -Q-DQ-> op(x, DQ(w)) -> y; weight quantized with ``n_scales`` scales on ``axis``."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    inits += [_c("x_scale", np.full(act_scales, 0.1, np.float32) if act_scales > 1 else np.float32(0.1))]
    q_inputs = ["x", "x_scale"]
    if act_zp:
        inits.append(_c("x_zp", np.zeros(act_scales, zp_dtype) if act_scales > 1 else zp_dtype(0)))
        q_inputs.append("x_zp")
    q_attrs = {"axis": 1} if act_scales > 1 else {}
    nodes.append(helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="x_Q", domain=domain, **q_attrs))
    nodes.append(helper.make_node("DequantizeLinear", ["xq"] + q_inputs[1:], ["xd"], name="x_DQ", domain=domain,
                                  **q_attrs))
    w = rng.integers(-100, 100, size=w_shape).astype(np.int8)
    scales = np.full(n_scales, scale_value, np.float32) if n_scales > 1 else np.float32(scale_value)
    zps = np.zeros(n_scales, np.int8) if n_scales > 1 else np.int8(0)
    inits += [_c("w_q", w), _c("w_scale", scales), _c("w_zp", zps)]
    attrs = {"axis": axis} if n_scales > 1 else {}
    nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_DQ",
                                  domain=domain, **attrs))
    op_attrs = {"transB": trans_b} if trans_b is not None else {}
    nodes.append(helper.make_node(op, ["xd", "w"], ["y"], name=f"the_{op}", **op_attrs))
    if op in ("Conv", "ConvTranspose"):
        x_shape = [1, w_shape[1] if op == "Conv" else w_shape[0], 5, 5]
    elif op == "Gemm" and trans_b:
        x_shape = [1, w_shape[1]]
    else:
        x_shape = [1, w_shape[0]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("op,w_shape,trans_b,good_axis,bad_axis", [
    ("Conv", (6, 4, 3, 3), None, 0, 1),
    ("Gemm", (6, 4), 1, 0, 1),          # transB=1: weights [N, K], output channels on axis 0
    ("Gemm", (4, 6), 0, 1, 0),          # transB=0: weights [K, N], output channels on axis 1
    ("MatMul", (4, 6), None, 1, 0),     # MatMul: [K, N], output channels on axis 1
    ("ConvTranspose", (4, 6, 3, 3), None, 1, 0),  # [C_in, C_out/group, kH, kW]
])
def test_weight_axis_rules(op, w_shape, trans_b, good_axis, bad_axis):
    good = _linear_model(op, w_shape, good_axis, w_shape[good_axis], trans_b=trans_b)
    report = lint_qdq(good)
    assert report.ok, report.format()
    assert report.stats["per_channel_weights"] == 1
    bad = _linear_model(op, w_shape, bad_axis, w_shape[bad_axis], trans_b=trans_b)
    report = lint_qdq(bad)
    assert not report.ok
    assert any(f"axis {bad_axis}" in e and f"axis {good_axis}" in e and "'w_q'" in e and "'w_DQ'" in e
               for e in report.errors), report.errors


def test_negative_axis_is_normalized():
    model = _linear_model("MatMul", (4, 6), -1, 6)
    assert lint_qdq(model).ok


def test_opset_below_13_fails():
    model = _linear_model("MatMul", (4, 6), 1, 1, opset=12)  # per-tensor: valid in opset 12 otherwise
    report = lint_qdq(model, require_per_channel_weights=False)
    assert not report.ok
    assert any("opset 12" in e for e in report.errors)


def test_quantize_without_zero_point_is_uint8():
    report = lint_qdq(_linear_model("MatMul", (4, 6), 1, 6, act_zp=False))
    assert not report.ok
    assert any("'x_Q'" in e and "uint8" in e and "without a zero point" in e for e in report.errors)


def test_contrib_domain_qdq_fails():
    report = lint_qdq(_linear_model("MatMul", (4, 6), 1, 6, domain="com.microsoft"))
    assert not report.ok
    assert any("com.microsoft" in e for e in report.errors)


def test_per_channel_activation_fails():
    report = lint_qdq(_linear_model("Conv", (6, 4, 3, 3), 0, 6, act_scales=4))
    assert not report.ok
    assert any("activation" in e and "per channel" in e and "'x_Q'" in e for e in report.errors)


def test_non_positive_scale_fails():
    report = lint_qdq(_linear_model("MatMul", (4, 6), 1, 6, scale_value=0.0))
    assert not report.ok
    assert any("w_scale" in e and "positive" in e for e in report.errors)


def test_int16_quantization_fails():
    report = lint_qdq(_linear_model("MatMul", (4, 6), 1, 6, zp_dtype=np.int16))
    assert not report.ok
    assert any("int16" in e for e in report.errors)


# ---------------------------------------------------------------------------------------------------- CLI

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "targets.qdq_lint", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_exit_codes_and_json(models, tmp_path):
    ok = _cli(models["s8s8"], "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["ok"] is True and data["stats"]["quantized_convs"] == 2

    bad = _cli(models["u8s8"])
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "uint8" in bad.stdout

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not onnx at all\xff" * 10)
    for target in (garbage, tmp_path / "missing.onnx"):
        res = _cli(target)
        assert res.returncode == 2
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
