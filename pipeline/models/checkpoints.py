"""Loading users' checkpoints safely.

`torch.load(weights_only=True)` by default: a pickled full model runs code when unpickled,
so it is only accepted with an explicit opt-in. State dicts may be wrapped
({"state_dict": ...}, {"model": ...}) and carry prefixes (DataParallel's `module.`);
TorchScript archives are read with torch.jit.load.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights", "ema")
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _pickle_globals(path: Path, limit: int = 5) -> list[str]:
    """The globals a pickle names, read with pickletools (which never executes anything)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = path.read_bytes()
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        allowed = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")
        odd = [g for g in dict.fromkeys(found) if not g.startswith(allowed)]
        return odd[:limit]
    except Exception:
        return []


def _unsupported_global(text: str, path: Path) -> str | None:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"unsupported GLOBAL ([\w.]+)", text)
    if m:
        return m.group(1)
    names = _pickle_globals(path)
    return ", ".join(names) if names else None


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Any:
    """The checkpoint's object: a state dict (or a dict holding one), a TorchScript module, or - only with
    allow_pickle - whatever the pickle holds. Without allow_pickle nothing in the file can run code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="check teacher.checkpoint")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file", hint="point teacher.checkpoint at a .pt/.pth file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty", hint="re-save or re-download it")
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise CheckpointError(f"TorchScript file {path} could not be loaded: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}",
                                  hint="re-export it with torch.jit.save, or save model.state_dict() instead") from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        # Only a refused global means "a pickled object"; random bytes fail weights_only with other messages.
        glob = _unsupported_global(text, path) if "Weights only load failed" in text or "weights_only" in text \
            else None
        if glob:
            holds = f" (it names {glob})" if glob else ""
            if not allow_pickle:
                raise CheckpointError(
                    f"checkpoint {path} is a pickled object, not plain weights{holds}; unpickling it could run "
                    "code, so it was not loaded",
                    hint="save model.state_dict() instead, or set teacher.allow_pickle=true if you trust this "
                         "file") from None
            try:
                return torch.load(path, map_location="cpu", weights_only=False)  # the user's explicit opt-in
            except (AttributeError, ModuleNotFoundError, ImportError) as e2:
                raise CheckpointError(
                    f"checkpoint {path} could not be unpickled: {type(e2).__name__}: {e2}",
                    hint="the classes it was saved with must be importable here (a class defined in the "
                         "training script's __main__ is not); better: save model.state_dict()") from None
            except Exception as e2:
                raise CheckpointError(f"checkpoint {path} could not be unpickled: {type(e2).__name__}: {e2}",
                                      hint="re-save it, preferably as model.state_dict()") from None
        # torch's own text for this case talks about weights_only defaults, which would mislead here.
        detail = type(e).__name__ if "Weights only" in text else \
            f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({detail})",
                              hint="re-save or re-download it") from None


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for k in WRAPPER_KEYS:
            if k in obj:
                return extract_state_dict(obj[k])
        keys = ", ".join(map(str, list(obj)[:8])) or "none"
        raise CheckpointError(f"the checkpoint holds no state dict (its top-level keys: {keys})",
                              hint=f"save model.state_dict(), or a dict holding it under one of the keys "
                                   f"{list(WRAPPER_KEYS)}")
    raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict",
                          hint=f"save model.state_dict(), or a dict holding it under one of the keys {list(WRAPPER_KEYS)}")


def remap_prefixes(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (e.g. DataParallel's `module.`) when that makes the keys match."""
    for _ in range(3):
        if set(sd) & expected:
            break
        for p in STRIP_PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                break
        else:
            break
    return sd


def key_diff(model_sd: dict, ckpt_sd: dict, limit: int = 8) -> str:
    missing = sorted(set(model_sd) - set(ckpt_sd))
    unexpected = sorted(set(ckpt_sd) - set(model_sd))
    shape = sorted(k for k in set(model_sd) & set(ckpt_sd) if tuple(model_sd[k].shape) != tuple(ckpt_sd[k].shape))
    parts = []
    for label, keys in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{label}: {', '.join(keys[:limit])}{more}")
    if shape:
        parts.append("shape mismatch: " + ", ".join(
            f"{k} model {tuple(model_sd[k].shape)} vs checkpoint {tuple(ckpt_sd[k].shape)}" for k in shape[:limit]))
    return "; ".join(parts)


def load_into(model: nn.Module, path: str | Path, allow_pickle: bool = False) -> nn.Module:
    """Load weights into `model` strictly and return it; a TorchScript file is returned as it is.

    A pickled full model (allow_pickle only) gives its weights to `model`, so the recipe's model spec keeps
    describing the architecture every later stage rebuilds.
    """
    obj = read_checkpoint(path, allow_pickle)
    if isinstance(obj, torch.jit.ScriptModule):
        return obj
    sd = extract_state_dict(obj)
    model_sd = model.state_dict()
    sd = remap_prefixes(sd, set(model_sd))
    diff = key_diff(model_sd, sd)
    if diff:
        hint = "check teacher.model / teacher.kwargs, or the checkpoint you meant"
        if isinstance(obj, nn.Module):
            cls = type(obj)
            hint = (f"the pickled model is a {cls.__module__}.{cls.__qualname__}: set teacher.model to a callable "
                    f"that builds that architecture (e.g. {cls.__module__}:{cls.__qualname__}) and its kwargs")
        raise CheckpointError(f"checkpoint {path} does not match the model: {diff}", hint=hint)
    model.load_state_dict(sd, strict=True)
    return model
