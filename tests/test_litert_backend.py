"""LiteRT backend: FP32 parity, PT2E INT8 accuracy and full-integer check, NHWC input,
float vs int8 I/O, keeping a conv in float.

A tiny CNN is trained for a few seconds on scikit-learn's digits (8x8 resized to 16x16) so the
accuracy comparisons mean something. Models run with ai_edge_litert's Interpreter (XNNPACK).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("sklearn")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from targets.base import CalibrationSpec, QuantizeRequest, get_backend  # noqa: E402
from targets.litert import LiteRTBackend, check_full_integer, resolve_module_names  # noqa: E402


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
    root = tmp_path_factory.mktemp("litert")
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


NCHW = SimpleNamespace(name="rpi-test", threads=2, input_layout="nchw")
NHWC = SimpleNamespace(name="rpi-test-nhwc", threads=2, input_layout="nhwc")


def _request(d, sub, profile=NCHW, exclude=(), method="minmax"):
    return QuantizeRequest(fp32_onnx=d.onnx, torch_model=d.model, input_shape=(1, 1, 16, 16),
                           calibration=d.calib, calib=CalibrationSpec(method=method),
                           profile=profile, out_dir=d.root / sub, exclude_layers=list(exclude),
                           threads=2)


def _run(path, x):
    """Batch-1 inference over x (already in the model's layout); handles int8 I/O."""
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    res = []
    for k in range(len(x)):
        xi = x[k:k + 1]
        if inp["dtype"] != np.float32:
            s, z = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            xi = np.clip(np.round(xi / s) + z, info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            s, z = out["quantization"]
            y = (y.astype(np.float32) - z) * s
        res.append(y)
    return np.concatenate(res)


def _acc(logits, y):
    return float((logits.argmax(1) == y).mean())


@pytest.fixture(scope="session")
def backend():
    return LiteRTBackend()


@pytest.fixture(scope="session")
def fp32(digits, backend):
    return backend.fp32(_request(digits, "fp32"))


@pytest.fixture(scope="session")
def fp32_logits(digits, fp32):
    return _run(fp32.model_file, digits.x_test)


@pytest.fixture(scope="session")
def int8(digits, backend):
    return backend.quantize(_request(digits, "int8"))


def test_registry_and_requirements(backend):
    assert isinstance(get_backend("litert"), LiteRTBackend)
    assert backend.host_source == "host-measured"
    assert backend.availability()[0]
    reqs = backend.requirements()
    assert any(r.startswith("ai-edge-litert==") for r in reqs), reqs
    assert any(r.startswith("numpy==") for r in reqs)


def test_fp32_matches_torch(digits, fp32, fp32_logits):
    assert digits.acc_torch > 0.9
    assert fp32.precision == "fp32" and fp32.model_file.name == "model_fp32.tflite"
    assert fp32.info["layout"] == "nchw" and fp32.info["input_shape"] == [1, 1, 16, 16]
    assert np.abs(fp32_logits - digits.ref_logits).max() < 1e-4


def test_int8_accuracy_and_full_integer(digits, backend, fp32_logits, int8):
    assert int8.precision == "int8" and int8.model_file.name == "model_int8.tflite"
    acc_fp32, acc_int8 = _acc(fp32_logits, digits.y_test), _acc(_run(int8.model_file,
                                                                    digits.x_test), digits.y_test)
    assert acc_int8 >= acc_fp32 - 0.02, (acc_fp32, acc_int8)

    chk = check_full_integer(int8.model_file)
    assert chk["full_integer"] is True, chk
    assert chk["float32_tensors_inside"] == [] and chk["float_ops"] == []
    assert {c["op"] for c in chk["compute_ops"]} >= {"FULLY_CONNECTED"}
    assert len(chk["compute_ops"]) == 3 and all(c["integer"] for c in chk["compute_ops"])
    # default: float I/O with QUANTIZE/DEQUANTIZE at the boundary
    assert chk["io_dtype"] == ["float32"] and int8.info["io_dtype"] == "float32"
    assert sorted(chk["io_boundary_ops"]) == ["DEQUANTIZE", "QUANTIZE"]

    rep = backend.compile(int8, NCHW, digits.root / "compile_int8")
    assert rep["full_integer"] is True and rep["loads"] and rep["host_source"] == "host-measured"


@pytest.fixture(scope="session")
def int8_native_io(digits):
    return LiteRTBackend(io_dtype="int8").quantize(_request(digits, "int8_io"))


def test_int8_io_option(digits, int8, int8_native_io):
    native = int8_native_io
    assert native.info["strict_qdq_conversion"] is False
    chk = check_full_integer(native.model_file)
    assert native.info["io_dtype"] == "int8" and chk["io_dtype"] == ["int8"], chk["io"]
    assert chk["full_integer"] is True and chk["io_boundary_ops"] == []
    assert chk["io"]["input"][0]["scale"] > 0
    a, b = _run(native.model_file, digits.x_test), _run(int8.model_file, digits.x_test)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99


def test_float_io_rewrite_fallback(digits, int8_native_io, tmp_path):
    """The flatbuffer fallback (used when strict QDQ mode is unavailable) gives float I/O
    around the same integer graph and the same outputs as feeding the int8 I/O by hand."""
    from targets.litert import float_io_rewrite

    out = tmp_path / "float_io.tflite"
    float_io_rewrite(int8_native_io.model_file, out)
    chk = check_full_integer(out)
    assert chk["io_dtype"] == ["float32"] and chk["full_integer"] is True, chk
    assert sorted(chk["io_boundary_ops"]) == ["DEQUANTIZE", "QUANTIZE"]
    a, b = _run(out, digits.x_test), _run(int8_native_io.model_file, digits.x_test)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99 and np.abs(a - b).max() < 0.5


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_other_calibration_methods(digits, backend, fp32_logits, method):
    built = backend.quantize(_request(digits, f"int8_{method}", method=method))
    assert built.info["calibration"] == method and built.info["calibration_mapping"]
    assert check_full_integer(built.model_file)["full_integer"] is True
    acc = _acc(_run(built.model_file, digits.x_test), digits.y_test)
    assert acc >= _acc(fp32_logits, digits.y_test) - 0.03


def test_nhwc_input(digits, backend, fp32_logits):
    x_nhwc = np.ascontiguousarray(digits.x_test.transpose(0, 2, 3, 1))
    f = backend.fp32(_request(digits, "fp32_nhwc", profile=NHWC))
    assert f.info["layout"] == "nhwc"
    shape = Interpreter(model_path=str(f.model_file)).get_input_details()[0]["shape"]
    assert list(shape) == [1, 16, 16, 1]
    out = _run(f.model_file, x_nhwc)
    assert np.abs(out - fp32_logits).max() < 1e-4
    assert (out.argmax(1) == fp32_logits.argmax(1)).all()

    q = backend.quantize(_request(digits, "int8_nhwc", profile=NHWC))
    chk = check_full_integer(q.model_file)
    assert chk["io"]["input"][0]["shape"] == [1, 16, 16, 1] and chk["full_integer"] is True
    assert _acc(_run(q.model_file, x_nhwc), digits.y_test) >= _acc(fp32_logits,
                                                                   digits.y_test) - 0.02


def test_exclude_conv_keeps_it_float(digits, backend):
    assert backend.quantizable_layers(digits.onnx, digits.model) == ["conv1", "conv2", "fc"]
    assert backend.quantizable_layers(digits.onnx) == ["/conv1/Conv", "/conv2/Conv", "/fc/Gemm"]
    assert resolve_module_names(digits.model, ["/conv2/Conv", "fc"]) == ["conv2", "fc"]
    with pytest.raises(ValueError):
        resolve_module_names(digits.model, ["nope"])

    built = backend.quantize(_request(digits, "mixed", exclude=["conv2"]))
    assert built.precision == "mixed" and built.info["kept_in_float"] == ["conv2"]
    chk = check_full_integer(built.model_file)
    assert chk["full_integer"] is False and chk["float32_tensors_inside"]
    ops = {c["op"]: c for c in chk["compute_ops"]}
    assert ops["CONV_2D"]["integer"] is False  # conv2 (conv1 has one input channel: DEPTHWISE)
    assert ops["FULLY_CONNECTED"]["integer"] is True
    acc = _acc(_run(built.model_file, digits.x_test), digits.y_test)
    assert acc >= digits.acc_torch - 0.02
