"""prune: structured (torch-pruning) or unstructured pruning with KD recovery; pass-through when off."""
from __future__ import annotations

import shutil

from pipeline.runner import Runner, StageContext, StageResult

TOOLS = ["torch", "torch-pruning"]


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

    config = cfg.model_dump(mode="json") if cfg.enabled else {"enabled": False}
    return runner.stage("prune", fn, config=config | {"seed": recipe.seed},
                        inputs={"data": data, "teacher": teacher, "student": student}, tools=TOOLS)
