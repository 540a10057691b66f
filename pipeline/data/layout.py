"""Where the data is: the source a data.path holds, and the class folders of an image folder as found.

- `resolve_source`: data.source=auto (the default) reads data.path: a folder of CIFAR batches (or a CIFAR
  .tar.gz) -> cifar, another folder -> imagefolder, a .npz -> npz; no path -> builtin:digits. It says so in
  one line. A builtin source with a data.path is refused (the path would be ignored: the wrong task).
- `find_layout`: split folders named as people name them (train/Training/training_set/seg_train,
  val/valid/validation/eval/dev, test/Testing/test_set, any case); a data.path one level too high (one
  folder holding the dataset) is followed with a line saying so, several candidate datasets are refused
  naming the paths to use; __MACOSX, hidden (.x) and system folders ($RECYCLE.BIN, System Volume
  Information, @eaDir, lost+found...) are never classes; a split folder holding images but no class folders
  (an unlabeled Kaggle test/) is left out with a warning and that split is carved from train.
- `fingerprint`: content hash of data.path for the cache key; a file that cannot be read is hashed by name,
  size and error (the loader then applies data.bad_images to it) instead of crashing the hashing step.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, DataError

SPLIT_ALIASES = {"train": "train", "training": "train", "trn": "train",
                 "val": "val", "valid": "val", "validation": "val", "eval": "val", "evaluation": "val",
                 "dev": "val",
                 "test": "test", "testing": "test", "tst": "test"}
SPLIT_SUFFIXES = ("dataset", "set", "data", "images", "imgs", "split")
UNLABELED_NAMES = {"pred", "predict", "prediction", "unlabeled", "unlabelled", "unknown"}
SYSTEM_DIRS = {"__macosx", "$recycle.bin", "recycler", "system volume information", "@eadir", "#recycle",
               "@recycle", "__pycache__", "lost+found", "thumbs", "@sharebin"}
IGNORED_FILES = {"thumbs.db", "desktop.ini", "icon\r"}
MAX_UNWRAP = 3  # levels of single wrapper folders followed (path/archive/dataset/...)


def ignored(name: str) -> bool:
    """Hidden, system and OS-junk names: never a class, never an image."""
    low = name.lower()
    return name.startswith((".", "~$")) or low in SYSTEM_DIRS or low in IGNORED_FILES


def split_of(name: str) -> str | None:
    """'Training' -> train, 'test_set' -> test, 'seg_val' -> val, 'cats' -> None."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    found = set()
    for t in tokens:
        for suffix in SPLIT_SUFFIXES:
            if t.endswith(suffix) and t[:-len(suffix)] in SPLIT_ALIASES:
                t = t[:-len(suffix)]
                break
        if t in SPLIT_ALIASES:
            found.add(SPLIT_ALIASES[t])
    return found.pop() if len(found) == 1 else None


def is_unlabeled_name(name: str) -> bool:
    return any(t in UNLABELED_NAMES for t in re.split(r"[^a-z0-9]+", name.lower()))


def visible_dirs(p: Path) -> list[Path]:
    try:
        entries = list(p.iterdir())
    except OSError as e:
        raise DataError(f"folder {p} cannot be listed ({e.strerror or e})",
                        hint="check its permissions (it must be readable and searchable)") from None
    return sorted((c for c in entries if not ignored(c.name) and _is_dir(c)), key=lambda c: c.name)


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def walk_files(folder: Path, skip_ignored: bool = True, loops: list[str] | None = None,
               avoid: tuple[Path, ...] = ()) -> list[Path]:
    """Files below folder (sorted, linked folders followed); broken links and FIFOs are included (the
    reader refuses them one by one); with skip_ignored, hidden and system names are left out.

    A linked folder is followed once: never into a folder already walked (an ancestor: a loop like
    `a/loop -> ..`; or the same folder reached by two links), never into `avoid` (the other class folders: their
    images would be relabelled). Each link left out is named in `loops` (the caller warns)."""
    out = []
    seen: set[tuple[int, int]] = set()
    root_real = os.path.realpath(folder)
    avoid_real = [os.path.realpath(a) for a in avoid]

    def inside(p: str, top: str) -> bool:
        return p == top or p.startswith(top.rstrip(os.sep) + os.sep)

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
            seen.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        keep = []
        for d in sorted(d for d in dirnames if not (skip_ignored and ignored(d))):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                real = os.path.realpath(full)
                try:
                    st = os.stat(full)
                    key = (st.st_dev, st.st_ino)
                except OSError:
                    continue
                rel = os.path.relpath(full, folder)
                if key in seen or inside(root_real, real):
                    if loops is not None:
                        loops.append(f"{folder.name}/{rel} -> {real} (a folder already walked: a link loop, or a second link to it)")
                    continue
                if any(inside(real, a) for a in avoid_real):
                    if loops is not None:
                        loops.append(f"{folder.name}/{rel} -> {real} (inside another class folder: its images "
                                     "would be relabelled)")
                    continue
                seen.add(key)
            keep.append(d)
        dirnames[:] = keep
        if len(Path(dirpath).relative_to(folder).parts) >= 32:  # a guard: never reached through a loop now
            dirnames[:] = []
        out += [Path(dirpath) / n for n in sorted(filenames) if not (skip_ignored and ignored(n))]
    return out


_DIGESTS: dict[tuple, str | None] = {}


def file_digest(f: str | Path) -> str | None:
    """sha256 of a regular file's bytes (None: not a regular file, or unreadable). Kept per (path, inode, size,
    mtime) for the process: the cache key (`fingerprint`) and the duplicate check of the folder scan share one
    read of each file."""
    try:
        st = os.stat(f)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (str(f), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        try:
            h = hashlib.sha256()
            with open(f, "rb") as fd:
                while b := fd.read(1 << 20):
                    h.update(b)
            _DIGESTS[key] = h.hexdigest()
        except OSError:
            _DIGESTS[key] = None
    return _DIGESTS[key]


def loose_images(folder: Path) -> list[Path]:
    from pipeline.data.images import image_extensions

    exts = image_extensions()
    try:
        return sorted(f for f in folder.iterdir() if not ignored(f.name) and f.suffix.lower() in exts
                      and not _is_dir(f))
    except OSError:
        return []


# --------------------------------------------------------------------------- data.source=auto


def _is_cifar_dir(p: Path) -> bool:
    def has(q: Path, *names: str) -> bool:
        return all((q / n).is_file() for n in names)

    return (has(p, "data_batch_1", "test_batch") or has(p, "train", "test")
            or any((p / d).is_dir() and _is_cifar_dir(p / d) for d in ("cifar-10-batches-py", "cifar-100-python")))


def _is_cifar_tar(p: Path) -> bool:
    try:
        with tarfile.open(p) as tar:
            names = {Path(m.name).name for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError, EOFError):
        return False
    return {"data_batch_1", "test_batch"} <= names or {"train", "test", "meta"} <= names


def infer_source(path: Path) -> tuple[str, str]:
    """(source, what it is) for a data.path, or a DataError saying what to give."""
    if not path.exists():
        raise DataError(f"data.path {path} does not exist",
                        hint="point data.path at a folder of class folders, a .npz file or the CIFAR batches")
    if path.is_dir():
        if _is_cifar_dir(path):
            return "cifar", "a folder of CIFAR batches"
        npz = [f for f in path.iterdir() if f.name.lower().endswith(".npz") and not ignored(f.name)]
        if npz and not visible_dirs(path):
            raise DataError(f"data.path {path} is a folder holding {', '.join(f.name for f in npz[:3])}, "
                            "not image class folders",
                            hint=f"set data.path={npz[0]}")
        return "imagefolder", "a folder"
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz", "a .npz file"
    if name.endswith((".tar.gz", ".tgz", ".tar")) and _is_cifar_tar(path):
        return "cifar", "a CIFAR archive"
    if name.endswith((".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".7z", ".rar")):
        raise DataError(f"data.path {path} is an archive: image folders are read extracted",
                        hint=f"extract it and set data.path to the extracted folder (the one holding the class "
                             f"folders or train/, test/)")
    raise DataError(f"data.path {path} is a file that is not a dataset (not a .npz, not CIFAR batches)",
                    hint="point data.path at a folder of class folders, a .npz file (numpy.savez) or the CIFAR "
                         "batches, or set data.source")


def resolve_source(cfg) -> tuple[str, str | None]:
    """The source to load and, when it was inferred from data.path, the line that says so."""
    src = cfg.source
    if src == "auto":
        if not cfg.path:
            return "builtin:digits", None
        path = Path(cfg.path).expanduser()
        inferred, what = infer_source(path)
        return inferred, (f"data: data.source not set; data.path {path} is {what}: using "
                          f"data.source={inferred} (set data.source to choose another)")
    if src.startswith("builtin:") and cfg.path:
        raise ConfigError(f"data.path={cfg.path} is set but data.source={src} does not read it "
                          "(it would train on the built-in dataset)",
                          hint="set data.source=auto (inferred from the path), imagefolder, npz or cifar; "
                               "or remove data.path")
    return src, None


# --------------------------------------------------------------------------- image folder layouts


@dataclass
class Layout:
    parts: dict[str, Path]  # "all" or train/val/test -> folder holding the class folders
    root: Path  # the folder actually used (after following wrapper folders)
    notes: list[str] = field(default_factory=list)  # lines to show (followed folders)
    warnings: list[str] = field(default_factory=list)  # lines to show as warnings (left-out folders)


def _holds_dirs(p: Path) -> bool:
    return bool(visible_dirs(p))


def _unwrap(folder: Path, notes: list[str], what: str, split: str | None = None) -> Path:
    """Follow single wrapper folders: folder holds exactly one folder and no images. At the top that folder
    must not be a split (split detection reads it); inside a split it may repeat its name
    (Kaggle's training_set/training_set/<classes>)."""
    for _ in range(MAX_UNWRAP):
        subs = visible_dirs(folder)
        if len(subs) != 1 or split_of(subs[0].name) not in (None, split) or loose_images(folder) \
                or not _holds_dirs(subs[0]):
            break
        notes.append(f"data: {what} {folder} holds only one folder, {subs[0].name}/ (a level too high): "
                     f"using {subs[0]}")
        folder = subs[0]
    return folder


def _nested_datasets(root: Path, dirs: list[Path]) -> list[Path]:
    """Sub-folders of root that are datasets with split folders of their own (root is a level too high)."""
    return [d for d in dirs if any(split_of(s.name) for s in visible_dirs(d))]


def find_layout(root: Path) -> Layout:
    layout_hint = ("data.path must be a folder holding one sub-folder of images per class "
                   "(path/<class>/*.png), or train/, val/, test/ folders each holding them")
    notes: list[str] = []
    warns: list[str] = []
    root = _unwrap(root, notes, "data.path")
    top = visible_dirs(root)
    if not top:
        loose = len(walk_files(root))
        raise DataError(f"image folder {root} has no class sub-folders"
                        + (f" ({loose} files lie directly in it)" if loose else " (it is empty)"),
                        hint=layout_hint + ("; sort the images into one folder per class (if this is one "
                                            f"class's folder, set data.path={root.parent})" if loose else ""))
    splits = [d for d in top if split_of(d.name)]
    others = [d for d in top if not split_of(d.name)]
    nested = _nested_datasets(root, others)
    transposed = [d for d in nested if not any(_holds_dirs(s) for s in visible_dirs(d) if split_of(s.name))]
    if nested and len(transposed) == len(nested):
        d = transposed[0]
        subs = [s.name for s in visible_dirs(d) if split_of(s.name)]
        raise DataError(f"image folder {root} is laid out <class>/<split>/ ({d.name}/{subs[0]}/...): the split "
                        "folders must hold the class folders",
                        hint=f"move the files to {subs[0]}/{d.name}/... (one folder per split, each holding "
                             "one folder per class)")
    if nested and any(_holds_dirs(d) for d in splits):  # Kaggle zips: chest_xray/{train,test,chest_xray/...}
        raise DataError(f"image folder {root} holds split folders ({', '.join(d.name for d in splits)}) and also "
                        f"{nested[0].name}/ with split folders of its own: two copies of a dataset?",
                        hint=f"set data.path={nested[0]}, or move {nested[0]} away to use {root}")
    if nested:
        raise DataError(f"data.path {root} is one level too high: it holds "
                        + ", ".join(f"{d.name}/ ({', '.join(s.name for s in visible_dirs(d) if split_of(s.name))})"
                                    for d in nested[:4])
                        + ("; several datasets" if len(nested) > 1 else ""),
                        hint=f"set data.path={nested[0]}" + (" (or " + ", ".join(str(d) for d in nested[1:3]) + ")"
                                                             if len(nested) > 1 else ""))
    # A folder named like a split that holds images directly is a class (CIFAR-100 has a class 'train'),
    # unless every folder is a split: then the labels are not in folders (train/cat.1.jpg): refused.
    container_splits = [d for d in splits if _holds_dirs(d)]
    if not container_splits:
        if splits and not others:
            raise DataError(f"image folder {root} holds only split folders ({', '.join(d.name for d in splits)}) "
                            "with images but no class folders: labels are read from folder names only",
                            hint="sort the images into train/<class>/ (and test/<class>/) folders")
        if split_of(root.name) == "train":
            try:
                siblings = [d.name for d in visible_dirs(root.parent) if split_of(d.name) in ("val", "test")]
            except DataError:  # an unlistable parent: nothing to suggest
                siblings = []
            if siblings:
                warns.append(f"data.path {root} is a train folder; its parent also holds {', '.join(siblings)}: "
                             f"set data.path={root.parent} to use those fixed splits (val/test are carved from "
                             "train now)")
        return Layout({"all": root}, root, notes, warns)
    unlabeled = [d for d in others if is_unlabeled_name(d.name)]
    stray = [d for d in others if d not in unlabeled]
    if stray:
        raise DataError(f"image folder {root} mixes split folders ({', '.join(d.name for d in container_splits)}) "
                        f"with other folders ({', '.join(d.name for d in stray[:5])})",
                        hint="put every class folder inside train/ (and val/, test/), or drop the split folders")
    parts: dict[str, Path] = {}
    for d in splits:
        name = split_of(d.name) or ""  # never empty here: `splits` holds split-named folders only
        folder = _unwrap(d, notes, f"the {name} folder", name)
        if not _holds_dirs(folder):
            n = len(loose_images(folder))
            if name == "train":
                raise DataError(f"the train folder {folder} holds {n} images but no class sub-folders",
                                hint="sort the training images into train/<class>/ folders")
            warns.append(f"{folder} holds {n} images but no class folders (unlabeled): left out; "
                         f"the {name} split is carved from train")
            continue
        if name in parts:
            raise DataError(f"image folder {root} has several folders for the {name} split "
                            f"({parts[name].name}, {d.name})", hint="keep one of them")
        parts[name] = folder
    for d in unlabeled:
        warns.append(f"{d} is named as unlabeled data, not a split: left out")
    if "train" not in parts:
        raise DataError(f"image folder {root} has {', '.join(d.name for d in splits)}/ but no train/ folder",
                        hint="add train/<class>/ folders (val/ and test/ are carved from train when missing)")
    return Layout({k: parts[k] for k in ("train", "val", "test") if k in parts}, root, notes, warns)


# --------------------------------------------------------------------------- cache key


def fingerprint(path: str | Path) -> str:
    """sha256 over relative names and contents; unreadable entries are hashed by name, size and error."""
    p = Path(path)
    h = hashlib.sha256()

    def add_file(f: Path, rel: str) -> None:
        h.update(rel.encode("utf-8", "surrogateescape"))
        try:
            st = os.stat(f)
            if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block: hash its kind only
                h.update(f"special:{stat.S_IFMT(st.st_mode)}".encode())
                return
            digest = file_digest(f)
            if digest is None:
                raise PermissionError(errno.EACCES, "unreadable")
            h.update(digest.encode())
        except OSError as e:
            size = os.lstat(f).st_size if os.path.lexists(f) else -1
            h.update(f"unreadable:{size}:{e.errno}".encode())

    if not p.is_dir():
        add_file(p, p.name)
        return h.hexdigest()
    for f in walk_files(p, skip_ignored=False):
        add_file(f, f.relative_to(p).as_posix())
    return h.hexdigest()
