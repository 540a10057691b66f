"""The shared calibration set handed to each backend in its own form."""
from __future__ import annotations

from typing import Iterator

import numpy as np


def batches(x: np.ndarray, batch: int = 1) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch):
        yield np.ascontiguousarray(x[i:i + batch], dtype=np.float32)


def ort_reader(x: np.ndarray, input_name: str, batch: int = 1):
    """An onnxruntime.quantization.CalibrationDataReader over the set."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches(x, batch))

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {input_name: b}

        def rewind(self):
            self._it = iter(batches(x, batch))

    return _Reader()


def ort_calibration_args(method: str, percentile: float, bins: int):
    """Map our method names to ORT's CalibrationMethod and extra options.

    docs/TOOLCHAIN.md: Entropy inside quantize_static with its default bin count gave the same
    scales as MinMax, so the bin count is always passed explicitly.
    """
    from onnxruntime.quantization import CalibrationMethod

    if method == "minmax":
        return CalibrationMethod.MinMax, {}
    if method == "percentile":
        return CalibrationMethod.Percentile, {"CalibPercentile": percentile, "CalibNumBins": bins}
    if method == "entropy":
        return CalibrationMethod.Entropy, {"CalibNumBins": bins, "CalibNumQuantizedBins": 128}
    raise ValueError(f"unknown calibration method {method!r}")


def nncf_dataset(x: np.ndarray, batch: int = 1):
    import nncf

    return nncf.Dataset(list(batches(x, batch)))


def torch_batches(x: np.ndarray, batch: int = 1):
    import torch

    for b in batches(x, batch):
        yield torch.from_numpy(b)
