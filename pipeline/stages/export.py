"""export: FP32 ONNX with a dynamic batch axis, parity-gated against PyTorch on the test split."""
from __future__ import annotations

import json
import warnings

import numpy as np
import torch

from pipeline.errors import GateError, PipelineError
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits
from pipeline.stages.models import load_model
from pipeline.train import predict
from pipeline import strict_json

TOOLS = ["torch", "onnx", "onnxruntime"]
INPUT, OUTPUT = "input", "logits"


def export_onnx(model, example: torch.Tensor, path, opset: int) -> None:
    """Legacy exporter: about 8x faster than dynamo here (docs/TOOLCHAIN.md), dynamic batch via dynamic_axes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                          dynamo=False, do_constant_folding=True)


def ort_logits(path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No arena: with it, peak RSS grew with the number of batches (teacher at 224 px, batch 256: 3.3 GB for a
    # 400-image test split, 5.7 GB for 1,600 images; measured), the arena keeping blocks of every shape seen.
    so.enable_cpu_mem_arena = False
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def parity(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(torch_logits - onnx_logits).max()),
            "top1_agreement": float((torch_logits.argmax(1) == onnx_logits.argmax(1)).mean())}


def run_export(runner: Runner, recipe, data: StageResult, model_stage: StageResult, name: str = "export",
               gate: bool = True) -> StageResult:
    cfg = recipe.export

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        model = load_model(model_stage.dir)
        example = torch.from_numpy(splits.x_test[:1])
        try:
            model(example)
        except Exception as e:  # the model's own forward: one typed line (exit 2)
            raise PipelineError(f"the model rejects inputs of shape {tuple(example.shape)}: {type(e).__name__}: {e}",
                                hint="set data.input_size / data.channels to what the model expects") from None
        out = ctx.dir / "model.onnx"
        export_onnx(model, example, out, cfg.opset)
        ref = predict(model, splits.x_test)
        got = ort_logits(out, splits.x_test)
        p = parity(ref, got)
        ctx.metrics.update(p, opset=cfg.opset, test_accuracy=float((got.argmax(1) == splits.y_test).mean()),
                           size_bytes=out.stat().st_size)
        np.save(ctx.dir / "test_logits.npy", got.astype(np.float32))
        (ctx.dir / "input.json").write_text(strict_json.dumps(
            {"name": INPUT, "shape": [1, *splits.x_test.shape[1:]], "dtype": "float32", "layout": "nchw",
             "dynamic_batch": True, "output": OUTPUT}))
        if gate and (p["max_abs_diff"] > cfg.max_abs_diff or p["top1_agreement"] < cfg.min_top1_agreement):
            raise GateError(
                f"export parity gate failed: ONNX Runtime vs PyTorch on the test split gives max |diff| "
                f"{p['max_abs_diff']:.2e} (limit {cfg.max_abs_diff:g}) and top-1 agreement "
                f"{p['top1_agreement']:.4f} (minimum {cfg.min_top1_agreement:g})",
                hint="look for ops that export differently (custom layers, in-place ops); the limits are "
                     "export.max_abs_diff and export.min_top1_agreement")

    return runner.stage(name, fn, config=cfg.model_dump(mode="json") if gate else {"opset": cfg.opset},
                        inputs={"data": data, "model": model_stage}, tools=TOOLS)
