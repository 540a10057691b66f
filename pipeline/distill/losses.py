"""Distillation losses as named, weighted terms.

A recipe lists terms, e.g. (the default, :data:`DEFAULT_TERMS`)::

    losses:
      - {name: ce, weight: 0.1}
      - {name: kd, weight: 0.9, temperature: 4}

and the total loss is ``sum(weight * term(batch))``. Each term is a small ``nn.Module`` taking a
:class:`LossBatch` (student/teacher logits, targets, features by module path, epoch) and returning a
scalar. Feature terms (``fitnet``, ``at``) name layers by module path; :func:`build_criterion` taps them
with forward hooks (:class:`~pipeline.distill.hooks.FeatureTap`), so user models need no changes.

Terms and where their defaults come from (see also docs/PUBLISHED_FIGURES.md):

=========  ==================================================================================  =====================
name       what                                                                                defaults (source)
=========  ==================================================================================  =====================
ce         cross-entropy with the labels                                                       label_smoothing 0
kd         Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2                          T=4 (RepDistiller,
                                                                                               mdistiller)
dkd        Decoupled KD, Zhao et al. CVPR 2022, exactly as megvii-research/mdistiller          alpha=1, beta=8, T=4,
           ``dkd_loss``: alpha*TCKD + beta*NCKD, times min(epoch/warmup, 1)                    warmup=20 (mdistiller
                                                                                               cfg.py CFG.DKD)
kd_ls      KD on z-scored logits, Sun et al. CVPR 2024 (sunshangquan/logit-standardization-KD  T=2 (their --base-temp
           ``normalize``: (z - mean) / (1e-7 + std), unbiased std), then KD with T^2           default; they pair it
                                                                                               with kd-weight 9, ce 1)
fitnet     Romero et al. 2015 hint: MSE(connector(f_s), f_t); connector = 1x1 conv + BN when   plain MSE; RepDistiller
           channels differ; spatial mismatch -> adaptive avg pool to the smaller size         / mdistiller weight 100
at         Zagoruyko & Komodakis 2017: a = normalize(mean_c |f|^p), p=2;                       beta=1000 (RepDistiller
           beta * sum over layer pairs of mean((a_s - a_t)^2)                                  train_student.py,
                                                                                               mdistiller FEAT_WEIGHT)
=========  ==================================================================================  =====================

The ``epoch`` passed to the criterion is used only by ``dkd``'s warm-up. mdistiller counts epochs from
1 (its first epoch already gets 1/20 of the DKD loss); pass ``epoch + 1`` from a 0-based loop to match
it. Fractional epochs (``epoch + step / steps_per_epoch``) give a per-step ramp.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from pipeline.distill.hooks import FeatureTap
from pipeline.errors import ConfigError, DataError

__all__ = [
    "TermName", "LossTerm", "LossBatch", "DEFAULT_TERMS", "LOSS_REGISTRY", "Criterion", "build_criterion",
    "check_finite", "kd_loss", "dkd_loss", "normalize_logits", "attention_map",
    "CrossEntropyTerm", "KDTerm", "DKDTerm", "LogitStandardKDTerm", "FitNetTerm", "ATTerm",
]

TermName = Literal["ce", "kd", "dkd", "kd_ls", "fitnet", "at"]


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

# Which optional parameters each term takes, and their defaults (sources in the module docstring).
_TERM_PARAMS: dict[str, dict[str, Any]] = {
    "ce": {"label_smoothing": 0.0},
    "kd": {"temperature": 4.0},
    "dkd": {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup": 20},
    "kd_ls": {"temperature": 2.0},
    "fitnet": {"student_layer": None, "teacher_layer": None},
    "at": {"student_layer": None, "teacher_layer": None, "beta": 1000.0},
}
_OPTIONAL = ("temperature", "alpha", "beta", "warmup", "student_layer", "teacher_layer", "label_smoothing")


class LossTerm(BaseModel):
    """One weighted term of the distillation loss.

    Parameters a term does not take are rejected (a ``warmup`` on ``kd`` is a mistake, not a no-op);
    parameters left out take the term's default (:meth:`params`). ``at`` takes one layer path or equal-length
    lists of paths (pairs); ``fitnet`` takes one path on each side.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TermName
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    temperature: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    alpha: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    beta: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    warmup: int | None = Field(None, ge=0, le=10000)  # epochs, like distill.epochs
    student_layer: str | list[str] | None = None
    teacher_layer: str | list[str] | None = None
    label_smoothing: float | None = Field(None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_params(self) -> LossTerm:
        allowed = _TERM_PARAMS[self.name]
        given = [k for k in _OPTIONAL if getattr(self, k) is not None]
        wrong = [k for k in given if k not in allowed]
        if wrong:
            takes = ", ".join(allowed) or "no parameters besides weight"
            raise ValueError(f"loss term {self.name!r} does not take {', '.join(wrong)} (it takes: {takes})")
        if self.name in ("fitnet", "at"):
            s, t = self.student_layer, self.teacher_layer
            if s is None or t is None:
                raise ValueError(f"loss term {self.name!r} needs student_layer and teacher_layer (module paths)")
            if self.name == "fitnet" and (isinstance(s, list) or isinstance(t, list)):
                raise ValueError("loss term 'fitnet' takes one student_layer and one teacher_layer; "
                                 "add one fitnet term per pair")
            if self.name == "at":
                s_l, t_l = _as_list(s), _as_list(t)
                if len(s_l) != len(t_l) or not s_l:
                    raise ValueError(f"loss term 'at' needs as many student_layer as teacher_layer paths "
                                     f"(got {len(s_l)} and {len(t_l)})")
        return self

    def params(self) -> dict[str, Any]:
        """The term's parameters with defaults filled in."""
        return {k: (getattr(self, k) if getattr(self, k) is not None else d) for k, d in _TERM_PARAMS[self.name].items()}

    def layer_pairs(self) -> list[tuple[str, str]]:
        """(student path, teacher path) pairs a feature term reads; empty for logit terms."""
        if self.student_layer is None or self.teacher_layer is None:
            return []
        return list(zip(_as_list(self.student_layer), _as_list(self.teacher_layer)))


def _as_list(x: str | list[str] | None) -> list[str]:
    return [] if x is None else [x] if isinstance(x, str) else list(x)


#: Hinton KD as RepDistiller and docs/PUBLISHED_FIGURES.md run it on CIFAR: CE weight 0.1, KD weight 0.9, T=4.
DEFAULT_TERMS: list[LossTerm] = [
    LossTerm(name="ce", weight=0.1),
    LossTerm(name="kd", weight=0.9, temperature=4.0),
]


@dataclass
class LossBatch:
    """What a loss term sees for one step. Teacher tensors are detached by the criterion."""

    student_logits: Tensor
    teacher_logits: Tensor | None = None
    targets: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    epoch: float = 0.0


# --------------------------------------------------------------------------------------------------
# Functional forms (mdistiller / RepDistiller formulas)
# --------------------------------------------------------------------------------------------------

def kd_loss(logits_student: Tensor, logits_teacher: Tensor, temperature: float) -> Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over samples, times T^2.

    Same as mdistiller ``kd_loss`` (the T^2 keeps gradient magnitudes comparable across T).
    """
    log_p_s = F.log_softmax(logits_student / temperature, dim=1)
    p_t = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature**2


def _gt_mask(logits: Tensor, target: Tensor) -> Tensor:
    return torch.zeros_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 1).bool()


def _other_mask(logits: Tensor, target: Tensor) -> Tensor:
    return torch.ones_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 0).bool()


def _cat_mask(t: Tensor, mask1: Tensor, mask2: Tensor) -> Tensor:
    return torch.cat([(t * mask1).sum(dim=1, keepdim=True), (t * mask2).sum(dim=1, keepdim=True)], dim=1)


def dkd_loss(logits_student: Tensor, logits_teacher: Tensor, target: Tensor,
             alpha: float, beta: float, temperature: float) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022), line for line mdistiller's ``dkd_loss``.

    TCKD: KL between the binary (target, non-target) probabilities; NCKD: KL between the distributions
    over non-target classes, computed by masking the target logit with ``- 1000``. Both times T^2 and
    divided by the batch size. Returns ``alpha * TCKD + beta * NCKD`` (no warm-up factor).
    """
    gt_mask = _gt_mask(logits_student, target)
    other_mask = _other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    n = target.shape[0]
    tckd = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * temperature**2 / n
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * temperature**2 / n
    return alpha * tckd + beta * nckd


def normalize_logits(logits: Tensor) -> Tensor:
    """Per-sample z-score of logits, as ``normalize`` in sunshangquan/logit-standardization-KD.

    ``(z - mean) / (1e-7 + std)`` over the class dimension, with torch's default (unbiased) std.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (1e-7 + std)


def attention_map(feat: Tensor, p: int = 2) -> Tensor:
    """Attention transfer map: mean over channels of |f|^p, flattened per sample, L2-normalised."""
    return F.normalize(feat.abs().pow(p).mean(1).reshape(feat.size(0), -1), dim=1)


def _pool_to_common(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two (N, C, *spatial) features to the smaller spatial size."""
    if f_s.shape[2:] == f_t.shape[2:]:
        return f_s, f_t
    size = tuple(min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:]))
    pool: Any = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}.get(len(size))
    if pool is None:
        raise ConfigError(f"cannot match feature shapes {tuple(f_s.shape)} and {tuple(f_t.shape)}",
                          hint="tap layers whose outputs are (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W)")
    if tuple(f_s.shape[2:]) != size:
        f_s = pool(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = pool(f_t, size)
    return f_s, f_t


# --------------------------------------------------------------------------------------------------
# Terms
# --------------------------------------------------------------------------------------------------

def _need_teacher(batch: LossBatch, name: str) -> Tensor:
    if batch.teacher_logits is None:
        raise ConfigError(f"loss term {name!r} needs teacher logits but none were given",
                          hint="pass the teacher's output to the criterion, or drop the term")
    return batch.teacher_logits


def _need_targets(batch: LossBatch, name: str) -> Tensor:
    if batch.targets is None:
        raise ConfigError(f"loss term {name!r} needs labels but none were given",
                          hint="use a labelled dataset, or use only teacher terms (kd, kd_ls, fitnet, at)")
    return batch.targets


def _feature(feats: dict[str, Tensor], path: str, side: str) -> Tensor:
    try:
        f = feats[path]
    except KeyError:
        raise ConfigError(f"{side} feature {path!r} is missing from this step",
                          hint="run the model's forward before calling the criterion") from None
    if not isinstance(f, Tensor):
        raise ConfigError(f"{side} layer {path!r} returns {type(f).__name__}, not a tensor",
                          hint="tap a module whose output is a single tensor (e.g. a conv, block or activation)")
    return f


class CrossEntropyTerm(nn.Module):
    """``ce``: cross-entropy with the labels (class indices or class probabilities)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, batch: LossBatch) -> Tensor:
        return F.cross_entropy(batch.student_logits, _need_targets(batch, "ce"), label_smoothing=self.label_smoothing)


class KDTerm(nn.Module):
    """``kd``: Hinton KD with temperature T (default 4: RepDistiller / mdistiller / docs/PUBLISHED_FIGURES.md)."""

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, batch: LossBatch) -> Tensor:
        return kd_loss(batch.student_logits, _need_teacher(batch, "kd"), self.temperature)


class DKDTerm(nn.Module):
    """``dkd``: decoupled KD, ``min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)``.

    Defaults alpha=1, beta=8, T=4, warmup=20 are mdistiller's CFG.DKD (docs/PUBLISHED_FIGURES.md: beta=2 for
    ResNet-56/110 teachers). ``warmup=0`` disables the ramp.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20):
        super().__init__()
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup

    def warmup_factor(self, epoch: float) -> float:
        return 1.0 if self.warmup <= 0 else min(float(epoch) / self.warmup, 1.0)

    def forward(self, batch: LossBatch) -> Tensor:
        targets = _need_targets(batch, "dkd")
        if targets.dtype.is_floating_point:
            raise ConfigError("loss term 'dkd' needs class-index labels, got soft (probability) labels",
                              hint="turn off mixup/cutmix label mixing, or use kd / kd_ls")
        loss = dkd_loss(batch.student_logits, _need_teacher(batch, "dkd"), targets,
                        self.alpha, self.beta, self.temperature)
        return self.warmup_factor(batch.epoch) * loss


class LogitStandardKDTerm(nn.Module):
    """``kd_ls``: KD on z-scored student and teacher logits (Sun et al., CVPR 2024).

    Base temperature default 2 is the ``--base-temp`` default of sunshangquan/logit-standardization-KD
    (tools/train.py), which their README pairs with ``--kd-weight 9`` and CE weight 1. The z-score makes
    the loss invariant to a shift and to a positive scaling of either side's logits.
    """

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, batch: LossBatch) -> Tensor:
        t = _need_teacher(batch, "kd_ls")
        return kd_loss(normalize_logits(batch.student_logits), normalize_logits(t), self.temperature)


def _make_connector(s_shape: torch.Size, t_shape: torch.Size, s_path: str, t_path: str) -> nn.Module:
    """1x1 conv + BN (or Linear + BN for (N, C) features) mapping student channels to teacher channels."""
    if len(s_shape) != len(t_shape) or len(s_shape) < 2:
        raise ConfigError(
            f"fitnet: student {s_path!r} output {tuple(s_shape)} and teacher {t_path!r} output {tuple(t_shape)} "
            "have different ranks", hint="pick layers of the same kind (both conv maps or both vectors)")
    c_s, c_t = s_shape[1], t_shape[1]
    if c_s == c_t:
        return nn.Identity()
    rank = len(s_shape)
    if rank == 2:
        return nn.Sequential(nn.Linear(c_s, c_t, bias=False), nn.BatchNorm1d(c_t))
    if rank == 3:
        return nn.Sequential(nn.Conv1d(c_s, c_t, 1, bias=False), nn.BatchNorm1d(c_t))
    if rank == 4:
        return nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t))
    if rank == 5:
        return nn.Sequential(nn.Conv3d(c_s, c_t, 1, bias=False), nn.BatchNorm3d(c_t))
    raise ConfigError(f"fitnet: cannot connect features of shape {tuple(s_shape)}",
                      hint="tap layers whose outputs are (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W)")


class FitNetTerm(nn.Module):
    """``fitnet``: hint loss ``MSE(pool(connector(f_s)), pool(f_t))``.

    The connector (1x1 conv + BN when channel counts differ, else identity) is learnable: its
    parameters are in ``criterion.parameters()`` and must be optimised with the student. The loss is
    plain MSE; RepDistiller and mdistiller weight it by 100.
    """

    def __init__(self, student_layer: str, teacher_layer: str, connector: nn.Module | None = None):
        super().__init__()
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.connector = connector if connector is not None else nn.Identity()

    def forward(self, batch: LossBatch) -> Tensor:
        f_s = self.connector(_feature(batch.student_features, self.student_layer, "student"))
        f_t = _feature(batch.teacher_features, self.teacher_layer, "teacher")
        if f_s.shape[1] != f_t.shape[1]:
            raise ConfigError(f"fitnet: student {self.student_layer!r} gives {f_s.shape[1]} channels after the "
                              f"connector, teacher {self.teacher_layer!r} gives {f_t.shape[1]}",
                              hint="build the criterion with build_criterion(), which sizes the connector")
        f_s, f_t = _pool_to_common(f_s, f_t)
        return F.mse_loss(f_s, f_t)


class ATTerm(nn.Module):
    """``at``: attention transfer over layer pairs, ``beta * sum_pairs mean((a_s - a_t)^2)``.

    p=2 and beta=1000 as RepDistiller (and mdistiller's AT FEAT_WEIGHT). Channel counts may differ
    (the map averages over channels); spatial sizes are matched by adaptive average pooling.
    """

    def __init__(self, pairs: list[tuple[str, str]], beta: float = 1000.0, p: int = 2):
        super().__init__()
        self.pairs, self.beta, self.p = list(pairs), beta, p

    def forward(self, batch: LossBatch) -> Tensor:
        total = None
        for s_path, t_path in self.pairs:
            f_s = _feature(batch.student_features, s_path, "student")
            f_t = _feature(batch.teacher_features, t_path, "teacher")
            if f_s.dim() < 3 or f_t.dim() < 3:
                raise ConfigError(f"at: layers {s_path!r} / {t_path!r} have no spatial dimensions "
                                  f"({tuple(f_s.shape)}, {tuple(f_t.shape)})",
                                  hint="attention transfer needs (N, C, H, W)-like feature maps")
            f_s, f_t = _pool_to_common(f_s, f_t)
            loss = (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
            total = loss if total is None else total + loss
        if total is None:  # no layer pairs: nothing to transfer
            return batch.student_logits.new_zeros(())
        return self.beta * total


def _build_ce(term: LossTerm, shapes: dict) -> nn.Module:
    return CrossEntropyTerm(**term.params())


def _build_kd(term: LossTerm, shapes: dict) -> nn.Module:
    return KDTerm(**term.params())


def _build_dkd(term: LossTerm, shapes: dict) -> nn.Module:
    return DKDTerm(**term.params())


def _build_kd_ls(term: LossTerm, shapes: dict) -> nn.Module:
    return LogitStandardKDTerm(**term.params())


def _build_fitnet(term: LossTerm, shapes: dict) -> nn.Module:
    (s_path, t_path), = term.layer_pairs()
    connector = _make_connector(shapes["student"][s_path], shapes["teacher"][t_path], s_path, t_path)
    return FitNetTerm(s_path, t_path, connector)


def _build_at(term: LossTerm, shapes: dict) -> nn.Module:
    return ATTerm(term.layer_pairs(), beta=term.params()["beta"])


#: name -> builder(term, shapes) -> nn.Module; ``shapes`` = {"student": {path: shape}, "teacher": {...}}
#: from the dry run. Every name of :data:`TermName` is here.
LOSS_REGISTRY: dict[str, Any] = {
    "ce": _build_ce,
    "kd": _build_kd,
    "dkd": _build_dkd,
    "kd_ls": _build_kd_ls,
    "fitnet": _build_fitnet,
    "at": _build_at,
}
assert set(LOSS_REGISTRY) == set(get_args(TermName)) == set(_TERM_PARAMS)


# --------------------------------------------------------------------------------------------------
# Criterion
# --------------------------------------------------------------------------------------------------

def _logits_of(out: Any, who: str) -> Tensor | None:
    """Logits from a model output: a tensor, the first item of a tuple/list, or dict['logits']."""
    if out is None or isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    raise ConfigError(f"cannot find logits in the {who} output of type {type(out).__name__}",
                      hint="the model should return a tensor, a tuple starting with the logits, or {'logits': ...}")


class Criterion(nn.Module):
    """The weighted sum of loss terms, reading features from forward-hook taps.

    ``criterion(student_out, teacher_out, targets, epoch) -> (total, parts)``: ``parts`` maps each
    term's name (``name_2``, ``name_3``... for repeats) to its weighted value as a float, so
    ``sum(parts.values()) == total``. Call it right after the student's and the teacher's forward
    on the same batch. ``parameters()`` are the connectors' (optimise them with the student);
    ``state_dict()`` holds them for checkpoints; ``train()`` / ``eval()`` switch the connectors' BN
    like the student's. Tapped features are consumed by each call (a layer that did not run since
    the last call is an error, never a stale reuse). ``close()`` removes the hooks. ``parts`` are
    floats, so each call synchronises with the device once per term.
    """

    def __init__(self, terms: list[LossTerm], modules: list[nn.Module],
                 student_tap: FeatureTap | None = None, teacher_tap: FeatureTap | None = None):
        super().__init__()
        self.specs = list(terms)
        self.terms = nn.ModuleList(modules)
        self.weights = [t.weight for t in terms]
        self.names = _unique_names([t.name for t in terms])
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    def forward(self, student_out: Any, teacher_out: Any = None, targets: Tensor | None = None,
                epoch: float = 0.0) -> tuple[Tensor, dict[str, float]]:
        s_logits = _logits_of(student_out, "student")
        if s_logits is None:
            raise ConfigError("the criterion needs the student's output", hint="call criterion(student(x), teacher(x), y, epoch)")
        t_logits = _logits_of(teacher_out, "teacher")
        batch = LossBatch(
            student_logits=s_logits,
            teacher_logits=None if t_logits is None else t_logits.detach(),
            targets=targets,
            student_features=cast(dict, self.student_tap.features) if self.student_tap else {},
            teacher_features={k: cast(Tensor, v.detach() if isinstance(v, Tensor) else v)
                              for k, v in self.teacher_tap.features.items()} if self.teacher_tap else {},
            epoch=epoch,
        )
        # Features are used once: a layer that did not run before the next call is then reported
        # as missing instead of silently reusing an older batch's output (e.g. cached teacher logits).
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.clear()
        total = s_logits.new_zeros(())
        parts: dict[str, float] = {}
        for name, weight, term in zip(self.names, self.weights, self.terms):
            if weight == 0.0:
                parts[name] = 0.0
                continue
            value = weight * term(batch)
            total = total + value
            parts[name] = float(value.detach())
        return total, parts

    def close(self) -> None:
        """Remove the feature hooks from student and teacher (safe to call twice)."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()

    def __enter__(self) -> Criterion:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extra_repr(self) -> str:
        return ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _dry_run(model: nn.Module, example_input: Any, tap: FeatureTap, who: str) -> dict[str, torch.Size]:
    """Run one forward in eval mode (BN statistics untouched), return the tapped output shapes."""
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    except Exception as e:  # noqa: BLE001 - the user's model; say which one failed
        raise ConfigError(f"the {who} model failed on the example input: {type(e).__name__}: {e}",
                          hint="give build_criterion an input batch of the shape the model expects") from e
    finally:
        for m, flag in was_training.items():
            m.training = flag
    shapes = {}
    for path in tap.paths:
        out = tap[path]
        if not isinstance(out, Tensor):
            raise ConfigError(f"{who} layer {path!r} returns {type(out).__name__}, not a tensor",
                              hint="tap a module whose output is a single tensor (e.g. a conv, block or activation)")
        shapes[path] = out.shape
    tap.clear()
    return shapes


def build_criterion(terms: list[LossTerm] | list[dict], student: nn.Module, teacher: nn.Module | None,
                    example_input: Any = None) -> Criterion:
    """Build the loss from its terms: tap the feature layers, size connectors by a dry run.

    ``terms``: :class:`LossTerm` objects or dicts of their fields. ``example_input``: one input batch
    (a tensor, a tuple of positional inputs or a dict of keyword inputs), needed only when a term reads
    features; both models run it once in eval mode under ``no_grad``. Connectors are created on the
    device and dtype of the student feature they follow.
    """
    try:
        specs = [t if isinstance(t, LossTerm) else LossTerm.model_validate(t) for t in terms]
    except Exception as e:  # pydantic ValidationError -> one clear line
        raise ConfigError(f"bad loss term: {e}", hint="see pipeline/distill/losses.py for the terms and their parameters") from e
    if not specs:
        raise ConfigError("no loss terms given", hint="e.g. [{name: ce, weight: 0.1}, {name: kd, weight: 0.9}]")
    if all(t.weight == 0.0 for t in specs):
        raise ConfigError("every loss term has weight 0", hint="give at least one term a positive weight")
    needs_teacher = any(t.name != "ce" for t in specs)
    if needs_teacher and teacher is None:
        raise ConfigError("the loss terms need a teacher but none was given",
                          hint="set a teacher, or use only the 'ce' term")

    s_paths = list(dict.fromkeys(p for t in specs for p, _ in t.layer_pairs()))
    t_paths = list(dict.fromkeys(p for t in specs for _, p in t.layer_pairs()))
    student_tap = FeatureTap(student, s_paths) if s_paths else None
    try:
        teacher_tap = FeatureTap(teacher, t_paths) if t_paths and teacher is not None else None
    except Exception:  # remove the hook, then re-raise unchanged
        if student_tap:
            student_tap.remove()
        raise
    shapes: dict[str, dict[str, torch.Size]] = {"student": {}, "teacher": {}}
    try:
        if student_tap or teacher_tap:
            if example_input is None:
                raise ConfigError("feature loss terms need an example input to size their connectors",
                                  hint="pass one input batch as example_input to build_criterion")
            if student_tap:
                shapes["student"] = _dry_run(student, example_input, student_tap, "student")
            if teacher_tap and teacher is not None:
                shapes["teacher"] = _dry_run(teacher, example_input, teacher_tap, "teacher")
        modules = [LOSS_REGISTRY[t.name](t, shapes) for t in specs]
    except Exception:  # remove the hooks, then re-raise unchanged
        for tap in (student_tap, teacher_tap):
            if tap:
                tap.remove()
        raise
    # Put connectors where the student's parameters are.
    ref = next(iter(student.parameters()), None)
    if ref is not None:
        for m in modules:
            m.to(ref.device)
            if ref.dtype.is_floating_point:
                m.to(ref.dtype)
    return Criterion(specs, modules, student_tap, teacher_tap)


def check_finite(tensor: Tensor, what: str, step: int) -> None:
    """Raise :class:`DataError` "NaN/Inf in {what} at step {step}" if a float tensor has NaN or Inf.

    Meant for the trainer: inputs before the step, teacher outputs after its forward (a student
    loss going NaN is an optimisation problem; bad data or a broken teacher is not).
    """
    if not isinstance(tensor, Tensor) or not (tensor.is_floating_point() or tensor.is_complex()):
        return
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int((~finite).sum()) - n_nan
    raise DataError(
        f"NaN/Inf in {what} at step {step}",
        hint=f"{n_nan} NaN and {n_inf} Inf of {tensor.numel()} values; check the data and its normalisation "
             "(and, for teacher outputs, the teacher checkpoint and its input preprocessing)",
    )
