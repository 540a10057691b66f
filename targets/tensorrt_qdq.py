"""QDQ ONNX for TensorRT: S8S8 symmetric Q/DQ built with ONNX Runtime's quantizer and checked against
TensorRT's Q/DQ rules (targets/qdq_lint.py). Needs no TensorRT; the TensorRT API lives in targets/tensorrt_api.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["make_trt_qdq"]


def make_trt_qdq(fp32_onnx, out_onnx, calibration: np.ndarray, method: str = "minmax", *,
                 batch_size: int = 16, nodes_to_exclude: list[str] | None = None, check: bool = True,
                 percentile: float = 99.99, bins: int = 2048) -> Path:
    """Quantize an FP32 ONNX into a TensorRT-rule QDQ ONNX with ``onnxruntime.quantization.quantize_static``.

    S8S8 symmetric (zero point 0) QDQ, per-channel weights on the output-channel axis, float biases
    (``QuantizeBias=False``). ``calibration``: float32 array, NCHW for image models. ``method``:
    minmax | entropy | percentile (histograms with ``bins``). ``nodes_to_exclude`` keeps sensitive layers in
    float. The output is written atomically and, with ``check``, linted (``targets.qdq_lint``): a ValueError
    lists the broken rules.
    """
    from targets.onnxruntime import quantize_qdq

    out_onnx = Path(out_onnx)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_onnx.stem}.", suffix=".onnx", dir=out_onnx.parent)
    os.close(fd)
    mask = os.umask(0o022)  # mkstemp makes 0600; the output gets the mode open() would give it
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    try:
        quantize_qdq(fp32_onnx, tmp, calibration, method=method, percentile=percentile, bins=bins,
                     activation="s8", symmetric=True, exclude=nodes_to_exclude or [], batch_size=batch_size,
                     # output channels of [K, N] MatMul weights are axis 1
                     extra={"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
        if check:
            from targets.qdq_lint import lint_qdq

            report = lint_qdq(tmp)
            if not report.ok:
                raise ValueError("quantized model breaks TensorRT Q/DQ rules: " + "; ".join(report.errors))
        os.replace(tmp, out_onnx)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_onnx
