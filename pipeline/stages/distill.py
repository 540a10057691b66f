"""distill: train the student from the teacher with the recipe's named, weighted loss terms."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.distill.losses import build_criterion, check_finite
from pipeline.models.measure import count_macs, count_params, macs_ratio
from pipeline.models.spec import build_model
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits
from pipeline.stages.models import load_model, save_model
from pipeline.stages.teacher import check_accepts_input
from pipeline.train import accuracy, fit, predict

TOOLS = ["torch", "numpy"]


def needs_features(terms) -> bool:
    return any(t.name in ("fitnet", "at") for t in terms)


def make_kd_loss(student, teacher, terms, x_train: np.ndarray, cache_outputs: bool):
    """The loss closure for `fit`: student forward, teacher forward (or its cached logits), terms."""
    example = torch.from_numpy(x_train[:2])
    criterion = build_criterion(terms, student, teacher, example)
    cached = None
    if cache_outputs:
        # Only valid when the teacher sees exactly the stored images (no random augmentation).
        cached = torch.from_numpy(predict(teacher, x_train))
        check_finite(cached, "the teacher's outputs", 0)
    state = {"step": 0}

    def loss_fn(model, xb, yb, idx, epoch):
        check_finite(xb, "the input batch", state["step"])
        with torch.no_grad():
            t_out = cached[idx] if cached is not None else teacher(xb)
        check_finite(t_out, "the teacher's outputs", state["step"])
        s_out = model(xb)
        # mdistiller counts epochs from 1 (DKD warm-up); fit's loop counts from 0.
        criterion.train(model.training)
        total, parts = criterion(s_out, t_out, yb, epoch + 1)
        state["step"] += 1
        return total, parts

    return loss_fn, criterion


def distill_student(student, teacher, splits, cfg, seed: int, augment: bool, hflip: bool, desc: str = "distill"):
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cache = cfg.cache_teacher_outputs and not augment and not needs_features(cfg.losses)
    loss_fn, criterion = make_kd_loss(student, teacher, cfg.losses, splits.x_train, cache)
    try:
        hist = fit(student, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=cfg.epochs, lr=cfg.lr,
                   batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed,
                   loss_fn=loss_fn, extra_params=list(criterion.parameters()), do_augment=augment, hflip=hflip,
                   desc=desc)
    finally:
        criterion.close()
    return hist, cache


def describe_student(ctx: StageContext, student, splits, hist, cached: bool, cfg, scfg, teacher: StageResult) -> None:
    """Metrics and notes of a distilled student (shared with the DDP path, pipeline/ddp.py)."""
    from pipeline.stages.teacher import teacher_below_student_note

    c = splits.input_shape[0]
    shape = (1, c, *splits.input_shape[1:])
    ctx.metrics.update(val_accuracy=hist.best_val_accuracy, best_epoch=hist.best_epoch,
                       test_accuracy=accuracy(predict(student, splits.x_test), splits.y_test),
                       params=count_params(student), macs=count_macs(student, shape),
                       history=hist.epochs, teacher_outputs_cached=cached,
                       losses=[t.model_dump(mode="json", exclude_none=True) for t in cfg.losses])
    ratio = macs_ratio(ctx.metrics["macs"], teacher.metrics.get("macs"))
    ctx.metrics["macs_ratio_vs_teacher"] = ratio
    if ratio is None:
        ctx.notes.append("student/teacher MACs ratio: unknown (the MACs of "
                         + ("the teacher" if not teacher.metrics.get("macs") else "the student")
                         + " could not be counted)")
    elif ratio > scfg.max_macs_ratio:
        ctx.notes.append(f"warning: the student has {ratio:.2f}x the teacher's MACs "
                         f"(more than student.max_macs_ratio={scfg.max_macs_ratio})")
    note = teacher_below_student_note(teacher.metrics.get("val_accuracy"), hist.best_val_accuracy)
    if note:
        ctx.notes.append(note)


def run_distill(runner: Runner, recipe, data: StageResult, teacher: StageResult) -> StageResult:
    cfg, scfg = recipe.distill, recipe.student

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        c, n = splits.input_shape[0], splits.num_classes
        torch.manual_seed(recipe.seed)
        student = build_model(scfg.model, scfg.kwargs, c, n)
        student = check_accepts_input(student, splits.x_train, n, "student", scfg.model, scfg.output)
        from pipeline.models.onnx_check import check_exportable

        # Before any training: a student ONNX cannot export would only fail at the export stage.
        check_exportable(student, torch.from_numpy(splits.x_train[:1]), recipe.export.opset, "student", scfg.model)
        t_model = load_model(teacher.dir)
        hist, cached = distill_student(student, t_model, splits, cfg, recipe.seed, recipe.data.augment,
                                       recipe.data.hflip)
        student.eval()
        save_model(student, ctx.dir, scfg.model, scfg.kwargs, c, n)
        describe_student(ctx, student, splits, hist, cached, cfg, scfg, teacher)

    config = {"distill": cfg.model_dump(mode="json", exclude={"nproc"}), "student": scfg.model_dump(mode="json"),
              "seed": recipe.seed, "augment": recipe.data.augment, "hflip": recipe.data.hflip}
    from pipeline.models.spec import spec_fingerprint

    # The student's own code (a user file and what it imports) is part of the key; the training code is in
    # the import closure of this module, which the runner hashes.
    return runner.stage("distill", fn, config=config, inputs={"data": data, "teacher": teacher}, tools=TOOLS,
                        extra_key={"student_code": spec_fingerprint(scfg.model)})
