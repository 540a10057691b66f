"""Saving and re-loading the torch models stages hand to each other.

A model artifact is `model.pt` (a state dict, loaded back with weights_only=True) plus
`model.json` (the recipe spec that rebuilds the architecture). A structurally pruned model
(`kind: "pruned"`) has narrower layers than its spec builds: model.json then also records each
resized layer's channel attributes (`structure`), and loading rebuilds the spec, narrows those
layers to the recorded sizes and fills them from the plain state dict. (torch-pruning's own
`tp.state_dict` pickles whole module `__dict__`s, which `torch.load(weights_only=True)` refuses.)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.spec import build_model
from pipeline import strict_json

# The attributes that describe a layer's width, per layer type (what structured pruning changes).
_WIDTH_ATTRS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._NormBase, ("num_features",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.PReLU, ("num_parameters",)),
)


def layer_widths(model: nn.Module) -> dict[str, dict]:
    """{module path: {width attribute: value}} for every conv/linear/norm layer of the model."""
    out: dict[str, dict] = {}
    for name, m in model.named_modules():
        for cls, attrs in _WIDTH_ATTRS:
            if isinstance(m, cls):
                out[name] = {a: (list(v) if isinstance(v, tuple) else v) for a in attrs
                             for v in [getattr(m, a)]}
                break
    return out


def save_model(model: nn.Module, folder: Path, spec: str, kwargs: dict, in_channels: int, num_classes: int,
               pruned: bool = False) -> None:
    from pipeline.models.outputs import logits_path, unwrap_scripted

    info = {"spec": spec, "kwargs": kwargs, "in_channels": in_channels, "num_classes": num_classes}
    if logits_path(model):  # the forward's output holds the logits at this path (teacher.output/student.output)
        info["output"] = logits_path(model)
    model = unwrap_scripted(model)
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, str(folder / "model.ts"))
        info["kind"] = "torchscript"
    else:
        torch.save(model.state_dict(), folder / "model.pt")
        info["kind"] = "pruned" if pruned else "state_dict"
        if pruned:
            info["structure"] = layer_widths(model)
    (folder / "model.json").write_text(strict_json.dumps(info, indent=2))


def _narrow(model: nn.Module, structure: dict[str, dict], sd: dict[str, torch.Tensor], where: Path) -> None:
    """Give the freshly built model the pruned layer widths and tensor shapes recorded at save time."""
    modules = dict(model.named_modules())
    for name, attrs in structure.items():
        if name not in modules:
            raise CheckpointError(f"{where}: the pruned model records layer {name!r}, which the spec does not build",
                                  hint="the model code changed since this artifact was written: rerun the prune stage")
        for a, v in attrs.items():
            setattr(modules[name], a, tuple(v) if isinstance(v, list) else v)
    for key, tensor in sd.items():
        mod_name, _, attr = key.rpartition(".")
        m = modules.get(mod_name)
        if m is None:
            continue  # load_state_dict(strict=True) below names it
        if attr in m._parameters and m._parameters[attr] is not None:
            old = m._parameters[attr]
            if old.shape != tensor.shape:
                m._parameters[attr] = nn.Parameter(torch.empty(tensor.shape, dtype=old.dtype),
                                                   requires_grad=old.requires_grad)
        elif attr in m._buffers and m._buffers[attr] is not None:
            old = m._buffers[attr]
            if old.shape != tensor.shape:
                m._buffers[attr] = torch.empty(tensor.shape, dtype=old.dtype)


def load_model(folder: Path) -> nn.Module:
    folder = Path(folder)
    from pipeline.models.outputs import with_logits

    info = json.loads((folder / "model.json").read_text())
    if info["kind"] == "torchscript":
        return with_logits(torch.jit.load(str(folder / "model.ts"), map_location="cpu"), info.get("output")).eval()
    model = build_model(info["spec"], info["kwargs"], info["in_channels"], info["num_classes"])
    sd = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    if info["kind"] == "pruned":
        _narrow(model, info.get("structure", {}), sd, folder)
    model.load_state_dict(sd)
    return with_logits(model, info.get("output")).eval()
