"""Build a model from a recipe string.

`builtin:NAME` (our zoo), `torchvision:NAME`, `timm:NAME` (the `vision` extra),
`package.module:callable` or `path/to/file.py:callable`. Only import paths the user wrote are
imported; nothing from a recipe is ever eval'd.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.errors import ConfigError, MissingDependency, PipelineError
from pipeline.models import zoo


# Pasted from the project folder it installs the pinned torchvision/timm (constraints.txt) beside torch 2.13.0.
VISION_FIX = "pip install -c constraints.txt -e '.[vision]' (run from the edge-pipeline folder; make run does it)"
SPEC_FORMS = "builtin:NAME, torchvision:NAME, timm:NAME, package.module:callable or path/to/file.py:callable"


def _call(fn, kwargs: dict[str, Any], in_channels: int, num_classes: int, what: str) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some C callables have no signature: pass what the recipe gives
        params, accepts_any = {}, True  # type: ignore[assignment]  # a C callable without a signature
    else:
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = dict(kwargs)
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if (name in params or accepts_any) and name not in kw:
            kw[name] = value
    unknown = [k for k in kw if k not in params and not accepts_any]
    if unknown:
        raise ConfigError(f"{what} does not take the argument(s) {unknown}",
                          hint=f"its arguments are: {', '.join(params) or '(none)'}; set the model's kwargs in the "
                               "recipe to match (teacher.kwargs defaults to {width: 32} for the built-in teacher: "
                               "use --set teacher.kwargs={} for your own model)")
    try:
        with user_code(what):
            model = fn(**kw)
    except PipelineError:
        raise
    except Exception as e:  # the user's code: one line, not a traceback
        raise ConfigError(f"building {what} with {kw} failed: {type(e).__name__}: {e}",
                          hint="check the model's kwargs in the recipe (teacher.kwargs / student.kwargs)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} returned {type(model).__name__}, not a torch.nn.Module",
                          hint="the callable must build and return the model")
    return model


_FILE_MODULES: dict[tuple[str, int, int], Any] = {}


@contextlib.contextmanager
def user_code(what: str, argv0: str | None = None):
    """Run the user's module or callable so it cannot end, hijack or stall the run: sys.argv is [the file] while
    it runs (argparse at module level sees no pipeline options), stdin is empty, and sys.exit / SystemExit
    becomes exit 2."""
    import io

    saved, saved_stdin = sys.argv, sys.stdin
    sys.argv = [argv0 or what]
    sys.stdin = io.StringIO("")  # input() at import time ends with EOFError (a clear error) instead of waiting
    try:
        yield
    except SystemExit as e:
        raise ConfigError(f"{what} called sys.exit({e.code!r}) while being imported or built (does it parse "
                          "command-line arguments or run a script at import time?)",
                          hint="move script code under `if __name__ == \"__main__\":` so importing the file only "
                               "defines the model") from None
    finally:
        sys.argv, sys.stdin = saved, saved_stdin


def _import_failed(what: str, e: BaseException, own: str | None = None):
    """An import error inside the user's module is a missing dependency (exit 3); anything else is bad input."""
    if isinstance(e, ModuleNotFoundError) and e.name and not (own and (own == e.name or own.startswith(e.name + "."))):
        return MissingDependency(f"importing {what} failed: it needs the module {e.name!r}, which is not installed",
                                 hint=f"pip install the package that provides {e.name!r} into this environment")
    return ConfigError(f"importing {what} failed: {type(e).__name__}: {e}", hint=f"fix {what}")


def _load_file_module(path: Path):
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist", hint="give path/to/file.py:callable (relative to the "
                                                                    "folder you run from, or absolute)")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    name = f"_user_model_{hashlib.sha256(key[0].encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)  # so the file can import its sibling modules (appended: never shadows packages)
    sys.modules[name] = module
    try:
        with user_code(str(path), str(path)):
            spec.loader.exec_module(module)  # the user's own file, named by the user
    except ConfigError:
        sys.modules.pop(name, None)
        raise
    except Exception as e:  # the user's file: ConfigError/MissingDependency naming it
        sys.modules.pop(name, None)
        raise _import_failed(str(path), e) from None
    _FILE_MODULES[key] = module
    return module


def _split_spec(spec: str) -> tuple[str, str]:
    # A file path may itself hold ':' (C:/models/net.py:build): split at the last ':' after '.py'.
    if ".py:" in spec:
        scheme, _, rest = spec.rpartition(":")
        if scheme.endswith(".py"):
            return scheme, rest
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest or not scheme:
        raise ConfigError(f"model spec {spec!r} is not of the form scheme:name", hint=f"use {SPEC_FORMS}")
    return scheme, rest


def spec_fingerprint(spec: str) -> str | None:
    """sha256 of the user's source behind a file.py or package.module spec (None for builtin, torchvision
    and timm, whose code is the installed version): the named file plus the local modules it imports,
    transitively (pipeline.models.model_sources). A stage key that includes it reruns when the user edits
    the model's code or a module it imports. A file that cannot be found or read raises."""
    scheme, _ = _split_spec(spec)
    if scheme in ("builtin", "torchvision", "timm"):
        return None
    from pipeline.models.model_sources import model_source_digest

    return model_source_digest(scheme)


def _torchvision(name: str, kwargs: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    try:
        from pipeline.models.vision import import_torchvision

        tvm = import_torchvision().models
    except Exception as e:  # ImportError, or a torchvision built for another torch (docs/TOOLCHAIN.md)
        raise MissingDependency(f"torchvision is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                                hint=VISION_FIX) from None
    if name not in tvm.list_models():
        import difflib

        close = difflib.get_close_matches(name, tvm.list_models(), n=3)
        raise ConfigError(f"torchvision has no model {name!r}" + (f" (close: {', '.join(close)})" if close else ""),
                          hint="see torchvision.models.list_models()")
    if in_channels != 3:
        raise ConfigError(f"torchvision:{name} takes 3-channel images, the data has {in_channels}",
                          hint="set data.channels=3 (grey images are repeated to RGB)")
    kw = {"weights": None, "num_classes": num_classes, **kwargs}
    try:
        return tvm.get_model(name, **kw)
    except Exception as e:  # torchvision's builders raise many types: ConfigError naming the model
        raise ConfigError(f"building torchvision:{name} failed: {type(e).__name__}: {e}",
                          hint="check teacher.kwargs / student.kwargs (e.g. --set teacher.kwargs={} for the builder's defaults)") from None


def _timm(name: str, kwargs: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    try:
        from pipeline.models.vision import import_timm

        timm = import_timm()
    except Exception as e:  # ImportError or a broken install: MissingDependency
        raise MissingDependency(f"timm is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                                hint=VISION_FIX) from None
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}", hint="see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except Exception as e:  # timm's builders raise many types: ConfigError naming the model
        raise ConfigError(f"building timm:{name} failed: {type(e).__name__}: {e}",
                          hint="check teacher.kwargs / student.kwargs (e.g. --set teacher.kwargs={} for the builder's defaults)") from None


def build_model(spec: str, kwargs: dict[str, Any] | None, in_channels: int, num_classes: int) -> nn.Module:
    kwargs = kwargs or {}
    scheme, rest = _split_spec(spec)
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
        return _torchvision(rest, kwargs, in_channels, num_classes)
    if scheme == "timm":
        return _timm(rest, kwargs, in_channels, num_classes)
    # file.py:callable or package.module:callable
    if scheme.endswith(".py"):
        module = _load_file_module(Path(scheme).expanduser())
    else:
        if not all(part.isidentifier() for part in scheme.split(".")):
            raise ConfigError(f"model spec {spec!r}: {scheme!r} is neither a known scheme, a module path nor a .py file",
                              hint=f"use {SPEC_FORMS}")
        try:
            with user_code(scheme):
                module = importlib.import_module(scheme)
        except ConfigError:
            raise
        except Exception as e:  # the user's package: a typed error naming it
            if isinstance(e, ModuleNotFoundError) and e.name and (scheme == e.name or scheme.startswith(e.name + ".")):
                raise ConfigError(f"cannot import {scheme!r}: {e}",
                                  hint="check the module path (is it installed, or on PYTHONPATH?), or give "
                                       "path/to/file.py:callable") from None
            raise _import_failed(scheme, e, own=scheme) from None
    fn = getattr(module, rest, None)  # type: ignore[assignment]  # checked callable below
    if fn is None or not callable(fn):
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == module.__name__]
        raise ConfigError(f"{scheme} has no callable {rest!r}",
                          hint="name a function or class that builds the model"
                               + (f"; it defines: {', '.join(sorted(public)[:10])}" if public else ""))
    return _call(fn, kwargs, in_channels, num_classes, spec)
