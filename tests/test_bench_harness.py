"""targets/standalone/bench.py, pipeline/measure/harness.py and pipeline/measure/schema.json on small real models.

Timings on this machine are noisy (shared cores): only orderings and structure are asserted, never speeds.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.measure import harness  # noqa: E402

BENCH_PY = REPO / "targets" / "standalone" / "bench.py"
PY = sys.executable
FAST = ["--warmup", "3", "--min-iters", "10", "--min-time", "0.2", "--max-time", "5"]
FAST_KW = {"warmup": 3, "min_iters": 10, "min_time": 0.2, "max_time": 5.0}

torch = pytest.importorskip("torch")
nn = torch.nn


class WideNet(nn.Module):
    """A small CNN with a 1024x512 linear layer (2 MB of weights), so its memory shows over the baseline."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(4 * 16 * 16, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_models")
    torch.manual_seed(0)
    net = WideNet().eval()
    onnx_path = d / "wide.onnx"
    torch.onnx.export(
        net, (torch.randn(1, 1, 32, 32),), str(onnx_path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    import openvino as ov

    xml_path = d / "wide.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    tfl = harness.write_tflite_single_op(d / "relu.tflite", op="RELU", shape=(1, 3, 32, 32))
    return {"onnx": onnx_path, "xml": xml_path, "tflite": tfl, "dir": d}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    harness.clear_baseline_cache()
    return tmp_path_factory.mktemp("baseline_cache")


def _check_latency_order(lat: dict) -> None:
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]


def test_bench_py_prints_a_valid_case_result(models):
    proc = subprocess.run([PY, str(BENCH_PY), str(models["onnx"]), "--threads", "1", *FAST],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert harness.validation_errors(result) == []
    assert result["kind"] == "case-result" and result["runtime"] == "onnxruntime"
    assert result["source"] == "measured" and result["batch"] == 1 and result["threads"] == 1
    lat = result["latency_ms"]
    _check_latency_order(lat)
    assert lat["max"] >= lat["p99"]
    assert lat["cv"] == pytest.approx(lat["std"] / lat["mean"], rel=1e-3)
    assert result["iterations"] >= 10
    assert result["throughput"]["value"] == pytest.approx(1000.0 / lat["p50"], rel=1e-3)
    assert result["peak_rss_mb"] > 10
    assert result["load_time_ms"] > 0
    assert result["model"]["sha256"] == hashlib.sha256(models["onnx"].read_bytes()).hexdigest()
    env = result["environment"]
    assert env["logical_cores"] >= 1 and env["python"] and env["runtime"] == "onnxruntime"
    assert "hostname" not in env and len(env["hostname_sha256"]) == 12
    assert "CPUExecutionProvider" in result["runtime_info"]["providers"]


def test_bench_py_openvino_npy_input_batch_and_json_file(models, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 32, 32)).astype(np.float32)  # no batch dim: added
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [PY, str(BENCH_PY), str(models["xml"]), "--batch", "2", "--threads", "1", "--input-npy",
         str(tmp_path / "x.npy"), "--source", "host-measured", "--json", str(out), *FAST],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "p50" in proc.stderr  # the one-line summary
    result = json.loads(out.read_text())
    assert harness.validation_errors(result) == []
    assert result["input"]["shape"] == [2, 1, 32, 32] and result["input"]["from"] == "npy"
    assert result["output_shape"] == [2, 10]
    assert result["source"] == "host-measured"
    assert result["precision_hint"] == "f32"  # OpenVINO's FP32 default made explicit
    precs = result["runtime_info"]["runtime_precisions"]
    assert set(precs["FullyConnected"]) == {"f32"}
    # file size of an IR counts the .xml and the .bin
    xml = models["xml"]
    assert result["model"]["file_size_bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    _check_latency_order(result["latency_ms"])


def test_bench_py_errors_are_one_line_with_exit_codes(models, tmp_path):
    proc = subprocess.run([PY, str(BENCH_PY), str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such model file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([PY, str(BENCH_PY), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot load" in proc.stderr


def test_baseline_models_are_created_once(cache_dir):
    for runtime, suffix in (("onnxruntime", ".onnx"), ("openvino", ".xml"), ("litert", ".tflite")):
        p = harness.baseline_model(runtime, cache_dir)
        assert p.suffix == suffix and p.exists()
        mtime = p.stat().st_mtime_ns
        assert harness.baseline_model(runtime, cache_dir) == p
        assert p.stat().st_mtime_ns == mtime
    assert (cache_dir / "baseline-v1.bin").exists()


def test_bench_case_repeats_rss_over_baseline(models, cache_dir):
    case = harness.bench_case(models["onnx"], name="wide-ort", threads=1, repeats=3, cache_dir=cache_dir,
                              accuracy=0.9, accuracy_source="test", **FAST_KW)
    assert len(case["repeats"]) == 3
    assert all(r["kind"] == "case-result" and r["child"]["returncode"] == 0 for r in case["repeats"])
    lat = case["latency_ms"]
    assert lat["n_repeats"] == 3 and lat["method"] == "median-of-medians"
    assert lat["p50"] == sorted(r["latency_ms"]["p50"] for r in case["repeats"])[1]
    _check_latency_order(lat)
    assert lat["cv_between_repeats"] >= 0
    rss = case["peak_rss_mb"]
    assert 0 < rss["value"] < 500
    assert rss["baseline_mb"] > 0 and rss["value"] == pytest.approx(rss["absolute_mb"] - rss["baseline_mb"], abs=1e-2)
    assert rss["source"] == "measured"
    assert case["sha256"] == case["repeats"][0]["model"]["sha256"] and len(case["sha256"]) == 64
    assert case["file_size_bytes"] == models["onnx"].stat().st_size
    assert case["accuracy"] == {"value": 0.9, "source": "test"}
    assert case["precision"] == "fp32"  # from the ONNX graph: onnxruntime does not report it
    assert case["throughput"]["value"] == pytest.approx(1000.0 / lat["p50"], rel=1e-3)
    report = harness.make_report([case])
    assert harness.validation_errors(report) == []


def test_child_peak_rss_does_not_include_a_big_parent(cache_dir):
    """ru_maxrss of a child spawned straight from a big parent starts at the parent's peak (Linux keeps
    the old mm's high-water mark across exec); the harness's launcher must keep it out."""
    ballast = np.ones(300 * 1024 * 1024 // 8)  # 300 MB resident in this (parent) process
    try:
        r = harness.run_bench_child(harness.baseline_model("onnxruntime", cache_dir), warmup=1, min_iters=2,
                                    min_time=0.0, max_time=2.0)
    finally:
        del ballast
    assert r["child"]["method"] == "os.wait4 ru_maxrss"
    assert 10 < r["child"]["peak_rss_mb"] < 250
    assert 10 < r["peak_rss_mb"] < 250  # bench.py's own VmHWM


def test_bench_many_three_runtimes(models, cache_dir):
    report = harness.bench_many(
        [
            {"model_path": models["onnx"], "name": "ort"},
            {"model_path": models["xml"], "name": "ov", "batch": 2},
            {"model_path": models["tflite"], "name": "tfl"},
        ],
        suite="unit", progress=False, repeats=1, threads=1, cache_dir=cache_dir, **FAST_KW,
    )
    assert harness.validation_errors(report) == []
    assert report["kind"] == "benchmark-report" and report["suite"] == "unit"
    assert [c["name"] for c in report["cases"]] == ["ort", "ov", "tfl"]
    assert set(report["environment"]["runtimes"]) == {"onnxruntime", "openvino", "litert"}
    by = {c["name"]: c for c in report["cases"]}
    assert by["ov"]["batch"] == 2 and by["ov"]["precision"] == "fp32"
    assert by["tfl"]["runtime"] == "litert"
    for c in report["cases"]:
        assert len(c["repeats"]) == 1 and c["peak_rss_mb"]["baseline_mb"] > 0
        assert c["peak_rss_mb"]["value"] < 500
        _check_latency_order(c["latency_ms"])
    with pytest.raises(harness.DataError, match="unique"):
        harness.make_report([by["ort"], by["ort"]])


def test_harness_cli_writes_a_valid_report(models, tmp_path, cache_dir):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [PY, "-m", "pipeline.measure.harness", str(models["onnx"]), "--repeats", "1", "--threads", "1",
         "--no-progress", "--cache-dir", str(cache_dir), "--json", str(out), *FAST],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert harness.validation_errors(report) == []
    assert report["cases"][0]["name"] == "wide.onnx"
    assert "wide.onnx" in proc.stderr  # summary table
    proc = subprocess.run([PY, "-m", "pipeline.measure.harness", str(tmp_path / "none.onnx"), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such model file" in proc.stderr


def test_schema_rejects_broken_results(models):
    good = {
        "schema_version": "1", "kind": "case-result", "name": "x", "runtime": "onnxruntime",
        "runtime_version": "1", "source": "measured", "batch": 1, "threads": None, "load_time_ms": 1.0,
        "iterations": 5, "stable": True,
        "latency_ms": {"min": 1, "p50": 1, "p90": 1, "p99": 1, "mean": 1, "std": 0, "cv": 0},
        "throughput": {"value": 1000.0, "unit": "images/s"}, "peak_rss_mb": 50.0,
        "environment": {"cpu_model": "cpu", "logical_cores": 2, "python": "3.11"},
    }
    assert harness.validation_errors(good) == []
    assert harness.validation_errors({**good, "source": "estimated"})  # a run is never an estimate
    assert harness.validation_errors({**good, "batch": 0})
    bad_lat = {**good, "latency_ms": {**good["latency_ms"], "p50": -1}}
    assert any("latency_ms/p50" in e for e in harness.validation_errors(bad_lat))
    missing = {k: v for k, v in good.items() if k != "latency_ms"}
    assert any("latency_ms" in e for e in harness.validation_errors(missing))
    assert harness.validation_errors({"kind": "something"})
    with pytest.raises(harness.DataError, match="schema.json"):
        harness.validate({**good, "threads": 0})


def test_summarize_repeats_is_median_of_medians():
    def r(p50, cv=0.1, n=100):
        return {"latency_ms": {"min": p50 * 0.9, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2,
                               "mean": p50, "std": p50 * cv, "cv": cv}, "iterations": n}

    s = harness.summarize_repeats([r(1.0), r(3.0), r(2.0, n=50)])
    assert s["p50"] == 2.0 and s["p90"] == pytest.approx(2.2) and s["min"] == pytest.approx(0.9)
    assert s["cv_between_repeats"] == pytest.approx(0.5)  # stdev 1 / mean 2
    assert s["iterations"] == 50 and s["n_repeats"] == 3
    assert harness.summarize_repeats([r(1.0)])["cv_between_repeats"] == 0.0


def test_infer_precision():
    mk = lambda precs: {"runtime_info": {"runtime_precisions": precs}}  # noqa: E731
    assert harness.infer_precision(mk({"Convolution": {"u8": 3}, "FullyConnected": {"i8": 1}})) == "int8"
    assert harness.infer_precision(mk({"Convolution": {"u8": 3}, "FullyConnected": {"f32": 1}})) == "mixed int8/fp32"
    assert harness.infer_precision(mk({"Convolution": {"f32": 3}})) == "fp32"
    assert harness.infer_precision(mk({"Convolution": {"bf16": 3}})) == "bf16"
    assert harness.infer_precision(mk({"Convolution": {"bf16": 3, "f32": 1}})) == "mixed"
    assert harness.infer_precision({}) == "unspecified"
