"""Tests of targets.tensorrt_qdq (QDQ for TensorRT) and targets.tensorrt_api (parse check, engine build through
tensorrt_rtx) and of the standalone Jetson bundle scripts in targets/standalone/tensorrt/ (bench_engine.py is the
one path that times an engine; it runs on the device)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from targets import tensorrt_api as trt_api
from targets.tensorrt_qdq import make_trt_qdq
from targets.qdq_lint import lint_qdq

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "targets" / "standalone" / "tensorrt"
H = W = 16


def _has(module: str) -> bool:
    mod, _ = trt_api.import_tensorrt(prefer=(module,))
    return mod is not None


HAS_RTX = _has("tensorrt_rtx")
HAS_TRT = _has("tensorrt")
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx (pip tensorrt-rtx) is not installed")
GPU_OK, GPU_REASON = trt_api.gpu_available()


def export_tiny_cnn(path: Path) -> Path:
    """conv-bn-relu x2, flatten, linear; legacy exporter, opset 17, dynamic batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * (H // 2) * (W // 2), 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.randn(1, 3, H, W), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def random_images(n: int, seed: int) -> np.ndarray:
    """Random-ish images: smooth blobs plus noise, float32 NCHW."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / H
    imgs = np.empty((n, 3, H, W), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0, 1, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.02, 0.2))
        imgs[i] = blob[None] * rng.uniform(-2, 2, (3, 1, 1)) + 0.3 * rng.standard_normal((3, H, W))
    return imgs


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trt_models")
    fp32 = export_tiny_cnn(d / "fp32.onnx")
    qdq = make_trt_qdq(fp32, d / "trt_qdq.onnx", random_images(64, seed=1))
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": random_images(4, seed=2)}])

        def get_next(self):
            return next(self.it, None)

    u8 = d / "u8s8.onnx"  # ORT defaults for x86: asymmetric U8S8, int32 biases
    quantize_static(str(fp32), str(u8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"fp32": fp32, "qdq": qdq, "u8s8": u8, "dir": d}


# ------------------------------------------------------------------------------------------ make_trt_qdq

@pytest.mark.isa_lane
def test_make_trt_qdq_passes_lint_and_agrees_with_fp32(models):
    import onnxruntime as ort

    report = lint_qdq(models["qdq"])
    assert report.ok, report.format()
    assert report.stats["quantized_convs"] == 2 and report.stats["quantized_gemms"] == 1
    x = random_images(200, seed=7)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(str(models["fp32"]), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    # TensorRT's numbers are the exact QDQ math: ONNX Runtime with graph optimizations off computes them on any
    # host (0.985 agreement), its fused integer kernels do not on AVX2 without VNNI (0.82, saturation).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q = ort.InferenceSession(str(models["qdq"]), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    agreement = float((ref.argmax(1) == q.argmax(1)).mean())
    assert agreement >= 0.9, agreement
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".trt_qdq") for p in models["dir"].iterdir())


def test_make_trt_qdq_entropy_and_bad_method(models, tmp_path):
    out = make_trt_qdq(models["fp32"], tmp_path / "e.onnx", random_images(16, seed=3), method="entropy")
    assert lint_qdq(out).ok
    with pytest.raises(ValueError, match="unknown calibration method"):
        make_trt_qdq(models["fp32"], tmp_path / "x.onnx", random_images(4, seed=3), method="kl")
    with pytest.raises(ValueError, match="empty"):
        make_trt_qdq(models["fp32"], tmp_path / "x.onnx", np.zeros((0, 3, H, W), np.float32))
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------- imports and GPU

def test_import_tensorrt_and_gpu_probe():
    assert trt_api.import_tensorrt(prefer=("no_such_tensorrt_module",)) == (None, None)
    mod, flavor = trt_api.import_tensorrt()
    if HAS_TRT or HAS_RTX:
        assert flavor in ("tensorrt", "tensorrt_rtx") and hasattr(mod, "OnnxParser")
    ok, reason = trt_api.gpu_available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason


# ---------------------------------------------------------------------------------- parse check (RTX)

@needs_rtx
def test_parse_check_rtx_accepts_trt_qdq(models):
    import tensorrt_rtx

    info = trt_api.parse_check(models["qdq"], trt=tensorrt_rtx)
    assert info["ok"], info["errors"]
    assert info["tensorrt_module"] == "tensorrt_rtx"
    assert info["tensorrt_version"] == tensorrt_rtx.__version__
    print("tensorrt_rtx version:", info["tensorrt_version"])
    assert "proxy" in info["proxy_note"] and "SM87" in info["proxy_note"] and "10.3" in info["proxy_note"]
    assert info["strongly_typed"] is True
    assert info["layers"] > 0 and info["quantize_layers"] > 0 and info["dequantize_layers"] > 0
    assert "int8" in info["precisions"] and info["int8_layers"] > 0
    assert info["inputs"][0]["name"] == "input" and info["inputs"][0]["shape"] == [-1, 3, H, W]


@needs_rtx
def test_parse_check_rtx_rejects_int32_bias(models):
    import tensorrt_rtx

    info = trt_api.parse_check(models["u8s8"], trt=tensorrt_rtx)
    assert not info["ok"]
    assert any("DequantizeLinear" in e and "Int32" in e for e in info["errors"]), info["errors"]


def test_parse_check_missing_file(tmp_path):
    if not (HAS_TRT or HAS_RTX):
        with pytest.raises(trt_api.TensorRTUnavailable):
            trt_api.parse_check(tmp_path / "missing.onnx")
        return
    info = trt_api.parse_check(tmp_path / "missing.onnx")
    assert not info["ok"] and "no such file" in info["errors"][0]


# ------------------------------------------------------------------------------------------ engine build

@needs_rtx
def test_build_engine_rtx_writes_plan(models, tmp_path):
    import tensorrt_rtx

    plan = tmp_path / "out" / "model.plan"
    cache = tmp_path / "timing.cache"
    info = trt_api.build_engine(models["qdq"], plan, trt=tensorrt_rtx, timing_cache_path=cache,
                                   batch_profile=(1, 1, 32))
    assert info["ok"], info["errors"]
    assert info["stage"] == "done" and info["tensorrt_module"] == "tensorrt_rtx"
    assert info["proxy_note"] and "SM87" in info["proxy_note"]
    data = plan.read_bytes()
    assert len(data) == info["plan_bytes"] > 0
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    assert info["strongly_typed"] is True and info["builder_flags"] == []
    assert info["fp16_fallback"] == {"requested": True, "applied": False, "note": info["fp16_fallback"]["note"]}
    assert info["inputs"] == [{"name": "input", "min": [1, 3, H, W], "opt": [1, 3, H, W], "max": [32, 3, H, W]}]
    assert info["timing_cache"]["saved"] and cache.is_file() and not info["timing_cache"]["loaded"]
    assert [p.name for p in plan.parent.iterdir()] == ["model.plan"]  # no temp file left behind
    again = trt_api.build_engine(models["qdq"], plan, trt=tensorrt_rtx, timing_cache_path=cache)
    assert again["ok"] and again["timing_cache"]["loaded"]


@needs_rtx
def test_build_engine_rtx_weakly_typed_skips_missing_flags(models, tmp_path):
    import tensorrt_rtx

    info = trt_api.build_engine(models["qdq"], tmp_path / "w.plan", trt=tensorrt_rtx, strongly_typed=False)
    assert info["ok"], info["errors"]
    assert info["strongly_typed"] is False
    # TensorRT-RTX has no BuilderFlag.INT8/FP16: skipped, not a crash
    assert info["builder_flags"] == [] and "skipped" in info["fp16_fallback"]["note"]


@needs_rtx
def test_build_engine_rtx_failures_are_reported(models, tmp_path):
    import tensorrt_rtx

    plan = tmp_path / "bad.plan"
    info = trt_api.build_engine(models["u8s8"], plan, trt=tensorrt_rtx)
    assert not info["ok"] and info["stage"] == "parse" and info["errors"]
    assert not plan.exists()
    info = trt_api.build_engine(models["qdq"], plan, trt=tensorrt_rtx, batch_profile=(4, 2, 8))
    assert not info["ok"] and "batch_profile" in info["errors"][0]


# ------------------------------------------------------------------------------------ standalone scripts

def _run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def test_standalone_scripts_import_only_stdlib_numpy_tensorrt():
    allowed = set(sys.stdlib_module_names) | {"numpy", "tensorrt", "tensorrt_rtx"}
    for script in ("build_engine.py", "bench_engine.py"):
        tree = ast.parse((SCRIPTS / script).read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert names <= allowed, (script, names - allowed)


@pytest.fixture()
def bundle(models, tmp_path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "model.onnx").write_bytes(models["qdq"].read_bytes())
    (b / "manifest.json").write_text(json.dumps({
        "schema_version": 1,
        "input": {"name": "input", "shape": ["batch", 3, H, W], "dtype": "float32", "layout": "NCHW"},
        "toolchain": {"tensorrt_expected": "10.3"},
    }))
    return b


def test_build_engine_py_without_tensorrt_exits_3(bundle):
    if HAS_TRT:
        pytest.skip("a real tensorrt module is installed here")
    res = _run([sys.executable, SCRIPTS / "build_engine.py", "--onnx", bundle / "model.onnx",
                "--plan", bundle / "model.plan"])
    assert res.returncode == 3, res.stderr
    assert "tensorrt is not installed" in res.stderr.lower()


@needs_rtx
def test_build_engine_py_refuses_version_mismatch(bundle):
    import tensorrt_rtx

    res = _run([sys.executable, SCRIPTS / "build_engine.py", "--onnx", bundle / "model.onnx",
                "--plan", bundle / "model.plan", "--allow-rtx"])
    assert res.returncode == 2, res.stderr
    msg = res.stderr.strip()
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    assert "expects TensorRT 10.3" in msg and tensorrt_rtx.__version__ in msg and "JetPack 6.1" in msg
    assert not (bundle / "model.plan").exists()
    # --expect-trt overrides the manifest and still refuses a non-matching TensorRT
    res = _run([sys.executable, SCRIPTS / "build_engine.py", "--onnx", bundle / "model.onnx",
                "--plan", bundle / "model.plan", "--allow-rtx", "--expect-trt", "8.5.2"])
    assert res.returncode == 2 and "expects TensorRT 8.5" in res.stderr and "JetPack 5.1" in res.stderr


@needs_rtx
def test_build_engine_py_builds_with_override(bundle):
    res = _run([sys.executable, SCRIPTS / "build_engine.py", "--onnx", bundle / "model.onnx",
                "--plan", bundle / "model.plan", "--allow-rtx", "--allow-version-mismatch",
                "--timing-cache", bundle / "cache.bin"])
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["ok"] and info["tensorrt_module"] == "tensorrt_rtx" and info["expected_tensorrt"] == "10.3"
    data = (bundle / "model.plan").read_bytes()
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    assert "version mismatch" in res.stderr  # still warned


def test_bench_engine_py_exit_codes(bundle):
    script = SCRIPTS / "bench_engine.py"
    res = _run([sys.executable, script, "--plan", bundle / "missing.plan"])
    assert res.returncode == 2 and "no such plan" in res.stderr
    (bundle / "model.plan").write_bytes(b"not a real plan")
    if not HAS_TRT:
        res = _run([sys.executable, script, "--plan", bundle / "model.plan"])
        assert res.returncode == 3 and "not installed" in res.stderr
    if HAS_RTX and not GPU_OK:
        res = _run([sys.executable, script, "--plan", bundle / "model.plan", "--allow-rtx"])
        assert res.returncode == 3 and "needs an NVIDIA GPU" in res.stderr and "Traceback" not in res.stderr


def test_build_engine_sh_syntax():
    res = _run(["bash", "-n", SCRIPTS / "build_engine.sh"])
    assert res.returncode == 0, res.stderr


def _fake_trtexec(d: Path, version_code: str) -> Path:
    exe = d / "trtexec"
    exe.write_text("#!/bin/sh\n"
                   f'echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{version_code}] # trtexec $*"\n'
                   'echo "$@" > "$(dirname "$0")/trtexec_args.txt"\n')
    exe.chmod(0o755)
    return exe


def test_build_engine_sh_reads_manifest_and_checks_version(bundle):
    script = SCRIPTS / "build_engine.sh"
    env = {**os.environ, "TRTEXEC": str(_fake_trtexec(bundle, "100300"))}
    res = _run(["bash", script, bundle / "model.onnx"], env=env)
    assert res.returncode == 0, res.stderr
    args = (bundle / "trtexec_args.txt").read_text().split()
    assert f"--onnx={bundle / 'model.onnx'}" in args
    for flag in ("--stronglyTyped", f"--saveEngine={bundle / 'model.plan'}", f"--shapes=input:1x3x{H}x{W}",
                 "--avgRuns=100", "--percentile=50,90,99", "--useCudaGraph", "--noDataTransfers",
                 f"--exportTimes={bundle / 'times.json'}"):
        assert flag in args, (flag, args)

    env["TRTEXEC"] = str(_fake_trtexec(bundle, "8502"))
    res = _run(["bash", script, bundle / "model.onnx"], env=env)
    assert res.returncode == 2
    assert "expects TensorRT 10.3" in res.stderr and "TensorRT 8.5" in res.stderr and "JetPack 6.1" in res.stderr
    res = _run(["bash", script, bundle / "model.onnx"], env={**env, "ALLOW_VERSION_MISMATCH": "1"})
    assert res.returncode == 0, res.stderr

    res = _run(["bash", script, bundle / "model.onnx"], env={**env, "TRTEXEC": str(bundle / "nope")})
    assert res.returncode == 3 and "trtexec not found" in res.stderr
