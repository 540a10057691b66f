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
