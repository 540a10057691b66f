"""Build a model from a recipe string.

`builtin:NAME` (our zoo), `torchvision:NAME`, `timm:NAME` (the `vision` extra),
`package.module:callable` or `path/to/file.py:callable`. Only import paths the user wrote are
imported; nothing from a recipe is ever eval'd.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.errors import ConfigError, MissingDependency
from pipeline.models import zoo


def _call(fn, kwargs: dict[str, Any], in_channels: int, num_classes: int, what: str) -> nn.Module:
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = dict(kwargs)
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if (name in params or accepts_any) and name not in kw:
            kw[name] = value
    unknown = [k for k in kw if k not in params and not accepts_any]
    if unknown:
        raise ConfigError(f"{what} does not take the argument(s) {unknown}",
                          hint=f"its arguments are: {', '.join(params) or '(none)'}")
    try:
        model = fn(**kw)
    except TypeError as e:
        raise ConfigError(f"building {what} failed: {e}", hint="check the model's kwargs in the recipe") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} returned {type(model).__name__}, not a torch.nn.Module",
                          hint="the callable must build and return the model")
    return model


def _load_file_module(path: Path):
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist", hint="give path/to/file.py:callable")
    name = f"_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # the user's own file, named by the user
    except Exception as e:
        raise ConfigError(f"importing {path} failed: {type(e).__name__}: {e}", hint="fix that file") from None
    return module


def build_model(spec: str, kwargs: dict[str, Any] | None, in_channels: int, num_classes: int) -> nn.Module:
    kwargs = kwargs or {}
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"model spec {spec!r} has no ':'",
                          hint="use builtin:NAME, torchvision:NAME, timm:NAME, package.module:callable or file.py:callable")
    if scheme == "builtin":
        try:
            fn = zoo.get_constructor(rest)
        except KeyError:
            import difflib

            close = difflib.get_close_matches(rest, zoo.list_models(), n=1)
            raise ConfigError(f"unknown builtin model {rest!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                              hint=f"built-in models: {', '.join(zoo.list_models())}") from None
        return _call(fn, kwargs, in_channels, num_classes, spec)
    if scheme == "torchvision":
        try:
            import torchvision.models as tvm
        except Exception as e:  # ImportError, or the torch/torchvision operator mismatch (FACTS.md)
            raise MissingDependency(f"torchvision is not usable here ({type(e).__name__}: {e})",
                                    hint="pip install -e '.[vision]' (needs torch 2.14.1 + torchvision 0.29.1)") from None
        kw = {"weights": None, "num_classes": num_classes, **kwargs}
        model = tvm.get_model(rest, **kw)
        return model
    if scheme == "timm":
        try:
            import timm
        except Exception as e:
            raise MissingDependency(f"timm is not usable here ({type(e).__name__}: {e})",
                                    hint="pip install -e '.[vision]'") from None
        return timm.create_model(rest, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    # file.py:callable or package.module:callable
    if scheme.endswith(".py"):
        module = _load_file_module(Path(scheme))
    else:
        try:
            module = importlib.import_module(scheme)
        except ImportError as e:
            raise ConfigError(f"cannot import {scheme!r}: {e}", hint="check the module path (is it on PYTHONPATH?)") from None
    fn = getattr(module, rest, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{scheme} has no callable {rest!r}", hint="name a function or class that builds the model")
    return _call(fn, kwargs, in_channels, num_classes, spec)
