"""distill: train the student from the teacher with the recipe's named, weighted loss terms."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.augment import augmenter_for
from pipeline.device import from_recipe, recipe_key
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


def make_kd_loss(student, teacher, terms, x_train, cache_outputs: bool, compute=None, views=None,
                 teacher_forward=None):
    """The loss closure for `fit`: student forward, teacher forward (or its cached logits), terms.

    The teacher runs under inference_mode (no_grad when a term reads its features: those enter the
    loss's graph). `views`: TeacherViews whose logits for the batch's chosen views replace the forward.
    `teacher_forward`: what computes the teacher's logits (default the teacher; pipeline/distill/fast_teacher.py
    gives a frozen copy for fp32 on the CPU); feature terms always use the teacher's own modules (hooks)."""
    example = torch.from_numpy(x_train[:2])
    if compute is not None:
        example = compute.input(example)
    criterion = build_criterion(terms, student, teacher, example)
    if compute is not None:
        criterion.to(compute.device)
    t_fwd = teacher if teacher_forward is None or needs_features(terms) else teacher_forward
    cached = None
    if cache_outputs:
        # Only valid when the teacher sees exactly the stored images (no random augmentation).
        cached = torch.from_numpy(predict(t_fwd, x_train, compute=compute))
        check_finite(cached, "the teacher's outputs", 0)
    no_grad = torch.no_grad if needs_features(terms) else torch.inference_mode
    state = {"step": 0}

    def loss_fn(model, xb, yb, idx, epoch):
        check_finite(xb, "the input batch", state["step"])
        if cached is not None:
            t_out = cached[idx].to(xb.device)
        elif views is not None:
            t_out = views.current.to(xb.device)
        else:
            with no_grad():
                t_out = t_fwd(xb).float()
            t_out = t_out.clone()  # an inference-mode tensor cannot enter the student's graph
        check_finite(t_out, "the teacher's outputs", state["step"])
        s_out = model(xb).float()
        # mdistiller counts epochs from 1 (DKD warm-up); fit's loop counts from 0.
        criterion.train(model.training)
        total, parts = criterion(s_out, t_out, yb, epoch + 1)
        state["step"] += 1
        return total, parts

    return loss_fn, criterion


def term_descriptions(criterion) -> dict[str, str]:
    """{loss part name: 'fitnet on layer3 -> Mixed_6e (weight 1)'} for the divergence message."""
    out = {}
    for name, spec in zip(criterion.names, criterion.specs):
        where = ""
        if spec.student_layer is not None:
            where = f" on {spec.student_layer} -> {spec.teacher_layer}"
        out[name] = f"{name}{where} (weight {spec.weight:g})"
    return out


def distill_student(student, teacher, splits, cfg, seed: int, augment: bool, hflip: bool, desc: str = "distill",
                    augmenter=None, compute=None, workers: int = 0, notes: list | None = None,
                    head_modules: list[str] | None = None, backbone_lr_scale: float = 1.0,
                    info: dict | None = None):
    """KD of `student` from `teacher` on the splits; returns (History, how the teacher's outputs were got:
    False (online), True (cached, no augmentation) or the number of cached augmented views). `info`, when
    given, receives "teacher_forward": "frozen" or "eager (<why>)" (pipeline/distill/fast_teacher.py)."""
    from pipeline.data.augment import Augmenter
    from pipeline.device import resolve
    from pipeline.distill.fast_teacher import inference_teacher
    from pipeline.distill.views import TeacherViews, default_views

    compute = compute or resolve("cpu", "fp32", channels_last=False)
    compute.apply_threads()
    if augmenter is None and augment:
        augmenter = Augmenter("padcrop", int(splits.x_train.shape[-1]), hflip)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    compute.prepare(teacher)
    compute.prepare(student)
    feats = needs_features(cfg.losses)
    cache = cfg.cache_teacher_outputs and augmenter is None and not feats
    k = cfg.teacher_views if cfg.teacher_views is not None else default_views(cfg.epochs)
    t_fwd, how_fwd = teacher, "eager (a feature loss term taps the teacher's modules)"
    if not feats:
        t_fwd, how_fwd = inference_teacher(teacher, compute.input(torch.from_numpy(np.asarray(splits.x_train[:4]))),
                                           compute)
    if info is not None:
        info["teacher_forward"] = how_fwd
    views = None
    if augmenter is not None and k > 0 and not feats:
        from pipeline.train import progress_line

        views = TeacherViews(t_fwd, splits.x_train, augmenter, k, seed, compute, progress=progress_line(desc))
    elif augmenter is not None and k > 0 and notes is not None:
        notes.append("distill.teacher_views ignored: a feature loss term (fitnet/at) needs the teacher online")
    loss_fn, criterion = make_kd_loss(student, teacher, cfg.losses, splits.x_train, cache, compute, views, t_fwd)
    try:
        hist = fit(student, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=cfg.epochs, lr=cfg.lr,
                   batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed,
                   loss_fn=loss_fn, extra_params=list(criterion.parameters()), augmenter=augmenter, desc=desc,
                   compute=compute, views=views, workers=workers, loss_terms=term_descriptions(criterion),
                   head_modules=head_modules, backbone_lr_scale=backbone_lr_scale, notes=notes)
    finally:
        criterion.close()
        criterion.to("cpu")
        teacher.to("cpu", memory_format=torch.contiguous_format)
        if views is not None:
            views.close()
    return hist, (views.k if views is not None else cache)


def describe_student(ctx: StageContext, student, splits, hist, cached: bool, cfg, scfg, teacher: StageResult) -> None:
    """Metrics and notes of a distilled student (shared with the DDP path, pipeline/ddp.py)."""
    from pipeline.stages.teacher import teacher_below_student_note

    c = splits.input_shape[0]
    shape = (1, c, *splits.input_shape[1:])
    ctx.metrics.update(val_accuracy=hist.best_val_accuracy, best_epoch=hist.best_epoch,
                       test_accuracy=accuracy(predict(student, splits.x_test), splits.y_test),
                       params=count_params(student), macs=count_macs(student, shape),
                       history=hist.epochs, teacher_outputs_cached=cached is True,
                       teacher_views=0 if isinstance(cached, bool) else int(cached),
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
        replaced: dict = {}
        if scfg.checkpoint:
            from pipeline.models.checkpoints import load_into

            student = load_into(student, scfg.checkpoint, allow_pickle=scfg.allow_pickle, kwargs=scfg.kwargs,
                                field="student", notes=ctx.notes, head=scfg.head, replaced=replaced)
            ctx.notes.append(f"student starts from {scfg.checkpoint}")
            if replaced:
                ctx.metrics["head_replaced"] = replaced
        student = check_accepts_input(student, splits.x_train, n, "student", scfg.model, scfg.output)
        from pipeline.models.onnx_check import check_exportable

        # Before any training: a student ONNX cannot export would only fail at the export stage.
        check_exportable(student, torch.from_numpy(splits.x_train[:1]), recipe.export.opset, "student", scfg.model)
        t_model = load_model(teacher.dir)
        compute = from_recipe(recipe)
        info: dict = {}
        hist, cached = distill_student(student, t_model, splits, cfg, recipe.seed, recipe.data.augment,
                                       recipe.data.hflip, augmenter=augmenter_for(recipe.data), compute=compute,
                                       workers=recipe.data.workers, notes=ctx.notes, info=info)
        ctx.metrics["compute"] = compute.describe()
        ctx.metrics["teacher_forward"] = info.get("teacher_forward")
        student.eval()
        save_model(student, ctx.dir, scfg.model, scfg.kwargs, c, n)
        describe_student(ctx, student, splits, hist, cached, cfg, scfg, teacher)

    config = {"distill": cfg.model_dump(mode="json", exclude={"nproc"}), "student": scfg.model_dump(mode="json"),
              "seed": recipe.seed, "augment": recipe.data.augment, "hflip": recipe.data.hflip,
              "compute": recipe_key(recipe)}
    from pipeline.models.spec import spec_fingerprint

    # The student's own code (a user file and what it imports) is part of the key; the training code is in
    # the import closure of this module, which the runner hashes.
    from pipeline.artifacts import sha256_file

    ck = scfg.checkpoint
    extra: dict = {"student_code": spec_fingerprint(scfg.model)}
    if ck:
        extra["student_checkpoint"] = sha256_file(ck) if Path(ck).is_file() else None
    return runner.stage("distill", fn, config=config, inputs={"data": data, "teacher": teacher}, tools=TOOLS,
                        extra_key=extra)
