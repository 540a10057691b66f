"""teacher: load the user's checkpoint or train the teacher here; optionally adapt it (finetune).

The teacher is evaluated on the validation split before distilling: a teacher that does not
know the user's data can make KD worse than training the student alone.
"""
from __future__ import annotations

import json

import copy
from pathlib import Path

from pipeline.artifacts import sha256_file
from pipeline.data.augment import augmenter_for
from pipeline.device import from_recipe, recipe_key
from pipeline.errors import ConfigError, GateError
from pipeline.models.checkpoints import load_into
from pipeline.models.measure import count_macs, count_params
from pipeline.models.spec import build_model
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits
from pipeline.stats import two_proportion_p
from pipeline.stages.models import load_model, save_model
from pipeline.train import accuracy, fit, predict, set_seed

TOOLS = ["torch", "numpy"]


def check_accepts_input(model, x, num_classes: int, role: str, spec: str, output=None):
    """One eval-mode forward on two samples: a model built for other inputs stops here with a clear
    message (exit 2) instead of a traceback from inside the training loop. Returns the model whose forward
    gives the logits (`output`: the recipe's teacher.output / student.output, see pipeline/models/outputs.py)."""
    import torch

    from pipeline.models.outputs import resolve_path, with_logits

    example = torch.from_numpy(x[:2])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:  # the user's model: one line naming the model and the input shape
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"the {role} model {spec} rejects the data's input shape (N, C, H, W) = "
                          f"{tuple(example.shape)}: {type(e).__name__}: {first}",
                          hint="set data.channels / data.input_size to what the model expects, or build the model "
                               "for this input (it receives in_channels and num_classes when it accepts them)") from None
    finally:
        model.train(was_training)
    structured = out
    if isinstance(out, torch.Tensor):  # a model may return more in training mode (aux logits): look there too
        structured = _train_mode_output(model, example, role, spec)
    path = resolve_path(structured if not isinstance(structured, torch.Tensor) else out, output, num_classes,
                        len(example), role, spec)
    model = with_logits(model, path)
    if path and not isinstance(out, torch.Tensor):
        from pipeline.models.outputs import follow

        out = follow(out, path)
    if isinstance(out, torch.Tensor) and (out.ndim != 2 or out.shape[1] != num_classes):
        raise ConfigError(f"the {role} model {spec} gives outputs of shape {tuple(out.shape)}; the data has "
                          f"{num_classes} classes, so (N, {num_classes}) logits are expected",
                          hint="build the model with num_classes (it is passed when the callable accepts it), "
                               "or set its kwargs")
    return model


def split_origin(splits, name: str) -> str:
    if name in getattr(splits, "fixed_splits", []):
        return f"the dataset's own {name} split"
    return f"the {name} split carved from train here"


def teacher_split_note(splits, val_acc: float, test_acc: float, alpha: float = 0.01) -> list[str]:
    """Say which split each teacher figure comes from; warn when the fixed test split disagrees with the
    carved validation split by more than sampling error (a pretrained teacher may have seen the train images,
    or the test images differ in domain)."""
    nv, nt = len(splits.y_val), len(splits.y_test)
    notes = [f"teacher accuracy: {val_acc:.4f} on validation ({split_origin(splits, 'val')}, n={nv}), "
             f"{test_acc:.4f} on test ({split_origin(splits, 'test')}, n={nt})"]
    if "test" in getattr(splits, "fixed_splits", []) and "val" not in getattr(splits, "fixed_splits", []):
        p = two_proportion_p(round(val_acc * nv), nv, round(test_acc * nt), nt)
        if p < alpha:
            notes.append(f"warning: the teacher scores {val_acc:.4f} on the validation split carved from train but "
                         f"{test_acc:.4f} on the dataset's fixed test split (two-proportion test p={p:.2g}): more "
                         "than sampling error; a pretrained teacher may have seen these training images, or the test "
                         "images differ from the training ones - judge the teacher by its test figure")
    return notes


def _train_mode_output(model, example, role: str, spec: str):
    """The forward's output in training mode (some models add aux logits there), leaving no trace: no
    gradients, BatchNorm statistics and the random state restored."""
    import torch

    was_training = model.training
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.train()
            return model(example)
    except Exception as e:  # the user's model in training mode: one line naming it (exit 2)
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"the {role} model {spec} fails in training mode on a batch of shape "
                          f"{tuple(example.shape)}: {type(e).__name__}: {first}",
                          hint="check the model's training-mode forward (it must take only the image batch)") from None
    finally:
        model.load_state_dict(saved)
        model.train(was_training)


def _describe(model, splits, ctx: StageContext) -> None:
    shape = (1, *splits.input_shape)
    ctx.metrics.update(
        val_accuracy=accuracy(predict(model, splits.x_val), splits.y_val),
        test_accuracy=accuracy(predict(model, splits.x_test), splits.y_test),
        params=count_params(model), macs=count_macs(model, shape),
        val_count=int(len(splits.y_val)), num_classes=int(splits.num_classes))
    ctx.metrics["accuracy_splits"] = {"val": split_origin(splits, "val"), "test": split_origin(splits, "test")}
    ctx.notes.extend(teacher_split_note(splits, ctx.metrics["val_accuracy"], ctx.metrics["test_accuracy"]))


def run_teacher(runner: Runner, recipe, data: StageResult) -> StageResult:
    cfg = recipe.teacher
    ckpt = cfg.checkpoint

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        c, n = splits.input_shape[0], splits.num_classes
        set_seed(recipe.seed)  # the initial weights are part of a reproducible teacher
        model = build_model(cfg.model, cfg.kwargs, c, n)
        if ckpt:
            replaced: dict = {}
            model = load_into(model, ckpt, allow_pickle=cfg.allow_pickle, kwargs=cfg.kwargs, notes=ctx.notes,
                              head=cfg.head, replaced=replaced)
            ctx.notes.append(f"teacher loaded from {ckpt}")
            if replaced:
                ctx.metrics["head_replaced"] = replaced
        model = check_accepts_input(model, splits.x_train, n, "teacher", cfg.model, cfg.output)
        import torch

        from pipeline.models.onnx_check import check_exportable

        check_exportable(model, torch.from_numpy(splits.x_train[:1]), recipe.export.opset, "teacher", cfg.model)
        if not ckpt:
            t = cfg.train
            compute = from_recipe(recipe)
            compute.apply_threads()
            hist = fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=t.epochs, lr=t.lr,
                       batch_size=t.batch_size, momentum=t.momentum, weight_decay=t.weight_decay,
                       seed=recipe.seed, augmenter=augmenter_for(recipe.data), desc="teacher", compute=compute,
                       workers=recipe.data.workers, notes=ctx.notes)
            ctx.metrics["compute"] = compute.describe()
            ctx.notes.append(f"teacher trained here for {t.epochs} epochs (best val epoch {hist.best_epoch})")
        model.eval()
        save_model(model, ctx.dir, cfg.model, cfg.kwargs, c, n)
        _describe(model, splits, ctx)

    config = {"teacher": cfg.model_dump(mode="json", exclude={"finetune", "min_accuracy"}), "seed": recipe.seed,
              "augment": recipe.data.augment, "hflip": recipe.data.augment and recipe.data.hflip}
    if not ckpt:
        config["compute"] = recipe_key(recipe)
    if ckpt:
        config["teacher"].pop("train")
    extra = sha256_file(ckpt) if ckpt and Path(ckpt).is_file() else None
    from pipeline.models.spec import spec_fingerprint

    res = runner.stage("teacher", fn, config=config, inputs={"data": data}, tools=TOOLS,
                       extra_key={"checkpoint": extra, "model_code": spec_fingerprint(cfg.model)})
    replaced = res.metrics.get("head_replaced")
    if cfg.finetune.epochs > 0 or replaced:
        res = run_finetune(runner, recipe, data, res, heads=(replaced or {}).get("modules"))
    check_min_accuracy(recipe, res)
    return res


def run_finetune(runner: Runner, recipe, data: StageResult, teacher: StageResult,
                 heads: list[str] | None = None) -> StageResult:
    """Adapt the teacher; after a head replacement (`heads`) for finetune.head_epochs when finetune.epochs is 0,
    the new heads at finetune.lr and the backbone at lr * finetune.backbone_lr_scale."""
    ft = recipe.teacher.finetune
    epochs = ft.epochs or (ft.head_epochs if heads else 0)
    scale = ft.backbone_lr_scale if heads else 1.0

    def fn(ctx: StageContext) -> None:
        splits = read_splits(data)
        model = load_model(teacher.dir).train()
        before = accuracy(predict(model, splits.x_val), splits.y_val)
        original = copy.deepcopy(model.state_dict())
        t = recipe.teacher.train
        compute = from_recipe(recipe)
        compute.apply_threads()
        hist = fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=epochs, lr=ft.lr,
                   batch_size=t.batch_size, momentum=t.momentum, weight_decay=t.weight_decay, seed=recipe.seed,
                   augmenter=augmenter_for(recipe.data), desc="teacher finetune", compute=compute,
                   workers=recipe.data.workers, head_modules=heads, backbone_lr_scale=scale)
        if hist.best_val_accuracy < before:  # adapting made it worse: hand on the teacher as given
            model.load_state_dict(original)
            ctx.notes.append(f"teacher finetune lowered the validation accuracy ({before:.3f} -> "
                             f"{hist.best_val_accuracy:.3f}): the original weights are kept; try a lower "
                             "teacher.finetune.lr")
        model.eval()
        info = json.loads((teacher.dir / "model.json").read_text())
        save_model(model, ctx.dir, info["spec"], info["kwargs"], info["in_channels"], info["num_classes"])
        _describe(model, splits, ctx)
        ctx.metrics["val_accuracy_before_finetune"] = before
        ctx.metrics["finetune_epochs"] = epochs
        if "head_replaced" in teacher.metrics:
            ctx.metrics["head_replaced"] = teacher.metrics["head_replaced"]
        lrs = f" (new head at lr {ft.lr:g}, backbone at {ft.lr * scale:g})" if heads else ""
        ctx.notes.append(f"teacher adapted for {epochs} epochs{lrs}: val accuracy {before:.3f} -> "
                         f"{ctx.metrics['val_accuracy']:.3f}")

    t = recipe.teacher.train
    config = ft.model_dump(mode="json") | {"epochs": epochs, "backbone_lr_scale": scale, "heads": heads or [],
        "seed": recipe.seed, "augment": recipe.data.augment, "hflip": recipe.data.augment and recipe.data.hflip,
        # fit() also uses these from teacher.train: they belong in the key
        "batch_size": t.batch_size, "momentum": t.momentum, "weight_decay": t.weight_decay,
        "compute": recipe_key(recipe)}
    return runner.stage("teacher_finetune", fn, config=config, inputs={"data": data, "teacher": teacher},
                        tools=TOOLS, label=f"teacher finetune [{epochs} epochs]")


def chance_gate(acc: float, n_val: int, num_classes: int) -> tuple[bool, str]:
    """(below, description): whether a teacher scoring `acc` on `n_val` validation images is not better than
    chance (1/num_classes) beyond sampling error: the lower end of its 95% Wilson interval is not above it."""
    from pipeline.stats import wilson_interval

    chance = 1.0 / max(num_classes, 1)
    lo, hi = wilson_interval(round(acc * n_val), n_val)
    return lo <= chance, (f"95% interval {lo:.3f}..{hi:.3f} on n={n_val} does not exclude chance "
                          f"1/{num_classes}={chance:.3f}")


def check_min_accuracy(recipe, teacher: StageResult) -> None:
    acc = teacher.metrics["val_accuracy"]
    need = recipe.teacher.min_accuracy
    if need == "chance":
        n_val, k = teacher.metrics.get("val_count"), teacher.metrics.get("num_classes")
        if not n_val or not k:
            return
        below, why = chance_gate(acc, int(n_val), int(k))
        if not below:
            return
        need = f"'chance' ({why})"
    elif acc >= need:
        return
    ft = recipe.teacher.finetune
    epochs = int(teacher.metrics.get("finetune_epochs", ft.epochs))
    if epochs > 0:
        done = (f" after adapting it for {epochs} epochs (from "
                f"{teacher.metrics.get('val_accuracy_before_finetune', float('nan')):.3f})")
        hint = (f"adapt it longer: raise teacher.finetune.epochs (now {epochs}) or teacher.finetune.lr "
                f"(now {ft.lr}), or give a teacher trained on this kind of images")
    else:
        done = ""
        hint = ("adapt it first with --set teacher.finetune.epochs=5 (its own cached stage), "
                "or give a teacher trained on this kind of images")
        if not recipe.teacher.checkpoint:
            hint += f"; this teacher was trained here: raise teacher.train.epochs (now {recipe.teacher.train.epochs})"
    raise GateError(
        f"the teacher scores {acc:.3f} on the validation split{done}, below teacher.min_accuracy={need}; "
        "a teacher that does not know this data can make distillation worse than training the student alone",
        hint=hint + "; or lower the gate with --set teacher.min_accuracy=0")


def teacher_below_student_note(teacher_val: float | None, student_val: float | None) -> str | None:
    """A warning when the teacher scores below the distilled student on the validation split.

    Such a teacher pulls the student towards worse answers: training the student alone (or adapting
    the teacher first with teacher.finetune) is then expected to do better than KD.
    """
    if teacher_val is None or student_val is None or teacher_val >= student_val:
        return None
    return ("teacher scores below the student on this data: KD may hurt; consider teacher.finetune "
            f"(validation accuracy: teacher {teacher_val:.4f} < student {student_val:.4f})")
