"""OpenVINO backend: FP32 IR parity, NNCF INT8 accuracy, runtime precisions, layer exclusion.

A tiny CNN is trained for a few seconds on scikit-learn's digits (8x8 resized to 16x16) so the
accuracy comparisons mean something.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("sklearn")


from targets.base import CalibrationSpec, QuantizeRequest, get_backend  # noqa: E402
from targets.openvino import OpenVINOBackend  # noqa: E402


from tiny_digits import TinyCNN, _digits, _train  # noqa: E402,F401

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Single-threaded torch/runtime calls: this host's 2 cores are shared with other jobs and
    2-thread parallel regions stall badly when one core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    xtr, ytr, xte, yte = _digits()
    model = _train(xtr, ytr)
    root = tmp_path_factory.mktemp("ov")
    onnx_path = root / "student.onnx"
    torch.onnx.export(model, torch.randn(1, 1, 16, 16), str(onnx_path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        ref = model(xte).numpy()
    return SimpleNamespace(model=model, onnx=onnx_path, root=root,
                           calib=xtr[:128].numpy().astype(np.float32),
                           x_test=xte.numpy().astype(np.float32), y_test=yte.numpy(),
                           ref_logits=ref, acc_torch=float((ref.argmax(1) == yte.numpy()).mean()))


PROFILE = SimpleNamespace(name="x86-test", threads=2, input_layout="nchw")


def _request(d, sub, exclude=(), method="minmax"):
    return QuantizeRequest(fp32_onnx=d.onnx, torch_model=d.model, input_shape=(1, 1, 16, 16),
                           calibration=d.calib, calib=CalibrationSpec(method=method),
                           profile=PROFILE, out_dir=d.root / sub, exclude_layers=list(exclude),
                           threads=2)


def _run(xml, x, hint=None):
    cfg = {"INFERENCE_NUM_THREADS": 1}
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(str(xml), "CPU", cfg)
    return np.asarray(compiled(x)[0])  # dynamic batch: the whole test set at once


@pytest.fixture(scope="session")
def backend():
    return OpenVINOBackend()


@pytest.fixture(scope="session")
def fp32(digits, backend):
    return backend.fp32(_request(digits, "fp32"))


@pytest.fixture(scope="session")
def int8(digits, backend):
    return backend.quantize(_request(digits, "int8"))


def test_registry_and_requirements(backend):
    assert isinstance(get_backend("openvino"), OpenVINOBackend)
    assert backend.availability()[0]
    reqs = backend.requirements()
    assert f"openvino=={ov.__version__.split('-')[0]}" in reqs or any(
        r.startswith("openvino==") for r in reqs)
    assert any(r.startswith("numpy==") for r in reqs)


def test_trained_model_is_meaningful(digits):
    assert digits.acc_torch > 0.9


def test_fp32_ir_matches_torch(digits, fp32):
    assert fp32.precision == "fp32" and fp32.model_file.name == "model_fp32.xml"
    assert all(f.exists() for f in fp32.files) and fp32.files[1].suffix == ".bin"
    assert fp32.info["inference_precision_hint"] == "f32"
    # dynamic batch kept, FP32 weights stored (no FP16 compression)
    assert ov.Core().read_model(str(fp32.model_file)).inputs[0].get_partial_shape()[0].is_dynamic
    out = _run(fp32.model_file, digits.x_test, hint="f32")
    assert np.abs(out - digits.ref_logits).max() < 1e-4


def test_int8_accuracy_and_runtime_precisions(digits, backend, fp32, int8):
    assert int8.precision == "int8" and int8.numerics == "openvino"
    assert int8.model_file.name == "model_int8.xml" and all(f.exists() for f in int8.files)
    acc_fp32 = float((_run(fp32.model_file, digits.x_test, "f32").argmax(1)
                      == digits.y_test).mean())
    acc_int8 = float((_run(int8.model_file, digits.x_test).argmax(1) == digits.y_test).mean())
    assert acc_int8 >= acc_fp32 - 0.02, (acc_fp32, acc_int8)

    rep = backend.compile(int8, PROFILE, digits.root / "compile_int8")
    conv = rep["runtime_precisions"]["Convolution"]
    assert set(conv) <= {"u8", "i8"} and sum(conv.values()) == 2, rep["runtime_precisions"]
    assert rep["all_conv_fc_integer"] is True and rep["float_layers"] == 0
    assert rep["integer_layers"] == 3  # two convs and the linear layer
    assert rep["threads"] == 2
    assert rep["default_inference_precision"] in ("bf16", "f32", "f16")


def test_fp32_compile_reports_float(digits, backend, fp32):
    rep = backend.compile(fp32, PROFILE, digits.root / "compile_fp32")
    assert rep["inference_precision"] == "f32"
    assert rep["integer_layers"] == 0 and rep["all_conv_fc_integer"] is False
    assert set(rep["runtime_precisions"]["Convolution"]) == {"f32"}


def test_exclude_one_conv_keeps_it_float(digits, backend):
    layers = backend.quantizable_layers(digits.onnx)
    assert "/conv2/Conv/WithoutBiases" in layers and len(layers) == 3, layers
    built = backend.quantize(_request(digits, "mixed", exclude=["/conv2/Conv/WithoutBiases"]))
    assert built.precision == "mixed"
    rep = backend.compile(built, PROFILE, digits.root / "compile_mixed")
    assert rep["float_layers"] >= 1 and rep["all_conv_fc_integer"] is False
    assert "/conv2/Conv/WithoutBiases" in rep["float_layer_names"], rep["layers"]
    assert rep["integer_layers"] == 2
    # ONNX node names are accepted too and map to the same OpenVINO layer
    from targets.openvino import resolve_layer_names

    assert resolve_layer_names(ov.convert_model(str(digits.onnx)), ["/conv2/Conv"]) == [
        "/conv2/Conv/WithoutBiases"]
    with pytest.raises(ValueError):
        resolve_layer_names(ov.convert_model(str(digits.onnx)), ["/nope/Conv"])


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_other_calibration_methods(digits, backend, method):
    built = backend.quantize(_request(digits, f"int8_{method}", method=method))
    assert built.info["calibration"] == method and built.info["calibration_mapping"]
    acc = float((_run(built.model_file, digits.x_test).argmax(1) == digits.y_test).mean())
    assert acc >= digits.acc_torch - 0.03
