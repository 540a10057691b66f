"""Labels stay true: every accuracy and latency names its source, the runtime and the host class that produced
it; a missing source is `unknown`; a model with float compute layers is `mixed int8/fp32`, not int8."""
from __future__ import annotations

import json
import platform
from pathlib import Path

from conftest import artifact, read_run, x86_source
from pipeline.provenance import accuracy_source, float_compute_layers, precision_label, runtime_label
from pipeline.report.data import bench_cases
from pipeline.summary import summary_rows


def test_accuracy_source_names_reference_numerics_and_foreign_hosts():
    here = platform.machine()
    assert accuracy_source("measured", here, "onnxruntime") == "measured"
    # TensorRT QDQ evaluated with ONNX Runtime: reference numerics, not the target's runtime.
    assert accuracy_source("estimated", "aarch64", "onnxruntime (reference numerics for TensorRT)") == "host-measured"
    assert accuracy_source("measured", here, "onnxruntime (reference numerics for TensorRT)") == "host-measured"
    # LiteRT for an ARM board run on another CPU architecture.
    other = "aarch64" if here != "aarch64" else "x86_64"
    assert accuracy_source("host-measured", other, "litert") == "host-measured"
    assert accuracy_source("measured", other, "openvino") == "host-measured"


def test_runtime_label_carries_the_version():
    from importlib.metadata import version

    assert runtime_label("onnxruntime") == f"onnxruntime {version('onnxruntime')}"
    assert runtime_label("onnxruntime (reference numerics for TensorRT)") == \
        f"onnxruntime {version('onnxruntime')} (reference numerics for TensorRT)"
    assert runtime_label("nosuchruntime") == "nosuchruntime"


def test_precision_label_calls_a_mix_mixed():
    assert precision_label("int8") == "int8"
    assert precision_label("int8", ["/conv1/Conv"]) == "mixed int8/fp32"
    assert precision_label("mixed") == "mixed int8/fp32"
    assert precision_label("int8", [], ["FullyConnected"]) == "mixed int8/fp32"
    assert precision_label("fp32") == "fp32"
    # What the backends' compile checks report about float compute layers.
    assert float_compute_layers({"float_layer_names": ["fc"]}) == ["fc"]
    ops = [{"op": "CONV_2D", "integer": True}, {"op": "FULLY_CONNECTED", "integer": False}]
    assert float_compute_layers({"full_integer_check": {"compute_ops": ops}}) == [ops[1]]
    assert float_compute_layers({}) == []


def test_missing_source_is_unknown_not_measured(tmp_path):
    summary = {"artifacts": [
        {"name": "a", "role": "target", "precision": "int8", "accuracy": 0.9,
         "latency_ms": {"p50": 1.0, "p90": 1.2}, "peak_rss_mb": {"value": 3.0}},
        {"name": "b", "role": "target", "precision": "int8", "accuracy": None,
         "latency_ms": {"p50": None, "p90": None, "source": "not measured"}, "peak_rss_mb": {"value": None}}],
        "stages": [{"stage": "benchmark-x", "dir": "stages/benchmark-x/aa"}]}
    rows = {r["artifact"]: r for r in summary_rows(summary)}
    assert rows["a"]["latency source"] == "unknown" and rows["a"]["memory source"] == "unknown"
    assert rows["a"]["accuracy source"] == "unknown"
    assert rows["b"]["accuracy source"] == "—" and rows["b"]["memory source"] == "—"
    d = tmp_path / "stages/benchmark-x/aa"
    d.mkdir(parents=True)
    rep = {"latency_ms": {"min": 1.0, "p50": 1.0, "p90": 1.1, "p99": 1.2, "max": 2.0}, "iterations": 10}
    (d / "bench.json").write_text(json.dumps({"int8": {"repeats": [rep], "latency_ms": {"p50": 1.0}}}))
    cases, _ = bench_cases(tmp_path, summary)
    assert [c.source for c in cases] == ["unknown"]


def test_bundles_name_source_runtime_and_host(fast_run):
    s = read_run(fast_run)
    jet = json.loads((Path(artifact(s, "jetson-orin-nano:int8")["bundle"]) / "manifest.json").read_text())
    acc = jet["metrics"]["accuracy"]
    assert acc["source"] == "host-measured" and "reference numerics for TensorRT" in acc["runtime"]
    assert acc["host"].startswith(platform.machine()) and len(acc["ci95"]) == 2
    est = jet["metrics"]["estimated_latency_p50_ms"]
    assert est["source"] == "estimated" and "roofline" in est["runtime"] and "jetson" in est["host"]
    ort_dir = Path(artifact(s, "onnxruntime:int8")["bundle"])
    ort = json.loads((ort_dir / "manifest.json").read_text())
    assert ort["metrics"]["accuracy"]["source"] == x86_source()
    lat = ort["metrics"]["latency_p50_ms"]
    assert lat["source"] == x86_source() and lat["runtime"].startswith("onnxruntime ") and lat["host"]
    for m in (jet, ort):
        for name, v in m["metrics"].items():
            assert {"source", "runtime", "host"} <= set(v), name
    readme = (ort_dir / "README.md").read_text()
    assert "| metric | value | source | runtime | host |" in readme
    assert f"| {platform.machine()}" in readme
