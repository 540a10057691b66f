"""The spine end to end (fast recipe): jetson + onnxruntime targets, run.json contents, gates."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import numpy_helper

from conftest import artifact, fast_args, read_run, run_cli, x86_source


def test_run_json_has_the_documented_fields(fast_run):
    s = read_run(fast_run)
    for st in s["stages"]:
        assert {"name", "cached", "seconds", "peak_rss_mb"} <= set(st)
    import sys

    if sys.platform.startswith("linux"):  # each stage that ran says its own peak RSS (a model is at least MBs)
        ran = [st for st in s["stages"] if not st["cached"]]
        assert ran and all(st["peak_rss_mb"] is None or st["peak_rss_mb"] > 10 for st in ran)
        assert any(st["peak_rss_mb"] for st in ran)
        assert s["peak_rss_mb"] == max(st["peak_rss_mb"] for st in ran if st["peak_rss_mb"] is not None)
    for a in s["artifacts"]:
        for k in ("name", "role", "target", "precision", "accuracy", "params", "macs", "size_bytes", "sha256",
                  "latency_ms", "peak_rss_mb", "bundle"):
            assert k in a, (a["name"], k)
        assert a["latency_ms"]["source"] in ("measured", "host-measured", "estimated", "device-measured",
                                             "not measured")
    assert any("pass-through" in n or "disabled" in n for n in s["notes"])  # prune says it did nothing


def test_student_is_small_and_the_int8_gate_is_recorded(fast_run):
    s = read_run(fast_run)
    teacher, student = artifact(s, "teacher"), artifact(s, "student")
    assert student["macs"] <= teacher["macs"] / 5
    jet = artifact(s, "jetson-orin-nano:int8")
    # The budget was decided on validation; the test split's change is recorded with its statistics.
    gate = s["targets"]["jetson-orin-nano"]["gate"]
    assert gate["decision"] == "pass" and gate["validation"]["budget_held"]
    assert gate["test"]["accuracy"] == jet["accuracy"] and gate["test"]["mode"] == "stats"
    assert jet["numerics"].startswith("onnxruntime")  # reference numerics, labelled so
    prov = jet["accuracy_provenance"]
    assert prov["source"] == "host-measured" and "reference numerics for TensorRT" in prov["runtime"]
    assert prov["host"] and prov["samples"] == s["data"]["test"]
    assert jet["latency_ms"]["source"] == "estimated"


def test_onnxruntime_int8_is_measured(fast_run):
    s = read_run(fast_run)
    a = artifact(s, "onnxruntime:int8")
    # measured on an x86-64-v3 host; on a host of another instruction-set class, host-measured (other kernels)
    assert a["latency_ms"]["source"] == x86_source() and a["latency_ms"]["p50"] > 0
    assert a["peak_rss_mb"]["source"] == x86_source() and a["peak_rss_mb"]["value"] is not None
    assert a["size_bytes"] < artifact(s, "student")["size_bytes"]


def test_jetson_bundle_has_symmetric_qdq_and_device_scripts(fast_run):
    s = read_run(fast_run)
    bundle = Path(artifact(s, "jetson-orin-nano:int8")["bundle"])
    assert bundle.is_dir() and bundle.with_suffix(".tar.gz").exists() or \
        (bundle.parent / f"{bundle.name}.tar.gz").exists()
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = onnx.load(str(bundle / manifest["model"]["file"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           and len(n.input) > 2]
    assert zps, "no Q/DQ zero points found"
    for name in zps:
        arr = inits[name]
        assert arr.dtype.name == "int8" and not arr.any(), name
    for f in ("build_engine.sh", "build_engine.py", "bench_engine.py", "run.py", "runtime.py", "README.md",
              "SHA256SUMS", "requirements.txt"):
        assert (bundle / f).is_file(), f
    assert manifest["toolchain"]["tensorrt_expected"]
    comp = s["targets"]["jetson-orin-nano"]["compile"]
    assert comp["qdq_lint"]["ok"] is True
    assert comp["engine"]["built"] is False and "device" in comp["engine"]["reason"]


def test_parity_gate_failure_stops_with_exit_1(tmp_path):
    out = tmp_path / "gate"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *fast_args(["export.max_abs_diff=1e-12"]))
    assert p.returncode == 1, p.stderr
    assert "parity gate failed" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "run.json").exists()
    assert not list(out.rglob("stages/export/*/model.onnx"))  # the failed export was not kept


def test_trt_lint_passes_jetson_model_and_fails_asymmetric_u8s8(fast_run):
    from targets.qdq_lint import lint_qdq

    s = read_run(fast_run)
    jet = Path(artifact(s, "jetson-orin-nano:int8")["bundle"])
    ort_bundle = Path(artifact(s, "onnxruntime:int8")["bundle"])
    good = lint_qdq(jet / json.loads((jet / "manifest.json").read_text())["model"]["file"])
    bad = lint_qdq(ort_bundle / json.loads((ort_bundle / "manifest.json").read_text())["model"]["file"])
    assert good.ok, good.errors
    assert not bad.ok and any("zero point" in e or "uint8" in e for e in bad.errors)
    # The CLI form of the lint works on any ONNX file.
    import subprocess, sys
    from conftest import ROOT, cli_env
    p = subprocess.run([sys.executable, "-m", "targets.qdq_lint", str(ort_bundle / "model_int8.onnx")],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True)
    assert p.returncode == 1
