"""targets/standalone/runtime.py: each runtime's loader against PyTorch, on small real models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from targets.standalone import runtime as rt  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn

ATOL = 1e-4


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = TinyCNN().eval()
    onnx_path = d / "tiny.onnx"
    torch.onnx.export(
        net, (torch.randn(1, 1, 16, 16),), str(onnx_path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    import openvino as ov

    xml_path = d / "tiny.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return {"net": net, "onnx": onnx_path, "xml": xml_path, "dir": d}


@pytest.fixture(scope="module")
def tflite_models(models):
    litert_torch = pytest.importorskip("litert_torch")
    net, d = models["net"], models["dir"]
    fixed = d / "tiny.tflite"
    litert_torch.convert(net.eval(), (torch.randn(1, 1, 16, 16),)).export(str(fixed))
    dynamic = d / "tiny_dyn.tflite"
    batch = torch.export.Dim("batch", min=1, max=64)
    # a sample batch of 1 would specialize the batch dimension: use 2
    litert_torch.convert(net.eval(), (torch.randn(2, 1, 16, 16),), dynamic_shapes=({0: batch},)).export(str(dynamic))
    return {"fixed": fixed, "dynamic": dynamic}


def _ref(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _x(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, 16, 16)).astype(np.float32)


def test_runtime_for_path():
    assert rt.runtime_for_path("a/b.onnx") == "onnxruntime"
    assert rt.runtime_for_path("b.XML") == "openvino"
    assert rt.runtime_for_path("b.tflite") == "litert"
    assert rt.runtime_for_path("b.plan") == rt.runtime_for_path("b.engine") == "tensorrt"
    with pytest.raises(rt.RuntimeLoadError, match="unknown model suffix"):
        rt.runtime_for_path("b.pt")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(rt.RuntimeLoadError, match="no such model file"):
        rt.load_model(tmp_path / "nope.onnx")


def test_onnxruntime_matches_torch(models):
    m = rt.load_model(models["onnx"], threads=1)
    assert m.runtime == "onnxruntime" and m.runtime_version
    assert m.input_name == "input"
    assert m.input_shape == (-1, 1, 16, 16) and m.dynamic_batch
    assert m.input_dtype == "float32" and m.layout == "nchw"
    assert "CPUExecutionProvider" in m.info["providers"]
    for batch in (1, 3):
        x = _x(batch)
        y = m.run(x)
        assert y.dtype == np.float32 and y.shape == (batch, 10)
        np.testing.assert_allclose(y, _ref(models["net"], x), atol=ATOL)
    assert rt.runtime_precisions(m) == {}
    with pytest.raises(ValueError, match="dimension 2"):
        m.run(np.zeros((1, 1, 8, 16), np.float32))


def test_openvino_matches_torch_in_f32_by_default(models):
    m = rt.load_model(models["xml"], threads=1)
    assert m.runtime == "openvino"
    assert m.input_shape == (-1, 1, 16, 16) and m.layout == "nchw"
    assert m.info["precision_hint"] == "f32"
    assert m.info["inference_precision"] == "f32"
    assert m.info["threads_effective"] == 1
    for batch in (1, 4):
        x = _x(batch)
        np.testing.assert_allclose(m.run(x), _ref(models["net"], x), atol=ATOL)
    precs = rt.runtime_precisions(m)
    assert set(precs["Convolution"]) == {"f32"} and sum(precs["Convolution"].values()) == 2
    assert set(precs["FullyConnected"]) == {"f32"}
    everything = rt.runtime_precisions(m, ["*"])
    assert "Convolution" in everything and len(everything) > len(precs)


def test_openvino_plugin_default_precision_is_reported(models):
    m = rt.load_model(models["xml"], threads=1, precision_hint="default")
    assert m.info["precision_hint"] == "default"
    conv = rt.runtime_precisions(m)["Convolution"]
    # bf16 on CPUs with avx512_bf16/AMX (docs/TOOLCHAIN.md), f32 elsewhere: either way it is reported
    assert set(conv) <= {"f32", "bf16", "f16"}
    assert m.info["inference_precision"] in ("f32", "bf16", "f16")


def test_openvino_int8_really_runs_in_integer(models, tmp_path):
    """A QDQ ONNX read by OpenVINO runs its convolutions in u8/i8: runtime_precisions shows it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": _x(1, seed=s)} for s in range(8)])

        def get_next(self):
            return next(self.items, None)

    qdq = tmp_path / "tiny_int8.onnx"
    quantize_static(str(models["onnx"]), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    import openvino as ov

    xml = tmp_path / "tiny_int8.xml"
    ov.save_model(ov.convert_model(str(qdq)), str(xml), compress_to_fp16=False)
    m = rt.load_model(xml, threads=1)
    conv = rt.runtime_precisions(m)["Convolution"]
    assert set(conv) <= {"u8", "i8"} and sum(conv.values()) == 2
    x = _x(2)
    ref = _ref(models["net"], x)
    y = m.run(x)
    assert np.abs(y - ref).max() < 0.1 * (np.abs(ref).max() + 1e-3) + 0.05  # INT8 is close, not exact
    ort_int8 = rt.load_model(qdq, threads=1)  # the same QDQ graph in onnxruntime
    np.testing.assert_allclose(ort_int8.run(x), y, atol=0.05)


def test_openvino_missing_bin_is_clear(models, tmp_path):
    xml = tmp_path / "lonely.xml"
    xml.write_text(models["xml"].read_text())
    with pytest.raises(rt.RuntimeLoadError, match="weights file lonely.bin is missing"):
        rt.load_model(xml)


def test_litert_matches_torch_and_fixed_batch_is_explained(models, tflite_models):
    m = rt.load_model(tflite_models["fixed"], threads=1)
    assert m.runtime == "litert"
    assert m.input_shape == (1, 1, 16, 16) and m.layout == "nchw" and not m.dynamic_batch
    assert m.info["input_quantization"] is None
    x = _x(1)
    np.testing.assert_allclose(m.run(x), _ref(models["net"], x), atol=ATOL)
    with pytest.raises(rt.RuntimeLoadError, match="fixed batch of 1"):
        m.run(_x(2))
    np.testing.assert_allclose(m.run(x), _ref(models["net"], x), atol=ATOL)  # still usable
    precs = rt.runtime_precisions(m)
    assert precs and all(set(c) == {"f32"} for c in precs.values())


def test_litert_dynamic_batch_resizes(models, tflite_models):
    m = rt.load_model(tflite_models["dynamic"], threads=1)
    assert m.dynamic_batch
    for batch in (4, 1, 3):
        x = _x(batch, seed=batch)
        np.testing.assert_allclose(m.run(x), _ref(models["net"], x), atol=ATOL)


def test_litert_quantized_input_and_output(tmp_path):
    from pipeline.measure.harness import write_tflite_single_op

    shape = (1, 1, 4, 4)
    x = np.linspace(-2.0, 2.0, 16, dtype=np.float32).reshape(shape)

    # int8 input (scale 0.05, zero point 3) -> DEQUANTIZE -> float output: the loader quantizes for us
    deq = write_tflite_single_op(tmp_path / "deq.tflite", op="DEQUANTIZE", shape=shape, in_dtype="int8",
                                 out_dtype="float32", in_quant=(0.05, 3))
    m = rt.load_model(deq)
    assert m.input_dtype == "float32"
    assert m.info["input_quantization"] == {"dtype": "int8", "scale": pytest.approx(0.05), "zero_point": 3, "axis": None}
    y = m.run(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=0.025 + 1e-6)

    # float input -> QUANTIZE -> uint8 output (scale 0.1, zero point 128): the loader dequantizes
    q = write_tflite_single_op(tmp_path / "q.tflite", op="QUANTIZE", shape=shape, in_dtype="float32",
                               out_dtype="uint8", out_quant=(0.1, 128))
    m = rt.load_model(q)
    assert m.info["output_quantization"]["dtype"] == "uint8"
    y = m.run(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=0.05 + 1e-6)
    # out-of-range inputs saturate instead of wrapping around
    big = np.full(shape, 100.0, np.float32)
    assert np.all(m.run(big) == pytest.approx((255 - 128) * 0.1))


def test_tensorrt_without_tensorrt_is_clear(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(rt.MissingRuntime, match="TensorRT"):
        rt.load_model(plan)


def test_preprocess_image(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    path = tmp_path / "red.png"
    Image.fromarray(rgb).save(path)

    spec = {"size": [4, 5], "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 255,
            "channel_order": "rgb", "layout": "nchw"}
    x = rt.preprocess_image(path, spec)
    assert x.shape == (1, 3, 4, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)
    np.testing.assert_allclose(x[0, 1:], -1.0)

    x = rt.preprocess_image(path, {**spec, "channel_order": "bgr", "layout": "nhwc"})
    assert x.shape == (1, 4, 5, 3)
    np.testing.assert_allclose(x[0, ..., 2], 1.0)
    np.testing.assert_allclose(x[0, ..., 0], -1.0)

    g = rt.preprocess_image(path, {"size": [8, 10], "channels": 1, "mean": [0.0], "std": [1.0]})
    assert g.shape == (1, 1, 8, 10)
    np.testing.assert_allclose(g, 0.299 * 1.0, atol=0.01)  # PIL's luma of pure red

    arr = np.ones((1, 8, 8), np.float64)
    np.save(tmp_path / "x.npy", arr)
    x = rt.preprocess_image(tmp_path / "x.npy", spec)  # .npy: taken as preprocessed
    assert x.shape == (1, 1, 8, 8) and x.dtype == np.float32

    with pytest.raises(ValueError, match="layout"):
        rt.preprocess_image(path, {**spec, "layout": "chw"})


def test_example_input_and_describe(models):
    m = rt.load_model(models["onnx"])
    x = m.example_input(2)
    assert x.shape == (2, 1, 16, 16) and x.dtype == np.float32
    np.testing.assert_array_equal(x, m.example_input(2))  # seeded
    d = m.describe()
    assert d["runtime"] == "onnxruntime" and d["input_shape"] == [-1, 1, 16, 16]
    assert os.path.basename(d["path"]) == "tiny.onnx"
