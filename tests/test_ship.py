"""What the bundle ships: the faster precision by default (INT8 unless it measured slower than FP32 here beyond
the spread), INT8 or FP32 when the recipe insists (quantize.ship)."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import artifact, fast_args, read_run, run_cli

from pipeline.stages.target import shipped_variant

SLOW = {"int8_slower_than_fp32": {"int8_p50_ms": 8.51, "fp32_p50_ms": 5.20, "ratio": 1.64, "spread": 0.02}}


def test_shipped_variant_rules():
    assert shipped_variant("faster", SLOW)[0] == "fp32" and "8.51 vs 5.2" in shipped_variant("faster", SLOW)[1]
    assert shipped_variant("faster", {})[0] == "int8"
    assert shipped_variant("faster", None)[0] == "int8"  # not measured here (TensorRT): INT8
    assert shipped_variant("int8", SLOW)[0] == "int8"  # the recipe insists
    assert shipped_variant("fp32", {})[0] == "fp32"


def test_a_run_that_ships_fp32_bundles_the_fp32_model(tmp_path):
    out = tmp_path / "ship"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *fast_args(["quantize.ship=fp32"]))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    s = read_run(out)
    fp32, int8 = artifact(s, "onnxruntime:fp32"), artifact(s, "onnxruntime:int8")
    assert fp32["bundle"] and int8["bundle"] is None
    man = json.loads((Path(fp32["bundle"]) / "manifest.json").read_text())
    assert man["shipped"] == {"variant": "fp32", "why": "quantize.ship=fp32"}
    assert man["model"]["file"] == "model_fp32.onnx" and man["model"]["precision"] == "fp32"
    assert man["metrics"]["accuracy"]["value"] == fp32["accuracy"]
    assert "bundle ships the FP32 model" in p.stdout
