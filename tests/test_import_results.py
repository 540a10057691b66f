"""`python -m pipeline import-results RUN_DIR device.json`: device timings merge only into the model they timed.

The "device" results here are real runs of the bundle's bench.py on this host, labelled device-measured and
recorded with --device "test host (not a device)": the test checks the merge, not the figures.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import artifact, read_run, run_cli, x86_source
from pipeline.artifacts import sha256_file

QUICK = ["--warmup", "2", "--min-iters", "20", "--min-time", "0.05", "--quiet"]
DEVICE = "test host (not a device)"


def bench(model: Path, out: Path, source: str = "device-measured") -> dict:
    """bench.py of the bundle on `model` (python -B: no __pycache__ written into the bundle)."""
    p = subprocess.run([sys.executable, "-B", str(model.parent / "bench.py"), str(model), "--source", source,
                        *QUICK, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


@pytest.fixture()
def run_copy(fast_run, tmp_path) -> Path:
    """run.json of fast_run in a folder of its own (its bundle paths still point at fast_run's bundles)."""
    d = tmp_path / "run"
    d.mkdir()
    shutil.copyfile(fast_run / "run.json", d / "run.json")
    return d


@pytest.fixture(scope="module")
def ort_result(fast_run, tmp_path_factory) -> Path:
    a = artifact(read_run(fast_run), "onnxruntime:int8")
    bundle = Path(a["bundle"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = tmp_path_factory.mktemp("device") / "device.json"
    doc = bench(bundle / manifest["model"]["file"], out)
    assert doc["model"]["sha256"] == a["sha256"]
    return out


def importing(run_dir: Path, result: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("import-results", str(run_dir), str(result), *extra, timeout=120)


def test_import_matching_result_adds_device_measured(run_copy, ort_result):
    before = read_run(run_copy)
    doc = json.loads(ort_result.read_text())
    p = importing(run_copy, ort_result, "--device", DEVICE)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "imported onnxruntime:int8" in p.stdout
    after = read_run(run_copy)
    a, b = artifact(after, "onnxruntime:int8"), artifact(before, "onnxruntime:int8")
    dev = a["device_latency_ms"]
    assert dev["source"] == "device-measured" and dev["device"] == DEVICE
    assert dev["p50"] == doc["latency_ms"]["p50"] and dev["p90"] == doc["latency_ms"]["p90"]
    assert dev["runtime"] == "onnxruntime" and dev["imported_at"]
    assert a["device_peak_rss_mb"]["source"] == "device-measured"
    assert a["latency_ms"] == b["latency_ms"] and a["peak_rss_mb"] == b["peak_rss_mb"], "host figures kept"
    others = [x for x in after["artifacts"] if x["name"] != "onnxruntime:int8"]
    assert others == [x for x in before["artifacts"] if x["name"] != "onnxruntime:int8"]
    assert after["device_results"][-1]["artifact"] == "onnxruntime:int8"
    assert not list(run_copy.glob("*.tmp-*")), "no temporary left behind"
    stored = json.loads((run_copy / "device_results.json").read_text())["results"]
    assert [r["artifact"] for r in stored] == ["onnxruntime:int8"] and stored[0]["latency_ms"]["p50"] == dev["p50"]
    # an explicit matching --target (alias) works too; the same model on the same profile is shown once, the
    # earlier import kept beside it (never overwritten)
    p = importing(run_copy, ort_result, "--target", "onnxruntime", "--device", DEVICE)
    assert p.returncode == 0, p.stderr
    shown = read_run(run_copy)["device_results"]
    assert len(shown) == 1 and len(shown[0]["earlier"]) == 1
    stored = json.loads((run_copy / "device_results.json").read_text())["results"]
    assert len(stored) == 2 and all(r["imported_at"] for r in stored)


def test_wrong_sha256_is_refused(run_copy, ort_result, tmp_path):
    doc = json.loads(ort_result.read_text())
    doc["model"]["sha256"] = "0" * 64
    bad = tmp_path / "other-model.json"
    bad.write_text(json.dumps(doc))
    before = (run_copy / "run.json").read_bytes()
    p = importing(run_copy, bad)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "refusing to import" in p.stderr and "never merged" in p.stderr
    assert "Traceback" not in p.stderr
    assert (run_copy / "run.json").read_bytes() == before, "run.json must be untouched"


def test_result_for_another_target_is_refused(run_copy, ort_result):
    before = (run_copy / "run.json").read_bytes()
    p = importing(run_copy, ort_result, "--target", "jetson")
    assert p.returncode == 2 and "jetson-orin-nano" in p.stderr, p.stderr
    assert (run_copy / "run.json").read_bytes() == before
    p = importing(run_copy, ort_result, "--target", "no-such-target")
    assert p.returncode == 2 and "no such target" in p.stderr, p.stderr


def test_not_device_measured_or_invalid_is_refused(run_copy, ort_result, tmp_path):
    doc = json.loads(ort_result.read_text())
    cases = {
        "host.json": {**doc, "source": "measured"},
        "invalid.json": {k: v for k, v in doc.items() if k != "latency_ms"},
        "engine.json": {"plan": "model.plan", "latency_ms": {"p50": 1.0}, "source": "device-measured"},
        "nomodel.json": {k: v for k, v in doc.items() if k != "model"},
    }
    needles = {"host.json": "not 'device-measured'", "invalid.json": "latency_ms",
               "engine.json": "bench_engine.py", "nomodel.json": "sha256"}
    before = (run_copy / "run.json").read_bytes()
    for name, d in cases.items():
        f = tmp_path / name
        f.write_text(json.dumps(d))
        p = importing(run_copy, f)
        assert p.returncode == 2, (name, p.stdout, p.stderr)
        assert needles[name] in p.stderr, (name, p.stderr)
        assert "Traceback" not in p.stderr
    (tmp_path / "broken.json").write_text("{not json")
    p = importing(run_copy, tmp_path / "broken.json")
    assert p.returncode == 2 and "not valid JSON" in p.stderr
    p = importing(tmp_path / "no-run-here", ort_result)
    assert p.returncode == 2 and "no run.json" in p.stderr
    assert (run_copy / "run.json").read_bytes() == before


@pytest.fixture(scope="module")
def student_report(fast_run, tmp_path_factory) -> Path:
    """A harness report (device-measured label, timed on this x86-64 host) of the FP32 student ONNX."""
    export = next(fast_run / s["dir"] for s in read_run(fast_run)["stages"] if s["stage"] == "export")
    model = export / "model.onnx"
    assert artifact(read_run(fast_run), "student")["sha256"] == sha256_file(model)
    report = tmp_path_factory.mktemp("harness") / "report.json"
    p = subprocess.run([sys.executable, "-B", "-m", "pipeline.measure.harness", str(model), "--repeats", "1", *QUICK[:-1],
                        "--source", "device-measured", "--no-baseline", "--no-progress", "--json", str(report)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-2000:]
    return report


def test_shared_model_needs_target_and_report_form(run_copy, student_report):
    """The FP32 student is an artifact of every target: --target picks one. A harness report imports too."""
    report = student_report
    p = importing(run_copy, report)
    assert p.returncode == 2 and "several targets" in p.stderr and "--target" in p.stderr, p.stderr
    p = importing(run_copy, report, "--target", "onnxruntime", "--device", DEVICE)
    assert p.returncode == 0, p.stderr
    a = artifact(read_run(run_copy), "onnxruntime:fp32")
    assert a["device_latency_ms"]["source"] == "device-measured"
    assert "device_latency_ms" not in artifact(read_run(run_copy), "jetson-orin-nano:fp32")


def _engine_record(bundle: Path) -> dict:
    """The record bench_engine.py writes on a Jetson (its latency figures here are parser test input, not a
    measurement: no GPU here). source_model comes from the real function reading the bundle's manifest."""
    sys.path.insert(0, str(bundle))
    try:
        import importlib

        bench_engine = importlib.import_module("bench_engine")
        src = bench_engine.source_model(bundle / "manifest.json")
    finally:
        sys.path.remove(str(bundle))
        sys.modules.pop("bench_engine", None)
    return {"kind": "engine-result", "runtime": "tensorrt", "runtime_version": "10.3.0", "batch": 1,
            "iterations": 200, "latency_ms": {"min": 0.2, "p50": 0.25, "p90": 0.3, "p99": 0.4, "mean": 0.26,
                                              "std": 0.01, "cv": 0.04},
            "plan": "model.plan", "device_model": "test fixture (parser input)", "machine": "aarch64",
            "source": "device-measured", "source_model": src}


def test_tensorrt_engine_record_is_tied_to_the_qdq_onnx(run_copy, tmp_path):
    bundle = Path(artifact(read_run(run_copy), "jetson-orin-nano:int8")["bundle"])
    rec = _engine_record(bundle)
    assert rec["source_model"]["file"] == "model_int8_qdq.onnx"
    f = tmp_path / "engine.json"
    f.write_text(json.dumps(rec))
    p = run_cli("import-results", str(run_copy), str(f))
    assert p.returncode == 0, p.stderr
    a = artifact(read_run(run_copy), "jetson-orin-nano:int8")
    assert a["device_latency_ms"]["source"] == "device-measured" and a["device_latency_ms"]["p50"] == 0.25
    assert a["latency_ms"]["source"] == "estimated"  # the host figure is kept beside it
    rec["source_model"]["sha256"] = "0" * 64
    f.write_text(json.dumps(rec))
    bad = run_cli("import-results", str(run_copy), str(f))
    assert bad.returncode == 2 and "refusing to import" in bad.stderr


def test_result_from_another_architecture_needs_force(run_copy, student_report):
    """A result timed on this x86-64 host is not a Jetson (aarch64) figure: refused, or imported with a note."""
    before = (run_copy / "run.json").read_bytes()
    p = importing(run_copy, student_report, "--target", "jetson", "--device", DEVICE)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "x86_64" in p.stderr and "aarch64" in p.stderr and "--force" in p.stderr and "Traceback" not in p.stderr
    assert (run_copy / "run.json").read_bytes() == before and not (run_copy / "device_results.json").exists()
    p = importing(run_copy, student_report, "--target", "jetson", "--device", DEVICE, "--force")
    assert p.returncode == 0, p.stderr
    a = artifact(read_run(run_copy), "jetson-orin-nano:fp32")
    assert "--force" in a["device_latency_ms"]["note"] and "x86_64" in a["device_latency_ms"]["note"]
    rec = json.loads((run_copy / "device_results.json").read_text())["results"][0]
    assert rec["machine"] == "x86_64" and "--force" in rec["notes"][0]


def test_device_results_survive_a_cached_rerun_and_show_in_the_report(fast_run, ort_result, tmp_path):
    """run.json is rebuilt by every run; the imported results come back from device_results.json."""
    from conftest import fast_args, run_cli

    run = tmp_path / "run"
    shutil.copytree(fast_run, run, symlinks=True)
    p = importing(run, ort_result, "--device", DEVICE)
    assert p.returncode == 0, p.stderr
    p = run_cli("run", "--target", "onnxruntime", "--target", "jetson", "--out", str(run), *fast_args())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = read_run(run)
    assert all(s["cached"] for s in summary["stages"]), [s["name"] for s in summary["stages"] if not s["cached"]]
    a = artifact(summary, "onnxruntime:int8")
    assert a["device_latency_ms"]["source"] == "device-measured" and a["device_latency_ms"]["device"] == DEVICE
    assert a["latency_ms"]["source"] == x86_source(), "the host figure is kept beside it"
    assert [r["artifact"] for r in summary["device_results"]] == ["onnxruntime:int8"]
    md = (run / "report.md").read_text()
    section = md.split("## Device-measured results", 1)[1].split("\n## ", 1)[0]
    assert "onnxruntime:int8" in section and "device-measured" in section and DEVICE in section
    # `report` alone merges them too (run.json without them, e.g. written by an older version)
    stripped = {k: v for k, v in summary.items() if not k.startswith("device_results")}
    stripped["artifacts"] = [{k: v for k, v in x.items() if not k.startswith("device_")} for x in summary["artifacts"]]
    (run / "run.json").write_text(json.dumps(stripped))
    (run / "report.md").unlink()
    p = run_cli("report", str(run))
    assert p.returncode == 0, p.stderr
    assert "## Device-measured results" in (run / "report.md").read_text()
    # `bench` of the run shows the device figure beside the host measurement, and times the reference kernel
    p = run_cli("bench", str(run), "--only", "onnxruntime:int8", "--repeats", "1", "--warmup", "2", "--min-iters",
                "20", "--min-time", "0.05", "--json", str(tmp_path / "bench.json"))
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    case = next(c for c in report["cases"] if c["name"].startswith("onnxruntime:int8"))
    assert case["device_measured"]["source"] == "device-measured" and case["device_measured"]["device"] == DEVICE
    assert case["source"] == x86_source() and "device-measured p50" in p.stdout
    ref = report["reference_kernel"]["by_threads"][str(case["threads"] or 1)]
    assert ref["int8_gemm_ms"] > 0 and len(ref["children"]) == 2, "one child before, one after the cases"
