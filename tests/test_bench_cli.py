"""`python -m pipeline bench` / `compare` on a real fast run and its bundle, and the CI suite's files.

The regression cases are built honestly from real measurements: the teacher (about 6x the student's MACs)
timed here and relabelled with the student's case name stands for "the student got slower"; the student
relabelled as the teacher stands for "accuracy dropped". Nothing is asserted about absolute speed.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, artifact, cli_env, read_run, run_cli

sys.path.insert(0, str(ROOT))

from pipeline.measure import harness  # noqa: E402
from benchmarks.suite import gate_latency_only_on_same_host, load_suite, check_suite  # noqa: E402

QUICK = ["--repeats", "2", "--warmup", "3", "--min-iters", "20", "--min-time", "0.05", "--batch", "1",
         "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    e = cli_env()
    e["EDGE_BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))  # trivial baseline models
    return e


@pytest.fixture(scope="module")
def bench(fast_run, tmp_path_factory, env):
    """One bench of the run folder: teacher and student at batch 1, 2 repeats each."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    p = run_cli("bench", str(fast_run), "--json", str(out), "--only", "teacher", "--only", "student", *QUICK,
                env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def _with_cases(report: dict, *cases: dict) -> dict:
    doc = copy.deepcopy(report)
    doc["cases"] = [copy.deepcopy(c) for c in cases]
    return doc


def _case(report: dict, name: str) -> dict:
    return next(c for c in report["cases"] if c["name"] == name)


def _write(tmp_path: Path, name: str, doc) -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]


# --------------------------------------------------------------------------- bench


def test_bench_run_folder_writes_a_schema_valid_report(fast_run, bench):
    report, stdout = bench
    assert harness.validation_errors(report) == []
    s = read_run(fast_run)
    assert [c["name"] for c in report["cases"]] == ["teacher@b1", "student@b1"]
    for c in report["cases"]:
        art = artifact(s, c["name"].split("@")[0])
        assert c["sha256"] == art["sha256"]  # the very file run.json describes
        assert c["source"] == "measured" and c["runtime"] == "onnxruntime"
        assert c["latency_ms"]["n_repeats"] == 2 and len(c["repeats"]) == 2
        # under 6 repeats: the repeats' p50 range with the coverage 2 repeats give (1 - 2 * 0.5**2)
        lo, hi = c["latency_ms"]["median_range_ms"]
        assert lo <= c["latency_ms"]["p50"] <= hi and c["latency_ms"]["median_range_coverage"] == 0.5
        assert c["latency_ms"]["p50"] <= c["latency_ms"]["p90"] <= c["latency_ms"]["p99"]
        assert c["accuracy"]["value"] == pytest.approx(art["accuracy"])
        assert "run.json" in c["accuracy"]["source"] and c["accuracy"]["samples"] > 0
        assert c["peak_rss_mb"]["source"] == "measured"
        assert f"{c['name']}: p50 CV across 2 repeats:" in stdout
    assert report["subject"]["kind"] == "run"


def test_bench_bundle_archive_uses_the_bundle_and_its_manifest(fast_run, env, tmp_path):
    s = read_run(fast_run)
    bundle = Path(artifact(s, "onnxruntime:int8")["bundle"])
    tar = bundle.parent / (bundle.name + ".tar.gz")
    out = tmp_path / "b.json"
    p = run_cli("bench", str(tar), "--json", str(out), *QUICK, "--repeats", "1", env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    report = json.loads(out.read_text())
    assert harness.validation_errors(report) == []
    (case,) = report["cases"]
    assert case["name"] == "onnxruntime:int8@b1" and case["precision"] == "int8"
    assert case["artifact"].startswith(str(tar)) and case["sha256"] == artifact(s, "onnxruntime:int8")["sha256"]
    assert case["accuracy"]["source"].startswith("bundle manifest")
    assert report["subject"]["kind"] == "bundle"
    assert not (bundle / "__pycache__").exists()  # the children ran a copy, not the user's folder


def test_bench_refuses_a_tampered_bundle_naming_the_file(fast_run, env, tmp_path):
    bundle = Path(artifact(read_run(fast_run), "onnxruntime:int8")["bundle"])
    copy_dir = tmp_path / bundle.name
    shutil.copytree(bundle, copy_dir)
    model = copy_dir / json.loads((copy_dir / "manifest.json").read_text())["model"]["file"]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    p = run_cli("bench", str(copy_dir), "--json", str(tmp_path / "x.json"), env=env, timeout=120)
    assert p.returncode == 1, p.stderr
    assert model.name in p.stderr and "checksum" in p.stderr
    assert not (tmp_path / "x.json").exists()
    _no_traceback(p)


def test_bench_refuses_a_run_whose_model_changed(fast_run, env, tmp_path):
    run = read_run(fast_run)
    student = artifact(run, "student")
    (tmp_path / "m").mkdir()
    changed = tmp_path / "m" / "model.onnx"
    changed.write_bytes((fast_run / student["model_path"]).read_bytes() + b"\0")
    run["artifacts"] = [{**student, "model_path": "m/model.onnx"}]
    _write(tmp_path, "run.json", run)
    p = run_cli("bench", str(tmp_path), env=env, timeout=120)
    assert p.returncode == 1 and "model.onnx" in p.stderr and "sha256" in p.stderr
    _no_traceback(p)


@pytest.mark.parametrize("args", [["/nonexistent/run"], ["."]])
def test_bench_bad_path_is_exit_2(args, env):
    p = run_cli("bench", *args, env=env, timeout=60)
    assert p.returncode == 2 and "fix:" in p.stderr
    _no_traceback(p)


# --------------------------------------------------------------------------- compare


def test_compare_a_report_with_itself_passes_and_writes_markdown_and_junit(bench, tmp_path, env):
    report, _ = bench
    path = _write(tmp_path, "r.json", report)
    md, junit = tmp_path / "out.md", tmp_path / "out.xml"
    p = run_cli("compare", str(path), str(path), "--max-regression", "10%", "--markdown", str(md),
                "--junit", str(junit), env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no regression" in md.read_text()
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "0"


def test_compare_fails_when_the_student_case_is_a_much_bigger_model(fast_run, bench, tmp_path, env):
    report, _ = bench
    s = read_run(fast_run)
    assert artifact(s, "teacher")["macs"] > 3 * artifact(s, "student")["macs"]  # what makes this a regression
    slower = {**_case(report, "teacher@b1"), "name": "student@b1"}  # the teacher's real timings, student's name
    new = _write(tmp_path, "new.json", _with_cases(report, slower))
    base = _write(tmp_path, "base.json", _with_cases(report, _case(report, "student@b1")))
    md, junit = tmp_path / "c.md", tmp_path / "c.xml"
    p = run_cli("compare", str(new), str(base), "--max-regression", "10%", "--markdown", str(md),
                "--junit", str(junit), env=env, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "regression" in md.read_text()
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "LatencyRegression" in failure.get("type")
    # the other way round (the small model where the big one was) is an improvement, not a failure
    p = run_cli("compare", str(base), str(new), "--max-accuracy-drop", "100%", env=env, timeout=60)
    assert p.returncode == 0 and "improved" in p.stdout


def test_compare_gates_accuracy_from_run_json(bench, tmp_path, env):
    report, _ = bench
    teacher, student = _case(report, "teacher@b1"), _case(report, "student@b1")
    drop = teacher["accuracy"]["value"] - student["accuracy"]["value"]
    if drop <= 0:
        pytest.skip("the fast student matched the teacher's accuracy in this run")
    as_teacher = {**student, "name": "teacher@b1"}  # faster, but less accurate
    new = _write(tmp_path, "new.json", _with_cases(report, as_teacher))
    base = _write(tmp_path, "base.json", _with_cases(report, teacher))
    junit = tmp_path / "a.xml"
    p = run_cli("compare", str(new), str(base), "--max-accuracy-drop", "0", "--junit", str(junit), env=env,
                timeout=60)
    assert p.returncode == 1, p.stdout
    assert "AccuracyRegression" in ET.parse(junit).getroot().find("testsuite/testcase/failure").get("type")
    p = run_cli("compare", str(new), str(base), "--max-accuracy-drop", f"{drop + 0.01:.4f}", env=env, timeout=60)
    assert p.returncode == 0, p.stdout


@pytest.mark.parametrize("content", ["{not json", json.dumps({"kind": "benchmark-report", "cases": []}),
                                     json.dumps([1, 2])])
def test_compare_malformed_file_is_exit_2(bench, tmp_path, env, content):
    good = _write(tmp_path, "good.json", bench[0])
    bad = _write(tmp_path, "bad.json", content)
    p = run_cli("compare", str(bad), str(good), env=env, timeout=60)
    assert p.returncode == 2 and "bad.json" in p.stderr and "fix:" in p.stderr, p.stderr
    _no_traceback(p)


def test_compare_missing_file_and_bad_threshold_are_exit_2(bench, tmp_path, env):
    good = _write(tmp_path, "good.json", bench[0])
    p = run_cli("compare", str(tmp_path / "absent.json"), str(good), env=env, timeout=60)
    assert p.returncode == 2 and "absent.json" in p.stderr
    p = run_cli("compare", str(good), str(good), "--max-regression", "lots", env=env, timeout=60)
    assert p.returncode == 2 and "lots" in p.stderr
    _no_traceback(p)


# --------------------------------------------------------------------------- suite, baselines, workflow


def test_ci_suite_validates_and_its_baseline_is_labelled():
    suite = load_suite("ci")
    assert check_suite(suite) == []
    assert suite.bench.repeats >= 3 and 0 < suite.gate.max_regression <= 0.5
    path = suite.baseline_path("x86-host")
    doc = json.loads(path.read_text())
    assert harness.validation_errors(doc) == []
    label = doc["baseline"]
    assert label["host_label"] == "x86-host" and label["measured_on"]["cpu_model"]
    assert label["sources"] and "device-measured" not in label["sources"]
    # every baseline case is one the suite's bench produces (artifact glob @ batch)
    import fnmatch

    for c in doc["cases"]:
        art, batch = c["name"].rsplit("@b", 1)
        assert any(fnmatch.fnmatchcase(art, pat) for pat in suite.bench.only), c["name"]
        assert int(batch) in (suite.bench.batches or [1])


def test_suite_rejects_a_bad_file(tmp_path):
    from pipeline.errors import ConfigError

    bad = yaml.safe_load((ROOT / "benchmarks/suites/ci.yaml").read_text())
    bad["gate"]["max_regression"] = "ten percent"
    path = _write(tmp_path, "bad.yaml", yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="max_regression"):
        load_suite(str(path))
    p = subprocess.run([sys.executable, "benchmarks/suite.py", str(path), "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "max_regression" in p.stderr


def test_workflow_gates_devices_with_the_suite_thresholds():
    wf = yaml.safe_load((ROOT / ".github/workflows/device-benchmarks.yml").read_text())
    suite = load_suite("ci")
    from pipeline.measure.compare import parse_fraction

    assert parse_fraction(wf["env"]["MAX_REGRESSION"]) == pytest.approx(suite.gate.max_regression)
    assert parse_fraction(wf["env"]["MAX_ACCURACY_DROP"]) == pytest.approx(suite.gate.max_accuracy_drop)
    device = wf["jobs"]["device"]
    assert device["needs"] == "build"
    profiles = {m["profile"] for m in device["strategy"]["matrix"]["include"]}
    assert profiles == set(suite.devices)
    assert device["runs-on"][0] == "self-hosted"
    steps = " ".join(s.get("run", "") for s in device["steps"])
    assert "--source device-measured" in steps and "python -m pipeline compare" in steps
    assert "GITHUB_STEP_SUMMARY" in steps and "--junit" in steps


def _synthetic(cpu: str, p50: float) -> dict:
    env = {"cpu_model": cpu, "logical_cores": 2, "python": "3.11"}
    r = {"schema_version": "1", "kind": "case-result", "name": "m@b1", "runtime": "onnxruntime",
         "runtime_version": "1", "source": "measured", "batch": 1, "threads": 1, "load_time_ms": 1.0,
         "iterations": 1000, "stable": True, "model": {"file": "m.onnx", "sha256": "0" * 64, "file_size_bytes": 1},
         "latency_ms": {"min": p50, "p50": p50, "p90": p50, "p99": p50, "mean": p50, "std": 0.0, "cv": 0.01},
         "throughput": {"value": 1000 / p50, "unit": "images/s"}, "peak_rss_mb": 50.0, "environment": env}
    case = harness.case_from_results([r, r], name="m@b1", accuracy=0.9, accuracy_source="test")
    return harness.make_report([case], environment=env)


def test_latency_is_gated_only_against_a_baseline_from_the_same_host():
    from pipeline.measure.compare import compare_reports

    base = _synthetic("CPU A", 1.0)
    slow_same, slow_other = _synthetic("CPU A", 2.0), _synthetic("CPU B", 2.0)
    r = compare_reports(slow_same, base, 0.10)
    assert gate_latency_only_on_same_host(r, slow_same, base) is True and r.exit_code == 1
    r = compare_reports(slow_other, base, 0.10)
    assert gate_latency_only_on_same_host(r, slow_other, base) is False and r.exit_code == 0
    assert any("not gated" in w for w in r.warnings)
    worse = _synthetic("CPU B", 2.0)
    worse["cases"][0]["accuracy"]["value"] = 0.5  # accuracy stays gated on any host
    r = compare_reports(worse, base, 0.10, 0.01)
    gate_latency_only_on_same_host(r, worse, base)
    assert r.exit_code == 1


def test_refresh_refuses_a_host_report_as_a_device_baseline(bench, tmp_path):
    target = ROOT / "benchmarks/baselines/raspberry-pi-5.json"
    before = target.read_bytes() if target.exists() else None
    report = _write(tmp_path, "host.json", bench[0])
    p = subprocess.run([sys.executable, "benchmarks/refresh_baselines.py", "--device", "raspberry-pi-5",
                        "--from-report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "device-measured" in p.stderr
    assert (target.read_bytes() if target.exists() else None) == before


@pytest.mark.parametrize("second_p50, fails", [(1.0, False), (2.0, True)])
def test_a_latency_regression_is_re_measured_once_before_it_fails(monkeypatch, tmp_path, second_p50, fails):
    import benchmarks.suite as suite_mod

    suite = load_suite("ci")
    base, first = _synthetic("CPU A", 1.0), _synthetic("CPU A", 2.0)
    calls = []

    def fake_bench(_suite, _run_dir, report, repeats=None, only=None):  # stands for the real re-measurement
        calls.append(only)
        report.write_text(json.dumps(_synthetic("CPU A", second_p50)))
        return 0

    monkeypatch.setattr(suite_mod, "bench_step", fake_bench)
    result = suite_mod._gate(suite, first, base)
    assert result.exit_code == 1
    final = suite_mod.confirm_regressions(suite, result, first, base, tmp_path / "run", tmp_path)
    assert calls == [["m"]]  # only the regressed artifact is benched again
    assert (final.exit_code == 1) is fails
    assert any("re-measured" in m for c in final.cases for m in c.messages)
