"""Selecting the logits from what a model's forward returns.

Models as people write them return a tensor, a tuple or list (logits, features), a dict
({"logits": ...}), a namedtuple, or an object with a `.logits` field (HuggingFace's ModelOutput).
`teacher.output` / `student.output` name the logits: an index (0), a key or field ("logits"), a dotted
path of those ("1.logits"), or "auto": the one tensor of shape (N, num_classes), preferring a field named
"logits". The chosen path is fixed once, from one example forward, and recorded in model.json, so
training, KD, evaluation, pruning and ONNX export all see the same single logits tensor.

The selection swaps the model's class for a subclass whose forward returns the chosen tensor: state dict
keys and module paths stay the user's own (checkpoints, feature taps and pruning exclusions keep
working), and deepcopy keeps the selection.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Union

import torch
from torch import nn

from pipeline.errors import ConfigError

Step = Union[int, str]
OutputChoice = Union[int, str, None]


def _children(out: Any) -> list[tuple[Step, Any]]:
    """The (step, value) pairs one level below `out`."""
    if isinstance(out, torch.Tensor):
        return []
    if isinstance(out, dict):  # also HuggingFace ModelOutput (an OrderedDict subclass)
        return [(k, v) for k, v in out.items()]
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # namedtuple: by field name
        return [(f, getattr(out, f)) for f in out._fields]
    if isinstance(out, (tuple, list)):
        return list(enumerate(out))
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    if hasattr(out, "logits"):
        return [("logits", out.logits)]
    return []


def _leaves(out: Any, prefix: tuple = (), depth: int = 0) -> list[tuple[tuple, Any]]:
    if isinstance(out, torch.Tensor) or depth > 4:
        return [(prefix, out)]
    kids = _children(out)
    if not kids:
        return [(prefix, out)]
    found = []
    for step, v in kids:
        found.extend(_leaves(v, prefix + (step,), depth + 1))
    return found


def _path_text(path: tuple) -> str:
    return ".".join(str(s) for s in path) if path else "<the output itself>"


def describe_output(out: Any, limit: int = 8) -> str:
    """What a forward returned, e.g. `tuple: [0] Tensor(2, 10), [1] Tensor(2, 64)`."""
    if isinstance(out, torch.Tensor):
        return f"a Tensor of shape {tuple(out.shape)}"
    leaves = _leaves(out)
    parts = []
    for path, v in leaves[:limit]:
        what = f"Tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        parts.append(f"{_path_text(path)}: {what}")
    more = f", ... (+{len(leaves) - limit} more)" if len(leaves) > limit else ""
    return f"a {type(out).__name__} with " + ", ".join(parts) + more


def _step(value: Any, step: Step) -> Any:
    if isinstance(value, dict):
        if step in value:
            return value[step]
        if isinstance(step, int):  # a dict (or ModelOutput) by position
            return list(value.values())[step]
        raise KeyError(step)
    if isinstance(value, (tuple, list)):
        if isinstance(step, int):
            return value[step]
        if hasattr(value, "_fields") and step in value._fields:
            return getattr(value, step)
        raise KeyError(step)
    if isinstance(step, str) and hasattr(value, step):
        return getattr(value, step)
    raise KeyError(step)


def follow(out: Any, path: tuple) -> Any:
    for s in path:
        out = _step(out, s)
    return out


def _parse_choice(choice: OutputChoice) -> tuple | None:
    """None for auto, else the path of steps (ints for digits)."""
    if choice is None or choice == "auto":
        return None
    if isinstance(choice, bool):
        raise ConfigError(f"output = {choice!r} is not an index, key or 'auto'",
                          hint="e.g. --set student.output=0 or --set student.output=logits")
    if isinstance(choice, int):
        return (choice,)
    parts = [p for p in str(choice).split(".")]
    if any(p == "" for p in parts):
        raise ConfigError(f"output = {choice!r} is not a valid path", hint="e.g. 0, logits or 1.logits")
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)


def resolve_path(out: Any, choice: OutputChoice, num_classes: int, batch: int, role: str, spec: str) -> tuple:
    """The path from the forward's output to its logits (empty when the output is the logits tensor)."""
    field = f"{role}.output"
    wanted = _parse_choice(choice)
    if wanted is not None:
        try:
            got = follow(out, wanted)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ConfigError(f"{field} = {choice!r} does not name a part of what the {role} model {spec} returns "
                              f"({describe_output(out)})",
                              hint=f"set {field} to one of the paths listed (an index, key or field name), or auto"
                              ) from None
        if not isinstance(got, torch.Tensor):
            raise ConfigError(f"{field} = {choice!r} selects a {type(got).__name__}, not a tensor, from what the "
                              f"{role} model {spec} returns ({describe_output(out)})",
                              hint=f"set {field} to the path of the logits tensor")
        return wanted
    if isinstance(out, torch.Tensor):
        return ()
    leaves = [(p, v) for p, v in _leaves(out) if isinstance(v, torch.Tensor)]
    fits = [(p, v) for p, v in leaves if v.ndim == 2 and tuple(v.shape) == (batch, num_classes)]
    named = [(p, v) for p, v in fits if p and p[-1] == "logits"]
    if len(named) == 1:
        return named[0][0]
    if len(fits) == 1:
        return fits[0][0]
    if not fits:
        raise ConfigError(f"the {role} model {spec} returns {describe_output(out)}: none is a ({batch}, "
                          f"{num_classes}) logits tensor for this data's {num_classes} classes",
                          hint=f"build the model with num_classes={num_classes} (passed when the callable accepts "
                               f"it), or set {field} to the path of its logits")
    choices = ", ".join(_path_text(p) for p, _ in fits)
    raise ConfigError(f"the {role} model {spec} returns {describe_output(out)}: several tensors have the logits "
                      f"shape ({batch}, {num_classes}) ({choices}), so which one holds the logits is ambiguous",
                      hint=f"choose one with --set {field}=<path> (e.g. {field}={_path_text(fits[0][0])})")


class _ScriptedLogits(nn.Module):
    """A TorchScript model's logits (its class cannot be swapped): `inner` is the scripted module."""

    def __init__(self, inner: nn.Module, path: tuple):
        super().__init__()
        self.inner = inner
        self._logits_path = tuple(path)

    def forward(self, x):
        out = self.inner(x)
        return out if isinstance(out, torch.Tensor) else follow(out, self._logits_path)


_CLASSES: dict[tuple[type, tuple], type] = {}


def with_logits(model: nn.Module, path: tuple | list) -> nn.Module:
    """`model` whose forward returns the tensor at `path` of its original output (unchanged for an empty path)."""
    path = tuple(path or ())
    if not path:
        return model
    if isinstance(model, torch.jit.ScriptModule):
        return _ScriptedLogits(model, path)
    base = type(model)
    if getattr(base, "_logits_path", None) is not None:  # already selected: select from the original
        base = base.__mro__[1]
    key = (base, path)
    cls = _CLASSES.get(key)
    if cls is None:
        @functools.wraps(base.forward)  # keeps the signature torch.export / tracing inspect
        def forward(self, *args, **kwargs):
            out = base.forward(self, *args, **kwargs)
            # Some models return a tensor in eval mode and a tuple in training (torchvision Inception's aux
            # logits): the path applies to the structured form only.
            return out if isinstance(out, torch.Tensor) else follow(out, path)

        # Same names so messages, hooks and torch-pruning see the user's class.
        cls = type(base.__name__, (base,), {"forward": forward, "_logits_path": path,
                                            "__qualname__": base.__qualname__, "__module__": base.__module__})
        _CLASSES[key] = cls
    model.__class__ = cls
    return model


def logits_path(model: nn.Module) -> list | None:
    """The recorded selection of a model returned by with_logits (None when it returns a tensor itself)."""
    path = getattr(model, "_logits_path", None)
    return list(path) if path else None


def unwrap_scripted(model: nn.Module) -> nn.Module:
    return model.inner if isinstance(model, _ScriptedLogits) else model
