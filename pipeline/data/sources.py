"""Users' own datasets: image folders, CIFAR-style pickle batches and .npz arrays.

Every loader returns `RawData`: uint8 images NHWC (C = 1 or 3, RGB order), int64 labels, class names,
and - where the data fixes them - split indices. `store.load_splits` (or the data stage) then normalizes (mean/std,
channel order from the recipe) and carves any split the source does not fix from `train`.

imagefolder (`data.path` is a folder; data.source=auto infers it, see layout.py)
    path/<class>/*            one sub-folder per class, split by the recipe's ratios (data.split)
    path/train/<class>/*      fixed splits, named as found (Training/, train_set/, valid/, eval/, Testing/...,
    path/val/<class>/*        any case: layout.split_of); val and test are optional, a missing one is carved
    path/test/<class>/*       from train. Every split must hold the same class folders (an empty one is fine).
    A data.path one level too high (one wrapper folder) is followed with a line saying so; __MACOSX, hidden
    and system folders are never classes; at least 2 classes, each with images (checks.py).
    Images are decoded by images.read_image (every Pillow mode, EXIF orientation, first frame, alpha on
    white, 16-bit scaled to 8 bits for the whole dataset) and resized to data.input_size (bilinear, as the
    bundle's run.py does), so images of any size stack. A file that cannot be read for any reason is
    skipped with one warning line (data.bad_images=skip) or stops the run naming it (data.bad_images=error).

cifar (`data.path` is the extracted folder, its parent, or the downloaded .tar.gz)
    CIFAR-10: data_batch_1..5 + test_batch (+ batches.meta for the label names);
    CIFAR-100: train + test (+ meta; fine labels). These files are pickles: they are read with a
    restricted unpickler that can only build dicts, lists, strings, numbers and numpy arrays - a file
    that names any other global is refused, so it cannot run code.

npz (`data.path` is a .npz file, read with allow_pickle=False)
    arrays `x`, `y` (split by ratio) or `x_train`, `y_train`, `x_test`, `y_test` and optionally
    `x_val`, `y_val` (fixed splits); optional `class_names` (strings) and `layout` ("nhwc"|"nchw").
    Images: (N, H, W) grey, or (N, H, W, C) / (N, C, H, W) with C = 1 or 3 in RGB order; the layout is
    detected from where the size-1/3 axis is (NHWC when ambiguous; a `layout` array overrides).
    dtype uint8, bool, float in [0, 1] or [0, 255], or wider integers (16-bit...) scaled to 8 bits with one
    map for all splits (images.to_uint8); negative values (normalized data) are refused.
    Labels: integers 0..K-1 without gaps, one per image: 1-based labels, sentinels (255, -1), fractions
    and gaps are refused with the fix, never read as extra classes.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.data.checks import check_dataset
from pipeline.data.types import RawData
from pipeline.data.images import UnreadableImage, read_image, to_uint8
from pipeline.data.layout import find_layout, loose_images, resolve_source, split_of, visible_dirs, walk_files
from pipeline.errors import ConfigError, DataError

SHOW_BAD = 3  # how many bad files the skip warning names


def resolve(cfg):
    """data.source=auto -> the source data.path holds: (cfg with that source, [the line saying so])."""
    src, said = resolve_source(cfg)
    if said:
        print(said, file=sys.stderr, flush=True)
    return (cfg.model_copy(update={"source": src}) if src != cfg.source else cfg), ([said] if said else [])


def load_user_source(cfg) -> RawData:
    loaders: dict[str, Callable[[Any], RawData]] = {"imagefolder": load_imagefolder, "cifar": load_cifar,
                                                     "npz": load_npz}
    if cfg.source not in loaders:
        raise ConfigError(f"data.source = {cfg.source!r} is not known",
                          hint="use auto, builtin:digits, builtin:mnist, imagefolder, cifar or npz")
    if not cfg.path:
        what = {"imagefolder": "a folder of class sub-folders", "cifar": "the CIFAR batches folder",
                "npz": "a .npz file"}[cfg.source]
        raise DataError(f"data.source={cfg.source} needs data.path ({what})",
                        hint="add --set data.path=/path/to/data (or `path:` under `data:` in the recipe)")
    raw = loaders[cfg.source](cfg)
    check_dataset(raw.labels, raw.class_names, raw.splits, cfg, f"the dataset {cfg.path}")
    return raw


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- image folders


@dataclass
class FolderIndex:
    """An image folder's files in load order, their labels and (fixed layouts) their split; nothing decoded."""

    root: Path
    files: list[Path]
    labels: np.ndarray
    split_of: np.ndarray  # "all" for a folder split by ratio, else the split each file belongs to
    class_names: list[str]
    parts: dict[str, Path]
    notes: list[str] = field(default_factory=list)  # what the layout detection said


def scan_imagefolder(cfg) -> FolderIndex:
    """Find the layout (pipeline/data/layout.py) and list the files; decoding is left to the caller (all at
    once in `load_imagefolder`, or in chunks by the data store, pipeline/data/store.py)."""
    root = Path(cfg.path).expanduser()
    layout_hint = "data.path must be a folder holding one sub-folder of images per class " \
                  "(path/<class>/*.png), or train/, val/, test/ folders each holding them"
    if not root.exists():
        raise DataError(f"image folder {root} does not exist", hint=f"check data.path; {layout_hint}")
    if not root.is_dir():
        raise DataError(f"data.path {root} is a file, not a folder (data.source=imagefolder)",
                        hint=f"{layout_hint}; a .npz file needs data.source=npz")
    layout = find_layout(root)
    for line in layout.notes:
        print(line, file=sys.stderr, flush=True)
    for line in layout.warnings:
        _warn(line)
    parts = layout.parts
    linked: list[str] = []
    classes_of = {name: [c.name for c in _class_dirs(d, linked)] for name, d in parts.items()}
    for line in linked:
        _warn(line)
    if len(parts) > 1:
        all_classes = sorted(set().union(*classes_of.values()))
        differ = []
        for c in all_classes:
            have = [s for s in parts if c in classes_of[s]]
            if len(have) != len(parts):
                missing = [s for s in parts if s not in have]
                differ.append(f"'{c}' (in {', '.join(have)}; missing in {', '.join(missing)})")
        if differ:
            raise DataError(f"class folders differ between the splits of {layout.root}: {'; '.join(differ[:8])}"
                            + (f" (+{len(differ) - 8} more)" if len(differ) > 8 else ""),
                            hint="every split folder (train/, val/, test/) must hold the same class sub-folders; "
                                 "add the missing ones (an empty folder is fine) or rename the misspelled ones")
    class_names = classes_of[next(iter(parts))]
    files: list[Path] = []
    labels: list[int] = []
    split_names: list[str] = []
    class_dirs = [parts[sp] / c for sp in parts for c in class_names]
    loops: list[str] = []
    reached: dict[object, Path] = {}  # the file (device, inode) -> the first path it was reached by
    twice: list[tuple[Path, Path]] = []
    for split, folder in parts.items():
        stray = loose_images(folder)
        if stray:
            _warn(f"{len(stray)} image(s) lie directly in {folder}, outside any class folder: left out "
                  f"(e.g. {stray[0].name})")
        for label, cls in enumerate(class_names):
            here = folder / cls
            for f in walk_files(here, loops=loops, avoid=tuple(d for d in class_dirs if d != here)):
                real = _identity(f)
                if real in reached:  # one file reached by two paths (links): read once, under its first path
                    twice.append((f, reached[real]))
                    continue
                reached[real] = f
                files.append(f)
                labels.append(label)
                split_names.append(split)
    notes = list(layout.notes) + [f"warning: {w}" for w in layout.warnings + linked]
    if loops:
        msg = (f"{len(loops)} linked folder(s) in {layout.root} not followed: {'; '.join(loops[:SHOW_BAD])}"
               + (f" and {len(loops) - SHOW_BAD} more" if len(loops) > SHOW_BAD else ""))
        _warn(msg)
        notes.append(f"warning: {msg}")
    if twice:
        msg = (f"{len(twice)} file(s) in {layout.root} are reached by two paths (symbolic or hard links): each read "
               "once, e.g. "
               f"{_rel(twice[0][0], layout.root)} = {_rel(twice[0][1], layout.root)}")
        _warn(msg)
        notes.append(f"warning: {msg}")
    return FolderIndex(layout.root, files, np.asarray(labels, dtype=np.int64), np.asarray(split_names),
                       class_names, parts, notes)


def _class_dirs(folder: Path, said: list[str]) -> list[Path]:
    """The class folders of `folder`, less linked folders that would read images twice: a link to the folder
    itself or an ancestor (`loop -> ..`: every class again under one label) or to another class folder (its
    images relabelled). Each one left out is a line in `said`."""
    dirs = visible_dirs(folder)
    here = os.path.realpath(folder)
    real = {d: os.path.realpath(d) for d in dirs}
    keep = []
    for d in dirs:
        r = real[d]
        if d.is_symlink() and (here == r or here.startswith(r.rstrip(os.sep) + os.sep)):
            said.append(f"{d} links to {r}, a folder holding it (a link loop): not a class, left out")
        elif d.is_symlink() and any(real[o] == r and (not o.is_symlink() or o.name < d.name) for o in dirs if o != d):
            twin = next(o for o in dirs if o != d and real[o] == r and (not o.is_symlink() or o.name < d.name))
            said.append(f"{d} links to the class folder {twin.name}/: the same images under two labels; left out")
        else:
            keep.append(d)
    return keep


def _identity(f: Path) -> object:
    """The file itself, however it is reached (a symbolic or a hard link): (device, inode), else its real path."""
    try:
        st = os.stat(f)
        return (st.st_dev, st.st_ino)
    except OSError:  # a broken link: the reader reports it
        return os.path.realpath(f)


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def duplicate_groups(digests: list[str | None]) -> np.ndarray:
    """Group id per item (-1: unique or unknown): items with the same content digest share an id."""
    first: dict[str, int] = {}
    out = np.full(len(digests), -1, dtype=np.int64)
    count: dict[str, int] = {}
    for d in digests:
        if d is not None:
            count[d] = count.get(d, 0) + 1
    for i, d in enumerate(digests):
        if d is not None and count[d] > 1:
            out[i] = first.setdefault(d, i)
    return out


def cross_class_note(groups: np.ndarray, labels: np.ndarray, class_names: list[str], names: list[str],
                     where: str) -> str | None:
    """The warning line about byte-identical images that carry different labels (None when there are none)."""
    bad = []
    for g in np.unique(groups[groups >= 0]):
        idx = np.flatnonzero(groups == g)
        if len(set(labels[idx].tolist())) > 1:
            bad.append(idx)
    if not bad:
        return None
    files = sum(len(i) for i in bad)
    ex = bad[0]
    shown = " = ".join(f"{names[i]} ({class_names[labels[i]]!r})" for i in ex[:3])
    return (f"{len(bad)} image(s) in {where} are byte-identical across classes ({files} files carry two or more "
            f"labels), e.g. {shown}: remove the copies from the wrong class")


def read_image_or_skip(f: Path, channels: int, size: int | None, cfg,
                       bad: list[tuple[Path, str]]) -> np.ndarray | None:
    """One decoded image (uint8, or float32 for high bit depth: see images.py), or None (recorded in `bad`)
    for an unreadable file under data.bad_images=skip."""
    try:
        return read_image(f, channels, size)
    except UnreadableImage as e:
        if cfg.bad_images == "error":
            raise
        bad.append((f, e.reason))
        return None


def skipped_note(root: Path, bad: list[tuple[Path, str]]) -> str | None:
    """The one warning line about skipped files (printed and kept in the stage notes)."""
    if not bad:
        return None

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    shown = ", ".join(f"{rel(p)} ({why})" for p, why in bad[:SHOW_BAD])
    more = f" and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    msg = f"skipped {len(bad)} unreadable file(s) in {root}: {shown}{more} (data.bad_images=skip)"
    _warn(msg)
    return msg


def high_bit_peak(index: FolderIndex, cfg) -> float | None:
    """The brightest pixel of the folder's high bit-depth images (None when it has none): the data store
    decodes in chunks, so the one linear map of images.to_uint8 needs this first, cheap pass. Only files whose
    header says a high bit-depth mode are decoded (at their own size, so no resize lowers the peak)."""
    from PIL import Image

    from pipeline.data.images import HIGH_BIT_MODES

    peak = None
    for f in index.files:
        try:
            with Image.open(f) as img:
                high = img.mode in HIGH_BIT_MODES
        except Exception:  # unreadable: the decoding pass applies data.bad_images to it
            continue
        if high:
            a = read_image_or_skip(f, cfg.channels, None, cfg, [])
            if a is not None and a.size:
                peak = max(peak or 0.0, float(a.max()))
    return peak


def load_imagefolder(cfg) -> RawData:
    """All images decoded in memory (small folders, tests, tools); the data stage streams them instead
    (pipeline/data/store.py reads `scan_imagefolder` in chunks)."""
    index = scan_imagefolder(cfg)
    root, parts, class_names = index.root, index.parts, index.class_names
    mode = "L" if cfg.channels == 1 else "RGB"
    bad: list[tuple[Path, str]] = []
    read = [read_image_or_skip(f, cfg.channels, cfg.input_size, cfg, bad) for f in index.files]
    arrays, scaled_note = _to_8bit(read, cfg.channels, root)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    notes = list(index.notes)
    if scaled_note:
        notes.append(f"data: {scaled_note}")
    msg = skipped_note(root, bad)
    if msg:
        notes.append(msg)
    if not keep:
        raise DataError(f"image folder {root} holds no readable images"
                        + (f" ({len(bad)} unreadable files skipped)" if bad else ""),
                        hint="add images (png, jpg, ...) in the class sub-folders")
    y = index.labels[keep]
    where = index.split_of[keep]
    splits: dict[str, np.ndarray] | None = None
    if "all" not in parts:
        splits = {s: np.flatnonzero(where == s) for s in parts}
        for s, idx in splits.items():
            if len(idx) == 0:
                raise DataError(f"the {s} split folder {parts[s]} holds no readable images",
                                hint=f"add images to {parts[s]}/<class>/, or remove that folder to carve {s} "
                                     "from train")
    counts = ", ".join(f"{s} {int((where == s).sum())}" for s in parts) if splits else f"{len(y)} images"
    notes.insert(0, f"data: imagefolder {root} ({len(class_names)} classes, {counts}"
                    f"{', fixed splits' if splits else ', split by ratio'}; resized to "
                    f"{cfg.input_size}x{cfg.input_size} {mode} at load time)")
    return RawData(np.stack([a for a in arrays if a is not None]), y, class_names, splits, notes)


def _to_8bit(arrays: list[np.ndarray | None], channels: int, root: Path) -> tuple[list[np.ndarray | None], str | None]:
    """Scale the high bit-depth images of the dataset with one map (images.to_uint8) and stack-ready."""
    high = [(i, a) for i, a in enumerate(arrays) if a is not None and a.dtype != np.uint8]
    if not high:
        return arrays, None
    scaled, note = to_uint8(np.stack([a for _, a in high]), f"{len(high)} images in {root}")
    for (i, _), a in zip(high, scaled):
        arrays[i] = np.repeat(a, 3, axis=-1) if channels == 3 else a
    return arrays, note


# --------------------------------------------------------------------------- CIFAR pickles


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    return _reconstruct, scalar


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only builtin containers/scalars and numpy arrays; any other global is refused.

    Dicts, lists, tuples, str, bytes, int, float, bool and None come from pickle opcodes and need no
    global. The globals below are what numpy arrays (and bytes re-pickled by Python 3 at protocol 2)
    need; none of them can run a command or import a module the file chooses.
    """

    def find_class(self, module: str, name: str):
        reconstruct, scalar = _numpy_reconstruct()
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): __import__("codecs").encode,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data file")


def safe_unpickle(data: bytes, what: str) -> Any:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{what} is not a plain CIFAR batch: {e}; it was not loaded (unpickling it could run code)",
                        hint="use the original CIFAR python batches, or convert your data to .npz "
                             "(data.source=npz)") from None
    except Exception as e:
        raise DataError(f"{what} could not be read as a CIFAR batch ({type(e).__name__}: {e})",
                        hint="re-download or re-extract the CIFAR python version") from None
    return obj


CIFAR_DIRS = ("cifar-10-batches-py", "cifar-100-python")


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise DataError(f"{member.name} in the archive is not a regular file", hint="repack the archive")
    return f.read()


class _Files:
    """Named files of a folder or of a .tar.gz (read in memory, never extracted)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Callable[[], bytes]] = {}
        self.where = str(path)
        if path.is_dir():
            base = path
            for sub in CIFAR_DIRS:
                if not (path / "test_batch").exists() and not (path / "test").exists() and (path / sub).is_dir():
                    base = path / sub
            self.where = str(base)
            for f in base.iterdir():
                if f.is_file():
                    self.entries[f.name] = f.read_bytes
        elif tarfile.is_tarfile(path):
            tar = tarfile.open(path)
            self._tar = tar
            for m in tar.getmembers():
                if m.isfile():
                    self.entries.setdefault(Path(m.name).name, functools.partial(_member_bytes, tar, m))
        else:
            raise DataError(f"data.path {path} is neither a folder nor a .tar.gz (data.source=cifar)",
                            hint="point data.path at the extracted cifar-10-batches-py / cifar-100-python folder")

    def read(self, name: str) -> bytes:
        return self.entries[name]()

    def has(self, name: str) -> bool:
        return name in self.entries


def _cifar_batch(files: _Files, name: str) -> tuple[np.ndarray, np.ndarray]:
    what = f"{files.where}/{name}"
    d = safe_unpickle(files.read(name), what)
    if not isinstance(d, dict):
        raise DataError(f"{what} holds a {type(d).__name__}, not a CIFAR batch dict",
                        hint="use the CIFAR python version (cifar-10-python.tar.gz / cifar-100-python.tar.gz)")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    labels = d.get("labels", d.get("fine_labels"))
    data = d.get("data")
    if data is None or labels is None:
        raise DataError(f"{what} has no 'data' and 'labels'/'fine_labels' (keys: {sorted(map(str, d))[:8]})",
                        hint="use the CIFAR python version (cifar-10-python.tar.gz / cifar-100-python.tar.gz)")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % 3 or int(round((data.shape[1] // 3) ** 0.5)) ** 2 * 3 != data.shape[1]:
        raise DataError(f"{what}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3*H*W) with square images",
                        hint="use the CIFAR python version of the dataset")
    side = int(round((data.shape[1] // 3) ** 0.5))
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(data) or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise DataError(f"{what}: {len(y)} labels for {len(data)} images (or labels are not integers >= 0)",
                        hint="re-download or re-extract the CIFAR python version")
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1), y.astype(np.int64)


def _cifar_names(files: _Files, n_classes: int) -> list[str]:
    for meta, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        if files.has(meta):
            d = safe_unpickle(files.read(meta), f"{files.where}/{meta}")
            if isinstance(d, dict):
                d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
                names = d.get(key)
                if isinstance(names, (list, tuple)) and len(names) >= n_classes:
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(n_classes)]


def load_cifar(cfg) -> RawData:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"CIFAR folder {path} does not exist",
                        hint="extract cifar-10-python.tar.gz (or cifar-100-python.tar.gz) and point data.path at it")
    files = _Files(path)
    if files.has("data_batch_1") and files.has("test_batch"):
        train_names = sorted((n for n in files.entries if n.startswith("data_batch_")),
                             key=lambda n: int(n.rsplit("_", 1)[1]) if n.rsplit("_", 1)[1].isdigit() else 0)
        test_names, kind = ["test_batch"], "CIFAR-10"
    elif files.has("train") and files.has("test"):
        train_names, test_names, kind = ["train"], ["test"], "CIFAR-100"
    else:
        raise DataError(f"{files.where} holds no CIFAR batches (found: {', '.join(sorted(files.entries)[:8]) or 'nothing'})",
                        hint="CIFAR-10 needs data_batch_1..5 and test_batch, CIFAR-100 needs train and test "
                             "(the python version of the dataset)")
    xs, ys, part = [], [], []
    for split, names in (("train", train_names), ("test", test_names)):
        for n in names:
            x, y = _cifar_batch(files, n)
            xs.append(x)
            ys.append(y)
            part += [split] * len(y)
    if len({x.shape[1:] for x in xs}) != 1:
        raise DataError(f"{files.where}: batches hold images of different sizes", hint="use one CIFAR dataset per folder")
    images, labels = np.concatenate(xs), np.concatenate(ys)
    where = np.asarray(part)
    class_names = _cifar_names(files, int(labels.max()) + 1 if len(labels) else 0)
    splits = {"train": np.flatnonzero(where == "train"), "test": np.flatnonzero(where == "test")}
    notes = [f"data: {kind} {files.where} ({len(class_names)} classes, train {len(splits['train'])}, "
             f"test {len(splits['test'])}; val carved from train by data.split.val)"]
    return RawData(images, labels, class_names, splits, notes)


# --------------------------------------------------------------------------- .npz arrays


def _npz_images(x: np.ndarray, name: str, where: str, layout: str | None) -> np.ndarray:
    if x.dtype.kind not in "uifb":
        raise DataError(f"{where}: {name} has dtype {x.dtype}, not numbers",
                        hint="store images as uint8 0..255, 16-bit integers or float in [0, 1]")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}: {name} has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)",
                        hint="store one image per row of the first axis")
    if layout is None:
        if x.shape[-1] in (1, 3):
            layout = "nhwc"
        elif x.shape[1] in (1, 3):
            layout = "nchw"
        else:
            raise DataError(f"{where}: {name} has shape {x.shape}: no axis of 1 or 3 channels (NHWC or NCHW)",
                            hint="images need 1 (grey) or 3 (RGB) channels; add a `layout` array to say which")
    if layout == "nchw":
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: {name} has {x.shape[-1]} channels in {layout.upper()} layout; expected 1 or 3",
                        hint="drop the alpha channel or fix the `layout` array")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: {name} holds NaN/Inf values", hint="clean the data")
    if x.size and x.dtype.kind in "if" and float(x.min()) < 0:
        raise DataError(f"{where}: {name} has negative values (min {float(x.min()):g}): it looks normalized, "
                        "not raw pixels",
                        hint="save raw pixels (uint8 0..255, 16-bit integers, or float in [0, 1]); the recipe's "
                             "data.mean/std normalize them")
    return x  # scaled to uint8 for all splits at once (images.to_uint8), so they share one map


def _fmt_values(v: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(str(int(a)) for a in v[:limit])
    return shown + (f" ... ({len(v)} values)" if len(v) > limit else "")


def _npz_labels(y: np.ndarray, name: str, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {name} has shape {y.shape} for {n} images; expected ({n},) integer labels",
                        hint="store one class index per image (not one-hot); x and y need the same length")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: {name} holds NaN/Inf labels", hint="labels must be integers 0..K-1")
        frac = y[y != np.round(y)]
        if len(frac):
            raise DataError(f"{where}: {name} holds non-integer labels (e.g. {float(frac[0]):g}); labels must be "
                            "integers 0..K-1",
                            hint="store class indices (np.int64), not probabilities or regression targets")
        if len(y) and float(np.abs(y).max()) > 2 ** 53:
            raise DataError(f"{where}: {name} holds labels beyond 2**53", hint="labels must be integers 0..K-1")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: {name} has dtype {y.dtype}; labels must be integers 0..K-1",
                        hint="map class names to indices and store class_names alongside")
    if y.dtype == np.uint64 and len(y) and int(y.max()) > 2 ** 62:
        raise DataError(f"{where}: {name} holds labels up to {int(y.max())}", hint="labels must be integers 0..K-1")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        neg = np.unique(y[y < 0])
        raise DataError(f"{where}: {name} holds negative labels ({_fmt_values(neg)}; {int((y < 0).sum())} images): "
                        "a value like -1 usually marks unlabeled or ignored images, not a class",
                        hint="drop those images (x[y >= 0], y[y >= 0]) or map them to a class; labels must be 0..K-1")
    return y


def _npz_num_classes(labels: np.ndarray, class_names: list[str] | None, where: str) -> int:
    """K, checking the labels are exactly 0..K-1: never a surprise class from 1-based or sentinel labels."""
    present = np.unique(labels)
    if class_names is not None:
        k = len(class_names)
        over = present[present >= k]
        if len(over):
            raise DataError(f"{where}: class_names has {k} names but labels {_fmt_values(over)} are outside "
                            f"0..{k - 1} ({int(np.isin(labels, over).sum())} images)",
                            hint="labels index class_names: give one name per class index, or fix the labels")
        return k
    if not len(present):
        return 0
    k = int(present[-1]) + 1
    if len(present) == k:
        return k
    if present[0] == 1 and len(present) == k - 1:
        raise DataError(f"{where}: labels run 1..{k - 1} (1-based); class indices must be 0..{k - 2}",
                        hint="store y - 1 (0-based labels)")
    head = int(np.argmax(present != np.arange(len(present))))  # first gap: 0..head-1 are contiguous
    outliers = present[head:]
    if head >= 2 and len(outliers) <= 2:
        n_out = int(np.isin(labels, outliers).sum())
        raise DataError(f"{where}: labels are 0..{head - 1} plus {_fmt_values(outliers)} ({n_out} images): a value "
                        "like 255 usually marks unlabeled or ignored images, not a class",
                        hint=f"drop those images (x[y < {head}], y[y < {head}]) or map them to a class; labels "
                             "must be 0..K-1 without gaps")
    missing = np.setdiff1d(np.arange(min(k, 10 ** 6)), present)
    raise DataError(f"{where}: labels go up to {k - 1} but skip {_fmt_values(missing)} (no image has them): "
                    "they would be classes without images",
                    hint="map the labels to 0..K-1 without gaps (np.unique(y, return_inverse=True)), or store "
                         "class_names with one name per index")


NPZ_X = {"x", "images", "image", "imgs", "img", "data", "features", "inputs"}
NPZ_Y = {"y", "labels", "label", "targets", "target"}
NPZ_NAMES = {"class_names", "classnames", "label_names", "labelnames"}


def _npz_key_names(files: list[str]) -> dict[str, str]:
    """Canonical name (x, y, x_train, y_test, class_names...) -> the array's name in the file, so the ways
    people name them (X_train, train_images, test_labels, images/labels) are read; exact names win."""
    canon: dict[str, str] = {k: k for k in files}
    for k in files:
        low = k.lower()
        if low in NPZ_NAMES or low.replace("_", "") in NPZ_NAMES:
            canon.setdefault("class_names", k)
            continue
        tokens = [t for t in re.split(r"[^a-z0-9]+", low) if t]
        role = {t: r for r, words in (("x", NPZ_X), ("y", NPZ_Y)) for t in tokens if t in words}
        splits = {split_of(t) for t in tokens} - {None}
        if len(set(role.values())) != 1 or len(splits) > 1 or len(tokens) > len(role) + len(splits):
            continue
        r = next(iter(role.values()))
        canon.setdefault(f"{r}_{splits.pop()}" if splits else r, k)
    return canon


def load_npz(cfg) -> RawData:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist" if not path.exists() else f"data.path {path} is not a file",
                        hint="point data.path at a .npz written with numpy.savez (arrays x, y or x_train, y_train, ...)")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})",
                        hint="write it with numpy.savez / savez_compressed") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds one array, not a .npz archive of named arrays",
                        hint="write it with numpy.savez(path, x=images, y=labels)")
    where = str(path)
    with f:
        canon = _npz_key_names(f.files)
        keys = set(canon)

        def get(k: str) -> np.ndarray:
            try:
                return f[canon[k]]
            except ValueError as e:  # object arrays need pickle: refused
                raise DataError(f"{where}: array {k!r} cannot be loaded without pickle ({e})",
                                hint="store plain numeric arrays (and class_names as a string array)") from None

        layout = None
        if "layout" in keys:
            layout = str(get("layout")).strip().lower()
            if layout not in ("nhwc", "nchw"):
                raise DataError(f"{where}: layout = {layout!r}; expected 'nhwc' or 'nchw'", hint="fix the layout array")
        if {"x_train", "y_train"} <= keys:
            present = [s for s in ("train", "val", "test") if f"x_{s}" in keys]
            for s in present:
                if f"y_{s}" not in keys:
                    raise DataError(f"{where}: has x_{s} but no y_{s}", hint=f"add the labels y_{s}")
            parts = {s: (_npz_images(get(f"x_{s}"), f"x_{s}", where, layout), get(f"y_{s}")) for s in present}
        elif {"x", "y"} <= keys:
            parts = {"all": (_npz_images(get("x"), "x", where, layout), get("y"))}
        else:
            raise DataError(f"{where} has arrays {sorted(f.files)}; expected x and y, or x_train, y_train "
                            "(+ x_val, y_val, x_test, y_test)",
                            hint="numpy.savez(path, x=images, y=labels), optionally class_names=[...]")
        parts = {s: (x, _npz_labels(y, f"y_{s}" if s != "all" else "y", len(x), where)) for s, (x, y) in parts.items()}
        shapes = {s: x.shape[1:] for s, (x, _) in parts.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"{where}: the splits hold images of different shapes {shapes}",
                            hint="store every split at one size and channel count")
        labels = np.concatenate([y for _, y in parts.values()])
        class_names = None
        if "class_names" in keys:
            names = get("class_names")
            if names.dtype.kind not in "US" or names.ndim != 1:
                raise DataError(f"{where}: class_names has dtype {names.dtype} shape {names.shape}; expected strings",
                                hint="numpy.savez(..., class_names=np.array(['cat', 'dog']))")
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
            dup = sorted({n for n in class_names if class_names.count(n) > 1})
            if dup:
                raise DataError(f"{where}: class_names repeats {dup[:3]}", hint="give each class a distinct name")
        n_classes = _npz_num_classes(labels, class_names, where)
        if class_names is None:
            class_names = [str(i) for i in range(n_classes)]
        images, scaled = to_uint8(np.concatenate([x for x, _ in parts.values()]), f"{where}: images")
    splits: dict[str, np.ndarray] | None = None
    if "all" not in parts:
        splits, start = {}, 0
        for s, (x, _) in parts.items():
            splits[s] = np.arange(start, start + len(x))
            start += len(x)
    h, w, c = images.shape[1:]
    counts = ", ".join(f"{s} {len(x)}" for s, (x, _) in parts.items())
    notes = [f"data: npz {path} ({len(class_names)} classes, {counts}; {h}x{w}x{c} uint8 NHWC after loading"
             f"{', fixed splits' if splits else ', split by ratio'})"] + ([f"data: {scaled}"] if scaled else [])
    return RawData(images, labels, class_names, splits, notes)
