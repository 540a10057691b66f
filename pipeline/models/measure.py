"""Parameter and MAC counts of a torch model (conv/linear/matmul MACs, the usual convention)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv/Linear MACs from forward hooks (the fallback: hooks only see nn.Conv2d / nn.Linear modules)."""
    total = 0
    hooks = []

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return int(total)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> Optional[int]:
    """Multiply-accumulates of one forward pass at the given input shape (batch included); None when they
    cannot be counted.

    torch's FlopCounterMode counts at the dispatcher, so it also sees TorchScript modules (whose submodules
    hooks cannot reach), functional convs and matmuls; a FLOP there is half a MAC. A forward that fails
    raises (pruning relies on that to notice a broken graph)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(input_shape)
    try:
        try:
            with FlopCounterMode(display=False) as fc:
                model(x)
            macs = int(fc.get_total_flops()) // 2
        except (RuntimeError, NotImplementedError, TypeError) as e:  # an op the counter cannot trace
            if isinstance(model, torch.jit.ScriptModule):
                return None
            macs = _hook_macs(model, x)
            del e
    finally:
        model.train(was_training)
    if macs == 0 and count_params(model) > 0:
        return None  # a model with weights does multiply: 0 would only mean "not counted"
    return macs


def macs_ratio(student: Optional[int], teacher: Optional[int]) -> Optional[float]:
    """student/teacher MACs, None when either is unknown or the teacher's is 0 (never a division by 0)."""
    if not student or not teacher:
        return None
    return student / teacher
