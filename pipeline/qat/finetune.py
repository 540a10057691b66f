"""Fine-tune a float student under a target family's fake quantization, with the teacher's KD loss.

The student is captured with torch.export (dynamic batch), prepared with `prepare_qat_pt2e` and the
scheme's quantizer (pipeline/qat/schemes.py), trained with `pipeline.train.fit` and the recipe's logit
loss terms (pipeline/distill/losses.py), and its weights are loaded back into the plain nn.Module: the
prepared graph keeps the module's state-dict names (batch-norm statistics included).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

# Feature terms tap modules by path with forward hooks; the exported graph has no such modules.
LOGIT_TERMS = ("ce", "kd", "dkd", "kd_ls")


def logit_terms(terms: list) -> tuple[list, list[str]]:
    """The loss terms QAD can use on an exported graph, and the names of those it leaves out."""
    kept = [t for t in terms if t.name in LOGIT_TERMS]
    dropped = [t.name for t in terms if t.name not in LOGIT_TERMS]
    return kept, dropped


def prepare_qat(model: nn.Module, backend: str, example: torch.Tensor) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from pipeline.qat.schemes import qat_quantizer

    gm = torch.export.export(copy.deepcopy(model).train(), (example,),
                             dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()
    prepared = prepare_qat_pt2e(gm, qat_quantizer(backend))
    allow_exported_model_train_eval(prepared)  # fit() and predict() call .train()/.eval()
    return prepared


def load_back(prepared: nn.Module, model: nn.Module) -> nn.Module:
    """The fine-tuned float weights and batch-norm statistics, in a copy of the original module."""
    out = copy.deepcopy(model)
    sd = prepared.state_dict()
    missing = [k for k in out.state_dict() if k not in sd]
    if missing:
        raise RuntimeError(f"the QAT graph lost parameters of the student: {missing[:5]}")
    out.load_state_dict({k: sd[k] for k in out.state_dict()})
    return out.eval()


def qat_finetune(student: nn.Module, teacher: nn.Module, splits: Any, backend: str, cfg: Any, terms: list,
                 seed: int) -> tuple[nn.Module, Any]:
    """(fine-tuned float student, fit history); `cfg` is a TrainConfig (epochs, lr, ...)."""
    from pipeline.stages.distill import make_kd_loss
    from pipeline.train import fit

    torch.manual_seed(seed)
    example = torch.from_numpy(np.ascontiguousarray(splits.x_train[:4]))
    prepared = prepare_qat(student, backend, example)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss_fn, criterion = make_kd_loss(prepared, teacher, terms, splits.x_train, cache_outputs=True)
    try:
        hist = fit(prepared, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=cfg.epochs, lr=cfg.lr,
                   batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed,
                   loss_fn=loss_fn, extra_params=list(criterion.parameters()), desc=f"qad [{backend}]")
    finally:
        criterion.close()
    return load_back(prepared, student), hist
