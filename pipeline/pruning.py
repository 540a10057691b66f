"""Pruning of the distilled student, then knowledge-distillation recovery from the teacher.

Structured (``prune.method: structured``, the default) removes whole channels with torch-pruning's
dependency graph (DepGraph), ranking them by group L2 magnitude (``GroupMagnitudeImportance(p=2)``),
so the result is a smaller dense model that every runtime runs faster:

- ``prune.ratio``: fraction of each layer's channels removed (per layer), or of all channels
  (``global_pruning: true``, one ranking over the network);
- ``prune.target_macs_ratio``: prune in small steps until MACs <= that fraction of the original;
- ``prune.steps``: prune -> recover rounds; round i removes up to ``ratio * i / steps`` (or reaches
  ``target ** (i / steps)``), and the recovery epochs are split over the rounds;
- ``prune.round_to``: remaining channel counts are multiples of this (tensor-core / SIMD friendly);
- the classifier (the last Linear, else the last conv) and ``prune.exclude`` keep their output
  channels (their input channels follow the layer before them).

torch-pruning cannot follow every channel coupling: channel padding with ``F.pad`` (option-A CIFAR
ResNet shortcuts, docs/TOOLCHAIN.md) is traced as an element-wise op, and the pruned model then fails its forward.
Every pruned model is therefore checked (forward on a real batch, then ONNX export run in ONNX Runtime
against PyTorch); when the forward fails, each channel group is pruned alone on a copy to find the groups
that break it, those are excluded (named in the stage notes) and pruning runs again. If the model still
fails, the stage stops with a :class:`PipelineError` naming the layers; no artifact is written.

With ``benchmark.enabled`` the FP32 latency before/after is measured with ONNX Runtime; structured pruning
also runs the INT8 check (``prune.int8_check``, :mod:`pipeline.prune_int8`): INT8 latency ratio beside the
MACs ratio and, when it stays above ``prune.int8_threshold``, the modules that hold it and a measured
``prune.round_to`` fix (candidates pruned by :func:`prune_copy`, offered in a note, never applied).

Unstructured (``prune.method: unstructured``) zeroes the smallest-magnitude weights of conv/linear layers
with ``torch.nn.utils.prune`` (global or per layer), keeps the masks during recovery, then makes them
permanent. Dense runtimes (ONNX Runtime, OpenVINO, TensorRT, LiteRT) do not run such a model faster.
"""
from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, PipelineError
from pipeline.measure.in_process import measure_ort_latency
from pipeline.models.measure import count_macs, count_params
from pipeline.train import accuracy, predict

# Progressive search for prune.target_macs_ratio: at most this fraction of any layer's channels, in this many
# small steps (torch-pruning's own benchmark prunes towards a speed-up the same way).
TARGET_MAX_RATIO = 0.95
TARGET_SEARCH_STEPS = 100

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# --------------------------------------------------------------------------------------------- helpers


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def classifier_name(model: nn.Module) -> str | None:
    """The layer that produces the logits: the last Linear in module order, else the last conv."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]
    return convs[-1] if convs else None


def resolve_exclude(model: nn.Module, names: list[str]) -> list[str]:
    """Check the user's `prune.exclude` paths against the model; ConfigError naming the unknown ones."""
    import difflib

    known = dict(model.named_modules())
    bad = [n for n in names if n not in known or n == ""]
    if bad:
        layers = [n for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]
        sugg = {b: difflib.get_close_matches(b, list(known), n=2) for b in bad}
        near = "; ".join(f"{b!r} -> did you mean {', '.join(map(repr, s))}?" for b, s in sugg.items() if s)
        raise ConfigError(f"prune.exclude names module path(s) the student does not have: {bad}"
                          + (f" ({near})" if near else ""),
                          hint=f"use paths from model.named_modules(); its conv/linear layers are: {', '.join(layers)}")
    return list(dict.fromkeys(names))


def layer_channels(model: nn.Module) -> dict[str, list[int]]:
    """{conv/linear path: [in, out]} channel counts."""
    out: dict[str, list[Any]] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[n] = [m.in_features, m.out_features]
        elif isinstance(m, _PRUNABLE):
            out[n] = [m.in_channels, m.out_channels]
    return out


def _empty_layers(model: nn.Module) -> list[str]:
    return [n for n, (cin, cout) in layer_channels(model).items() if cin == 0 or cout == 0]


def check_forward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Run a real batch; raise RuntimeError when the output is not (batch, num_classes) and finite."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(f"output shape {shape}, expected {(len(x), num_classes)}")
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite outputs")


def onnx_check(model: nn.Module, x: np.ndarray, opset: int, max_abs_diff: float, folder: Path,
               what: str = "the pruned model") -> dict[str, float]:
    """Export to ONNX, run it in ONNX Runtime and compare with PyTorch; PipelineError when it differs."""
    from pipeline.stages.export import export_onnx, ort_logits, parity

    path = Path(folder) / "check.onnx"
    try:
        export_onnx(model, torch.from_numpy(x[:1]), path, opset)
        got = ort_logits(path, x)
    except Exception as e:
        raise PipelineError(f"{what} does not export to ONNX or does not run in ONNX Runtime: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                            hint="exclude the layers involved with prune.exclude, or disable pruning") from None
    p = parity(predict(model, x), got)
    if p["max_abs_diff"] > max_abs_diff:
        raise PipelineError(f"{what} gives different logits in ONNX Runtime than in PyTorch "
                            f"(max |diff| {p['max_abs_diff']:.2e} > export.max_abs_diff {max_abs_diff:g})",
                            hint="exclude the layers involved with prune.exclude, or disable pruning")
    return p


# --------------------------------------------------------------------------------------------- structured


def _tp():
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - torch-pruning is a core dependency
        from pipeline.errors import MissingDependency

        raise MissingDependency("structured pruning needs torch-pruning", hint="pip install torch-pruning") from None
    return tp


def _group_members(DG, group, names: dict[nn.Module, str]) -> tuple[list[str], list[str]]:
    """Layers whose output channels a group removes, and the traced non-module ops it passes through."""
    layers, ops = [], []
    for dep, _ in group:
        mod = dep.target.module
        if mod in names:
            if DG.is_out_channel_pruning_fn(dep.handler) and names[mod] not in layers:
                layers.append(names[mod])
        else:
            op = str(mod)
            if op not in ops:
                ops.append(op)
    return layers, ops


def _describe_ops(ops: list[str]) -> str:
    kinds = []
    for op in ops:
        if "ConstantPad" in op or "Pad" in op:
            kinds.append("F.pad (channel padding)")
        elif "Add" in op:
            kinds.append("add")
        elif "Cat" in op:
            kinds.append("cat")
    return ", ".join(dict.fromkeys(kinds))


def find_broken_groups(model: nn.Module, example: torch.Tensor, check_x: torch.Tensor, num_classes: int,
                       ignored: list[str], ratio: float) -> list[dict[str, Any]]:
    """Prune each channel group alone (on a copy) and return the groups after which the forward fails.

    Each entry: root (the layer the group is named after), layers (every layer whose output channels the
    group removes), through (traced ops between them, e.g. F.pad), error (what the forward said).
    """
    tp = _tp()
    probe = copy.deepcopy(model).eval()
    DG = tp.DependencyGraph().build_dependency(probe, example_inputs=example)
    names = module_names(probe)
    ignored_mods = [probe.get_submodule(n) for n in ignored]
    groups = []
    for group in DG.get_all_groups(ignored_layers=ignored_mods, root_module_types=list(_PRUNABLE)):
        root = group[0].dep.target.module
        if root in names:
            layers, ops = _group_members(DG, group, names)
            groups.append((names[root], layers, ops))
    broken = []
    for root, layers, ops in groups:
        trial = copy.deepcopy(model).eval()
        dg = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
        mod = trial.get_submodule(root)
        n = dg.get_out_channels(mod)
        if not n or n < 2:
            continue
        k = max(1, min(n - 1, int(n * ratio)))
        try:
            dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, idxs=list(range(k))).prune()
            check_forward(trial, check_x, num_classes)
        except Exception as e:  # noqa: BLE001 - any failure marks the group as one the graph does not follow
            broken.append({"root": root, "layers": layers, "through": _describe_ops(ops),
                           "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
    return broken


@dataclass
class StructuredPlan:
    """What to prune: resolved from the recipe and the model."""

    classifier: str | None
    user_exclude: list[str]
    auto_exclude: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ignored(self) -> list[str]:
        names = ([self.classifier] if self.classifier else []) + self.user_exclude
        names += [g["root"] for g in self.auto_exclude]
        return list(dict.fromkeys(names))


class StructuredPruner:
    """Runs torch-pruning on `model` in `rounds`: round i prunes towards the i-th intermediate goal."""

    def __init__(self, model: nn.Module, example: torch.Tensor, cfg, ignored: list[str], shape: tuple[int, ...]):
        tp = _tp()
        self.model, self.cfg, self.shape = model.eval(), cfg, shape
        self.base_macs = _macs(model, shape)
        self.target = cfg.target_macs_ratio
        ignored_mods = [model.get_submodule(n) for n in ignored]
        common = dict(importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=cfg.global_pruning,
                      ignored_layers=ignored_mods, round_to=cfg.round_to)
        if self.target is not None:
            self.pruner = tp.pruner.MetaPruner(model, example, pruning_ratio=TARGET_MAX_RATIO,
                                               iterative_steps=TARGET_SEARCH_STEPS, **common)
        else:
            self.pruner = tp.pruner.MetaPruner(model, example, pruning_ratio=cfg.ratio,
                                               iterative_steps=cfg.steps, **common)
        self.macs = self.base_macs

    def _after_step(self) -> None:
        empty = _empty_layers(self.model)
        if empty:
            raise PipelineError(
                f"pruning removed every channel of {', '.join(empty)} (round_to={self.cfg.round_to} rounds the few "
                "channels left down to 0)",
                hint="lower prune.ratio / raise prune.target_macs_ratio, lower prune.round_to, or add these layers "
                     "to prune.exclude")
        self.macs = _macs(self.model, self.shape)  # a forward pass: raises when the graph broke

    def run_round(self, i: int) -> None:
        """Round i of cfg.steps (1-based)."""
        if self.target is None:
            self.pruner.step()
            self._after_step()
            if i == self.cfg.steps and self.macs >= self.base_macs:
                rt = self.cfg.round_to
                raise PipelineError(
                    f"structured pruning at prune.ratio={self.cfg.ratio} removed no channel"
                    + (f": with prune.round_to={rt} the channels left in each layer round down to 0, and "
                       "torch-pruning skips a layer it would empty" if rt and rt > 1 else ""),
                    hint="lower prune.round_to or prune.ratio, or check prune.exclude")
            return
        goal = self.target ** (i / self.cfg.steps)
        while self.macs > goal * self.base_macs and self.pruner.current_step < self.pruner.iterative_steps:
            self.pruner.step()
            self._after_step()
        if i == self.cfg.steps and self.macs > self.target * self.base_macs:
            raise PipelineError(
                f"prune.target_macs_ratio={self.target} is out of reach: pruning up to {TARGET_MAX_RATIO:.0%} of the "
                f"prunable channels left {self.macs / self.base_macs:.3f}x the MACs",
                hint="raise prune.target_macs_ratio, or remove layers from prune.exclude")


def _macs(model, shape) -> int:
    """MACs of a model being pruned: the MACs targets need a count, so an uncountable model is refused."""
    macs = count_macs(model, shape)
    if macs is None:
        raise PipelineError("the MACs of the model being pruned cannot be counted (no conv or matmul seen)",
                            hint="prune by prune.ratio on a model with conv/linear layers, or set prune.enabled=false")
    return macs


def split_epochs(total: int, rounds: int) -> list[int]:
    """Recovery epochs per prune round: as even as possible, later rounds get the remainder."""
    base, extra = divmod(total, rounds)
    return [base + (1 if i >= rounds - extra else 0) for i in range(rounds)]


def _failure_text(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def start_structured(model: nn.Module, example: torch.Tensor, check_x: torch.Tensor, num_classes: int, cfg,
                     shape: tuple[int, ...]) -> tuple[nn.Module, StructuredPruner, StructuredPlan]:
    """Build the pruner on a copy of `model` and run round 1, excluding groups the graph cannot follow.

    Returns the pruned copy (after round 1), its pruner (for later rounds) and the plan (what was excluded).
    """
    plan = StructuredPlan(classifier_name(model), resolve_exclude(model, cfg.exclude))
    probe_ratio = cfg.ratio / cfg.steps if cfg.target_macs_ratio is None else 0.5
    first_error = None
    for attempt in range(2):
        trial = copy.deepcopy(model).eval()
        try:
            pruner = StructuredPruner(trial, example, cfg, plan.ignored, shape)
            pruner.run_round(1)
            check_forward(trial, check_x, num_classes)
            return trial, pruner, plan
        except PipelineError:
            raise
        except Exception as e:  # noqa: BLE001 - torch-pruning or the pruned forward failed
            if attempt == 1:
                auto = "; ".join(f"{g['root']} (with {', '.join(g['layers'])})" for g in plan.auto_exclude)
                raise PipelineError(
                    f"structured pruning still breaks the model after excluding {auto}: {_failure_text(e)}",
                    hint="add the layers named above (or their neighbours) to prune.exclude, use "
                         "prune.method=unstructured, or disable pruning") from None
            first_error = e
        try:
            broken = find_broken_groups(model, example, check_x, num_classes, plan.ignored, probe_ratio)
        except Exception as e:  # noqa: BLE001 - torch-pruning cannot even trace the model
            raise PipelineError(f"torch-pruning cannot trace the student for structured pruning: "
                                f"{_failure_text(first_error)} (then {_failure_text(e)})",
                                hint="use prune.method=unstructured, or disable pruning") from None
        if not broken:
            raise PipelineError(
                f"structured pruning breaks the student ({_failure_text(first_error)}) and pruning any single "
                "channel group alone does not: the layers involved could not be located",
                hint="add the layers around the failing op to prune.exclude, or disable pruning") from None
        plan.auto_exclude = broken
        if not _any_prunable(model, example, plan.ignored):
            groups = "; ".join(f"{g['root']} (with {', '.join(g['layers'])}; through {g['through'] or 'ops'})"
                               for g in broken)
            raise PipelineError(
                f"structured pruning cannot prune this student: torch-pruning's dependency graph does not follow "
                f"the channel coupling of {groups}, and no other channel group is left",
                hint="use projection (1x1 conv) shortcuts instead of F.pad, use prune.method=unstructured, "
                     "or disable pruning")
    raise AssertionError("unreachable")


def _any_prunable(model: nn.Module, example: torch.Tensor, ignored: list[str]) -> bool:
    tp = _tp()
    probe = copy.deepcopy(model).eval()
    DG = tp.DependencyGraph().build_dependency(probe, example_inputs=example)
    mods = [probe.get_submodule(n) for n in ignored]
    return any(True for _ in DG.get_all_groups(ignored_layers=mods, root_module_types=list(_PRUNABLE)))


# --------------------------------------------------------------------------------------------- unstructured


def unstructured_targets(model: nn.Module, ignored: list[str]) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers not excluded (an excluded path excludes everything inside it)."""
    def excluded(n: str) -> bool:
        return any(n == i or n.startswith(i + ".") for i in ignored)

    return [(n, m) for n, m in model.named_modules() if isinstance(m, _PRUNABLE) and not excluded(n)]


def apply_unstructured(targets: list[tuple[str, nn.Module]], sparsity: float, global_pruning: bool,
                       previous: float) -> None:
    """Raise the sparsity of the target weights from `previous` to `sparsity` (masks stay as reparametrizations)."""
    from torch.nn.utils import prune as tprune

    if sparsity <= previous:
        return
    amount = (sparsity - previous) / (1.0 - previous)  # of the weights still unpruned
    if global_pruning:
        tprune.global_unstructured([(m, "weight") for _, m in targets], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    else:
        for _, m in targets:
            tprune.l1_unstructured(m, "weight", amount=amount)


def make_permanent(targets: list[tuple[str, nn.Module]]) -> None:
    from torch.nn.utils import prune as tprune

    for _, m in targets:
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Zero fraction of every conv/linear weight, over the pruned layers and over all of them."""
    layers, zeros, total = {}, 0, 0
    for n, m in model.named_modules():
        if isinstance(m, _PRUNABLE):
            w = m.weight.detach()
            z = int((w == 0).sum())
            layers[n] = {"weights": w.numel(), "zeros": z, "sparsity": z / max(w.numel(), 1)}
            zeros += z
            total += w.numel()
    return {"layers": layers, "overall": zeros / max(total, 1), "zeros": zeros, "weights": total}


# --------------------------------------------------------------------------------------------- the stage


def recovery_config(recipe):
    """The recipe's distillation settings (loss terms, teacher-output cache) with prune.recovery's schedule."""
    r = recipe.prune.recovery
    return recipe.distill.model_copy(update={"epochs": r.epochs, "lr": r.lr, "batch_size": r.batch_size,
                                             "momentum": r.momentum, "weight_decay": r.weight_decay})


def _evaluate(model: nn.Module, splits) -> dict[str, float]:
    return {"val": accuracy(predict(model, splits.x_val), splits.y_val),
            "test": accuracy(predict(model, splits.x_test), splits.y_test)}


def _recover(model, teacher, splits, rcfg, epochs: int, recipe, round_i: int, rounds: int):
    from pipeline.stages.distill import distill_student

    cfg = rcfg.model_copy(update={"epochs": epochs})
    from pipeline.data.augment import augmenter_for
    from pipeline.device import from_recipe

    hist, _ = distill_student(model, teacher, splits, cfg, recipe.seed + round_i, recipe.data.augment,
                              recipe.data.hflip, desc=f"prune-recovery {round_i}/{rounds}",
                              augmenter=augmenter_for(recipe.data), compute=from_recipe(recipe),
                              workers=recipe.data.workers)
    model.eval()
    return {"round": round_i, "epochs": epochs, "best_epoch": hist.best_epoch,
            "best_val_accuracy": hist.best_val_accuracy, "history": hist.epochs}


@dataclass
class _Job:
    """What the structured/unstructured runners share: inputs, checks, recovery schedule, the metrics."""

    model: nn.Module
    teacher: nn.Module
    splits: Any
    recipe: Any
    ctx: Any
    example: torch.Tensor
    check_x: torch.Tensor
    shape: tuple[int, ...]
    rcfg: Any
    epochs: list[int]
    recovery: list[dict] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def recover(self, model: nn.Module, i: int) -> None:
        if self.epochs[i - 1] > 0:
            self.recovery.append(_recover(model, self.teacher, self.splits, self.rcfg, self.epochs[i - 1],
                                          self.recipe, i, len(self.epochs)))


def _run_structured(job: _Job) -> tuple[nn.Module, dict[str, float]]:
    """Prune rounds with recovery in between; returns the model and its accuracy before the last recovery."""
    cfg, ctx, m = job.recipe.prune, job.ctx, job.ctx.metrics
    channels_before = layer_channels(job.model)
    pruned, pruner, plan = start_structured(job.model, job.example, job.check_x, job.num_classes, cfg, job.shape)
    for g in plan.auto_exclude:
        ctx.notes.append(
            f"structured pruning: excluded the channel group of {g['root']} (layers {', '.join(g['layers'])}) "
            f"automatically: torch-pruning does not follow its channel coupling"
            f"{' through ' + g['through'] if g['through'] else ''}; pruning it alone broke the forward ({g['error']})")
    no_recovery: dict[str, float] = {}
    for i in range(1, cfg.steps + 1):
        if i > 1:
            try:
                pruner.run_round(i)
                check_forward(pruned, job.check_x, job.num_classes)
            except PipelineError:
                raise
            except Exception as e:  # noqa: BLE001
                raise PipelineError(f"prune round {i}/{cfg.steps} broke the student: {_failure_text(e)}",
                                    hint="use fewer prune.steps, or add the layers involved to prune.exclude") from None
        if i == cfg.steps:
            no_recovery = _evaluate(pruned, job.splits)
        job.recover(pruned, i)
    m["excluded_layers"] = {"classifier": plan.classifier, "user": plan.user_exclude, "auto": plan.auto_exclude}
    if cfg.target_macs_ratio is not None:
        m["pruner_steps"] = pruner.pruner.current_step
    after = layer_channels(pruned)
    m["channels"] = {k: {"before": v, "after": after.get(k)} for k, v in channels_before.items()}
    kept = [k for k, v in channels_before.items() if (after.get(k) or [0, 0])[1] == v[1]
            and not any(k == i or k.startswith(i + ".") for i in plan.ignored)]
    if kept:
        ctx.notes.append(f"structured pruning: {', '.join(kept)} kept all their output channels (tied to an excluded "
                         "layer, or too few channels left after rounding to prune.round_to)")
    return pruned, no_recovery


def prune_copy(job: _Job, round_to: int) -> nn.Module:
    """The unpruned student pruned to the recipe's goal with another round_to, without recovery (the INT8
    fix search: latency does not depend on the weights); raises PipelineError when it is not possible."""
    cfg = job.recipe.prune.model_copy(update={"round_to": round_to})
    pruned, pruner, _ = start_structured(job.model, job.example, job.check_x, job.num_classes, cfg, job.shape)
    for i in range(2, cfg.steps + 1):
        pruner.run_round(i)
    check_forward(pruned, job.check_x, job.num_classes)
    return pruned


def _int8_check(job: _Job, m: dict, tmp: Path, threads: int) -> None:
    """prune.int8_check: INT8 latency ratio beside the MACs ratio; the round_to fix when it stays high."""
    from pipeline.prune_int8 import check_timing, int8_check
    from pipeline.stages.export import export_onnx

    recipe, splits = job.recipe, job.splits
    base_macs = _macs(job.model, job.shape)

    def prune_fn(round_to: int, path: Path) -> float:
        model = prune_copy(job, round_to)
        export_onnx(model, job.example, path, recipe.export.opset)
        return _macs(model, job.shape) / base_macs

    try:
        check = int8_check(tmp / "before.onnx", tmp / "after.onnx", m["macs_ratio"], recipe.prune.round_to,
                           recipe.prune.target_macs_ratio, prune_fn, splits.x_train[:recipe.calibration.samples],
                           recipe.calibration, splits.x_test[:32], threads, check_timing(recipe.benchmark), tmp,
                           threshold=recipe.prune.int8_threshold)
    except Exception as e:  # noqa: BLE001 - a diagnostic: its failure is reported, the pruned student still ships
        m["int8_check"] = {"error": _failure_text(e)}
        m["int8_latency_ratio"] = m["int8_fix"] = None
        job.ctx.notes.append(f"prune: the INT8 check failed ({_failure_text(e)}); INT8 latency not measured "
                             "(prune.int8_check=false skips it)")
        return
    m["int8_check"] = check
    m["int8_latency_ratio"] = check["current"]["int8_ratio"]
    m["int8_fix"] = check.get("int8_fix")
    job.ctx.notes.append(check["note"])


def _run_unstructured(job: _Job) -> tuple[nn.Module, dict[str, float]]:
    """Magnitude masks raised round by round, recovery with the masks in place, then made permanent."""
    cfg, ctx, m = job.recipe.prune, job.ctx, job.ctx.metrics
    pruned = copy.deepcopy(job.model).eval()
    classifier = classifier_name(job.model)
    user = resolve_exclude(job.model, cfg.exclude)
    ignored = list(dict.fromkeys(([classifier] if classifier else []) + user))
    targets = unstructured_targets(pruned, ignored)
    if not targets:
        raise ConfigError("no conv/linear layer is left to prune after the exclusions", hint="shorten prune.exclude")
    done, no_recovery = 0.0, {}
    for i in range(1, cfg.steps + 1):
        goal = cfg.ratio * i / cfg.steps
        apply_unstructured(targets, goal, cfg.global_pruning, done)
        done = goal
        if i == cfg.steps:
            no_recovery = _evaluate(pruned, job.splits)
        job.recover(pruned, i)  # the masks stay applied (weight = weight_orig * weight_mask) while training
    make_permanent(targets)
    rep = sparsity_report(pruned)
    names = {t for t, _ in targets}
    pz = sum(v["zeros"] for k, v in rep["layers"].items() if k in names)
    pw = sum(v["weights"] for k, v in rep["layers"].items() if k in names)
    m.update(sparsity=rep["overall"], sparsity_pruned_layers=pz / max(pw, 1), sparsity_per_layer=rep["layers"],
             nonzero_params=count_params(pruned) - rep["zeros"],
             excluded_layers={"classifier": classifier, "user": user, "auto": []})
    ctx.notes.append(
        f"unstructured pruning zeroed {pz / max(pw, 1):.1%} of the pruned layers' weights ({rep['overall']:.1%} of all "
        "conv/linear weights), but the model stays dense: ONNX Runtime, OpenVINO, TensorRT and LiteRT run it no "
        "faster and store it no smaller (only sparse kernels or compression would gain); use "
        "prune.method=structured for speed")
    return pruned, no_recovery


def _validate(cfg) -> None:
    if cfg.method == "unstructured" and cfg.target_macs_ratio is not None:
        raise ConfigError("prune.target_macs_ratio applies to structured pruning only: unstructured sparsity "
                          "leaves the dense MACs unchanged",
                          hint="use prune.method=structured, or set prune.ratio (the weight sparsity) instead")
    if cfg.target_macs_ratio is None and cfg.ratio <= 0:
        raise ConfigError("prune.enabled=true with prune.ratio=0 removes nothing",
                          hint="set prune.ratio (e.g. 0.5) or prune.target_macs_ratio, or prune.enabled=false")


def prune_student(ctx, recipe, data, teacher, student) -> None:
    """The prune stage (enabled): prune the distilled student, recover it with KD, check it, save it.

    `data`, `teacher`, `student` are the stage results (folders) of the data, teacher and distill stages.
    Writes model.pt/model.json into ctx.dir only once the pruned model has passed every check.
    """
    import os

    from pipeline.stages.data import read_splits
    from pipeline.stages.export import export_onnx
    from pipeline.stages.models import load_model, save_model

    cfg = recipe.prune
    _validate(cfg)
    splits = read_splits(data)
    c, n = splits.input_shape[0], splits.num_classes
    shape = (1, *splits.input_shape)
    info = json.loads((Path(student.dir) / "model.json").read_text())
    if info["kind"] == "torchscript":
        raise ConfigError("a TorchScript student cannot be pruned", hint="give the student as an nn.Module spec")
    model = load_model(student.dir)
    torch.manual_seed(recipe.seed)
    rcfg = recovery_config(recipe)
    job = _Job(model=model, teacher=load_model(teacher.dir), splits=splits, recipe=recipe, ctx=ctx,
               example=torch.from_numpy(splits.x_train[:1]), check_x=torch.from_numpy(splits.x_val[:32]),
               shape=shape, rcfg=rcfg, epochs=split_epochs(rcfg.epochs, cfg.steps))
    check_forward(model, job.check_x, n)
    before: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, shape), "accuracy": _evaluate(model, splits)}
    m = ctx.metrics
    m.update(enabled=True, method=cfg.method, ratio=cfg.ratio, target_macs_ratio=cfg.target_macs_ratio,
             global_pruning=cfg.global_pruning, steps=cfg.steps, round_to=cfg.round_to)

    pruned, no_recovery = (_run_structured if cfg.method == "structured" else _run_unstructured)(job)

    with tempfile.TemporaryDirectory(prefix="prune-") as tmp_name:
        tmp = Path(tmp_name)
        # The artifact must work: a real batch in PyTorch, then the ONNX export run in ONNX Runtime.
        try:
            check_forward(pruned, job.check_x, n)
        except Exception as e:  # noqa: BLE001
            raise PipelineError(f"the pruned student fails its forward pass after recovery: {_failure_text(e)}",
                                hint="add the layers involved to prune.exclude, or disable pruning") from None
        exp = recipe.export
        parity_after = onnx_check(pruned, splits.x_test[:256], exp.opset, exp.max_abs_diff, tmp, "the pruned student")
        after: dict[str, Any] = {"params": count_params(pruned), "macs": count_macs(pruned, shape),
                 "accuracy": _evaluate(pruned, splits)}
        m.update(params_before=before["params"], macs_before=before["macs"], params=after["params"],
                 macs=after["macs"], params_ratio=after["params"] / max(before["params"], 1),
                 macs_ratio=after["macs"] / max(before["macs"], 1),
                 val_accuracy_before=before["accuracy"]["val"], test_accuracy_before=before["accuracy"]["test"],
                 val_accuracy_no_recovery=no_recovery["val"], test_accuracy_no_recovery=no_recovery["test"],
                 val_accuracy=after["accuracy"]["val"], test_accuracy=after["accuracy"]["test"],
                 test_accuracy_drop=before["accuracy"]["test"] - after["accuracy"]["test"],
                 val_accuracy_drop=before["accuracy"]["val"] - after["accuracy"]["val"],
                 recovery={"epochs": rcfg.epochs, "lr": rcfg.lr, "per_round_epochs": job.epochs,
                           "losses": [t.model_dump(mode="json", exclude_none=True) for t in rcfg.losses],
                           "rounds": job.recovery},
                 onnx_check=parity_after)
        b = recipe.benchmark
        if b.enabled:
            threads = max(1, min(b.threads or 1, os.cpu_count() or 1))
            export_onnx(model, job.example, tmp / "before.onnx", exp.opset)
            export_onnx(pruned, job.example, tmp / "after.onnx", exp.opset)
            lat = measure_ort_latency({"before": tmp / "before.onnx", "after": tmp / "after.onnx"}, splits.x_test[:32],
                                      (1, 32), threads, b.repeats, b.warmup, b.min_iters, b.min_time_s, b.max_time_s)
            m["latency_ms"] = lat
            m["latency_ratio"] = {k: lat["after"][k]["p50_ms"] / lat["before"][k]["p50_ms"] for k in lat["after"]}
            if cfg.method == "structured" and cfg.int8_check:
                _int8_check(job, m, tmp, threads)
        else:
            m["latency_ms"] = m["latency_ratio"] = None
            ctx.notes.append("prune: latency before/after not measured (benchmark.enabled=false)")
        if not (b.enabled and cfg.method == "structured" and cfg.int8_check):
            m["int8_latency_ratio"] = m["int8_fix"] = None

    save_model(pruned, ctx.dir, info["spec"], info["kwargs"], c, n, pruned=cfg.method == "structured")
    # Reload what was written and compare logits: never hand on an artifact that does not load back.
    try:
        x = splits.x_test[:64]
        diff = float(np.abs(predict(load_model(ctx.dir), x) - predict(pruned, x)).max())
    except Exception as e:  # noqa: BLE001 - a reload failure is reported below as a PipelineError with its cause
        diff, why = float("inf"), _failure_text(e)
    else:
        why = f"max |logit diff| {diff:.2e}"
    if diff > 1e-4:
        for f in ("model.pt", "model.json"):
            (ctx.dir / f).unlink(missing_ok=True)
        raise PipelineError(f"the saved pruned student does not reload to the same model ({why})",
                            hint="report this as a bug; run with prune.enabled=false meanwhile")
    lr = m.get("latency_ratio")
    summary = (f"{cfg.method} pruning: params {before['params']} -> {after['params']}, MACs {before['macs']} -> "
               f"{after['macs']} ({m['macs_ratio']:.2f}x), test accuracy {before['accuracy']['test']:.4f} -> "
               f"{after['accuracy']['test']:.4f} after {rcfg.epochs} recovery epoch(s)")
    if lr:
        summary += (f"; measured ONNX Runtime FP32 latency {lr['batch1']:.2f}x at batch 1, "
                    f"{lr['batch32']:.2f}x at batch 32")
    ctx.notes.append(summary)
