"""Importing torchvision and timm beside the project's CPU torch.

The torchvision release that matches torch 2.13.0 (0.28.0) is, on the package index, a CUDA build: its C++
extension (`_C.so`: nms, roi_align, deform_conv, image decoding) links libtorch_cuda and does not load beside
the CPU torch wheel. torchvision then skips every op registration guarded by `extension._has_ops()` but one:
`_meta_registrations.py` registers fake kernels for `torchvision::nms` and `torchvision::qnms` unguarded, so
`import torchvision` raises `RuntimeError: operator torchvision::nms does not exist`. The classification
models (resnet, mobilenet, efficientnet, inception, ...) are plain Python and need none of those ops.

`import_torchvision()` imports torchvision; on exactly that error it declares the two op schemas (with no
kernel: calling them raises torch's own "could not run" error) and imports it again. timm imports
torchvision, so `import_timm()` goes through the same door. Measured in docs/TOOLCHAIN.md.
"""
from __future__ import annotations

import sys
from typing import Any

_SHIM: list[Any] = []  # the torch.library.Library holding the declared schemas must stay alive
_UNGUARDED = ("nms", "qnms")


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def shimmed() -> bool:
    """Whether torchvision was imported through the schema shim (its C++ ops are not available)."""
    return bool(_SHIM)


def import_torchvision():
    """torchvision, imported beside a torch whose ABI its C++ extension does not match when need be."""
    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
    import torch

    _forget_torchvision()
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in _UNGUARDED:
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM.append(lib)
    import torchvision
    return torchvision


def import_timm():
    import_torchvision()
    import timm
    return timm


def versions() -> dict[str, str]:
    """Installed torchvision/timm versions (for run.json), without importing either."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("torchvision", "timm"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out
