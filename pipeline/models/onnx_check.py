"""Find a model ONNX cannot export before any training: export it once with its initial weights.

An unsupported operator is named together with the module that calls it (its path in the model),
found from the same trace the exporter makes (with module scopes switched on).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError


@contextlib.contextmanager
def _quiet_fd2():
    """The legacy exporter prints the whole TorchScript graph to the C-level stderr on failure: keep it out
    of the terminal (the error message says what matters)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def modules_calling(model: nn.Module, example: torch.Tensor, op: str) -> list[str]:
    """Module paths (with class names) whose forward calls the aten operator `op` (e.g. 'aten::cummax').

    torch.jit's tracer records module scopes only while `_trace_module_map` is set (what torch.onnx.export
    does internally); best effort: an empty list when tracing fails."""
    from torch.jit import _trace

    names = {m: n for n, m in model.named_modules()}
    saved = getattr(_trace, "_trace_module_map", None)
    found: list[str] = []
    try:
        _trace._trace_module_map = names
        with torch.no_grad(), _quiet_fd2():
            graph, _ = torch.jit._get_trace_graph(model, (example,))
        modules = dict(model.named_modules())
        for node in graph.nodes():
            if node.kind() == op:
                path = node.scopeName().split("/")[-1] if node.scopeName() else ""
                cls = type(modules.get(path, model)).__name__
                found.append(f"{path or '<the model itself>'} ({cls})")
    except (RuntimeError, TypeError, ValueError, AttributeError):  # tracing is only for a better message
        return []
    finally:
        _trace._trace_module_map = saved
    return list(dict.fromkeys(found))


def check_exportable(model: nn.Module, example: torch.Tensor, opset: int, role: str, spec: str) -> None:
    """Export `model` once to a temporary ONNX file; ConfigError (exit 2) naming the operator and module
    when ONNX cannot express it."""
    from pipeline.stages.export import export_onnx

    was_training = model.training
    with tempfile.TemporaryDirectory(prefix="pipeline-onnx-check-") as tmp:
        try:
            with _quiet_fd2():
                export_onnx(model, example, Path(tmp) / "check.onnx", opset)
        except Exception as e:  # the exporter raises many types: say which op and where, as one line
            text = str(e)
            m = re.search(r"operator '([\w:.]+)'", text)
            first = text.splitlines()[0][:300] if text else type(e).__name__
            if m:
                where = modules_calling(model, example, m.group(1))
                at = f", called in {', '.join(where[:3])}" if where else ""
                raise ConfigError(f"the {role} model {spec} cannot be exported to ONNX (opset {opset}): the operator "
                                  f"{m.group(1)} is not supported{at}",
                                  hint=f"replace that operation in the module with ONNX-exportable ops, or try a "
                                       f"higher export.opset (now {opset}, up to 21)") from None
            raise ConfigError(f"the {role} model {spec} cannot be exported to ONNX (opset {opset}): "
                              f"{type(e).__name__}: {first}",
                              hint="make the forward traceable (no data-dependent Python control flow, no "
                                   "non-tensor outputs), or set teacher.output/student.output") from None
        finally:
            model.train(was_training)
