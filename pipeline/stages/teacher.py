"""teacher: load the user's checkpoint or train the teacher here; optionally adapt it (finetune).

The teacher is evaluated on the validation split before distilling: a teacher that does not
know the user's data can make KD worse than training the student alone.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import sha256_file
from pipeline.errors import GateError
from pipeline.models.checkpoints import load_into
from pipeline.models.measure import count_macs, count_params
from pipeline.models.spec import build_model
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits
from pipeline.stages.models import load_model, save_model
from pipeline.train import accuracy, fit, predict, set_seed

TOOLS = ["torch", "numpy"]


def _describe(model, splits, ctx: StageContext) -> None:
    shape = (1, *splits.input_shape)
    ctx.metrics.update(
        val_accuracy=accuracy(predict(model, splits.x_val), splits.y_val),
        test_accuracy=accuracy(predict(model, splits.x_test), splits.y_test),
        params=count_params(model), macs=count_macs(model, shape))


def run_teacher(runner: Runner, recipe, data: StageResult) -> StageResult:
    cfg = recipe.teacher
    ckpt = cfg.checkpoint

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        c, n = splits.input_shape[0], splits.num_classes
        set_seed(recipe.seed)  # the initial weights are part of a reproducible teacher
        model = build_model(cfg.model, cfg.kwargs, c, n)
        if ckpt:
            model = load_into(model, ckpt, allow_pickle=cfg.allow_pickle)
            ctx.notes.append(f"teacher loaded from {ckpt}")
        else:
            t = cfg.train
            hist = fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=t.epochs, lr=t.lr,
                       batch_size=t.batch_size, momentum=t.momentum, weight_decay=t.weight_decay,
                       seed=recipe.seed, do_augment=recipe.data.augment, hflip=recipe.data.hflip, desc="teacher")
            ctx.notes.append(f"teacher trained here for {t.epochs} epochs (best val epoch {hist.best_epoch})")
        model.eval()
        save_model(model, ctx.dir, cfg.model, cfg.kwargs, c, n)
        _describe(model, splits, ctx)

    config = {"teacher": cfg.model_dump(mode="json", exclude={"finetune", "min_accuracy"}), "seed": recipe.seed,
              "augment": recipe.data.augment}
    if ckpt:
        config["teacher"].pop("train")
    extra = sha256_file(ckpt) if ckpt and Path(ckpt).is_file() else None
    res = runner.stage("teacher", fn, config=config, inputs={"data": data}, tools=TOOLS, extra_key=extra)
    if cfg.finetune.epochs > 0:
        res = run_finetune(runner, recipe, data, res)
    check_min_accuracy(recipe, res)
    return res


def run_finetune(runner: Runner, recipe, data: StageResult, teacher: StageResult) -> StageResult:
    ft = recipe.teacher.finetune

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        model = load_model(teacher.dir).train()
        before = accuracy(predict(model, splits.x_val), splits.y_val)
        t = recipe.teacher.train
        fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=ft.epochs, lr=ft.lr,
            batch_size=t.batch_size, momentum=t.momentum, weight_decay=t.weight_decay, seed=recipe.seed,
            do_augment=recipe.data.augment, hflip=recipe.data.hflip, desc="teacher finetune")
        model.eval()
        info = __import__("json").loads((teacher.dir / "model.json").read_text())
        save_model(model, ctx.dir, info["spec"], info["kwargs"], info["in_channels"], info["num_classes"])
        _describe(model, splits, ctx)
        ctx.metrics["val_accuracy_before_finetune"] = before
        ctx.notes.append(f"teacher adapted for {ft.epochs} epochs: val accuracy {before:.3f} -> "
                         f"{ctx.metrics['val_accuracy']:.3f}")

    return runner.stage("teacher_finetune", fn, config=ft.model_dump(mode="json") | {"seed": recipe.seed},
                        inputs={"data": data, "teacher": teacher}, tools=TOOLS)


def check_min_accuracy(recipe, teacher: StageResult) -> None:
    acc = teacher.metrics["val_accuracy"]
    need = recipe.teacher.min_accuracy
    if acc < need:
        raise GateError(
            f"the teacher scores {acc:.3f} on the validation split, below teacher.min_accuracy={need}; "
            "a teacher that does not know this data can make distillation worse than training the student alone",
            hint="adapt it first with --set teacher.finetune.epochs=5 (its own cached stage), "
                 "or give a teacher trained on this kind of images")
