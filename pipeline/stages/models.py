"""Saving and re-loading the torch models stages hand to each other.

A model artifact is `model.pt` (a state dict, loaded back with weights_only=True) plus
`model.json` (the recipe spec that rebuilds the architecture). Pruned models change shape,
so they carry torch-pruning's state (`pruned: true`) and are rebuilt from it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.models.spec import build_model


def save_model(model: nn.Module, folder: Path, spec: str, kwargs: dict, in_channels: int, num_classes: int,
               pruned: bool = False) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, str(folder / "model.ts"))
        kind = "torchscript"
    elif pruned:
        import torch_pruning as tp

        torch.save(tp.state_dict(model), folder / "model.pt")
        kind = "pruned"
    else:
        torch.save(model.state_dict(), folder / "model.pt")
        kind = "state_dict"
    (folder / "model.json").write_text(json.dumps(
        {"spec": spec, "kwargs": kwargs, "in_channels": in_channels, "num_classes": num_classes, "kind": kind},
        indent=2))


def load_model(folder: Path) -> nn.Module:
    info = json.loads((folder / "model.json").read_text())
    if info["kind"] == "torchscript":
        return torch.jit.load(str(folder / "model.ts"), map_location="cpu").eval()
    model = build_model(info["spec"], info["kwargs"], info["in_channels"], info["num_classes"])
    sd = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    if info["kind"] == "pruned":
        import torch_pruning as tp

        tp.load_state_dict(model, state_dict=sd)
    else:
        model.load_state_dict(sd)
    return model.eval()
