"""Users' own datasets: image folders, CIFAR-style pickle batches and .npz arrays.

Every loader returns `RawData`: uint8 images NHWC (C = 1 or 3, RGB order), int64 labels, class names,
and - where the data fixes them - split indices. `datasets.load_splits` then normalizes (mean/std,
channel order from the recipe) and carves any split the source does not fix from `train`.

imagefolder (`data.path` is a folder)
    path/<class>/*            one sub-folder per class, split by the recipe's ratios (data.split)
    path/train/<class>/*      fixed splits; `val/` (or `valid/`, `validation/`) and `test/` are optional,
    path/val/<class>/*        a missing one is carved from train. Every split must hold the same class
    path/test/<class>/*       folders (an empty class folder is fine).
    Images are read with Pillow, converted to L (data.channels=1) or RGB (3) and resized to
    data.input_size (bilinear, as the bundle's run.py does), so images of any size stack. Hidden files
    (.DS_Store...) are ignored. A file Pillow cannot read is skipped with one warning line
    (data.bad_images=skip) or stops the run naming it (data.bad_images=error).

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
    dtype uint8 (0..255), another integer type holding 0..255, or float in [0, 1] (scaled by 255).
    Labels: integers 0..K-1, one per image.
"""
from __future__ import annotations

import io
import pickle
import sys
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.data.datasets import RawData
from pipeline.errors import ConfigError, DataError

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
SHOW_BAD = 3  # how many bad files the skip warning names


def load_user_source(cfg) -> RawData:
    loaders: dict[str, Callable[[Any], RawData]] = {"imagefolder": load_imagefolder, "cifar": load_cifar,
                                                     "npz": load_npz}
    if cfg.source not in loaders:
        raise ConfigError(f"data.source = {cfg.source!r} is not known",
                          hint="use builtin:digits, builtin:mnist, imagefolder, cifar or npz")
    if not cfg.path:
        what = {"imagefolder": "a folder of class sub-folders", "cifar": "the CIFAR batches folder",
                "npz": "a .npz file"}[cfg.source]
        raise DataError(f"data.source={cfg.source} needs data.path ({what})",
                        hint="add --set data.path=/path/to/data (or `path:` under `data:` in the recipe)")
    return loaders[cfg.source](cfg)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- image folders


def _visible_dirs(p: Path) -> list[Path]:
    return sorted((c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")), key=lambda c: c.name)


def _image_files(folder: Path) -> list[Path]:
    files = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not f.is_file() or f.name.lower() in IGNORED_FILES:
            continue
        files.append(f)
    return files


def _read_image(f: Path, mode: str, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(f) as img, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        img.load()  # decode now: a truncated file fails here, not later
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _describe_bad(f: Path, e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.replace(str(f), "").strip(" :'\"") or type(e).__name__


@dataclass
class FolderIndex:
    """An image folder's files in load order, their labels and (fixed layouts) their split; nothing decoded."""

    root: Path
    files: list[Path]
    labels: np.ndarray
    split_of: np.ndarray  # "all" for a folder split by ratio, else the split each file belongs to
    class_names: list[str]
    parts: dict[str, Path]


def scan_imagefolder(cfg) -> FolderIndex:
    """Check the layout and list the files; decoding is left to the caller (all at once or in chunks)."""
    root = Path(cfg.path).expanduser()
    layout_hint = "data.path must be a folder holding one sub-folder of images per class " \
                  "(path/<class>/*.png), or train/, val/, test/ folders each holding them"
    if not root.exists():
        raise DataError(f"image folder {root} does not exist", hint=f"check data.path; {layout_hint}")
    if not root.is_dir():
        raise DataError(f"data.path {root} is a file, not a folder (data.source=imagefolder)",
                        hint=f"{layout_hint}; a .npz file needs data.source=npz")
    top = _visible_dirs(root)
    split_dirs = [d for d in top if d.name.lower() in SPLIT_DIRS]
    if split_dirs:
        others = [d.name for d in top if d.name.lower() not in SPLIT_DIRS]
        if others:
            raise DataError(f"image folder {root} mixes split folders ({', '.join(d.name for d in split_dirs)}) "
                            f"with other folders ({', '.join(others[:5])})",
                            hint="put every class folder inside train/ (and val/, test/), or drop the split folders")
        names = [SPLIT_DIRS[d.name.lower()] for d in split_dirs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"image folder {root} has several folders for the {dup[0]} split "
                            f"({', '.join(d.name for d in split_dirs if SPLIT_DIRS[d.name.lower()] == dup[0])})",
                            hint="keep one of them")
        if "train" not in names:
            raise DataError(f"image folder {root} has {', '.join(d.name for d in split_dirs)}/ but no train/ folder",
                            hint="add train/<class>/ folders (val/ and test/ are carved from train when missing)")
        found = {SPLIT_DIRS[d.name.lower()]: d for d in split_dirs}
        parts = {k: found[k] for k in ("train", "val", "test") if k in found}
    else:
        parts = {"all": root}

    classes_of = {name: [c.name for c in _visible_dirs(d)] for name, d in parts.items()}
    for name, classes in classes_of.items():
        if not classes:
            where = parts[name]
            loose = len(_image_files(where))
            raise DataError(f"image folder {where} has no class sub-folders"
                            + (f" ({loose} files lie directly in it)" if loose else " (it is empty)"),
                            hint=layout_hint)
    if len(parts) > 1:
        all_classes = sorted(set().union(*classes_of.values()))
        differ = []
        for c in all_classes:
            have = [s for s in parts if c in classes_of[s]]
            if len(have) != len(parts):
                missing = [s for s in parts if s not in have]
                differ.append(f"'{c}' (in {', '.join(have)}; missing in {', '.join(missing)})")
        if differ:
            raise DataError(f"class folders differ between the splits of {root}: {'; '.join(differ[:8])}"
                            + (f" (+{len(differ) - 8} more)" if len(differ) > 8 else ""),
                            hint="every split folder (train/, val/, test/) must hold the same class sub-folders; "
                                 "add the missing ones (an empty folder is fine) or rename the misspelled ones")
    class_names = classes_of[next(iter(parts))]
    files: list[Path] = []
    labels: list[int] = []
    split_of: list[str] = []
    for split, folder in parts.items():
        for label, cls in enumerate(class_names):
            for f in _image_files(folder / cls):
                files.append(f)
                labels.append(label)
                split_of.append(split)
    return FolderIndex(root, files, np.asarray(labels, dtype=np.int64), np.asarray(split_of), class_names, parts)


def read_image_or_skip(f: Path, mode: str, size: int, cfg, bad: list[tuple[Path, str]]) -> np.ndarray | None:
    """One decoded image, or None (recorded in `bad`) for an unreadable file under data.bad_images=skip."""
    try:
        return _read_image(f, mode, size)
    except Exception as e:  # Pillow raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        if cfg.bad_images == "error":
            raise DataError(f"{f} is not a readable image ({_describe_bad(f, e)})",
                            hint="remove or replace that file, or set data.bad_images=skip "
                                 "to skip unreadable files with a warning") from None
        bad.append((f, _describe_bad(f, e)))
        return None


def skipped_note(root: Path, bad: list[tuple[Path, str]]) -> str | None:
    """The one warning line about skipped files (printed and kept in the stage notes)."""
    if not bad:
        return None
    shown = ", ".join(f"{p.relative_to(root)} ({why})" for p, why in bad[:SHOW_BAD])
    more = f" and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    msg = f"skipped {len(bad)} unreadable file(s) in {root}: {shown}{more} (data.bad_images=skip)"
    _warn(msg)
    return msg


def load_imagefolder(cfg) -> RawData:
    """All images decoded in memory (small folders, tests); the data stage streams them instead
    (pipeline/data/store.py reads `scan_imagefolder` in chunks)."""
    index = scan_imagefolder(cfg)
    root, parts, class_names = index.root, index.parts, index.class_names
    mode = "L" if cfg.channels == 1 else "RGB"
    images: list[np.ndarray] = []
    labels: list[int] = []
    split_of: list[str] = []
    bad: list[tuple[Path, str]] = []
    for f, label, split in zip(index.files, index.labels, index.split_of):
        arr = read_image_or_skip(f, mode, cfg.input_size, cfg, bad)
        if arr is None:
            continue
        images.append(arr)
        labels.append(int(label))
        split_of.append(str(split))
    notes = []
    msg = skipped_note(root, bad)
    if msg:
        notes.append(msg)
    if not images:
        raise DataError(f"image folder {root} holds no readable images"
                        + (f" ({len(bad)} unreadable files skipped)" if bad else ""),
                        hint="add images (png, jpg, ...) in the class sub-folders")
    y = np.asarray(labels, dtype=np.int64)
    where = np.asarray(split_of)
    splits = None
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
    return RawData(np.stack(images), y, class_names, splits, notes)


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
                    self.entries.setdefault(Path(m.name).name, lambda m=m: tar.extractfile(m).read())
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
    if x.dtype.kind not in "uif" or x.dtype == np.bool_:
        raise DataError(f"{where}: {name} has dtype {x.dtype}, not numbers",
                        hint="store images as uint8 0..255 or float in [0, 1]")
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
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{where}: {name} holds NaN/Inf values", hint="clean the data")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(f"{where}: {name} is float with values in [{lo:g}, {hi:g}]; float images must be in [0, 1]",
                            hint="save raw pixels (uint8 0..255, or float / 255); the recipe's data.mean/std "
                                 "normalize them")
        return np.round(np.clip(x, 0, 1) * 255.0).astype(np.uint8)
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: {name} is {x.dtype} with values in [{lo}, {hi}]; expected 0..255",
                        hint="save 8-bit pixels as uint8 (or float in [0, 1])")
    return x.astype(np.uint8)


def _npz_labels(y: np.ndarray, name: str, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {name} has shape {y.shape} for {n} images; expected ({n},) integer labels",
                        hint="store one class index per image (not one-hot)")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: {name} has dtype {y.dtype}; labels must be integers 0..K-1",
                        hint="map class names to indices and store class_names alongside")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: {name} holds negative labels", hint="labels must be 0..K-1")
    return y.astype(np.int64)


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
        keys = set(f.files)

        def get(k: str) -> np.ndarray:
            try:
                return f[k]
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
            raise DataError(f"{where} has arrays {sorted(keys)}; expected x and y, or x_train, y_train "
                            "(+ x_val, y_val, x_test, y_test)",
                            hint="numpy.savez(path, x=images, y=labels), optionally class_names=[...]")
        parts = {s: (x, _npz_labels(y, f"y_{s}" if s != "all" else "y", len(x), where)) for s, (x, y) in parts.items()}
        shapes = {s: x.shape[1:] for s, (x, _) in parts.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"{where}: the splits hold images of different shapes {shapes}",
                            hint="store every split at one size and channel count")
        n_classes = max(int(y.max()) + 1 if len(y) else 0 for _, y in parts.values())
        if "class_names" in keys:
            names = get("class_names")
            if names.dtype.kind not in "USO" or names.ndim != 1:
                raise DataError(f"{where}: class_names has dtype {names.dtype} shape {names.shape}; expected strings",
                                hint="numpy.savez(..., class_names=np.array(['cat', 'dog']))")
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
            if len(class_names) < n_classes:
                raise DataError(f"{where}: class_names has {len(class_names)} names but labels go up to {n_classes - 1}",
                                hint="give one name per class index")
        else:
            class_names = [str(i) for i in range(n_classes)]
    images = np.concatenate([x for x, _ in parts.values()])
    labels = np.concatenate([y for _, y in parts.values()])
    splits = None
    if "all" not in parts:
        splits, start = {}, 0
        for s, (x, _) in parts.items():
            splits[s] = np.arange(start, start + len(x))
            start += len(x)
    h, w, c = images.shape[1:]
    counts = ", ".join(f"{s} {len(x)}" for s, (x, _) in parts.items())
    notes = [f"data: npz {path} ({len(class_names)} classes, {counts}; {h}x{w}x{c} uint8 NHWC after loading"
             f"{', fixed splits' if splits else ', split by ratio'})"]
    return RawData(images, labels, class_names, splits, notes)
