"""The data types shared by the dataset loaders (datasets.py) and the user sources (sources.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RawData:
    """uint8 images NHWC (C = 1 or 3, RGB order) with integer labels; optional fixed splits."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    splits: dict[str, np.ndarray] | None = None  # name -> indices, when the source fixes them
    notes: list[str] = field(default_factory=list)


@dataclass
class Splits:
    x_train: Any  # np.ndarray in memory, or pipeline.data.store.ImageSplit (memory-mapped, float per batch)
    y_train: np.ndarray
    x_val: Any
    y_val: np.ndarray
    x_test: Any
    y_test: np.ndarray
    class_names: list[str]
    preprocessing: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the source said (kind, counts, skipped files)
    fixed_splits: list[str] = field(default_factory=list)  # splits the source fixed (not carved here)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
