"""Roofline estimator: MAC counting from ONNX, bytes by dtype, classification, and the published check."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.errors import ConfigError
from targets.estimate import estimate_latency, estimate_model, model_cost
from targets.profiles import load_profiles, resolve_profile


@pytest.fixture(scope="module")
def profiles():
    return load_profiles()


def _export(model: nn.Module, shape: tuple[int, ...], path, dynamic_batch: bool = True) -> str:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(shape), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None)
    return str(path)


class HandNet(nn.Module):
    """Every layer's MACs can be done by hand (input 1x3x8x8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)                       # out 8x8x8
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)     # out 8x4x4, depthwise
        self.pw = nn.Conv2d(8, 16, 1)                                   # out 16x4x4
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2)                # out 4x8x8
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.dw(x))
        x = self.pw(x)
        x = self.up(x)
        return self.fc(x.flatten(1))


HAND_MACS = (
    8 * 8 * 8 * (3 * 3 * 3)     # conv: out elements x Cin x k x k = 13824
    + 8 * 4 * 4 * (1 * 3 * 3)   # depthwise: out elements x 1 x k x k = 1152
    + 16 * 4 * 4 * 8            # pointwise = 2048
    + 16 * 4 * 4 * (4 * 2 * 2)  # transposed: input elements x Cout x k x k = 4096
    + 256 * 10                  # linear = 2560
)
HAND_PARAMS = (3 * 8 * 9 + 8) + (8 * 9 + 8) + (8 * 16 + 16) + (16 * 4 * 4 + 4) + (256 * 10 + 10)


@pytest.fixture(scope="module")
def hand_onnx(tmp_path_factory):
    torch.manual_seed(0)
    return _export(HandNet(), (1, 3, 8, 8), tmp_path_factory.mktemp("hand") / "hand.onnx")


def test_hand_computed_macs_and_params(hand_onnx):
    assert HAND_MACS == 23680
    cost = model_cost(hand_onnx)
    assert cost.macs == HAND_MACS
    assert cost.params == HAND_PARAMS
    assert cost.weight_bytes == HAND_PARAMS * 4  # fp32 weights
    by_op = {layer.op_type: layer.macs for layer in cost.layers if layer.kind == "compute"}
    assert by_op["ConvTranspose"] == 4096 and by_op["Gemm"] == 2560
    assert [layer.macs for layer in cost.layers if layer.op_type == "Conv"] == [13824, 1152, 2048]
    assert not cost.warnings


def test_dynamic_batch_is_fixed_to_the_given_batch(hand_onnx):
    c1, c4 = model_cost(hand_onnx, batch=1), model_cost(hand_onnx, batch=4)
    assert c4.macs == 4 * c1.macs
    assert c4.params == c1.params
    assert c4.activation_bytes == 4 * c1.activation_bytes


def test_static_batch_model_is_counted_at_its_own_batch(profiles):
    cost = model_cost(_conv_model(8, 16), batch=4)  # the input is declared 1x8x16x16
    assert cost.batch == 1 and cost.macs == 8 * 16 * 16 * 8 * 9
    assert any("static batch of 1" in w for w in cost.warnings)
    e1 = estimate_latency(cost, profiles["jetson-agx-xavier"], "fp16", batch=1)
    e4 = estimate_latency(cost, profiles["jetson-agx-xavier"], "fp16", batch=4)
    assert e4.compute_ms == pytest.approx(4 * e1.compute_ms)


def test_activation_bytes_follow_precision(hand_onnx):
    assert model_cost(hand_onnx, precision="fp32").activation_bytes == \
        4 * model_cost(hand_onnx, precision="int8").activation_bytes


def test_matmul_macs(tmp_path):
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 32, bias=False)

        def forward(self, x):  # (N, 5, 16) -> MatMul
            return self.proj(x)

    cost = model_cost(_export(Tok(), (1, 5, 16), tmp_path / "tok.onnx"))
    assert [layer.op_type for layer in cost.layers if layer.kind == "compute"] == ["MatMul"]
    assert cost.macs == 5 * 16 * 32


def test_static_non_batch_dims_required(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(ConfigError, match="dynamic dimension 2"):
        model_cost(helper.make_model(g))


def _qdq_conv_model(quantized: bool) -> onnx.ModelProto:
    """x(1x16x8x8) -> Conv 3x3, 32 out; the weight is int8 behind DequantizeLinear when quantized."""
    w = np.zeros((32, 16, 3, 3), dtype=np.float32)
    nodes, inits = [], []
    if quantized:
        inits += [numpy_helper.from_array(w.astype(np.int8), "w_q"),
                  numpy_helper.from_array(np.ones(32, np.float32), "w_scale"),
                  numpy_helper.from_array(np.zeros(32, np.int8), "w_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_weights_count_as_int8():
    fp, q = model_cost(_qdq_conv_model(False)), model_cost(_qdq_conv_model(True))
    n = 32 * 16 * 9
    assert fp.macs == q.macs == 32 * 8 * 8 * 16 * 9
    assert fp.params == q.params == n
    assert fp.weight_bytes == 4 * n
    assert q.weight_bytes == n
    conv = [layer for layer in q.layers if layer.op_type == "Conv"][0]
    assert conv.quantized
    # at fp16 an fp32 weight moves 2 bytes, an int8 weight stays 1 byte
    assert [layer for layer in fp.layers if layer.op_type == "Conv"][0].bytes_at("fp16") - conv.bytes_at("fp16") == n


def test_estimate_grows_with_macs_and_shrinks_on_faster_device(tmp_path, profiles):
    small = model_cost(_export(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                             nn.Conv2d(16, 16, 3, padding=1)), (1, 3, 64, 64),
                               tmp_path / "s.onnx"))
    big = model_cost(_export(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                                           nn.Conv2d(64, 64, 3, padding=1)), (1, 3, 64, 64), tmp_path / "b.onnx"))
    assert big.macs > small.macs
    for name in ("jetson-orin-nano", "raspberry-pi-5", "x86-cpu"):
        prof = profiles[name]
        assert estimate_latency(big, prof).latency_ms > estimate_latency(small, prof).latency_ms
    nano, agx = profiles["jetson-orin-nano"], profiles["jetson-agx-orin"]
    for prec in ("int8", "fp16"):
        assert estimate_latency(big, agx, prec).latency_ms < estimate_latency(big, nano, prec).latency_ms
    assert (estimate_latency(big, profiles["raspberry-pi-5"]).latency_ms
            < estimate_latency(big, profiles["raspberry-pi-4"]).latency_ms)
    # batch scales the work, not the weights
    e1, e8 = estimate_latency(big, nano, batch=1), estimate_latency(big, nano, batch=8)
    assert e1.latency_ms < e8.latency_ms < 8 * e1.latency_ms + 1e-9


def _gemm_model(k: int, n: int) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"])], "fc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros((k, n), np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _conv_model(c: int, hw: int) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros((c, c, 3, 3), np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_memory_vs_compute_bound(profiles):
    """A batch-1 fully connected layer does 1 MAC per weight byte pair: memory-bound on any device.
    A 3x3 conv with 64 channels on 56x56 does ~130 MACs per byte moved: compute-bound."""
    xavier = profiles["jetson-agx-xavier"]
    fc = estimate_model(_gemm_model(1024, 1024), xavier, "fp16")
    conv = estimate_model(_conv_model(64, 56), xavier, "fp16")
    assert fc.bound == "memory" and fc.memory_ms > 10 * fc.compute_ms
    assert conv.bound == "compute" and conv.compute_ms > 3 * conv.memory_ms
    # the designed numbers, by hand: 1024x1024 fp16 weights + tiny activations over 136.5 GB/s x 0.7
    bytes_fc = 1024 * 1024 * 2 + (1024 + 1024) * 2
    assert fc.memory_ms == pytest.approx(bytes_fc / (136.5e9 * 0.7) * 1e3)
    macs_conv = 64 * 56 * 56 * 64 * 9
    assert conv.compute_ms == pytest.approx(2 * macs_conv / (11.3e12 * xavier.efficiency.value) * 1e3)
    assert conv.latency_ms == pytest.approx(conv.compute_ms + xavier.layer_overhead_us.value * 1e-3)
    # batching the fully connected layer raises its arithmetic intensity (estimate scales a batch-1 cost)
    assert estimate_latency(model_cost(_gemm_model(1024, 1024)), xavier, "fp16", batch=4096).bound == "compute"


def test_estimate_labels_and_errors(hand_onnx, profiles):
    cost = model_cost(hand_onnx)
    est = estimate_latency(cost, profiles["jetson-orin-nano"])
    assert est.source == "estimated" and est.precision == "int8"  # the profile's estimate_precision
    assert "max(2*MACs" in est.formula and "jetson-orin-nano" in est.formula
    assert est.to_dict()["source"] == "estimated"
    x86 = estimate_latency(cost, profiles["x86-cpu"])
    assert x86.memory_ms == 0 and "memory term omitted" in x86.formula
    with pytest.raises(ConfigError, match="no fp16 compute peak"):
        estimate_latency(cost, profiles["raspberry-pi-4"], "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        estimate_latency(cost, profiles["jetson-orin-nano"], "int4")
    with pytest.raises(ConfigError, match="does not exist"):
        model_cost("/nonexistent/model.onnx")


def test_estimator_check_ratios_within_range(tmp_path, capsys):
    from benchmarks import estimator_check

    out = tmp_path / "check.json"
    assert estimator_check.main(["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resnet18" in printed and "resnet50" in printed and "not compared" in printed
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["model"], r["device"], r["precision"]) for r in rows} == {
        ("resnet18", "jetson-agx-xavier", "fp16"), ("resnet50", "jetson-agx-xavier", "fp16")}
    assert [r["role"] for r in rows].count("fit") == 1  # efficiency chosen from one point only
    for r in rows:
        assert 0.5 <= r["ratio"] <= 2.0, r
        assert r["estimate_source"] == "estimated"
    gm = {r["model"]: r["gmacs"] for r in rows}
    assert gm["resnet18"] == pytest.approx(1.82, rel=0.03) and gm["resnet50"] == pytest.approx(4.1, rel=0.03)
    assert data["pass"] is True and data["not_compared"]


def test_profile_speed_order_is_sane(profiles):
    """Same model, same precision: AGX Orin < Orin NX < Orin Nano."""
    cost = model_cost(_conv_model(64, 56))
    t = {n: estimate_latency(cost, resolve_profile(n, profiles), "int8").latency_ms
         for n in ("jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano")}
    assert t["jetson-agx-orin"] < t["jetson-orin-nx"] < t["jetson-orin-nano"]
