"""Results integrity (issue 18 #3): every JSON the tool reads or writes is strict, and no import can poison a
device record.

The device result is a real bench.py run (the bundle's benchmark script) on a small ONNX model built with
onnx.helper, labelled device-measured; run.json is the minimal record import-results reads (one target
artifact with that model's sha256). The poisoned inputs are what a hand-edited or a broken writer produces:
NaN / Infinity / -Infinity literals and an overflowing 1e999, in any field.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli
from pipeline.artifacts import sha256_file

DEVICE = "test host (not a device)"


def _model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((48, 10)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
                          "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def device_result(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("device")
    model = _model(d / "model_int8.onnx")
    out = d / "device.json"
    p = subprocess.run([sys.executable, "-B", str(ROOT / "targets" / "standalone" / "bench.py"), str(model),
                        "--source", "device-measured", "--warmup", "2", "--min-iters", "20", "--min-time", "0.05",
                        "--quiet", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return model, out


@pytest.fixture()
def run_dir(tmp_path, device_result) -> Path:
    model, _ = device_result
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"artifacts": [
        {"name": "onnxruntime:int8", "role": "target", "target": "onnxruntime", "sha256": sha256_file(model),
         "latency_ms": {"p50": 0.3, "source": "measured"}}], "stages": []}))
    return d


def _poison(doc: dict, path: list, literal: str) -> str:
    """The JSON text of `doc` with the value at `path` replaced by a raw literal (NaN, Infinity, 1e999...)."""
    marker = "__POISON__"
    d = doc
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = marker
    return json.dumps(doc).replace(f'"{marker}"', literal)


def _strict_load(text: str):
    def refuse(c):
        raise ValueError(f"non-JSON literal {c}")
    doc = json.loads(text, parse_constant=refuse)
    assert all(math.isfinite(v) for v in _floats(doc)), "an overflowing number in the file"
    return doc


def _floats(o):
    if isinstance(o, float):
        yield o
    elif isinstance(o, dict):
        for v in o.values():
            yield from _floats(v)
    elif isinstance(o, list):
        for v in o:
            yield from _floats(v)


@pytest.mark.parametrize("path,literal", [
    (["latency_ms", "p50"], "Infinity"),
    (["latency_ms", "p99"], "NaN"),
    (["latency_ms", "min"], "-Infinity"),
    (["peak_rss_mb"], "1e999"),                        # parses as inf in Python: caught too
    (["throughput", "value"], "NaN"),
    (["environment", "load_average_1m"], "Infinity"),  # a field nobody imports is still not JSON
])
def test_non_finite_anywhere_is_refused_and_the_valid_record_kept(run_dir, device_result, tmp_path, path, literal):
    _, good = device_result
    p = run_cli("import-results", str(run_dir), str(good), "--device", DEVICE, timeout=120)
    assert p.returncode == 0, p.stderr
    valid = json.loads((run_dir / "device_results.json").read_text())
    run_before = (run_dir / "run.json").read_bytes()
    bad = tmp_path / "device-bad.json"
    bad.write_text(_poison(json.loads(good.read_text()), path, literal))
    p = run_cli("import-results", str(run_dir), str(bad), "--device", DEVICE, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    field = ".".join(path)
    assert field in p.stderr and "not a finite number" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len([x for x in p.stderr.splitlines() if x.startswith("error")]) == 1
    assert json.loads((run_dir / "device_results.json").read_text()) == valid, "the valid record is untouched"
    assert (run_dir / "run.json").read_bytes() == run_before


@pytest.mark.parametrize("value", [0, -1.5, "0.3", True])
def test_non_positive_or_non_number_p50_is_refused(run_dir, device_result, tmp_path, value):
    """A p50 of 0 / a negative / a string / a bool is not a latency (the engine-record path checks it too)."""
    _, good = device_result
    doc = json.loads(good.read_text())
    doc["latency_ms"]["p50"] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    p = run_cli("import-results", str(run_dir), str(bad), timeout=120)
    assert p.returncode == 2 and "p50" in p.stderr, p.stderr
    assert not (run_dir / "device_results.json").exists()


def test_second_import_is_kept_beside_the_first(run_dir, device_result, tmp_path):
    _, good = device_result
    first = json.loads(good.read_text())
    second = json.loads(good.read_text())
    second["latency_ms"] = {k: (v * 2 if isinstance(v, float) else v) for k, v in first["latency_ms"].items()}
    f2 = tmp_path / "device-2.json"
    f2.write_text(json.dumps(second))
    assert run_cli("import-results", str(run_dir), str(good), "--device", DEVICE).returncode == 0
    p = run_cli("import-results", str(run_dir), str(f2), "--device", DEVICE)
    assert p.returncode == 0, p.stderr
    stored = _strict_load((run_dir / "device_results.json").read_text())["results"]
    assert [r["p50_ms"] for r in stored] == [first["latency_ms"]["p50"], second["latency_ms"]["p50"]]
    assert all(r["imported_at"] for r in stored)
    run = _strict_load((run_dir / "run.json").read_text())
    a = run["artifacts"][0]
    assert a["device_latency_ms"]["p50"] == second["latency_ms"]["p50"], "the latest import is shown"
    assert [e["p50_ms"] for e in a["device_latency_ms"]["earlier"]] == [first["latency_ms"]["p50"]]
    assert len(run["device_results"]) == 1 and run["device_results"][0]["earlier"][0]["file"] == good.name


def test_poisoned_files_written_by_older_versions_are_refused_naming_the_field(run_dir, device_result):
    """run.json / device_results.json holding `Infinity` (as an older version wrote them): exit 2 with the field
    and the fix, not a crash and not a silent merge."""
    _, good = device_result
    assert run_cli("import-results", str(run_dir), str(good), "--device", DEVICE).returncode == 0
    dr = run_dir / "device_results.json"
    doc = json.loads(dr.read_text())
    dr.write_text(_poison(doc, ["results", 0, "latency_ms", "p90"], "Infinity"))
    p = run_cli("import-results", str(run_dir), str(good), "--device", DEVICE)
    assert p.returncode == 2 and "results[0].latency_ms.p90 is Infinity" in p.stderr, p.stderr
    assert "delete it and import" in p.stderr
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(_poison(run, ["artifacts", 0, "latency_ms", "p50"], "NaN"))
    p = run_cli("report", str(run_dir))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "artifacts[0].latency_ms.p50 is NaN" in p.stderr, p.stderr


def test_writers_never_emit_nan_or_infinity(tmp_path):
    """Every JSON writer goes through pipeline.strict_json: a non-finite figure becomes null."""
    from pipeline import strict_json
    from pipeline.artifacts import atomic_write_json, canonical_json

    obj = {"acc": float("nan"), "p": [1.0, float("inf"), {"x": -float("inf")}], "n": np.float64("nan"), "ok": 2.5}
    atomic_write_json(tmp_path / "a.json", obj)
    back = _strict_load((tmp_path / "a.json").read_text())
    assert back == {"acc": None, "p": [1.0, None, {"x": None}], "n": None, "ok": 2.5}
    _strict_load(canonical_json(obj))
    _strict_load(strict_json.dumps(obj))
    # bench.py (standalone, stdlib only) writes strict JSON too
    sys.path.insert(0, str(ROOT / "targets" / "standalone"))
    try:
        import bench
        assert bench._finite({"a": [float("nan")], "b": 1.0}) == {"a": [None], "b": 1.0}
    finally:
        sys.path.remove(str(ROOT / "targets" / "standalone"))
        sys.modules.pop("bench", None)


def test_compare_and_every_reader_refuse_non_finite(device_result, tmp_path):
    """`compare` reads reports and bench.py results: a NaN anywhere is refused naming the field."""
    from pipeline.errors import DataError
    from pipeline.measure.compare import load_report

    _, good = device_result
    load_report(good)  # the unmodified result reads
    bad = tmp_path / "bad.json"
    bad.write_text(_poison(json.loads(good.read_text()), ["latency_ms", "mean"], "NaN"))
    with pytest.raises(DataError, match=r"latency_ms\.mean is NaN"):
        load_report(bad)
    p = run_cli("compare", str(good), str(bad))
    assert p.returncode == 2 and "latency_ms.mean is NaN" in p.stderr, p.stdout + p.stderr
