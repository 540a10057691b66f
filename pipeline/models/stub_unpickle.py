"""Reading the weights out of a checkpoint that also pickles other objects, without running any of them.

Published checkpoints often hold, beside a plain state dict, objects of the training code's classes
(Lightning's hyper-parameters, an omegaconf/EasyDict config, a custom 'args'). `torch.load(weights_only=True)`
refuses the whole file for them. This is the restricted unpickler of Python's pickle documentation: every
global the file names goes through `find_class`, which returns the real object only for what torch's own
weights_only loader allows (plus the harmless data types of checkpoints.py), and an inert stub class for
everything else. A stub records its arguments and state and does nothing, so no code from the file runs.
The caller decides whether a stub-free state dict was found (pipeline/models/checkpoints.py).
"""
from __future__ import annotations

import pickle
from typing import Any


class Stub:
    """Stands in for an object of a class this process will not import or call."""

    stub_of = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __call__(self, *args, **kwargs):  # a stubbed callable's result is another stub
        return type(self)(*args, **kwargs)

    # Pickle may build a stub with __new__ only (NEWOBJ), then fill it like a list or dict.
    def _items(self) -> list:
        return self.__dict__.setdefault("items", [])

    def append(self, item):
        self._items().append(item)

    def extend(self, items):
        self._items().extend(items)

    def __setitem__(self, key, value):
        self._items().append((key, value))


def _allowed(extra: list) -> dict[str, Any]:
    from torch import _weights_only_unpickler as wou

    allowed = dict(wou._get_allowed_globals())
    allowed.update(wou._get_user_allowed_globals())
    for item in extra:
        obj, name = item if isinstance(item, tuple) else (item, f"{item.__module__}.{item.__qualname__}")
        allowed[name] = obj
    return allowed


def make_pickle_module(extra: list, stubbed: list[str]):
    """A module-like object for torch.load(pickle_module=...): its Unpickler stubs every unknown global and
    lists their names in `stubbed`."""
    allowed = _allowed(extra)
    classes: dict[str, type] = {}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if full not in classes:
                classes[full] = type(name, (Stub,), {"stub_of": full})
                stubbed.append(full)
            return classes[full]

    def load(f, **kwargs):
        return RestrictedUnpickler(f, **kwargs).load()

    class Module:
        Unpickler = RestrictedUnpickler
        __name__ = "pipeline_restricted_pickle"

    Module.load = staticmethod(load)  # type: ignore[attr-defined]
    return Module


def contains_stub(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, Stub):
        return True
    if depth > 6:
        return False
    if isinstance(obj, dict):
        return any(contains_stub(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return any(contains_stub(v, depth + 1) for v in obj)
    return False


def load_with_stubs(path, extra: list) -> tuple[Any, list[str]]:
    """(the checkpoint's object with stubs for unknown classes, the stubbed global names)."""
    import warnings

    import torch

    stubbed: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", weights_only=False,
                         pickle_module=make_pickle_module(extra, stubbed))
    return obj, stubbed

