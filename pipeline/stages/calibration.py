"""calibration: a stratified, seeded subset of the training split, stored once and shared by all targets.

Its own module so that its cache key covers only the code it runs (pipeline.code_closure hashes the import
closure of the file defining a stage), not everything the orchestrator imports."""
from __future__ import annotations

from calibration.select import build_calibration_set
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits


def run_calibration(runner: Runner, recipe, data: StageResult) -> StageResult:
    c = recipe.calibration

    def fn(ctx: StageContext) -> None:
        s = read_splits(data)
        ctx.metrics.update(build_calibration_set(s.x_train, s.y_train, c.samples, c.seed,
                                                 ctx.dir / "calibration.npz"))
        ctx.metrics["requested"] = c.samples
        if ctx.metrics["samples"] < c.samples:  # said once, kept in run.json: what was really used
            ctx.notes.append(f"calibration.samples={c.samples} clipped to the {ctx.metrics['samples']} training "
                             "images there are")

    return runner.stage("calibration", fn, config={"samples": c.samples, "seed": c.seed},
                        inputs={"data": data}, tools=["numpy"])
