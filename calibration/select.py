"""The calibration set: a stratified, seeded subset of the training split, stored once and hashed.

Every target calibrates on the same images, so their INT8 results are comparable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick n indices with every class represented in proportion to its frequency."""
    labels = np.asarray(labels)
    if n <= 0:
        raise ConfigError("calibration.samples must be at least 1", hint="e.g. --set calibration.samples=256")
    n = min(n, len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    # Hand out the remainder to the largest fractional parts, but at least one per class when n allows.
    rest = n - quota.sum()
    frac = counts / counts.sum() * n - quota
    for i in np.argsort(-frac)[:rest]:
        quota[i] += 1
    picked = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.choice(idx, size=min(q, len(idx)), replace=False))
    out = np.concatenate(picked) if picked else np.array([], dtype=int)
    rng.shuffle(out)
    return out


def build_calibration_set(x: np.ndarray, y: np.ndarray, n: int, seed: int, out_file: Path) -> dict:
    idx = stratified_indices(y, n, seed)
    np.savez(out_file, x=x[idx].astype(np.float32), y=y[idx], index=idx)
    return {"samples": int(len(idx)), "classes": int(len(np.unique(y[idx]))), "seed": seed}


def load_calibration_set(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["x"]
