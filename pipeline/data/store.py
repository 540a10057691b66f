"""The data store: every split decoded and resized once into a uint8 NHWC .npy file, read memory-mapped.

Built in chunks (`chunk` images at a time): an image folder is decoded file by file and written with
plain sequential writes, so building the store never holds more than one chunk of pixels; later stages
open the arrays with ``mmap_mode="r"`` and turn only the batch they need into float32 NCHW
(:class:`ImageSplit`). Normalisation (scale, channel order, mean/std) happens per batch in torch.

Geometry (recorded in the bundle's preprocessing, applied by targets/standalone/runtime.py the same way):
    input_size <= 64: resize to input_size (bilinear) - small images keep their whole field of view;
    input_size  > 64: resize to round(input_size / 0.875), then centre-crop input_size (the usual
                      ImageNet evaluation transform). With data.augment, the train split is stored
                      resized to input_size without a crop: RandomResizedCrop draws its crops from it.
Resizing uses Pillow on uint8, exactly as the device side does, so a stored test image equals what the
bundle's run.py computes from the same file.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.data.types import Splits
from pipeline.errors import DataError
from pipeline import strict_json

SPLITS = ("train", "val", "test")
CHUNK = 256  # images decoded and written at a time: the data stage's working set
HEADER_LEN = 128  # fixed .npy header length: the image count is written last, in place
COLOUR_SAMPLE = 24  # images per class whose colour is compared when data.channels=1 drops it
LARGE = 64  # above this input size: resize + centre crop for evaluation, RandomResizedCrop for training
CROP_FRACTION = 0.875


@dataclass(frozen=True)
class Geometry:
    """Resize to `resize` x `resize`, then centre-crop `size` x `size` (no crop when equal)."""

    size: int
    resize: int

    @property
    def offset(self) -> int:
        return (self.resize - self.size) // 2

    def spec(self) -> dict[str, Any]:
        return {} if self.resize == self.size else {"resize_size": [self.resize, self.resize], "crop": "center"}


def eval_geometry(cfg) -> Geometry:
    size = cfg.input_size
    return Geometry(size, size if size <= LARGE else int(round(size / CROP_FRACTION)))


def train_geometry(cfg) -> Geometry:
    if cfg.augment and cfg.input_size > LARGE:
        return Geometry(cfg.input_size, cfg.input_size)  # RandomResizedCrop needs the whole image
    return eval_geometry(cfg)


def crop(arr: np.ndarray, g: Geometry) -> np.ndarray:
    o = g.offset
    return arr[o:o + g.size, o:o + g.size] if o or arr.shape[0] != g.size else arr


def to_stored(arr: np.ndarray, mode: str, g: Geometry) -> np.ndarray:
    """uint8 HWC (C = 1 or 3) -> uint8 HWC in `mode` at the geometry, with Pillow (as the device does)."""
    from PIL import Image

    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, "L" if arr.shape[-1] == 1 else "RGB")
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != (g.resize, g.resize):
        img = img.resize((g.resize, g.resize), Image.Resampling.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    return crop(out[..., None] if out.ndim == 2 else out, g)


# --------------------------------------------------------------------------- .npy written in chunks


class NpyAppender:
    """A uint8 .npy file written by appending chunks; the header (with the final count) is written last.

    Plain sequential writes, not a writable memory map: dirty pages of a map stay in the process's RSS,
    written file pages do not. The file appears under its name only when closed (temp path, rename).
    """

    def __init__(self, path: Path, tail: tuple[int, ...]):
        self.path, self.tail, self.count = Path(path), tuple(tail), 0
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_LEN)

    def append(self, chunk: np.ndarray) -> None:
        if chunk.shape[1:] != self.tail or chunk.dtype != np.uint8:
            raise ValueError(f"chunk {chunk.shape} {chunk.dtype} does not fit {self.tail} uint8")
        self.f.write(np.ascontiguousarray(chunk).tobytes())
        self.count += len(chunk)

    def close(self) -> Path:
        header = repr({"descr": "|u1", "fortran_order": False, "shape": (self.count, *self.tail)})
        body = (header.encode("latin1") + b" " * HEADER_LEN)[:HEADER_LEN - 10 - 1] + b"\n"
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + (HEADER_LEN - 10).to_bytes(2, "little") + body)
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- sources as chunked readers


@dataclass
class SourcePlan:
    """What the store needs from a source: labels, fixed splits, and a reader of any chunk of images."""

    labels: np.ndarray
    class_names: list[str]
    fixed: dict[str, np.ndarray] | None
    read: Callable[[np.ndarray, Geometry], list[np.ndarray | None]]  # None: unreadable, skipped
    notes: list[str] = field(default_factory=list)
    finish: Callable[[dict[str, int]], list[str]] = lambda counts: []  # notes known after decoding
    groups: np.ndarray | None = None  # per image: id shared by byte-identical images, -1 unique (duplicates)
    names: list[str] | None = None  # per image: how messages name it (a relative path, or "x[i]")
    files: list[Path] | None = None  # per image: the raw file it was decoded from (image folders)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # what the device must add (high_bit_full)
    raw_image: Callable[[int], np.ndarray] | None = None  # in-memory sources: image i as decoded (uint8 HWC)


def _plan_folder(cfg) -> SourcePlan:
    from pipeline.data import sources
    from pipeline.data.checks import check_dataset
    from pipeline.data.images import BIT_DEPTHS

    index = sources.scan_imagefolder(cfg)
    mode = "L" if cfg.channels == 1 else "RGB"
    fixed = None
    if "all" not in index.parts:
        fixed = {s: np.flatnonzero(index.split_of == s) for s in index.parts}
    if len(index.labels) == 0:
        raise DataError(f"image folder {index.root} holds no readable images",
                        hint="add images (png, jpg, ...) in the class sub-folders")
    check_dataset(index.labels, index.class_names, fixed, cfg, f"the dataset {cfg.path}")
    # High bit-depth images get one linear map for the whole folder (pipeline/data/images.py): its peak first.
    peak = sources.high_bit_peak(index, cfg)
    full = None
    if peak is not None and peak > 255:
        bits = next((b for b in BIT_DEPTHS if peak <= 2 ** b - 1), None)
        full = float(2 ** bits - 1) if bits else peak
    bad: list = []

    def to_8bit(arr: np.ndarray) -> np.ndarray:
        if arr.dtype == np.uint8:
            return arr
        scale = 255.0 / full if full else (255.0 if float(arr.max(initial=0)) <= 1.0 else 1.0)
        out = np.round(arr.astype(np.float32) * np.float32(scale)).clip(0, 255).astype(np.uint8)
        return np.repeat(out, 3, axis=-1) if cfg.channels == 3 and out.shape[-1] == 1 else out

    def read(idx: np.ndarray, g: Geometry) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for i in idx:
            arr = sources.read_image_or_skip(index.files[i], cfg.channels, g.resize, cfg, bad)
            out.append(None if arr is None else crop(to_8bit(arr), g))
        return out

    def finish(counts: dict[str, int]) -> list[str]:
        is_fixed = "all" not in index.parts
        what = ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS) if is_fixed else f"{sum(counts.values())} images"
        notes = [f"data: imagefolder {index.root} ({len(index.class_names)} classes, {what}"
                 f"{', fixed splits' if is_fixed else ', split by ratio'}; resized to "
                 f"{cfg.input_size}x{cfg.input_size} {mode} at load time)", *index.notes]
        if full:
            notes.append(f"data: high bit-depth pixels (max {peak:g}) scaled to 8 bits by 255/{full:g}")
        msg = sources.skipped_note(index.root, bad)
        return notes + ([msg] if msg else [])

    from pipeline.data.layout import file_digest

    plan_notes: list[str] = []
    colour_check(cfg, index.class_names, lambda c: _folder_colour_means(index, c, cfg), plan_notes)
    # empty files are all "identical" and all unreadable (data.bad_images applies to them): not duplicates
    groups = sources.duplicate_groups([file_digest(f) if _size(f) else None for f in index.files])
    for i in np.flatnonzero(groups >= 0):  # identical broken files are skipped by data.bad_images, not deduplicated
        try:
            sources.read_image(index.files[i], cfg.channels, 4)
        except sources.UnreadableImage:
            groups[i] = -1
    groups = sources.duplicate_groups([str(g) if g >= 0 else None for g in groups])
    names = [sources._rel(f, index.root) for f in index.files]
    return SourcePlan(index.labels, index.class_names, fixed, read, plan_notes, finish, groups, names,
                      list(index.files), {"high_bit_full": full} if full else {})


def colour_check(cfg, class_names: list[str], means: Callable[[int], np.ndarray], notes: list[str]) -> None:
    """data.channels=1 on colour images whose colour tells the classes apart: one warning naming
    data.channels=3 (printed, and kept in `notes`). `means(k)`: (n, 3) mean R, G, B of sampled images of class k."""
    from pipeline.data.checks import colour_signal, colour_warning

    if cfg.channels != 1:
        return
    signal = colour_signal([means(k) for k in range(len(class_names))], class_names)
    if signal:
        line = f"warning: {colour_warning(str(cfg.path or cfg.source), signal)}"
        print(line, file=sys.stderr, flush=True)
        notes.append(line)


def _folder_colour_means(index, c: int, cfg) -> np.ndarray:
    """(n, 3) mean R, G, B of up to COLOUR_SAMPLE images of class c (seeded sample, decoded small, in colour)."""
    from pipeline.data import sources

    idx = np.flatnonzero(index.labels == c)
    per = max(4, min(COLOUR_SAMPLE, 600 // max(1, len(index.class_names))))
    if len(idx) > per:
        idx = np.sort(np.random.default_rng(c).choice(idx, per, replace=False))
    out = []
    for i in idx:
        try:
            a = sources.read_image(index.files[i], 3, 16).astype(np.float64)
        except sources.UnreadableImage:
            continue
        if a.max(initial=0) > 255:  # high bit depth: the ratio is what matters, bring it to 0..255
            a = a * (255.0 / a.max())
        if a.shape[-1] == 1:  # high bit-depth images are grey: no colour to lose
            a = np.repeat(a, 3, axis=-1)
        out.append(a.reshape(-1, 3).mean(axis=0))
    return np.array(out).reshape(-1, 3)


def _size(f: Path) -> int:
    try:
        return os.stat(f).st_size
    except OSError:
        return 0


def _plan_raw(cfg) -> SourcePlan:
    from pipeline.data.datasets import load_raw

    raw = load_raw(cfg)
    mode = "L" if cfg.channels == 1 else "RGB"

    def read(idx: np.ndarray, g: Geometry) -> list[np.ndarray | None]:
        return [to_stored(raw.images[i], mode, g) for i in idx]

    import hashlib

    from pipeline.data import sources

    notes = list(raw.notes)
    if raw.images.shape[-1] == 3 and cfg.channels == 1:
        notes.append("data: the 3-channel images are converted to 1 channel (grey, ITU-R 601 luma) for "
                     "data.channels=1")

        def means(c: int) -> np.ndarray:
            idx = np.flatnonzero(raw.labels == c)[:COLOUR_SAMPLE]
            return raw.images[idx].reshape(len(idx), -1, 3).mean(axis=1)

        colour_check(cfg, raw.class_names, means, notes)
    groups = sources.duplicate_groups([hashlib.sha256(a.tobytes()).hexdigest() for a in raw.images])
    names = [f"image {i}" for i in range(len(raw.images))]
    return SourcePlan(raw.labels, raw.class_names, raw.splits, read, notes, groups=groups, names=names,
                      raw_image=lambda i: raw.images[i])


def plan_source(cfg) -> SourcePlan:
    from pipeline.data import sources

    cfg, said = sources.resolve(cfg)  # data.source=auto: the source data.path holds, said in one line
    if cfg.source == "imagefolder" and cfg.path:
        plan = _plan_folder(cfg)
    else:
        plan = _plan_raw(cfg)
    plan.notes[:0] = said
    return plan


def split_of_plan(plan: SourcePlan, cfg, seed: int) -> dict[str, np.ndarray]:
    from pipeline.data.datasets import complete_splits, every_class_in_every_split, split_indices

    if len(plan.labels) == 0:
        raise DataError(f"the dataset {cfg.source} {cfg.path or ''} holds no images",
                        hint="point data.path at a folder with images")
    if plan.fixed:
        splits = complete_splits(plan.fixed, plan.labels, cfg, seed)
    else:
        splits = split_indices(plan.labels, cfg.split.val, cfg.split.test, seed)
    carved = [s for s in ("val", "test") if s not in (plan.fixed or {})]
    lines = []
    if plan.groups is not None:
        lines += duplicate_lines(plan, splits, str(cfg.path or cfg.source))
    lines += every_class_in_every_split(splits, plan.labels, plan.class_names, carved, seed, plan.groups)
    for line in lines:
        print(line, file=sys.stderr, flush=True)
        plan.notes.append(line)
    if cfg.limit is not None and len(splits["train"]) > cfg.limit:
        splits["train"] = _limited(splits["train"], plan.labels, cfg.limit, seed)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise DataError(f"the {name} split of {cfg.source} is empty", hint="add images or change data.split")
    return splits


def duplicate_lines(plan: SourcePlan, splits: dict[str, np.ndarray], where: str) -> list[str]:
    """Byte-identical images (content sha256): across classes a warning (two labels for one image); across
    splits the copies on the held-out side are removed (test first, then val), so no test image is a training
    image. Changes `splits` in place; returns the lines to show."""
    from pipeline.data.sources import cross_class_note

    groups, names = plan.groups, plan.names or []
    assert groups is not None
    lines = []
    note = cross_class_note(groups, plan.labels, plan.class_names, names, where)
    if note:
        lines.append(f"warning: {note}")
    for held, against in (("test", ("train", "val")), ("val", ("train",))):
        inside = set(groups[np.concatenate([splits[a] for a in against])].tolist()) - {-1}
        idx = splits[held]
        drop = idx[np.isin(groups[idx], list(inside))] if inside else idx[:0]
        kept: list[str] = []
        for c in np.unique(plan.labels[drop]):  # never a class's last image of that split: keep one, say so
            if not np.isin(idx[plan.labels[idx] == c], drop, invert=True).any():
                one = drop[plan.labels[drop] == c][0]
                drop, kept = drop[drop != one], kept + [plan.class_names[c]]
        if len(drop):
            splits[held] = np.setdiff1d(idx, drop)
            lines.append(f"data: removed {len(drop)} {held} image(s) that are byte-identical to "
                         f"{' or '.join(against)} images (e.g. {names[int(drop[0])]}): a held-out image must not be "
                         "one the model trained on")
        if kept:
            lines.append(f"warning: every {held} image of class(es) {', '.join(map(repr, kept))} is byte-identical "
                         f"to a {' or '.join(against)} image: one kept so the class stays in {held}, its {held} "
                         "accuracy measures memory, not generalisation; add distinct images")
    return lines


RAW_PNGS = 2


def _write_raw_pngs(out: Path, image: Callable[[int], np.ndarray], idx: np.ndarray) -> list[str | None]:
    """The first RAW_PNGS test images of an array source as 8-bit PNGs (out/raw/, named relative to out): what a
    camera hands the bundle's run.py. None for the rest (only these are shipped as raw samples)."""
    from PIL import Image

    (out / "raw").mkdir(exist_ok=True)
    files: list[str | None] = [None] * len(idx)
    for k, i in enumerate(idx[:RAW_PNGS]):
        a = image(int(i))
        path = out / "raw" / f"test_{k}.png"
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, "L" if a.shape[-1] == 1 else "RGB").save(path)
        files[k] = path.relative_to(out).as_posix()  # relative: `out` is renamed when the stage finishes
    return files


def _limited(train: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`limit` training images (seeded) that keep every class of train (one image each at least)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(train, limit, replace=False)
    classes = np.unique(labels[train])
    lost = np.setdiff1d(classes, labels[pick])
    if len(lost) and limit >= len(classes):
        keep = [int(rng.choice(train[labels[train] == c])) for c in lost]
        counts = np.bincount(labels[pick])
        for new in keep:  # replace an image of the most common class, never a class's last one
            c = int(np.argmax(counts))
            j = int(np.flatnonzero(labels[pick] == c)[0])
            pick[j], counts[c] = new, counts[c] - 1
    return np.sort(pick)


def chunks(idx: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(idx), size):
        yield idx[i:i + size]


def build_store(cfg, seed: int, out: Path, chunk: int = CHUNK,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Decode, resize and write every split to out/x_<split>.npy (+ y_<split>.npy, store.json)."""
    from pipeline.artifacts import sha256_file

    out = Path(out)
    plan = plan_source(cfg)
    splits = split_of_plan(plan, cfg, seed)
    channels = cfg.channels
    info: dict[str, Any] = {"version": 1, "class_names": plan.class_names, "splits": {}}
    counts: dict[str, int] = {}
    for name in SPLITS:
        g = train_geometry(cfg) if name == "train" else eval_geometry(cfg)
        writer = NpyAppender(out / f"x_{name}.npy", (g.size, g.size, channels))
        kept: list[np.ndarray] = []
        try:
            for part in chunks(splits[name], chunk):
                imgs = plan.read(part, g)
                ok = np.array([a is not None for a in imgs], dtype=bool)
                if ok.any():
                    writer.append(np.stack([a for a in imgs if a is not None]))
                kept.append(part[ok])
                if progress:
                    progress(f"data: {name} {writer.count}/{len(splits[name])} images")
        except BaseException:
            writer.abort()
            raise
        path = writer.close()
        if writer.count == 0:
            raise DataError(f"the {name} split of {cfg.source} holds no readable images",
                            hint="add images, or remove the empty split folder to carve it from train")
        np.save(out / f"y_{name}.npy", plan.labels[np.concatenate(kept)])
        if name == "test":
            test_kept = np.concatenate(kept)
        counts[name] = writer.count
        info["splits"][name] = {"images": writer.count, "sha256": sha256_file(path),
                                "labels_sha256": sha256_file(out / f"y_{name}.npy"), "geometry": vars(g)}
    info["notes"] = plan.notes + plan.finish(counts)
    info["fixed_splits"] = sorted(plan.fixed or {})  # splits the source fixed (the teacher check reads it)
    info["preprocessing"] = {**preprocessing_spec(cfg), **plan.preprocessing}
    if plan.files is not None:  # the raw file of each test image: the bundle ships some as raw samples
        info["splits"]["test"]["files"] = [str(plan.files[i]) for i in test_kept]
    elif plan.raw_image is not None:  # arrays (builtin, npz, CIFAR): the first test images as the PNG files a
        info["splits"]["test"]["files"] = _write_raw_pngs(out, plan.raw_image, test_kept)  # device would read
    (out / "store.json").write_text(strict_json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------- reading


class Normalizer:
    """uint8 NHWC batch -> float32 NCHW: /255, channel order, (x - mean) / std. Vectorised in torch."""

    def __init__(self, spec: dict[str, Any]):
        import torch

        c = int(spec["channels"])
        self.bgr = c == 3 and spec.get("channel_order", "rgb") == "bgr"
        self.scale = float(spec.get("scale", 255.0))
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x):
        """x: uint8 or float tensor NCHW in 0..255 (any memory format, any device) -> normalised float32."""
        x = x.float()
        if self.bgr:
            x = x.flip(1)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x / self.scale - mean) / std


def as_index(idx) -> Any:
    """int / slice stay; torch tensors and lists become numpy index arrays."""
    if isinstance(idx, (int, np.integer, slice)):
        return idx
    return np.asarray(idx.cpu().numpy() if hasattr(idx, "cpu") else idx, dtype=np.int64)


# Pages of a memory map that were read stay in the process's RSS until the kernel needs them back: an epoch
# over the training split would hold the whole split resident (measured at 224 px: a whole run's peak RSS grew
# by the split's uint8 size from 2,000 to 8,000 images). Every RELEASE_EVERY bytes read, the read-only map's
# pages are handed back (MADV_DONTNEED: they stay in the page cache, a later read faults them in again).
RELEASE_EVERY = 64 * 2 ** 20


def release_pages(images: np.ndarray, nbytes: int) -> bool:
    """Count `nbytes` read from `images`; when RELEASE_EVERY is reached, drop its mapped pages from this
    process's RSS. Only for read-only np.memmaps (a copy-on-write map would lose its changes)."""
    import mmap

    mm = getattr(images, "_mmap", None)
    if mm is None or getattr(images, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    read = getattr(images, "_bytes_since_release", 0) + nbytes
    if read < RELEASE_EVERY:
        images._bytes_since_release = read  # type: ignore[attr-defined]
        return False
    images._bytes_since_release = 0  # type: ignore[attr-defined]
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # best effort: a platform without madvise on this map keeps its pages
        return False
    return True


def gather(images: np.ndarray, idx) -> np.ndarray:
    """Rows of a (memory-mapped) array; fancy indices are read in sorted order (sequential pages)."""
    idx = as_index(idx)
    if isinstance(idx, (int, np.integer, slice)):
        out = np.array(images[idx])  # a copy: the map is read-only, torch wants writable memory
    else:
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), *images.shape[1:]), dtype=images.dtype)
        out[order] = images[idx[order]]
    release_pages(images, out.nbytes)
    return out


class ImageSplit:
    """One split as the model sees it: indexing gives float32 NCHW, normalised, for those rows only.

    Backed by uint8 NHWC (a memory map in the stages), so a split of any size costs only its pages
    touched; `uint8(idx)` gives the raw rows for augmentation before normalisation.
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, images: np.ndarray, norm: Normalizer):
        self.images, self.norm = images, norm

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, h, w, c = self.images.shape
        return (n, c, h, w)

    def __len__(self) -> int:
        return len(self.images)

    def uint8(self, idx) -> np.ndarray:
        return gather(self.images, idx)

    def tensor(self, idx, channels_last: bool = False):
        """Normalised float32 NCHW torch tensor of these rows (channels_last memory when asked)."""
        import torch

        raw = self.uint8(idx)
        single = raw.ndim == 3
        t = torch.from_numpy(np.ascontiguousarray(raw[None] if single else raw)).permute(0, 3, 1, 2)
        x = self.norm(t)
        x = x if channels_last else x.contiguous()
        return x[0] if single else x

    def __getitem__(self, idx) -> np.ndarray:
        return self.tensor(idx).numpy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError("an ImageSplit is read in batches (split[i:j]); converting it whole would hold the "
                        "split in float32")

    def batches(self, batch: int = 256) -> Iterator[np.ndarray]:
        for i in range(0, len(self), batch):
            yield self[i:i + batch]

    # The training loader's two halves: raw rows (in a DataLoader worker), then normalisation (on the device).
    def rows(self, idx) -> np.ndarray:
        return self.uint8(idx)

    def to_model(self, rows):
        """uint8 NHWC tensor (from `rows`) -> normalised float32 NCHW (channels_last memory)."""
        return self.norm(rows.permute(0, 3, 1, 2))

    def __getstate__(self):
        # A DataLoader worker gets the file name, not a copy of the pixels (pickling a memmap copies it).
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = ("mmap", self.images.filename)
        return state

    def __setstate__(self, state):
        images = state["images"]
        if isinstance(images, tuple) and images[0] == "mmap":
            state["images"] = np.load(images[1], mmap_mode="r")
        self.__dict__.update(state)


class ArraySplit:
    """A float32 NCHW array (already normalised) behind the same loader interface as ImageSplit."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, idx) -> np.ndarray:
        return np.asarray(self.x[as_index(idx)], dtype=np.float32)

    def to_model(self, rows):
        return rows.float()


def as_split(x) -> ImageSplit | ArraySplit:
    return x if isinstance(x, (ImageSplit, ArraySplit)) else ArraySplit(x)


def open_store(folder: Path, mmap: bool = True) -> dict[str, Any]:
    """{'x_train': ImageSplit, 'y_train': labels, ..., 'info': store.json} of a built store."""
    folder = Path(folder)
    info = json.loads((folder / "store.json").read_text())
    norm = Normalizer(info["preprocessing"])
    out: dict[str, Any] = {"info": info}
    for name in SPLITS:
        x = np.load(folder / f"x_{name}.npy", mmap_mode="r" if mmap else None)
        out[f"x_{name}"] = ImageSplit(x, norm)
        out[f"y_{name}"] = np.load(folder / f"y_{name}.npy")
    return out


def load_splits(cfg, seed: int) -> Splits:
    """The splits in memory as float32 NCHW (small data, tests, tools): built through the same store as the
    data stage (pipeline/data/store.py), so both give the same arrays. Stages use the memory-mapped store."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pipeline-store-") as tmp:
        info = build_store(cfg, seed, Path(tmp))
        st = open_store(Path(tmp), mmap=False)
        arrays = {k: (np.concatenate(list(v.batches())) if k.startswith("x_") else v)
                  for k, v in st.items() if k != "info"}
    return Splits(class_names=info["class_names"], preprocessing=info["preprocessing"], notes=info["notes"],
                  fixed_splits=info.get("fixed_splits", []), **arrays)


def preprocess(images: np.ndarray, cfg) -> np.ndarray:
    """uint8 NHWC (any size, 1 or 3 channels) -> float32 NCHW as evaluated: the store's geometry
    (pipeline/data/store.py: Pillow resize, centre crop above 64 px), channel order and mean/std."""
    import torch

    if images.shape[-1] not in (1, 3):
        raise DataError(f"images have {images.shape[-1]} channels, the recipe asks for {cfg.channels}",
                        hint="set data.channels to 1 or 3 to match the data")
    g = eval_geometry(cfg)
    mode = "L" if cfg.channels == 1 else "RGB"
    x = np.stack([to_stored(a, mode, g) for a in images])
    return Normalizer(preprocessing_spec(cfg))(torch.from_numpy(x).permute(0, 3, 1, 2)).contiguous().numpy()


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
        # above 64 px: resize to resize_size, then centre-crop `size` (pipeline/data/store.py)
        **eval_geometry(cfg).spec(),
    }
