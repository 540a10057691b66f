"""Feature taps: read intermediate outputs of a model by module path, without changing the model.

torchdistill-style: a forward hook is registered on each module named by its dotted path (the names
``model.named_modules()`` yields, e.g. ``"layer3.1.conv2"``); after every forward the latest output of
each tapped module is kept, under the path the user gave.

Wrappers are looked through: ``DistributedDataParallel`` / ``DataParallel`` (``.module``) and
``torch.compile`` (``._orig_mod``). Paths may be written with or without the wrapper's prefix
(``"module.layer3"`` and ``"layer3"`` name the same module of a DDP-wrapped model).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import nn

from pipeline.errors import ConfigError

__all__ = ["FeatureTap", "unwrap_model", "resolve_module"]

# Wrapper attribute -> the prefix its named_modules() puts in front of the wrapped model's paths.
_WRAPPER_ATTRS = ("module", "_orig_mod")


def _is_wrapper(model: nn.Module) -> str | None:
    """Name of the attribute holding the wrapped model, when ``model`` is a known wrapper."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return "module"
    # torch.compile's OptimizedModule; checked by attribute so no private import is needed.
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return "_orig_mod"
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside any DDP / DataParallel / torch.compile wrappers (nested ones too)."""
    while (attr := _is_wrapper(model)) is not None:
        model = getattr(model, attr)
    return model


def _strip_prefixes(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """Unwrap ``model`` and drop the matching ``module.`` / ``_orig_mod.`` prefix from ``path``."""
    while (attr := _is_wrapper(model)) is not None:
        if path == attr:
            path = ""
        elif path.startswith(attr + "."):
            path = path[len(attr) + 1:]
        model = getattr(model, attr)
    return model, path


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (wrappers looked through), or a ConfigError naming close matches."""
    if not isinstance(path, str):
        raise ConfigError(f"a layer path must be a string, got {type(path).__name__}: {path!r}",
                          hint="write the dotted module name, e.g. 'layer3.1.conv2'")
    inner, inner_path = _strip_prefixes(model, path)
    try:
        return inner.get_submodule(inner_path)
    except AttributeError:
        pass
    names = [n for n, _ in inner.named_modules() if n]
    close = difflib.get_close_matches(inner_path, names, n=5, cutoff=0.5)
    # Also offer names that end with or contain the last component (e.g. 'conv2' -> 'layer1.0.conv2').
    last = inner_path.rsplit(".", 1)[-1]
    if last:
        close += [n for n in names if n.rsplit(".", 1)[-1] == last and n not in close][: max(0, 5 - len(close))]
    kind = type(inner).__name__
    if close:
        hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    else:
        top = [n for n in names if "." not in n][:12]
        hint = ("top-level modules: " + ", ".join(repr(t) for t in top) if top else f"{kind} has no submodules")
    hint += " (paths are the names of dict(model.named_modules()))"
    raise ConfigError(f"no module at path {path!r} in {kind}", hint=hint)


class FeatureTap:
    """Keep the latest forward output of modules chosen by dotted path.

    >>> tap = FeatureTap(model, ["layer2", "layer3.1"])
    >>> logits = model(x)
    >>> tap["layer3.1"].shape          # output of model.layer3[1] in that forward
    >>> tap.remove()

    Also a context manager (``with FeatureTap(model, paths) as tap: ...`` removes the hooks on exit).
    Outputs are stored as returned (no detach, so a student's features keep their graph); when a
    module runs several times in one forward, the last call wins. Hooks are registered on the wrapped
    model, so wrapping it in DDP after creating the tap changes nothing.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        paths = list(dict.fromkeys(paths))  # unique, order kept
        # Resolve every path first so one bad path registers nothing.
        modules = {p: resolve_module(model, p) for p in paths}
        self.paths: list[str] = paths
        self.outputs: dict[str, object] = {}
        self._model_name = type(unwrap_model(model)).__name__
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in modules.items()]

    def _hook(self, path: str):
        def hook(_module, _inputs, output):
            self.outputs[path] = output
        return hook

    def __getitem__(self, path: str) -> torch.Tensor:
        """The output of ``path`` in the latest forward; a ConfigError if it did not run."""
        try:
            return self.outputs[path]  # type: ignore[return-value]
        except KeyError:
            if path not in self.paths:
                raise ConfigError(f"layer {path!r} is not tapped", hint=f"tapped layers: {self.paths}") from None
            raise ConfigError(
                f"layer {path!r} of {self._model_name} produced no output (was a forward run since the tap was made?)",
                hint="tap a module that runs in forward(); modules only used in other methods are never called",
            ) from None

    def __contains__(self, path: str) -> bool:
        return path in self.outputs

    @property
    def features(self) -> dict[str, object]:
        """Path -> latest output, for the tapped modules that have run."""
        return dict(self.outputs)

    def clear(self) -> None:
        """Drop the stored outputs (and the autograd graphs they hold)."""
        self.outputs.clear()

    def remove(self) -> None:
        """Remove the hooks and drop the stored outputs; safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.outputs.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTap({self._model_name}, {self.paths}, active={self.active})"
