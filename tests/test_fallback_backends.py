"""The accuracy-budget fallback on every installed backend (ONNX Runtime, TensorRT QDQ, OpenVINO, LiteRT).

The stages of the shared fast run (data, calibration, the student, its ONNX) feed the stage's own fallback
search (`pipeline.stages.target._fallback`) with a forced drop: each backend's `quantizable_layers` is called
the way the stage calls it, every layer's sensitivity is measured by really quantizing with that layer kept in
float, and the most sensitive layer is kept. The test then opens the produced model and checks that the layer
kept in float really computes in float while the others stay integer, and that every attempt was recorded.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import read_run
from pipeline.runner import StageResult
from pipeline.stages.models import load_model
from pipeline.stages.target import _fallback, _request, logits_of
from targets.base import BuiltModel, get_backend

BACKENDS = {"onnxruntime": "onnxruntime", "tensorrt": "jetson-orin-nano", "openvino": "x86-cpu",
            "litert": "raspberry-pi-5"}


def _stage(run: Path, summary: dict, stage: str) -> StageResult:
    rec = next(s for s in summary["stages"] if s["stage"] == stage)
    d = run / rec["dir"]
    return StageResult(stage, rec["key"], d, json.loads((d / "meta.json").read_text()), True, 0.0)


def _onnx_float_layers(model_file: Path) -> tuple[list[str], list[str]]:
    """(compute nodes whose weight is a float initializer, compute nodes whose weight comes from a DQ)."""
    import onnx

    m = onnx.load(str(model_file))
    producer = {o: n for n in m.graph.node for o in n.output}
    floats, ints = [], []
    for n in m.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        w = producer.get(n.input[1])
        (ints if w is not None and w.op_type == "DequantizeLinear" else floats).append(n.name)
    return floats, ints


def _check_really_float(backend_name: str, backend, built: BuiltModel, kept: list[str], profile, tmp: Path) -> None:
    if backend_name in ("onnxruntime", "tensorrt"):
        floats, ints = _onnx_float_layers(built.model_file)
        assert set(kept) <= set(floats), (kept, floats)
        assert ints, "the other layers must stay quantized"
    elif backend_name == "openvino":
        report = backend.compile(built, profile, tmp / "compile")
        kept_float = [l for l in report["layers"] if l["precision"] not in ("u8", "i8")
                      and any(k == o or o.startswith(k) or k.startswith(o) for k in kept for o in
                              [l["name"], *l["original_layers"]])]
        assert kept_float, (kept, report["layers"])
        assert report["integer_layers"] > 0, "the other layers must run in integer"
    elif backend_name == "litert":
        from targets.litert import check_full_integer

        ops = check_full_integer(built.model_file)["compute_ops"]
        assert sum(not o["integer"] for o in ops) == len(kept), ops
        assert any(o["integer"] for o in ops), "the other layers must stay integer"


@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_forced_fallback_keeps_the_layer_in_float_on_every_backend(fast_run, tmp_path, backend_name):
    from targets.profiles import resolve_profile

    backend = get_backend(backend_name)
    ok, why = backend.availability()
    if not ok:
        pytest.skip(f"{backend_name} not installed here: {why}")
    summary = read_run(fast_run)
    data, calib = _stage(fast_run, summary, "data"), _stage(fast_run, summary, "calibration")
    export, model_stage = _stage(fast_run, summary, "export"), _stage(fast_run, summary, "prune")
    from pipeline.recipe import load_recipe
    from pipeline.stages.data import read_splits

    recipe = load_recipe(None, ["calibration.samples=64"])
    profile = resolve_profile(BACKENDS[backend_name])
    splits = read_splits(data)
    ref_acc = float((np.load(export.path("test_logits.npy")).argmax(1) == splits.y_test).mean())

    def attempt(exclude: list[str], tag: str) -> tuple[BuiltModel, float]:
        built = backend.quantize(_request(recipe, profile, export, calib, model_stage, tmp_path / tag, exclude))
        acc = float((logits_of(built.model_file, splits.x_val, 1).argmax(1) == splits.y_val).mean())
        return built, ref_acc - acc

    # A forced drop of 1.0 starts the fallback; a budget of 1.0 lets the first kept layer end it.
    q = SimpleNamespace(max_accuracy_drop=1.0, max_fallback_layers=1, fallback=True)
    tried: list[dict] = []
    result = _fallback(backend, export, model_stage, attempt, 1.0, q, tried)
    assert result is not None
    built, _ = result
    layers = backend.quantizable_layers(export.path("model.onnx"), load_model(model_stage.dir))  # as the stage calls it
    sens = [t for t in tried if t.get("kind") == "sensitivity"]
    assert [t["kept_in_float"] for t in sens] == [[layer] for layer in layers]  # one attempt per layer, recorded
    assert all(isinstance(t["val_accuracy_drop"], float) for t in tried)
    fb = [t for t in tried if t.get("kind") == "fallback"]
    assert len(fb) == 1 and len(fb[0]["kept_in_float"]) == 1 and fb[0]["kept_in_float"][0] in layers
    assert built.precision == "mixed" and built.info["kept_in_float"]
    _check_really_float(backend_name, backend, built, list(built.info["kept_in_float"]), profile, tmp_path)
