"""Quantization-aware distillation (pipeline/qat/, pipeline/stages/qad.py): a student whose PTQ misses the
accuracy budget (an outlier activation channel, tests/qad_outlier_model.py) is fine-tuned with each target
family's fake quantization and the KD loss, and its INT8 model holds the budget; the jetson QDQ model
passes TensorRT's Q/DQ lint; run.json and the report show PTQ and QAT side by side."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import ROOT, artifact, fast_args, read_run, run_cli

BUDGET = 0.04  # PTQ misses it by 3+ validation images here, QAD holds it by 4+ test images
OUTLIER_SETS = [f"student.model={ROOT / 'tests' / 'qad_outlier_model.py'}:build", "student.kwargs.outlier=450",
                "student.max_macs_ratio=1.0", "quantize.mode=auto", "quantize.max_fallback_layers=0",
                f"quantize.max_accuracy_drop={BUDGET}", "quantize.qat.epochs=6", "benchmark.enabled=false",
                "precision=fp32"]  # exact arithmetic keeps the outlier channel's weights at zero (see the model)


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qad") / "run"
    p = run_cli("run", "--target", "onnxruntime", "--target", "jetson", "--out", str(out), *fast_args(OUTLIER_SETS))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


@pytest.mark.parametrize("target", ["onnxruntime", "jetson-orin-nano"])
def test_ptq_misses_the_budget_and_qad_holds_it(outlier_run, target):
    s = read_run(outlier_run)
    q = s["targets"][target]["quantize"]
    student = artifact(s, "student")["accuracy"]
    assert q["mode"] == "qat"
    assert q["ptq_val_accuracy_drop"] > BUDGET, q  # the outlier channel wrecks PTQ ...
    assert q["val_accuracy_drop"] <= BUDGET and q["qat"]["budget_held"]  # ... QAD recovers it on val
    # On the test split (side by side in run.json): QAD holds the budget (the run's gate) and beats PTQ.
    assert student - q["qat_accuracy"] <= BUDGET
    assert q["qat_accuracy"] > q["ptq_accuracy"]
    assert artifact(s, f"{target}:int8")["accuracy"] == pytest.approx(q["qat_accuracy"])
    assert "torchao PT2E QAT" in q["qat"]["library"] and q["qat"]["losses"] == ["ce", "kd"]
    names = {st["stage"] for st in s["stages"]}
    backend = s["targets"][target]["backend"]
    assert f"qad-{backend}" in names and f"quantize-qat-{target}" in names


def test_jetson_qad_model_passes_the_tensorrt_qdq_lint(outlier_run):
    from targets.qdq_lint import lint_qdq

    s = read_run(outlier_run)
    assert s["targets"]["jetson-orin-nano"]["compile"]["qdq_lint"]["ok"]
    model = outlier_run / artifact(s, "jetson-orin-nano:int8")["model_path"]
    assert "quantize-qat-jetson-orin-nano" in model.as_posix()
    lint = lint_qdq(model)
    assert lint.ok, lint.errors
    assert lint.stats  # it did look at Q/DQ pairs


def test_report_shows_ptq_and_qat_side_by_side(outlier_run):
    md = (outlier_run / "report.md").read_text()
    assert "## Quantization: PTQ vs QAT" in md
    s = read_run(outlier_run)
    q = s["targets"]["onnxruntime"]["quantize"]
    assert f"| onnxruntime | qat | {q['ptq_accuracy']:.4f} | {q['qat_accuracy']:.4f} |" in md


def _fake_quants(backend: str):
    from pipeline.models.spec import build_model
    from pipeline.qat.finetune import prepare_qat

    p = prepare_qat(build_model("builtin:small_cnn", {"widths": [4, 8, 8]}, 1, 10), backend, torch.zeros(2, 1, 16, 16))
    p.train()
    p(torch.randn(4, 1, 16, 16))
    return [m for n, m in p.named_modules() if n.startswith("activation_post_process_") and "." not in n]


def test_tensorrt_scheme_is_symmetric_per_tensor_activations_and_per_channel_weights():
    fqs = _fake_quants("tensorrt")
    acts = [m for m in fqs if m.qscheme == torch.per_tensor_symmetric]
    weights = [m for m in fqs if m.qscheme == torch.per_channel_symmetric]
    assert acts and weights and len(acts) + len(weights) == len(fqs)
    assert all(m.dtype == torch.qint8 or m.quant_min == -128 for m in acts)
    assert all(int(m.zero_point.abs().max()) == 0 for m in acts)  # zero point 0
    assert all(m.ch_axis == 0 and m.quant_min == -127 and m.quant_max == 127 for m in weights)


def test_onnxruntime_scheme_is_u8s8():
    fqs = _fake_quants("onnxruntime")
    acts = [m for m in fqs if m.qscheme == torch.per_tensor_affine]
    weights = [m for m in fqs if m.qscheme == torch.per_channel_symmetric]
    assert acts and weights and len(acts) + len(weights) == len(fqs)
    assert all(m.quant_min == 0 and m.quant_max == 255 for m in acts)  # uint8 activations
    assert all(m.ch_axis == 0 and m.quant_min == -128 for m in weights)  # int8 per-channel weights
