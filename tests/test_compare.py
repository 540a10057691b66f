"""pipeline/measure/compare.py: the noise-aware regression gate, its Markdown/JUnit output and CLI exit codes.
Reports are synthetic (valid against schema.json) so these tests are fast and deterministic."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.measure import compare as cmp  # noqa: E402
from pipeline.measure import harness  # noqa: E402

ENV = {"cpu_model": "Test CPU", "logical_cores": 2, "python": "3.11.7"}


def _result(name: str, p50: float, *, cv: float = 0.01, iterations: int = 10_000, runtime: str = "onnxruntime",
            batch: int = 1) -> dict:
    return {
        "schema_version": "1", "kind": "case-result", "name": name, "runtime": runtime, "runtime_version": "1.0",
        "source": "measured", "batch": batch, "threads": 2, "load_time_ms": 10.0, "iterations": iterations,
        "stable": True,
        "model": {"file": f"{name}.onnx", "sha256": "0" * 64, "file_size_bytes": 1000},
        "latency_ms": {"min": p50 * 0.9, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50 * 1.02,
                       "std": p50 * cv, "cv": cv},
        "throughput": {"value": batch * 1000.0 / p50, "unit": "images/s"},
        "peak_rss_mb": 80.0, "environment": dict(ENV),
    }


def _case(name: str, p50s=(1.0, 1.0, 1.0), *, accuracy: float | None = None, **kw) -> dict:
    return harness.case_from_results([_result(name, p, **kw) for p in p50s], name=name, baseline_mb=70.0,
                                     accuracy=accuracy, accuracy_source="test split" if accuracy is not None else None)


def _report(*cases: dict) -> dict:
    return harness.make_report(list(cases), environment=dict(ENV))


@pytest.fixture
def base() -> dict:
    return _report(_case("resnet-int8-ov", (2.0, 2.0, 2.0), accuracy=0.91), _case("resnet-fp32-ort", (5.0, 5.0, 5.0)))


def _write(tmp_path: Path, name: str, doc) -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.measure.compare", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _scale_p50(report: dict, name: str, factor: float) -> dict:
    new = copy.deepcopy(report)
    for c in new["cases"]:
        if c["name"] == name:
            for k in ("p50", "p90", "p99", "min", "mean"):
                c["latency_ms"][k] *= factor
    return new


def test_identical_reports_pass(base):
    r = cmp.compare_reports(base, copy.deepcopy(base))
    assert not r.failed and r.exit_code == 0 and r.regressions == []
    assert {c.status for c in r.cases} == {"ok"}
    assert all(c.ratio == pytest.approx(1.0) for c in r.cases)


def test_doubled_p50_is_a_regression(base):
    new = _scale_p50(base, "resnet-int8-ov", 2.0)
    r = cmp.compare_reports(new, base, max_regression=0.10)
    assert r.failed and r.exit_code == 1
    (reg,) = r.regressions
    assert reg.name == "resnet-int8-ov" and reg.latency_regression and not reg.accuracy_regression
    assert reg.ratio == pytest.approx(2.0) and reg.status == "regression"
    other = next(c for c in r.cases if c.name == "resnet-fp32-ort")
    assert other.status == "ok"
    # the other direction is an improvement, not a failure
    r = cmp.compare_reports(base, new)
    assert not r.failed and next(c for c in r.cases if c.name == "resnet-int8-ov").status == "improved"


def test_noise_between_repeats_widens_the_limit():
    noisy = _report(_case("m", (0.8, 1.0, 1.2)))  # cv between repeats = 0.2
    assert noisy["cases"][0]["latency_ms"]["cv_between_repeats"] == pytest.approx(0.2)
    quiet = _report(_case("m", (1.0, 1.0, 1.0)))
    r = cmp.compare_reports(_scale_p50(quiet, "m", 1.25), noisy, max_regression=0.10)
    assert not r.failed  # 1.25 < 1 + 0.10 + 0.2
    assert r.cases[0].noise == pytest.approx(0.2) and r.cases[0].limit_ratio == pytest.approx(1.30)
    r = cmp.compare_reports(_scale_p50(quiet, "m", 1.40), noisy, max_regression=0.10)
    assert r.failed
    r = cmp.compare_reports(_scale_p50(quiet, "m", 1.25), quiet, max_regression=0.10)
    assert r.failed  # a quiet baseline gives no such slack
    r = cmp.compare_reports(_scale_p50(quiet, "m", 1.25), noisy, max_regression=0.10, noise_factor=0.0)
    assert r.failed  # noise_factor 0: the plain threshold


def test_within_repeat_noise_of_short_runs_counts():
    short = _report(_case("m", (1.0, 1.0, 1.0), cv=1.0, iterations=100))  # 1.2533 * 1.0 / 10 = 0.125
    assert cmp.case_noise(short["cases"][0]) == pytest.approx(0.12533, rel=1e-3)
    r = cmp.compare_reports(_scale_p50(short, "m", 1.2), short, max_regression=0.10)
    assert not r.failed and r.cases[0].limit_ratio == pytest.approx(1.2253, rel=1e-3)


def test_accuracy_regression(base):
    new = copy.deepcopy(base)
    new["cases"][0]["accuracy"]["value"] = 0.89  # baseline 0.91
    r = cmp.compare_reports(new, base, max_accuracy_drop=0.01)
    assert r.failed and r.regressions[0].accuracy_regression and not r.regressions[0].latency_regression
    assert not cmp.compare_reports(new, base, max_accuracy_drop=0.03).failed
    assert cmp.compare_reports(new, base).failed  # default: no drop allowed
    del new["cases"][0]["accuracy"]
    r = cmp.compare_reports(new, base)
    assert not r.failed and any("accuracy" in m for m in r.cases[0].messages)


def test_missing_new_and_incomparable_cases(base):
    new = _report(_case("resnet-int8-ov", (2.0, 2.0, 2.0), accuracy=0.91), _case("mobilenet", (1.0, 1.0, 1.0)))
    r = cmp.compare_reports(new, base)
    assert r.missing == ["resnet-fp32-ort"] and r.added == ["mobilenet"]
    assert not r.failed
    r = cmp.compare_reports(new, base, fail_on_missing=True)
    assert r.failed and r.exit_code == 1
    other_batch = _report(_case("resnet-int8-ov", (2.0, 2.0, 2.0), batch=8), _case("resnet-fp32-ort", (5.0,) * 3))
    r = cmp.compare_reports(other_batch, base)
    c = next(c for c in r.cases if c.name == "resnet-int8-ov")
    assert c.status == "incomparable" and "batch" in c.messages[0] and not r.failed


def test_markdown_and_junit(base):
    new = _scale_p50(base, "resnet-int8-ov", 2.0)
    new["cases"].append(_case("new|case", (1.0, 1.0, 1.0)))
    r = cmp.compare_reports(new, base)
    md = cmp.to_markdown(r)
    assert "resnet-int8-ov" in md and "resnet-fp32-ort" in md and "new\\|case" in md
    assert md.count("\n| ") >= 3 and "regression" in md and "+100.0%" in md
    root = ET.fromstring(cmp.to_junit(r))
    cases = root.findall(".//testcase")
    assert {c.get("name") for c in cases} == {"resnet-int8-ov", "resnet-fp32-ort", "new|case"}
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["resnet-int8-ov"]
    assert root.find("testsuite").get("failures") == "1" and root.find("testsuite").get("tests") == "3"
    assert next(c for c in cases if c.get("name") == "new|case").find("skipped") is not None
    # a passing comparison has no failure element at all
    ok = ET.fromstring(cmp.to_junit(cmp.compare_reports(base, base)))
    assert ok.find(".//failure") is None and len(ok.findall(".//testcase")) == 2


def test_cli_exit_codes_and_outputs(base, tmp_path):
    b = _write(tmp_path, "base.json", base)
    same = _write(tmp_path, "same.json", base)
    slow = _write(tmp_path, "slow.json", _scale_p50(base, "resnet-fp32-ort", 2.0))

    p = _cli(str(same), str(b), "--max-regression", "10%")
    assert p.returncode == 0, p.stderr
    assert "OK:" in p.stdout

    md, xml = tmp_path / "sum.md", tmp_path / "junit.xml"
    p = _cli(str(slow), str(b), "--max-regression", "10%", "--markdown", str(md), "--junit", str(xml))
    assert p.returncode == 1, p.stderr
    assert "resnet-fp32-ort" in p.stdout and "FAIL" in p.stdout
    assert "resnet-fp32-ort" in md.read_text() and "resnet-int8-ov" in md.read_text()
    root = ET.parse(xml).getroot()
    assert [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None] == ["resnet-fp32-ort"]

    p = _cli(str(slow), str(b), "--max-regression", "150%")  # a generous gate passes it
    assert p.returncode == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("{ not json", "not valid JSON"),
        (json.dumps({"kind": "benchmark-report", "cases": []}), "not a valid benchmark report"),
        (json.dumps([1, 2]), "not a valid benchmark report"),
        (None, "cannot read"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(base, tmp_path, content, message):
    b = _write(tmp_path, "base.json", base)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    p = _cli(str(bad), str(b))
    assert p.returncode == 2
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert p.stdout == ""


def test_cli_bad_threshold_exits_2(base, tmp_path):
    b = _write(tmp_path, "base.json", base)
    p = _cli(str(b), str(b), "--max-regression", "10")
    assert p.returncode == 2 and "10%" in p.stderr


def test_a_bench_py_case_result_is_accepted(tmp_path, base):
    single = _write(tmp_path, "single.json", _result("resnet-fp32-ort", 5.0))
    doc = cmp.load_report(single)
    assert doc["kind"] == "benchmark-report" and doc["cases"][0]["name"] == "resnet-fp32-ort"
    r = cmp.compare_reports(doc, base)
    assert not r.failed and r.missing == ["resnet-int8-ov"]


def test_parse_fraction():
    assert cmp.parse_fraction("10%") == pytest.approx(0.10)
    assert cmp.parse_fraction("0.05") == pytest.approx(0.05)
    assert cmp.parse_fraction("0") == 0.0
    for bad in ("10", "-1%", "abc"):
        with pytest.raises(Exception):
            cmp.parse_fraction(bad)


# --------------------------------------------------------------------------- normalised by the reference kernel

RUNTIMES = {"onnxruntime": "1.0"}


def _with_reference(report: dict, int8_ms: float, fp32_ms: float, *, cpu: str = "Test CPU", runtimes=None) -> dict:
    """A report measured on `cpu` whose reference kernel took int8_ms / fp32_ms (per call, 2 threads)."""
    r = copy.deepcopy(report)
    r["environment"].update(cpu_model=cpu, runtimes=runtimes or dict(RUNTIMES))
    r["reference_kernel"] = {"version": "1", "shape_mkn": [256, 256, 256], "runtime": "onnxruntime",
                             "by_threads": {"2": {"int8_gemm_ms": int8_ms, "fp32_gemm_ms": fp32_ms,
                                                  "int8_gemm_cv": 0.0, "fp32_gemm_cv": 0.0}}}
    return r


def _precision(report: dict, name: str, precision: str) -> dict:
    for c in report["cases"]:
        if c["name"] == name:
            c["precision"] = precision
    return report


@pytest.fixture
def ref_base(base) -> dict:
    return _precision(_with_reference(base, 0.1, 0.3), "resnet-int8-ov", "int8")


def test_a_slower_host_passes_when_normalised(ref_base):
    """Another CPU, everything twice as slow (the models and the reference kernel): no regression."""
    new = _with_reference(_scale_p50(_scale_p50(ref_base, "resnet-int8-ov", 2.0), "resnet-fp32-ort", 2.0),
                          0.2, 0.6, cpu="Other CPU")
    r = cmp.compare_reports(new, ref_base, max_regression=0.10)
    assert not r.failed, [c.messages for c in r.cases]
    assert {c.basis for c in r.cases} == {"normalised"}
    assert all(c.ratio == pytest.approx(1.0) and c.abs_ratio == pytest.approx(2.0) for c in r.cases)
    text = " ".join(r.basis_lines)
    assert "normalised by the reference kernel" in text and "not gated" in text and "cpu_model" in text


def test_a_slower_model_fails_when_normalised_on_any_host(ref_base):
    """The int8 model twice as slow while the int8 GEMM took the same time: a regression, also on another host."""
    new = _with_reference(_scale_p50(ref_base, "resnet-int8-ov", 2.0), 0.1, 0.3, cpu="Other CPU")
    r = cmp.compare_reports(new, ref_base, max_regression=0.10)
    assert [c.name for c in r.regressions] == ["resnet-int8-ov"]
    assert "reference kernel" in r.regressions[0].messages[0]
    # the int8 case is normalised by the int8 GEMM, the fp32 case by the fp32 GEMM
    new = _with_reference(ref_base, 0.05, 0.3, cpu="Other CPU")  # only the int8 GEMM got faster
    r = cmp.compare_reports(new, ref_base, max_regression=0.10)
    assert [c.name for c in r.regressions] == ["resnet-int8-ov"] and r.regressions[0].ratio == pytest.approx(2.0)


def test_same_host_gates_the_absolute_figure_too(ref_base):
    """Same fingerprint: a uniformly slower session passes the normalised check but not the absolute one."""
    new = _with_reference(_scale_p50(ref_base, "resnet-fp32-ort", 2.0), 0.2, 0.6)
    r = cmp.compare_reports(new, ref_base, max_regression=0.10)
    c = next(c for c in r.cases if c.name == "resnet-fp32-ort")
    assert c.basis == "normalised+absolute" and c.ratio == pytest.approx(1.0) and c.failed
    assert "same host" in c.messages[0]
    assert any("absolute p50 gated too" in line for line in r.basis_lines)
    # another runtime version is another fingerprint: absolute not gated
    other = _with_reference(_scale_p50(ref_base, "resnet-fp32-ort", 2.0), 0.2, 0.6, runtimes={"onnxruntime": "2.0"})
    assert not cmp.compare_reports(other, ref_base, max_regression=0.10).failed


def test_without_a_reference_kernel_the_absolute_figure_is_gated_and_said(base, ref_base):
    r = cmp.compare_reports(_scale_p50(ref_base, "resnet-fp32-ort", 2.0), base, max_regression=0.10)
    assert {c.basis for c in r.cases} == {"absolute"} and r.failed
    assert any("no reference kernel in the baseline" in line for line in r.basis_lines)
    md = cmp.to_markdown(r)
    assert "| absolute |" in md and "no reference kernel in the baseline" in md


def test_cli_prints_the_basis(ref_base, tmp_path):
    new = _with_reference(ref_base, 0.1, 0.3, cpu="Other CPU")
    p = _cli(str(_write(tmp_path, "new.json", new)), str(_write(tmp_path, "base.json", ref_base)))
    assert p.returncode == 0, p.stderr
    assert "basis: latency gated on p50 normalised by the reference kernel" in p.stdout
    assert "(limit" in p.stdout and "normalised)" in p.stdout


def test_reference_kernel_child_times_both_gemms():
    from pipeline import reference_kernel

    rec = reference_kernel.Recorder([1, None])  # None (runtime default) is timed as 1 thread
    rec.measure_once()
    rec.measure_once()
    doc = rec.record()
    by = doc["by_threads"]["1"]
    assert list(doc["by_threads"]) == ["1"] and len(by["children"]) == 2
    assert by["int8_gemm_ms"] > 0 and by["fp32_gemm_ms"] > 0 and doc["shape_mkn"] == list(reference_kernel.SHAPE)
    assert all(c["int8_gemm_iterations"] >= reference_kernel.MIN_ITERS for c in by["children"])


# --------------------------------------------------------------------------- refreshing a baseline


def _suite_with_baseline_at(tmp_path: Path, baseline: Path) -> Path:
    import yaml

    doc = yaml.safe_load((REPO / "benchmarks" / "suites" / "ci.yaml").read_text())
    for h in doc["hosts"].values():
        h["baseline"] = str(baseline)
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_refresh_refuses_a_busy_machine_and_stores_relative_paths(ref_base, tmp_path):
    work = tmp_path / "work"
    (work / "run").mkdir(parents=True)
    busy = copy.deepcopy(ref_base)
    busy["environment"].update(load_average_1m=5.2, logical_cores=2, usable_cores=2)
    for c in busy["cases"]:
        c["artifact"] = str(work / "run" / "stages" / "export" / "abc" / f"{c['name']}.onnx")
        for r in c["repeats"]:
            r["model"]["path"] = c["artifact"]
    report = _write(work, "bench.json", busy)
    baseline = tmp_path / "baseline.json"
    suite = _suite_with_baseline_at(tmp_path, baseline)
    cmd = [sys.executable, "benchmarks/refresh_baselines.py", "--suite", str(suite), "--host", "x86-host",
           "--from-report", str(report)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "load average 4.2 on 2 cores" in p.stderr and "--force" in p.stderr and not baseline.exists()
    p = subprocess.run([*cmd, "--force"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(baseline.read_text())
    assert doc["baseline"]["load"]["forced"] is True and doc["baseline"]["load"]["load_average_1m"] == 4.2
    assert "--force" in doc["baseline"]["command"]
    strings = []

    def walk(x):
        if isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, list):
            [walk(v) for v in x]
        elif isinstance(x, str):
            strings.append(x)

    walk(doc)
    assert not [s for s in strings if s.startswith("/") or str(tmp_path) in s]
    assert doc["cases"][0]["artifact"] == f"run/stages/export/abc/{doc['cases'][0]['name']}.onnx"
    assert doc["reference_kernel"]["by_threads"]["2"]["int8_gemm_ms"] == 0.1


def test_refresh_load_rule():
    from benchmarks.refresh_baselines import load_problem, refuse_or_note
    from pipeline.errors import GateError

    assert load_problem(1.0, 2, "now") is None and load_problem(1.01, 2, "now")["limit"] == 1.0
    with pytest.raises(GateError, match="half the cores"):
        refuse_or_note(load_problem(3.0, 4, "before measuring"), force=False)
    assert refuse_or_note(load_problem(3.0, 4, "before measuring"), force=True)["forced"] is True


def test_a_regression_must_be_real_by_the_intervals_when_both_have_them():
    # 7 repeats: each case carries the 95% order-statistic interval of its repeats' p50 ([min, max] at n = 7)
    base = _report(_case("m", (1.0,) * 7))
    assert base["cases"][0]["latency_ms"]["ci95_ms"] == [1.0, 1.0]
    # median 1.3x, past the noise limit (1 + 0.1 + cv 0.14), but 3 of 7 repeats are as fast as the baseline:
    # the new interval [1.0, 1.3] reaches the baseline's upper end x 1.1, so the slowdown is not real at 95%
    new = _report(_case("m", (1.0, 1.0, 1.0, 1.3, 1.3, 1.3, 1.3)))
    (c,) = cmp.compare_reports(new, base, max_regression=0.10).cases
    assert c.ratio > c.limit_ratio and not c.latency_regression and "not real" in c.messages[0]
    # every repeat slower: real, a regression
    new = _report(_case("m", (1.3,) * 7))
    (c,) = cmp.compare_reports(new, base, max_regression=0.10).cases
    assert c.latency_regression and c.status == "regression"
    # 3 repeats: no interval (null), the noise rule alone decides, as before
    short = _report(_case("m", (1.0, 1.3, 1.3)))
    assert short["cases"][0]["latency_ms"]["ci95_ms"] is None
    (c,) = cmp.compare_reports(_report(_case("m", (1.3,) * 3)), _report(_case("m", (1.0,) * 3))).cases
    assert c.latency_regression
