"""Is a loaded dataset a classification task the splits can be carved from?

Run on every user source before splitting (`check_dataset`): at least 2 classes; every class has images
(and training images, when the splits are fixed); enough images for data.split. The minimum follows how
pipeline.data.datasets splits: scikit-learn's train_test_split takes ceil(fraction * n) for the held-out
part and, stratified, needs each part to hold at least one image per class; each class needs one image
per split (3 when splitting by ratio). The message names the minimum per class and in total.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.errors import DataError

MAX_SHOWN = 6


def _counts(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels, minlength=k) if len(labels) else np.zeros(k, dtype=np.int64)


def _parts_ok(n: int, k: int, fracs: list[float]) -> bool:
    """Each carved part (ceil(frac * rest), taken one after the other) and what stays hold >= k images."""
    rest = n
    for f in fracs:
        carved = math.ceil(f * rest)
        if carved < k:
            return False
        rest -= carved
    return rest >= k


def min_total(k: int, fracs: list[float]) -> int:
    n = max(k * (len(fracs) + 1), 1)
    while not _parts_ok(n, k, fracs) and n < 10_000_000:
        n += 1
    return n


def _names(class_names: list[str], idx) -> str:
    shown = [repr(class_names[i]) for i in list(idx)[:MAX_SHOWN]]
    more = len(idx) - MAX_SHOWN
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def check_dataset(labels: np.ndarray, class_names: list[str], splits: dict | None, cfg, where: str) -> None:
    k = len(class_names)
    if k < 2:
        raise DataError(f"{where} has {k} class{'' if k == 1 else 'es'}"
                        + (f" ({class_names[0]!r})" if k == 1 else "")
                        + ": a classifier needs at least 2",
                        hint="add a folder (or label) per class; if data.path points inside the dataset, "
                             "point it at the folder holding all the class folders")
    counts = _counts(labels, k)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise DataError(f"{where}: {len(empty)} of {k} classes have no images: {_names(class_names, empty)}",
                        hint="add images for them, or remove those class folders / names")
    by_ratio = not splits
    fixed = splits or {}
    carved = ["test", "val"] if by_ratio else [s for s in ("test", "val") if s not in fixed]
    # datasets.split_indices takes val as a fraction of the whole: val / (1 - test) of what test leaves.
    chain = [cfg.split.test, cfg.split.val / (1 - cfg.split.test)]
    train = labels if by_ratio else labels[fixed["train"]]
    train_counts = _counts(train, k)
    per_class = 1 + len(carved)
    short = np.flatnonzero(train_counts < per_class)
    if len(short):
        what = "images" if by_ratio else "training images"
        raise DataError(f"{where}: too few {what} for data.split: {len(short)} class(es) have fewer than "
                        f"{per_class}: " + ", ".join(f"{class_names[i]!r} {int(train_counts[i])}"
                                                     for i in short[:MAX_SHOWN])
                        + (f" (+{len(short) - MAX_SHOWN} more)" if len(short) > MAX_SHOWN else "")
                        + f"; the minimum is {per_class} per class"
                        + (f" ({' + '.join(['1 train'] + [f'1 {s}' for s in reversed(carved)])})" if carved else ""),
                        hint="add images to those classes" + (", or give fixed val/ and test/ folders" if carved else ""))
    if by_ratio:  # stratified, without the unstratified fallback complete_splits has for fixed splits
        need = min_total(k, chain)
        if len(train) < need:
            raise DataError(f"{where}: {len(train)} images in {k} classes are too few to split by data.split "
                            f"(val {cfg.split.val:g}, test {cfg.split.test:g}): the minimum is {need} in total "
                            f"and {per_class} per class",
                            hint=f"add images (at least {need}), give fixed val/ and test/ folders, or raise "
                                 "data.split.val / data.split.test")


# --------------------------------------------------------------------------- colour dropped by data.channels=1

COLOUR_EFFECT = 1.0  # class means of a chroma channel this many pooled within-class stds apart: signal
COLOUR_LEVELS = 4.0  # ... and at least this many grey levels apart (0..255)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, Pillow's convert("L")


def colour_signal(per_class: list[np.ndarray], class_names: list[str]) -> str | None:
    """What colour tells the classes apart that grey does not, or None.

    per_class[k]: (n, 3) mean R, G, B of each sampled image of class k (0..255). The grey conversion keeps luma
    and drops chroma (R - luma, B - luma): when some pair of classes differs in a chroma channel by
    COLOUR_EFFECT pooled within-class standard deviations (and COLOUR_LEVELS grey levels), more than it differs
    in luma, the conversion throws that difference away."""
    feats = []
    for m in per_class:
        m = np.asarray(m, dtype=np.float64).reshape(-1, 3)
        y = _luma(m)
        feats.append(np.stack([y, m[:, 0] - y, m[:, 2] - y], axis=1) if len(m) else np.zeros((0, 3)))
    if sum(1 for f in feats if len(f)) < 2:
        return None
    best = None
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            a, b = feats[i], feats[j]
            if not len(a) or not len(b):
                continue
            diff = np.abs(a.mean(0) - b.mean(0))
            pooled = np.sqrt((a.var(0) * len(a) + b.var(0) * len(b)) / (len(a) + len(b))) + 1.0
            effect = diff / pooled
            chroma = max(1, 2, key=lambda c: effect[c])
            if diff[chroma] >= COLOUR_LEVELS and effect[chroma] >= COLOUR_EFFECT and effect[chroma] > effect[0]:
                if best is None or effect[chroma] > best[0]:
                    best = (effect[chroma], i, j, chroma, a.mean(0), b.mean(0))
    if best is None:
        return None
    _, i, j, c, ma, mb = best
    ch = {1: "red", 2: "blue"}[c]
    return (f"classes {class_names[i]!r} and {class_names[j]!r} differ in colour ({ch} minus grey: {ma[c]:.1f} vs "
            f"{mb[c]:.1f}) more than in grey level ({ma[0]:.1f} vs {mb[0]:.1f})")


def colour_warning(where: str, signal: str) -> str:
    return (f"data.channels=1 converts the colour images of {where} to grey, which throws away what tells the "
            f"classes apart: {signal}; set data.channels=3 to train on colour")
