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

from pipeline.errors import CheckpointError, MissingDependency

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights", "params", "ema",
                "state_dict_ema", "model_ema")
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _harmless_globals() -> list:
    """Globals published checkpoints name beside their weights that only rebuild plain data: numpy scalars
    and arrays (e.g. a saved 'best_acc'), numpy dtypes and argparse.Namespace (the training 'args').
    Allowed in weights_only loading under both numpy module spellings (numpy<2 wrote numpy.core)."""
    import argparse

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # type: ignore[attr-defined]
    out: list = [argparse.Namespace, np.ndarray, np.dtype]
    for fn in (multiarray.scalar, multiarray._reconstruct):
        out += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


class BesideObjects:
    """A checkpoint read with inert stubs for the objects torch's weights_only loader refuses
    (pipeline/models/stub_unpickle.py): usable only when its state dict holds no stub."""

    def __init__(self, obj: Any, stubbed: list[str], refused: str):
        self.obj, self.stubbed, self.refused = obj, stubbed, refused


def _load_beside_objects(path: Path) -> "BesideObjects | None":
    from pipeline.models.stub_unpickle import load_with_stubs

    try:
        obj, stubbed = load_with_stubs(path, _harmless_globals())
    except Exception:  # noqa: BLE001 - best effort: the caller then refuses the file as a pickled object
        return None
    glob = _unsupported_global("", path) or ", ".join(stubbed[:5])
    return BesideObjects(obj, stubbed, glob)


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000
    except OSError:
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
    except Exception:  # best effort: only names the pickle's globals in a message
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
    if _is_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingDependency(f"checkpoint {path} is a safetensors file, and the safetensors package is not "
                                    "installed", hint="pip install safetensors") from None
        try:
            return load_file(str(path), device="cpu")  # plain tensors only: nothing in the file can run code
        except Exception as e:  # safetensors raises its own error types: CheckpointError naming the file
            raise CheckpointError(f"checkpoint {path} is a damaged safetensors file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                                  hint="re-save or re-download it") from None
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch.jit.load raises many types: CheckpointError naming the file
            raise CheckpointError(f"TorchScript file {path} could not be loaded: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}",
                                  hint="re-export it with torch.jit.save, or save model.state_dict() instead") from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            with torch.serialization.safe_globals(_harmless_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for bad files: CheckpointError naming the cause
        text = str(e)
        # Only a refused global means "a pickled object"; random bytes fail weights_only with other messages.
        glob = _unsupported_global(text, path) if "Weights only load failed" in text or "weights_only" in text \
            else None
        if glob:
            holds = f" (it names {glob})" if glob else ""
            if not allow_pickle:
                stubbed = _load_beside_objects(path)
                if stubbed is not None:
                    return stubbed
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
            except Exception as e2:  # unpickling runs the file's code: CheckpointError naming the file
                raise CheckpointError(f"checkpoint {path} could not be unpickled: {type(e2).__name__}: {e2}",
                                      hint="re-save it, preferably as model.state_dict()") from None
        # torch's own text for this case talks about weights_only defaults, which would mislead here.
        detail = type(e).__name__ if "Weights only" in text else \
            f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({detail})",
                              hint="re-save or re-download it") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) \
        and all(isinstance(v, torch.Tensor) for v in obj.values())


def _candidates(obj: Any, where: str = "", depth: int = 0, strict: bool = False) -> list[tuple[str, dict]]:
    """Every state dict inside `obj` ({'state_dict': ...}, {'model': {...}}, {'ema': ...}, nested dicts with
    optimizer state beside them), with where it was found."""
    if isinstance(obj, nn.Module):
        return [(where or "<module>", obj.state_dict())]
    if _is_state_dict(obj):
        return [(where or "<top level>", obj)]
    found: list[tuple[str, dict]] = []
    if isinstance(obj, dict) and depth < 4:
        # A state dict with a few non-tensor entries beside the tensors (e.g. an 'epoch' counter).
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if not strict and len(tensors) >= 2 and len(tensors) >= len(obj) - 2:
            found.append((where or "<top level>", tensors))
        for k, v in obj.items():
            if isinstance(v, (dict, nn.Module)):
                found.extend(_candidates(v, f"{where}.{k}" if where else str(k), depth + 1, strict))
    return found


def extract_state_dict(obj: Any, expected: set[str] | None = None, strict: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object: the one whose keys (after prefix stripping) best match
    `expected`, preferring the usual wrapper keys in WRAPPER_KEYS order on a tie. `strict`: only dicts that
    hold tensors and nothing else (a dict with any other object in it is not taken for weights)."""
    found = _candidates(obj, strict=strict)
    if found and expected and isinstance(obj, dict):
        # Tensors under other keys (optimizer state, a lone 'lr') are not the weights unless their keys match.
        found = [(w, sd) for w, sd in found
                 if w == "<top level>" or w.split(".")[0] in WRAPPER_KEYS or set(remap_prefixes(sd, expected)) & expected]
    if not found:
        if isinstance(obj, dict):
            def kind(v):
                t = type(v)
                return t.__name__ if t.__module__ == "builtins" else f"{t.__module__.split('.')[0]}.{t.__name__}"

            items = list(obj.items())[:8]
            keys = (", ".join(str(k) for k, _ in items) + " (values of type "
                    + ", ".join(dict.fromkeys(kind(v) for _, v in items)) + ")") if items else "none"
            raise CheckpointError(f"the checkpoint holds no state dict (its top-level keys: {keys})",
                                  hint=f"save model.state_dict(), or a dict holding it under one of the keys "
                                       f"{list(WRAPPER_KEYS)}")
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict",
                              hint=f"save model.state_dict(), or a dict holding it under one of the keys "
                                   f"{list(WRAPPER_KEYS)}")

    def rank(item):
        where, sd = item
        top = where.split(".")[0]
        prio = WRAPPER_KEYS.index(top) if top in WRAPPER_KEYS else len(WRAPPER_KEYS)
        match = len(set(remap_prefixes(sd, expected)) & expected) if expected else 0
        return (-match, prio, where.count("."))

    return sorted(found, key=rank)[0][1]


def _strip_wrappers(key: str) -> str:
    """Drop DataParallel/DDP `module.` and torch.compile `_orig_mod.` prefixes, in any order and number."""
    changed = True
    while changed:
        changed = False
        for p in ("module.", "_orig_mod."):
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def remap_prefixes(sd: dict[str, torch.Tensor], expected: set[str] | None) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (DataParallel's `module.`, torch.compile's `_orig_mod.`, a common `model.`/`net.`
    holder) when that makes more keys match the model. The result is a plain dict: its keys changed, so the
    saved `_metadata` (per-module versions) would not apply to them anyway."""
    expected = expected or set()

    def score(d):
        return len(set(d) & expected)

    best = dict(sd)
    stripped = {_strip_wrappers(k): v for k, v in sd.items()}
    if len(stripped) == len(sd) and score(stripped) > score(best):
        best = stripped
    for _ in range(3):
        for p in STRIP_PREFIXES:
            if best and all(k.startswith(p) for k in best):
                cand = {k[len(p):]: v for k, v in best.items()}
                if score(cand) > score(best) or not expected:
                    best = cand
                    break
        else:
            break
    return best


def _module_of(key: str) -> str:
    return key.rpartition(".")[0] or key


def _grouped(keys: list[str], limit: int = 6) -> str:
    """`layer3 (18 tensors: layer3.0.conv1.weight, ...), fc.weight` - grouped by top-level module."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split(".")[0], []).append(k)
    parts = []
    for top, ks in list(groups.items())[:limit]:
        if len(ks) == 1:
            parts.append(ks[0])
        else:
            mods = sorted({_module_of(k) for k in ks})
            parts.append(f"{top} ({len(ks)} tensors in {len(mods)} module(s), e.g. {ks[0]})")
    if len(groups) > limit:
        parts.append(f"+{len(groups) - limit} more module(s)")
    return ", ".join(parts)


def key_diff(model_sd: dict, ckpt_sd: dict, limit: int = 8) -> str:
    # PyTorch itself fills in BatchNorm's num_batches_tracked when a state dict lacks it: not a mismatch.
    missing = sorted(k for k in set(model_sd) - set(ckpt_sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(ckpt_sd) - set(model_sd))
    shape = sorted(k for k in set(model_sd) & set(ckpt_sd)
                   if hasattr(ckpt_sd[k], "shape") and tuple(model_sd[k].shape) != tuple(ckpt_sd[k].shape))
    parts = []
    for label, keys in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected)):
        if keys:
            parts.append(f"{label}: {_grouped(keys)}")
    if shape:
        more = f" (+{len(shape) - limit} more)" if len(shape) > limit else ""
        parts.append("shape mismatch: " + ", ".join(
            f"{k} model {tuple(model_sd[k].shape)} vs checkpoint {tuple(ckpt_sd[k].shape)}"
            for k in shape[:limit]) + more)
    return "; ".join(parts)


def _block_counts(keys) -> dict[str, int]:
    """{stage: number of blocks} from keys like layer1.3.conv1.weight (a Sequential/ModuleList of blocks)."""
    counts: dict[str, int] = {}
    for k in keys:
        m = re.match(r"^((?:[A-Za-z_]\w*\.)*?[A-Za-z_]\w*)\.(\d+)\.[A-Za-z_]", k)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
    return counts


def likely_kwargs(model: nn.Module, model_sd: dict, ckpt_sd: dict, kwargs: dict | None = None,
                  field: str = "teacher") -> list[str]:
    """Which model arguments probably differ, read from the checkpoint's tensor shapes."""
    kwargs = kwargs or {}
    hints: list[str] = []
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if convs and f"{convs[0]}.weight" in ckpt_sd:
        w_ck, w_m = ckpt_sd[f"{convs[0]}.weight"], model_sd.get(f"{convs[0]}.weight")
        if w_m is not None and w_ck.ndim == w_m.ndim:
            if w_ck.shape[1] != w_m.shape[1]:
                hints.append(f"the checkpoint's first conv ({convs[0]}) takes {w_ck.shape[1]} input channels, "
                             f"the model {w_m.shape[1]}: set data.channels={w_ck.shape[1]}")
            if w_ck.shape[0] != w_m.shape[0]:
                arg = "width" if "width" in kwargs or _takes(model, "width") else "its width argument"
                hints.append(f"the checkpoint's first conv has {w_ck.shape[0]} output channels, the model "
                             f"{w_m.shape[0]}: probably {arg}={w_ck.shape[0]}"
                             + (f" ({field}.kwargs)" if arg == "width" else ""))
    if linears and f"{linears[-1]}.weight" in ckpt_sd:
        w_ck, w_m = ckpt_sd[f"{linears[-1]}.weight"], model_sd.get(f"{linears[-1]}.weight")
        if w_m is not None and w_ck.ndim == 2 and w_ck.shape[0] != w_m.shape[0]:
            hints.append(f"the checkpoint's classifier ({linears[-1]}) has {w_ck.shape[0]} outputs, this data has "
                         f"{w_m.shape[0]} classes: it was trained for another label set (num_classes="
                         f"{w_ck.shape[0]}); set {field}.head=replace to give it a new {w_m.shape[0]}-class head and "
                         f"fine-tune it here (teacher.finetune.epochs), or use a checkpoint trained on these classes")
    ck_blocks, m_blocks = _block_counts(ckpt_sd), _block_counts(model_sd)
    deeper = [f"{s}: {ck_blocks[s]} in the checkpoint vs {m_blocks[s]} in the model" for s in m_blocks
              if s in ck_blocks and ck_blocks[s] != m_blocks[s]]
    if deeper:
        hint = "the number of blocks differs (" + "; ".join(deeper[:4]) + "): a different depth"
        n = next(iter(ck_blocks[s] for s in m_blocks if s in ck_blocks and ck_blocks[s] != m_blocks[s]))
        if all(s in ck_blocks for s in ("layer1", "layer2", "layer3")) and "layer4" not in ck_blocks:
            hint += f", e.g. builtin:resnet{6 * n + 2} (CIFAR ResNet with {n} blocks per stage)"
        hints.append(hint)
    return hints


def _takes(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return False


def _weights_beside_objects(obj: BesideObjects, path, expected: set[str], field: str) -> dict[str, torch.Tensor]:
    """The plain state dict beside the refused objects; the old refusal when the weights themselves are
    (inside) such an object: a pickled full model, or code planted among the tensors."""
    from pipeline.models.stub_unpickle import Stub

    refusal = CheckpointError(
        f"checkpoint {path} is a pickled object, not plain weights (it names {obj.refused}); unpickling it could "
        "run code, so it was not loaded",
        hint=f"save model.state_dict() instead, or set {field}.allow_pickle=true if you trust this file")
    if isinstance(obj.obj, Stub):
        raise refusal
    try:
        sd = extract_state_dict(obj.obj, expected, strict=True)
    except CheckpointError:
        raise refusal from None
    if not set(remap_prefixes(sd, expected)) & expected:
        raise refusal
    return sd


def classifier_heads(model: nn.Module, model_sd: dict, ckpt_sd: dict) -> tuple[list[str], int | None]:
    """The classifier heads whose class count differs between the model and the checkpoint, found from the
    model: the checkpoint's class count is the output count its copy of the model's last Linear has; a head
    is every Linear or 1x1-conv module whose weight has that many outputs in the checkpoint, another count in
    the model, and the same shape otherwise (torchvision inception_v3: fc and AuxLogits.fc; resnet: fc;
    mobilenet/efficientnet: classifier.N; timm: its get_classifier(); squeezenet's conv classifier).
    Returns (module names, the checkpoint's class count)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last = next((n for n in reversed(linears) if f"{n}.weight" in ckpt_sd), None)
    if last is None:
        return [], None
    k = int(ckpt_sd[f"{last}.weight"].shape[0])
    heads = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or f"{name}.weight" not in ckpt_sd:
            continue
        w_m, w_ck = model_sd[f"{name}.weight"], ckpt_sd[f"{name}.weight"]
        if isinstance(m, nn.modules.conv._ConvNd) and (m.groups != 1 or any(s != 1 for s in m.kernel_size)):
            continue
        if w_ck.ndim == w_m.ndim and w_ck.shape[0] == k != w_m.shape[0] and w_ck.shape[1:] == w_m.shape[1:]:
            heads.append(name)
    return heads, k


def _head_keys(model: nn.Module, heads: list[str]) -> set[str]:
    keys: set[str] = set()
    for name in heads:
        mod = model.get_submodule(name)
        keys |= {f"{name}.{k}" for k in mod.state_dict()}
    return keys


def load_into(model: nn.Module, path: str | Path, allow_pickle: bool = False, kwargs: dict | None = None,
              field: str = "teacher", notes: list[str] | None = None, head: str = "keep",
              replaced: dict | None = None) -> nn.Module:
    """Load weights into `model` and return it; a TorchScript file is returned as it is.

    Accepts exactly what PyTorch's strict `load_state_dict` accepts (after unwrapping the state dict and
    stripping wrapper prefixes): e.g. a state dict of an older PyTorch without BatchNorm's
    `num_batches_tracked`, fp16 tensors. When PyTorch refuses, the message names the closest cause.
    A pickled full model (allow_pickle only) gives its weights to `model`, so the recipe's model spec keeps
    describing the architecture every later stage rebuilds.
    """
    obj = read_checkpoint(path, allow_pickle)
    if isinstance(obj, torch.jit.ScriptModule):
        return obj
    model_sd = model.state_dict()
    if isinstance(obj, BesideObjects):
        sd = _weights_beside_objects(obj, path, set(model_sd), field)
        if notes is not None:
            notes.append(f"{path}: read the weights only; {len(obj.stubbed)} other pickled object type(s) in the "
                         f"file were not loaded and nothing in it was run ({', '.join(obj.stubbed[:4])})")
    else:
        sd = extract_state_dict(obj, set(model_sd))
    sd = remap_prefixes(sd, set(model_sd))
    heads, k = classifier_heads(model, model_sd, sd)
    if not heads and head == "replace":  # same class count, another label set: re-initialise the head(s) anyway
        n = next((int(m.out_features) for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
        heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n]
        k = n
    if heads and head in ("auto", "replace"):
        # Every other tensor loads strictly; the heads keep the initialisation the model's builder gave them.
        keys = _head_keys(model, heads)
        rest = {key: v for key, v in sd.items() if key not in keys}
        try:
            result = model.load_state_dict(rest, strict=False)
        except RuntimeError as e:
            torch_text = str(e)
        else:
            missing = [key for key in result.missing_keys if key not in keys]
            if not missing and not result.unexpected_keys:
                n = int(model_sd[f"{heads[0]}.weight"].shape[0])
                if replaced is not None:
                    replaced.update(modules=heads, checkpoint_classes=k, classes=n)
                if notes is not None:
                    notes.append(f"{field}.head={head}: the checkpoint's classifier has {k} classes, this data {n}: "
                                 f"replaced {', '.join(heads)} (new weights), loaded every other tensor from {path}")
                return model
            torch_text = f"missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
            model.load_state_dict(model_sd)  # leave the model as built
    else:
        try:
            model.load_state_dict(sd, strict=True)
            return model
        except RuntimeError as e:
            torch_text = str(e)
    diff = key_diff(model_sd, sd) or torch_text.splitlines()[0][:300]
    hints = likely_kwargs(model, model_sd, sd, kwargs, field)
    if heads:
        hints = [h for h in hints if not h.startswith("the checkpoint's classifier")]
        then = "fine-tune it here (teacher.finetune.epochs)" if field == "teacher" else "train it by distillation"
        hints.insert(0, f"the checkpoint's classifier ({', '.join(heads)}) has {k} classes (num_classes={k}), this data "
                        f"{int(model_sd[f'{heads[0]}.weight'].shape[0])}: set {field}.head=replace to give it a new "
                        f"head and {then}, or use a checkpoint trained on these classes")
    shared = len(set(model_sd) & set(sd))
    if shared < len(model_sd) / 2:
        hints.insert(0, f"only {shared} of the model's {len(model_sd)} tensor names are in the checkpoint: it was "
                        f"probably saved from another architecture; set {field}.model to the one it was saved from")
    hint = "; ".join(hints + [f"check {field}.model / {field}.kwargs, or the checkpoint you meant"])
    if isinstance(obj, nn.Module) and not heads:  # a class-count mismatch is reported as such whatever the load path
        cls = type(obj)
        hint = (f"the pickled model is a {cls.__module__}.{cls.__qualname__}: set {field}.model to a callable "
                f"that builds that architecture (e.g. {cls.__module__}:{cls.__qualname__}) and its kwargs")
    raise CheckpointError(f"checkpoint {path} does not match the model: {diff}", hint=hint)
