"""The visual run report: report.md, single-file report.html with embedded PNG plots, and its rendering."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import read_run, run_cli, x86_source

from pipeline.report import pareto_front, write_report, write_report_safe
from pipeline.report.data import accuracy_latency_points, bench_cases, single_figures, size_bars

CHROMIUM = "/usr/bin/chromium"
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs_in_html(text: str) -> list[bytes]:
    return [base64.b64decode(m, validate=True) for m in IMG_RE.findall(text)]


# --------------------------------------------------------------------------- the Pareto front (pure function)


def test_pareto_front_hand_made_points():
    pts = [  # (latency ms, accuracy)
        (1.0, 0.90),   # 0 front: fastest
        (2.0, 0.95),   # 1 front
        (3.0, 0.94),   # 2 dominated by 1 (slower and less accurate)
        (2.0, 0.93),   # 3 dominated by 1 (same latency, less accurate)
        (5.0, 0.99),   # 4 front: most accurate
        (6.0, 0.99),   # 5 dominated by 4 (same accuracy, slower)
        (0.5, 0.80),   # 6 front: even faster
        (2.0, 0.95),   # 7 identical to 1: neither dominates the other
    ]
    assert pareto_front(pts) == [6, 0, 1, 7, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    # one point better on both axes removes all the others
    assert pareto_front([(3.0, 0.7), (1.0, 0.9), (2.0, 0.8)]) == [1]


# --------------------------------------------------------------------------- a hand-made run with every source


def _bench_case(name, source, repeats):
    reps = [{"kind": "case-result", "name": name, "source": source, "iterations": 100,
             "latency_ms": {"min": p50 * 0.8, "p50": p50, "p90": p50 * 1.3, "p99": p50 * 2, "max": p50 * 5}}
            for p50 in repeats]
    med = sorted(repeats)[len(repeats) // 2]
    return {"name": name, "source": source, "repeats": reps,
            "latency_ms": {"p50": med, "p90": med * 1.3, "p99": med * 2, "min": min(repeats) * 0.8}}


def _art(name, role, target, precision, acc, size, p50, source, **extra):
    lat = {"p50": p50, "p90": None if p50 is None else p50 * 1.3, "source": source}
    return {"name": name, "role": role, "target": target, "precision": precision, "accuracy": acc,
            "params": 1000, "macs": 10000, "size_bytes": size, "sha256": "0" * 64, "latency_ms": lat,
            "peak_rss_mb": {"value": 1.0, "source": source}, "bundle": None, **extra}


def _layer_profile() -> dict:
    """A per-layer profile in the schema of pipeline/profile/schema.py (as `python -m pipeline profile` stores it)."""
    op = {"name": "/features/features.1/features.1.0/Conv", "type": "Convolution", "kind": "compute"}
    rows = [{"module": "features.1.0", "label": "features.1.0", "float_ms": 0.04, "int8_ms": 0.036, "precision": "i8",
             "float_precision": "f32", "overhead_ms": {"float": 0.0, "int8": 0.002},
             "ops": [{**op, "variant": "float", "ms": 0.04, "precision": "f32"},
                     {**op, "variant": "int8", "ms": 0.036, "precision": "i8"}]}]
    return {"target": "x86", "backend": "openvino", "runtime": "openvino", "runtime_version": "2026.0", "host": "test cpu",
            "source": "measured", "threads": 1, "batch": 1, "method": {"int8": "PERF_COUNT"}, "rows": rows,
            "total_ms": 0.04, "total_float_ms": 0.045, "sum_int8_ms": 0.036, "sum_float_ms": 0.04,
            "unmapped_ops": [], "left_out": {"int8": "infer request overhead"}}


@pytest.fixture()
def synthetic_run(tmp_path) -> Path:
    run = tmp_path / "run"
    (run / "stages/benchmark-fp32/aa").mkdir(parents=True)
    (run / "stages/benchmark-x86/bb").mkdir(parents=True)
    (run / "stages/distill/cc").mkdir(parents=True)
    (run / "stages/benchmark-fp32/aa/bench.json").write_text(json.dumps({
        "teacher": _bench_case("teacher", "measured", [1.0, 1.1, 0.9]),
        "student": _bench_case("student", "measured", [0.30, 0.32, 0.31])}))
    (run / "stages/benchmark-x86/bb/bench.json").write_text(json.dumps({
        "int8": _bench_case("int8", "measured", [0.12, 0.13, 0.125])}))
    (run / "stages/distill/cc/meta.json").write_text(json.dumps({"metrics": {"params": 50000}}))
    summary = {
        "schema_version": "1", "name": "synthetic", "created": "2026-01-01T00:00:00+0000", "seconds": 12.5,
        "stages": [{"name": "distill", "stage": "distill", "cached": True, "seconds": 0.01, "dir": "stages/distill/cc",
                    "notes": []},
                   {"name": "benchmark [fp32 teacher, student]", "stage": "benchmark-fp32", "cached": False,
                    "seconds": 3.2, "dir": "stages/benchmark-fp32/aa", "notes": []},
                   {"name": "benchmark [x86]", "stage": "benchmark-x86", "cached": False, "seconds": 2.0,
                    "dir": "stages/benchmark-x86/bb", "notes": []}],
        "artifacts": [
            _art("teacher", "teacher", None, "fp32", 0.99, 1_200_000, 1.0, "measured"),
            _art("student", "student", None, "fp32", 0.95, 150_000, 0.31, "measured", pruned=True),
            _art("x86:int8", "target", "x86", "int8", 0.948, 60_000, 0.125, "measured"),
            _art("rpi:int8", "target", "rpi", "int8", 0.947, 61_000, 0.4, "host-measured"),
            _art("jetson:int8", "target", "jetson", "int8", 0.949, 62_000, 0.05, "estimated"),
            _art("jetson-dev:int8", "target", "jetson-dev", "int8", 0.949, 62_000, 0.08, "device-measured"),
            _art("jetson:fp32", "target", "jetson", "fp32", 0.95, 150_000, None, "not measured"),
            _art("x86:bf16", "target", "x86", "bf16", None, 150_000, 0.2, "measured"),
        ],
        "targets": {"jetson": {"compile": {"engine": {"built": False, "reason": "engine is built on the device"}}},
                    "x86": {"profile": "x86", "layer_profile": _layer_profile()}},
        "skipped_targets": {"openvino-x86": "openvino not installed"},
        "failed_targets": {"litert-arm": "INT8 accuracy drop 0.05 exceeds the budget"},
        "notes": ["teacher trained here for 3 epochs"],
    }
    (run / "run.json").write_text(json.dumps(summary))
    return run


def test_synthetic_run_data(synthetic_run):
    s = read_run(synthetic_run)
    pts, left_out = accuracy_latency_points(s)
    by = {p.name: p for p in pts}
    assert set(by) == {"teacher", "student", "x86:int8", "rpi:int8", "jetson:int8", "jetson-dev:int8"}
    assert by["jetson:int8"].source == "estimated" and by["rpi:int8"].source == "host-measured"
    assert {p.name for p in pts if p.pareto} == {"jetson:int8", "student", "teacher"}
    assert any("jetson:fp32" in x for x in left_out) and any("x86:bf16" in x for x in left_out)

    bars, _ = size_bars(synthetic_run, s)
    labels = [b.label for b in bars]
    assert labels[:3] == ["teacher FP32", "student FP32 (before pruning)", "student FP32 pruned"]
    assert bars[1].size_bytes == 50000 * 4 and bars[1].how.startswith("computed")
    assert "jetson INT8" in labels and "x86 INT8" in labels

    cases, notes = bench_cases(synthetic_run, s)
    assert notes == []
    by_case = {c.label: c for c in cases}
    assert set(by_case) == {"teacher", "student", "x86:int8"}
    assert by_case["teacher"].repeat_p50 == [1.0, 1.1, 0.9]
    assert by_case["teacher"].stats["max"] == pytest.approx(1.1 * 5)
    assert by_case["teacher"].stats["min"] == pytest.approx(0.9 * 0.8)
    singles = dict(single_figures(s, cases))
    # estimates and device imports are single figures, never distributions
    assert singles["jetson:int8"]["source"] == "estimated"
    assert singles["jetson-dev:int8"]["source"] == "device-measured"
    assert "jetson:fp32" not in singles


def test_synthetic_report_files(synthetic_run, tmp_path):
    out = tmp_path / "rep"
    r = write_report(synthetic_run, out)
    md = r.markdown.read_text()
    for label in ("measured", "host-measured", "estimated", "device-measured"):
        assert f"| {label} |" in md, label
    assert "## Pareto front" not in md and "**Pareto front**" in md
    assert "litert-arm: INT8 accuracy drop" in md and "openvino-x86: openvino not installed" in md
    assert "jetson: engine is built on the device" in md
    assert "| benchmark [x86] | no | 2.00 |" in md and "| distill | yes | 0.01 |" in md
    assert "## Per-layer profile: x86" in md and "| features.1.0 | Convolution | 0.0400 | 0.0360 | 0.90 | i8 |" in md
    pngs = _pngs_in_html(r.html.read_text())
    assert len(pngs) == 3 == len(r.pngs)
    assert sorted(p.name for p in r.pngs) == ["report_accuracy_latency.png", "report_latency.png", "report_sizes.png"]
    assert [p.read_bytes() for p in r.pngs] == pngs
    assert not list(out.glob("*.tmp*")) and not [p for p in out.iterdir() if ".tmp" in p.name]


def test_plot_failure_only_warns(synthetic_run, tmp_path, monkeypatch, capsys):
    from pipeline.report import plots

    def boom(*a, **k):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "latency_png", boom)
    assert write_report_safe(synthetic_run) is None
    err = capsys.readouterr().err
    assert "warning: report not written (RuntimeError: no fonts)" in err
    assert f"python -m pipeline report {synthetic_run}" in err
    assert not (synthetic_run / "report.html").exists()


def test_report_cli_bad_folder(tmp_path):
    p = run_cli("report", str(tmp_path), timeout=120)
    assert p.returncode == 2
    assert "run.json not found" in p.stderr and "fix:" in p.stderr
    (tmp_path / "run.json").write_text("{not json")
    p = run_cli("report", str(tmp_path), timeout=120)
    assert p.returncode == 2 and "not readable JSON" in p.stderr


# --------------------------------------------------------------------------- a real fast run


@pytest.fixture(scope="module")
def fast_report(fast_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    p = run_cli("report", str(fast_run), "--out", str(out), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"wrote {out / 'report.html'}" in p.stdout
    return out


def test_run_writes_report(fast_run):
    # the run itself wrote the report after run.json
    for name in ("report.md", "report.html", "report_accuracy_latency.png", "report_sizes.png", "report_latency.png"):
        assert (fast_run / name).is_file(), name


def test_report_markdown_from_fast_run(fast_run, fast_report):
    s = read_run(fast_run)
    md = (fast_report / "report.md").read_text()
    assert "| artifact | precision | accuracy |" in md and "| latency source |" in md
    for a in s["artifacts"]:
        assert f"| {a['name']} |" in md, a["name"]
    for label in ("measured", "estimated"):
        assert f"| {label} |" in md
    for s_ in s["stages"]:
        assert f"| {s_['name']} |" in md
    for f in ("report_accuracy_latency.png", "report_sizes.png", "report_latency.png"):
        assert f"]({f})" in md and (fast_report / f).is_file()
    # the jetson INT8 latency is an estimate: shown as such, never as a distribution
    assert "never drawn as a distribution: jetson-orin-nano:int8 (estimated)" in md
    cases, _ = bench_cases(fast_run, s)
    assert {c.label for c in cases} == {"teacher", "student", "onnxruntime:int8", "onnxruntime:fp32"}
    # teacher/student FP32 are measured; the onnxruntime target's figures follow the ISA rule (conftest.x86_source)
    assert {c.label: c.source for c in cases} == {"teacher": "measured", "student": "measured",
                                                  "onnxruntime:int8": x86_source(), "onnxruntime:fp32": x86_source()}


def test_report_html_embeds_valid_pngs(fast_report):
    from PIL import Image

    text = (fast_report / "report.html").read_text()
    pngs = _pngs_in_html(text)
    assert len(pngs) == 3
    for data in pngs:
        assert data.startswith(PNG_MAGIC)
        im = Image.open(io.BytesIO(data))
        im.verify()
        im = Image.open(io.BytesIO(data))
        assert im.format == "PNG" and 800 <= im.width <= 2500 and 250 <= im.height <= 2500, im.size
    # single file: no scripts, no external assets
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert text.count("<figcaption>") == 3


# --------------------------------------------------------------------------- rendered in headless Chromium


def _screenshot(html: Path, png: Path) -> None:
    ud = tempfile.mkdtemp(prefix="report-chromium-")
    try:
        p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={ud}", f"--screenshot={png}",
                            "--window-size=1280,2400", html.resolve().as_uri()],
                           capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": ud})
    finally:
        shutil.rmtree(ud, ignore_errors=True)
    assert p.returncode == 0 and png.is_file(), p.stderr[-2000:]


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} not installed (apt-get install -y chromium) to render report.html")
def test_report_html_renders_plots_in_chromium(fast_report, tmp_path):
    import numpy as np
    from PIL import Image

    html = fast_report / "report.html"
    bare = tmp_path / "bare.html"  # the same page with every image emptied
    bare.write_text(IMG_RE.sub('<img src=""', html.read_text()))
    shot, shot_bare = tmp_path / "report.png", tmp_path / "bare.png"
    _screenshot(html, shot)
    _screenshot(bare, shot_bare)

    def stats(path, rows=slice(None)):
        a = np.asarray(Image.open(path).convert("RGB")).astype(int)[rows]
        coloured = int(((a.max(-1) - a.min(-1)) > 60).sum())   # plot colours; text renders grey
        distinct = len(np.unique(a.reshape(-1, 3), axis=0))
        return a.shape, coloured, distinct

    shape, coloured, distinct = stats(shot)
    assert shape[:2] == (2400, 1280)
    _, coloured_bare, distinct_bare = stats(shot_bare)
    assert coloured > 3000 and coloured > 10 * (coloured_bare + 10), (coloured, coloured_bare)
    # the first plot (accuracy vs latency) sits in the top 1000 rows: markers and lines are drawn there
    _, top_coloured, top_distinct = stats(shot, slice(0, 1000))
    _, top_coloured_bare, top_distinct_bare = stats(shot_bare, slice(0, 1000))
    assert top_coloured > 300 and top_coloured > 5 * (top_coloured_bare + 10), (top_coloured, top_coloured_bare)
    assert top_distinct > 1.5 * top_distinct_bare, (top_distinct, top_distinct_bare)
    keep = os.environ.get("REPORT_SCREENSHOT_DIR")
    if keep:
        shutil.copyfile(shot, Path(keep) / "report_screenshot.png")


# --------------------------------------------------------------------------- mixed precision frontier, PTQ vs QAT


def _frontier_run(tmp_path) -> Path:
    run = tmp_path / "frun"
    run.mkdir()
    rows = [  # (float layers, val accuracy, latency ms, shipped); "b" is dominated by "c" (faster, more accurate)
        ([], 0.90, 0.100, False), (["a"], 0.95, 0.140, False), (["b"], 0.93, 0.135, False),
        (["c"], 0.945, 0.110, True), (["a", "c"], 0.96, 0.150, False)]
    frontier = [{"float_layers": f, "val_accuracy": a, "val_accuracy_drop": 0.96 - a, "latency_ms": ms,
                 "source": "measured", "runtime": "onnxruntime", "kind": "candidate", "chosen": ch,
                 "holds_budget": 0.96 - a <= 0.02} for f, a, ms, ch in rows]
    summary = {"schema_version": "1", "name": "frontier", "created": "2026-01-01T00:00:00+0000", "seconds": 1,
               "stages": [], "artifacts": [], "skipped_targets": {}, "failed_targets": {}, "notes": [],
               "targets": {"x86": {"quantize": {"frontier": frontier, "kept_in_float": ["c"], "mode": "qat",
                                                "ptq_accuracy": 0.91, "qat_accuracy": 0.955,
                                                "qat": {"val_accuracy_drop": 0.004}}}}}
    (run / "run.json").write_text(json.dumps(summary))
    return run


def test_frontier_and_qat_tables_in_report(tmp_path):
    r = write_report(_frontier_run(tmp_path), tmp_path / "rep")
    md = r.markdown.read_text()
    assert [p.name for p in r.pngs] == ["report_frontier_x86.png"]
    assert "## Mixed precision frontier: x86" in md
    assert "| 3 | b | 0.9300 | 0.1350 | measured (onnxruntime) | no |  |  |" in md  # dominated by c
    assert "| 4 | c | 0.9450 | 0.1100 | measured (onnxruntime) | yes | yes | yes |" in md
    assert "| x86 | qat | 0.9100 | 0.9550 | 0.0040 |" in md  # PTQ and QAT side by side


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} not installed (apt-get install -y chromium) to render report.html")
def test_frontier_renders_in_chromium(tmp_path):
    import numpy as np
    from PIL import Image

    r = write_report(_frontier_run(tmp_path), tmp_path / "rep")
    bare = tmp_path / "bare.html"
    bare.write_text(IMG_RE.sub('<img src=""', r.html.read_text()))
    shot, shot_bare = tmp_path / "f.png", tmp_path / "fb.png"
    _screenshot(r.html, shot)
    _screenshot(bare, shot_bare)

    def coloured(path):
        a = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(((a.max(-1) - a.min(-1)) > 60).sum())

    assert coloured(shot) > 300 and coloured(shot) > 5 * (coloured(shot_bare) + 10)
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} not installed (apt-get install -y chromium) to render report.html")
def test_report_html_per_layer_table_in_chromium(synthetic_run, tmp_path):
    """The per-layer profile table is in the DOM Chromium builds from report.html."""
    r = write_report(synthetic_run, tmp_path / "rep")
    ud = tempfile.mkdtemp(prefix="report-chromium-")
    try:
        p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={ud}", "--dump-dom", r.html.resolve().as_uri()],
                           capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": ud})
    finally:
        shutil.rmtree(ud, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    assert "<h2>Per-layer profile: x86</h2>" in dom
    assert re.search(r"<td>features\.1\.0</td><td>Convolution</td><td class=\"?r\"?>0\.0400</td>", dom), dom[-3000:]
