"""prune: structured (torch-pruning) or unstructured pruning with KD recovery; pass-through when off.

The work is in :mod:`pipeline.pruning`; its source hash is part of this stage's cache key.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.artifacts import sha256_file
from pipeline.device import recipe_key
from pipeline.runner import Runner, StageContext, StageResult

TOOLS = ["torch", "torch-pruning", "onnx", "onnxruntime"]


def run_prune(runner: Runner, recipe, data: StageResult, teacher: StageResult, student: StageResult) -> StageResult:
    cfg = recipe.prune

    def fn(ctx: StageContext) -> None:
        if not cfg.enabled:
            for name in ("model.pt", "model.json"):
                shutil.copyfile(student.path(name), ctx.dir / name)
            ctx.metrics.update(enabled=False, params=student.metrics["params"], macs=student.metrics["macs"],
                               test_accuracy=student.metrics["test_accuracy"])
            ctx.notes.append("pruning disabled (prune.enabled=false): the distilled student passes through")
            return
        from pipeline.pruning import prune_student

        prune_student(ctx, recipe, data, teacher, student)

    if not cfg.enabled:
        return runner.stage("prune", fn, config={"enabled": False, "seed": recipe.seed},
                            inputs={"data": data, "teacher": teacher, "student": student}, tools=TOOLS)
    d = recipe.distill
    config = {
        "prune": cfg.model_dump(mode="json"),
        "seed": recipe.seed,
        # recovery is KD with the distillation losses; latency is measured with the benchmark settings;
        # the ONNX check uses the export settings
        "losses": [t.model_dump(mode="json") for t in d.losses],
        "cache_teacher_outputs": d.cache_teacher_outputs,
        "teacher_views": d.teacher_views,
        "compute": recipe_key(recipe),
        "augment": recipe.data.augment,
        "hflip": recipe.data.hflip,
        "benchmark": recipe.benchmark.model_dump(mode="json"),
        "export": recipe.export.model_dump(mode="json"),
    }
    code = sha256_file(Path(__file__).resolve().parent.parent / "pruning.py")[:16]
    return runner.stage("prune", fn, config=config, inputs={"data": data, "teacher": teacher, "student": student},
                        tools=TOOLS, extra_key={"pruning_code": code})
