"""Quantization-aware distillation (QAD) stages, run when PTQ misses the budget or `quantize.mode: qat`.

- `qad-<backend>` (one per target family): fine-tune the student under the family's fake quantization
  (pipeline/qat/) with the teacher's KD loss; writes the fine-tuned float model (model.pt/model.json)
  and its ONNX (model.onnx), so it stands in for the export and model stages downstream.
- `quantize-qat-<profile>`: the backend's own INT8 writer on the fine-tuned model (the QDQ ONNX for
  onnxruntime/TensorRT, the NNCF IR for OpenVINO, the litert-torch PT2E model for LiteRT), so every check
  a PTQ artifact passes (TensorRT Q/DQ lint, OpenVINO runtime precisions, LiteRT full integer) applies
  unchanged. It calibrates with `minmax`: the fake quantization learned against moving-average min/max
  ranges. The validation drop is measured against the original FP32 student, not the fine-tuned one.
"""
from __future__ import annotations

import json
import shutil

import torch

from calibration.select import load_calibration_set
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits
from pipeline.stages.models import load_model
from pipeline.stages.target import (BACKEND_TOOLS, _built_to_json, _profile_key, backend_code, host_threads,
                                    logits_of, target_numerics)
from targets.base import CalibrationSpec, QuantizeRequest, get_backend


def qad_wanted(recipe, ptq: StageResult) -> bool:
    mode = recipe.quantize.mode
    return mode == "qat" or (mode == "auto" and not ptq.metrics.get("budget_held", True))


def run_qad(runner: Runner, recipe, backend_name: str, data: StageResult, teacher: StageResult,
            model_stage: StageResult, export: StageResult) -> StageResult:
    q = recipe.quantize

    def fn(ctx: StageContext) -> None:
        from pipeline.qat.finetune import logit_terms, qat_finetune
        from pipeline.qat.schemes import SCHEMES
        from pipeline.stages.export import export_onnx

        splits = read_splits(data)
        terms, dropped = logit_terms(recipe.distill.losses)
        if not terms:
            from pipeline.distill.losses import LossTerm

            terms = [LossTerm(name="kd")]
        if dropped:
            ctx.notes.append(f"QAD uses the logit loss terms only; left out {dropped} (they tap modules by path, "
                             "which the exported QAT graph does not have)")
        student = load_model(model_stage.dir)
        tuned, hist = qat_finetune(student, load_model(teacher.dir), splits, backend_name, q.qat, terms, recipe.seed)
        torch.save(tuned.state_dict(), ctx.dir / "model.pt")
        shutil.copyfile(model_stage.path("model.json"), ctx.dir / "model.json")
        shutil.copyfile(export.path("input.json"), ctx.dir / "input.json")
        export_onnx(tuned, torch.from_numpy(splits.x_test[:1]), ctx.dir / "model.onnx", recipe.export.opset)
        ctx.metrics.update(scheme=SCHEMES[backend_name], library="torchao PT2E QAT (prepare_qat_pt2e)",
                           losses=[t.name for t in terms], epochs=q.qat.epochs, history=hist.epochs,
                           fake_quant_val_accuracy=hist.best_val_accuracy, best_epoch=hist.best_epoch)

    import pipeline.distill.losses
    import pipeline.qat.finetune
    import pipeline.qat.schemes
    import pipeline.train

    config = {"backend": backend_name, "qat": q.qat.model_dump(mode="json"), "seed": recipe.seed,
              "losses": [t.model_dump(mode="json", exclude_none=True) for t in recipe.distill.losses],
              "opset": recipe.export.opset}
    return runner.stage(f"qad-{backend_name}", fn, config=config,
                        inputs={"data": data, "teacher": teacher, "model": model_stage, "export": export},
                        tools=["torch", "torchao", "onnx"] + (["litert-torch"] if backend_name == "litert" else []),
                        code=(pipeline.qat.finetune, pipeline.qat.schemes, pipeline.distill.losses, pipeline.train),
                        label=f"qad [{backend_name}]")


def run_quantize_qat(runner: Runner, recipe, profile, data: StageResult, calib: StageResult,
                     model_stage: StageResult, qad: StageResult) -> StageResult:
    """INT8 from the QAD-tuned model, all layers quantized; val drop vs the original FP32 student."""
    backend = get_backend(profile.backend)
    q = recipe.quantize

    def fn(ctx: StageContext) -> None:
        from pipeline.train import predict

        splits = read_splits(data)
        ref_acc = float((predict(load_model(model_stage.dir), splits.x_val).argmax(1) == splits.y_val).mean())
        x = load_calibration_set(calib.path("calibration.npz"))
        shape = tuple(json.loads(qad.path("input.json").read_text())["shape"])
        threads = host_threads(profile, recipe.benchmark)
        req = QuantizeRequest(fp32_onnx=qad.path("model.onnx"), torch_model=load_model(qad.dir), input_shape=shape,
                              calibration=x, calib=CalibrationSpec("minmax", recipe.calibration.percentile,
                                                                   recipe.calibration.bins),
                              profile=profile, out_dir=ctx.dir / "int8", exclude_layers=[], threads=threads)
        built = backend.quantize(req)
        built.info["qat"] = True
        n = target_numerics(recipe, profile, backend, built.model_file)
        built.info["evaluated_with"] = n.to_json()
        acc = float((logits_of(built.model_file, splits.x_val, threads, numerics=n).argmax(1)
                     == splits.y_val).mean())
        drop = ref_acc - acc
        ctx.metrics.update(int8=_built_to_json(built, ctx.dir), val_accuracy_fp32=ref_acc, val_accuracy_drop=drop,
                           budget=q.max_accuracy_drop, budget_held=drop <= q.max_accuracy_drop, kept_in_float=[],
                           tried=[{"kept_in_float": [], "val_accuracy_drop": round(drop, 5), "kind": "qat"}],
                           calibration="minmax (the fake quantization's moving-average min/max observers)")

    config = {"profile": _profile_key(profile), "budget": q.max_accuracy_drop,
              "numerics": target_numerics(recipe, profile, backend).to_json(),
              "calibration": {"percentile": recipe.calibration.percentile, "bins": recipe.calibration.bins}}
    return runner.stage(f"quantize-qat-{profile.name}", fn, config=config,
                        inputs={"qad": qad, "calibration": calib, "model": model_stage, "data": data},
                        tools=BACKEND_TOOLS[profile.backend], code=backend_code(backend),
                        label=f"quantize-qat [{profile.name}]")


def choose_quantized(recipe, ptq: StageResult, qat: StageResult | None) -> tuple[StageResult, str]:
    """The INT8 artifact to ship and its mode: QAD always under `qat`; under `auto` only when it drops
    less than PTQ (with fallback) on the validation split."""
    if qat is None:
        return ptq, "ptq"
    if recipe.quantize.mode == "qat" or qat.metrics["val_accuracy_drop"] < ptq.metrics["val_accuracy_drop"]:
        return qat, "qat"
    return ptq, "ptq"


def quantize_summary(stages: dict, base: dict) -> dict:
    """run.json targets.<profile>.quantize: mode, with PTQ and QAT accuracy on the test split side by side."""
    out = dict(base)
    ev = stages["evaluate"].metrics if "evaluate" in stages else {}
    qat = stages.get("quantize_qat")
    out["mode"] = stages.get("quantize_mode", "ptq")
    out["ptq_accuracy"] = (ev.get("int8_ptq") or ev.get("int8") or {}).get("accuracy") if ev else None
    out["qat_accuracy"] = (ev.get("int8_qat") or {}).get("accuracy") if qat is not None else None
    if qat is not None:
        qad = stages["qad"].metrics
        out["qat"] = {"val_accuracy_drop": qat.metrics["val_accuracy_drop"], "budget_held": qat.metrics["budget_held"],
                      "scheme": qad.get("scheme"), "library": qad.get("library"), "epochs": qad.get("epochs"),
                      "losses": qad.get("losses"), "fake_quant_val_accuracy": qad.get("fake_quant_val_accuracy")}
        if out["mode"] == "qat":
            out.update(kept_in_float=[], val_accuracy_drop=qat.metrics["val_accuracy_drop"],
                       budget_held=qat.metrics["budget_held"],
                       ptq_val_accuracy_drop=stages["quantize"].metrics.get("val_accuracy_drop"))
    return out
