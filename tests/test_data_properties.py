"""Property test over the data loaders (issue 10.7, data half): generated image folders and .npz files.

Image folders: 1-4 classes of 0-8 images each, in every Pillow mode (1, L, P with a grey palette, LA/RGBA
with a constant alpha, P with a transparent index, RGB, CMYK, 16-bit PNG, 32-bit int and float TIFF),
sizes 1-10 px, a horizontal gradient in each; laid out flat, in train/val/test folders named in any of the
ways people name them (any case), inside one wrapper folder (data.path one level too high), or as two
datasets side by side; junk folders (__MACOSX, hidden, @eaDir) and unreadable files mixed in.
.npz: uint8/uint16/int32/float/bool images in NHW/NHWC/NCHW, labels 0-based, 1-based, with a 255 or -1
sentinel, fractional, with gaps, or of the wrong length.

Every example ends in a correct setup - the class list and image count we generated, every image still a
gradient (non-decreasing left to right; the brightest high bit-depth image not clipped to white nor
crushed to black), splits that load - or in a DataError with a message and a fix; never another exception.
Cases that must fail (one class, a class without images, bad labels) must fail; cases with plenty of
images must load. The loaders are called in-process on tiny images: 200+ examples in well under 2 minutes.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.datasets import load_raw  # noqa: E402

from pipeline.data.store import load_splits  # noqa: E402
from pipeline.errors import DataError  # noqa: E402
from pipeline.recipe import DataConfig  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

MODES = ["1", "L", "P", "LA", "RGBA", "P-transparent", "RGB", "CMYK", "I;16", "I", "F"]
HIGH_BIT = {"I;16", "I", "F"}
SPLIT_NAMES = {"train": ["train", "Training", "TRAIN", "training_set", "seg_train", "Train_Images"],
               "val": ["val", "valid", "Validation", "eval", "VAL"],
               "test": ["test", "Testing", "test_set", "TEST"]}
JUNK = ["__MACOSX", ".hidden", "@eaDir", "$RECYCLE.BIN", ".ipynb_checkpoints"]
CLASS_NAMES = ["cat", "dog", "Bird", "a b", "x_1", "zebra", "0", "9"]


def gradient(w: int, h: int, hi: float) -> np.ndarray:
    return np.tile(np.linspace(0.0, hi, w), (h, 1))


def make_image(mode: str, w: int, h: int, hi: int, alpha: int) -> tuple[Image.Image, str]:
    """A horizontal 0..hi gradient in `mode` (hi on the mode's own scale); returns (image, file extension)."""
    if mode in HIGH_BIT:
        g = gradient(w, h, hi)
        if mode == "I;16":
            return Image.fromarray(np.round(np.minimum(g, 65535)).astype(">u2")), "png"
        if mode == "I":
            return Image.fromarray(np.round(g).astype(np.int32)), "tif"
        return Image.fromarray((g / 65535.0 if hi <= 65535 else g).astype(np.float32)), "tif"
    v = np.round(gradient(w, h, min(hi, 255))).astype(np.uint8)
    if mode == "1":
        return Image.fromarray(v >= 128), "png"
    if mode in ("L", "RGB"):
        return Image.fromarray(v).convert(mode), "png"
    if mode == "CMYK":
        inv = 255 - v
        return Image.merge("CMYK", [Image.fromarray(inv)] * 3 + [Image.fromarray(np.zeros_like(v))]), "tif"
    if mode in ("P", "P-transparent"):
        p = Image.fromarray(v).convert("P")  # mode P with an L->P grey palette: index = grey level
        p.putpalette([c for i in range(256) for c in (i, i, i)])
        if mode == "P-transparent":
            p.info["transparency"] = 0  # black (the left edge) becomes transparent, composited on white
        return p, "png"
    a = np.full_like(v, alpha)
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(v), Image.fromarray(a)]), "png"
    return Image.merge("RGBA", [Image.fromarray(v)] * 3 + [Image.fromarray(a)]), "png"


image_spec = st.tuples(st.sampled_from(MODES), st.integers(1, 10), st.integers(1, 10),
                       st.integers(1, 70000), st.integers(0, 255))


@st.composite
def folders(draw):
    k = draw(st.sampled_from([1, 2, 2, 3, 3, 4]))
    names = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=k, max_size=k, unique=True))
    rich = draw(st.booleans())  # half the examples have enough images to load: their content is checked
    layout = draw(st.sampled_from(["flat", "splits", "wrapped", "wrapped_splits", "two_datasets"]))
    splits = ["all"]
    if "splits" in layout or layout == "two_datasets":
        splits = ["train"] + [s for s in ("val", "test") if draw(st.booleans())]
    split_dirs = {s: draw(st.sampled_from(SPLIT_NAMES[s])) if s != "all" else "" for s in splits}
    big = ("all", "train")
    images = {(s, c): draw(st.lists(image_spec, min_size=(7 if s in big else 1) if rich else 0,
                                     max_size=9 if s in big else 3))
              for s in splits for c in names}
    bad = draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from([b"", b"not an image", b"\x89PNG\r\n"])),
                        max_size=2))
    junk = draw(st.lists(st.sampled_from(JUNK), max_size=2, unique=True))
    channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(4, 8))
    return dict(names=names, layout=layout, splits=splits, split_dirs=split_dirs, images=images, bad=bad,
                junk=junk, channels=channels, size=size)


def write_folder(root: Path, ex: dict) -> tuple[Path, dict]:
    """Writes the example; returns (data.path, {(split, class, file name): (mode, source max, width)})."""
    base = root / "wrapper" if ex["layout"].startswith("wrapped") else root
    bases = [root / "dsA", root / "dsB"] if ex["layout"] == "two_datasets" else [base]
    written = {}
    for b in bases:
        for (s, c), specs in ex["images"].items():
            d = b / ex["split_dirs"][s] / c
            d.mkdir(parents=True, exist_ok=True)
            for i, (mode, w, h, hi, alpha) in enumerate(specs):
                img, ext = make_image(mode, w, h, hi, alpha)
                img.save(d / f"{i}.{ext}")
                written[(s, c, f"{i}.{ext}")] = (mode, hi, w)
        for j, (c, data) in enumerate(ex["bad"]):
            first = ex["splits"][0]
            d = b / ex["split_dirs"][first] / c
            d.mkdir(parents=True, exist_ok=True)
            (d / f"bad{j}.png").write_bytes(data)
        for junk in ex["junk"]:
            d = b / junk / "ghost_class"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("L", (3, 3), 7).save(d / "1.png")
    return root, written


def check_gradients(x: np.ndarray, modes: list[tuple[str, float, int]]) -> None:
    """Each image is non-decreasing left to right (every channel); the brightest high bit-depth image keeps
    its ramp: neither clipped to white nor crushed to black."""
    for img, (mode, hi, w) in zip(x, modes):
        rows = img.astype(int).transpose(2, 0, 1).reshape(-1, img.shape[1])
        if mode != "P-transparent":  # index 0 (black, the left edge) turns white: not monotone by design
            assert (np.diff(rows, axis=1) >= -1).all(), (mode, hi, w, img[..., 0])
    def peak(mode: str, hi: float) -> float:  # the largest value the file holds (see make_image)
        if mode == "I;16":
            return float(min(hi, 65535))
        return hi / 65535.0 if mode == "F" and hi <= 65535 else float(hi)

    high = [(peak(mode, hi), i, w) for i, (mode, hi, w) in enumerate(modes) if mode in HIGH_BIT]
    if high:
        top_value, i, w = max(high)
        if top_value > 255 and w >= 6:  # the image that sets the dataset's bit depth: still a ramp, whose
            # mean is about half its top (clipped at 255, nearly all of it is white), not crushed to black
            img = x[i].astype(float)
            assert img.max() >= 40 and img.mean() <= 0.7 * img.max(), (modes[i], x[i][..., 0])


@settings(max_examples=150, **SETTINGS)
@given(ex=folders())
def test_image_folders_load_right_or_refuse(ex):
    with tempfile.TemporaryDirectory() as tmp:
        path, written = write_folder(Path(tmp), ex)
        cfg = DataConfig(path=str(path), channels=ex["channels"], input_size=ex["size"],
                         mean=[0.5], std=[0.5])
        counts = {c: sum(len(ex["images"][(s, c)]) for s in ex["splits"]) for c in ex["names"]}
        train = {c: len(ex["images"][(ex["splits"][0], c)]) for c in ex["names"]}
        k = len(ex["names"])
        must_fail = k < 2 or min(counts.values()) == 0 or ex["layout"] == "two_datasets"
        by_ratio = ex["splits"] == ["all"]
        carved = 2 if by_ratio else 3 - len(ex["splits"])
        plenty = min(train.values()) >= 1 + carved and (not by_ratio or sum(counts.values()) >= 7 * k) and all(
            sum(len(ex["images"][(s, c)]) for c in ex["names"]) > 0 for s in ex["splits"])
        try:
            raw = load_raw(cfg)
            splits = load_splits(cfg, seed=0)
        except DataError as e:
            event("refused")
            assert e.message and e.hint, e
            assert not (plenty and not must_fail), f"refused a loadable dataset: {e}"
            if ex["layout"] == "two_datasets":
                assert "one level too high" in e.message
            return
        event("loaded")
        assert not must_fail, f"loaded a dataset that must be refused: {raw.class_names}"
        assert raw.class_names == sorted(ex["names"])
        assert len(raw.labels) == sum(counts.values())
        assert {c: int((raw.labels == i).sum()) for i, c in enumerate(raw.class_names)} == counts
        assert raw.images.dtype == np.uint8 and raw.images.shape[1:] == (ex["size"], ex["size"], ex["channels"])
        # byte-identical copies on the held-out side of a split are removed, and said (issue 18)
        removed = sum(int(n.split()[2]) for n in splits.notes if n.startswith("data: removed "))
        assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) + removed == len(raw.labels)
        assert splits.num_classes == k and np.isfinite(splits.x_train).all()
        # the loader reads split by split, class by class, files in name order: match the generated specs
        order = []
        for s in ex["splits"]:
            for c in raw.class_names:
                files = sorted(n for (s2, c2, n) in written if s2 == s and c2 == c)
                order += [written[(s, c, n)] for n in files]
        check_gradients(raw.images, order)


@st.composite
def npz_examples(draw):
    k = draw(st.sampled_from([1, 2, 2, 3, 4]))
    n = draw(st.one_of(st.integers(0, 12), st.integers(30, 60)))
    h, w = draw(st.integers(4, 8)), draw(st.integers(4, 8))
    layout = draw(st.sampled_from(["nhw", "nhwc1", "nhwc3", "nchw1", "nchw3"]))
    dtype = draw(st.sampled_from(["uint8", "uint16", "int32", "float01", "float255", "bool"]))
    hi = draw(st.integers(1, 65535))
    labels = draw(st.sampled_from(["ok", "ok", "ok", "ok", "ok", "float_int", "one_based", "sentinel255", "negative",
                                   "fractional", "gap", "length"]))
    fixed = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 16))
    keys = draw(st.sampled_from(["plain", "keras", "words"]))  # x_train / X_train / train_images
    return dict(k=k, n=n, h=h, w=w, layout=layout, dtype=dtype, hi=hi, labels=labels, fixed=fixed, seed=seed,
                keys=keys)


def build_npz(ex: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(ex["seed"])
    n, k = ex["n"], ex["k"]
    base = rng.random((n, ex["h"], ex["w"]))
    hi = {"uint8": 255, "uint16": ex["hi"], "int32": ex["hi"] * 4, "float01": 1.0, "float255": 255.0,
          "bool": 1}[ex["dtype"]]
    vals = base * hi
    x = {"uint8": lambda: np.round(vals).astype(np.uint8), "uint16": lambda: np.round(vals).astype(np.uint16),
         "int32": lambda: np.round(vals).astype(np.int32), "float01": lambda: vals.astype(np.float32),
         "float255": lambda: vals.astype(np.float64), "bool": lambda: base > 0.5}[ex["dtype"]]()
    c = 3 if ex["layout"].endswith("3") else 1
    if ex["layout"] != "nhw":
        x = np.repeat(x[..., None], c, axis=-1)
        if ex["layout"].startswith("nchw"):
            x = x.transpose(0, 3, 1, 2)
    y = np.arange(n) % k
    y = rng.permutation(y)
    kind = ex["labels"]
    if kind == "float_int":
        y = y.astype(np.float32)
    elif kind == "one_based":
        y = y + 1
    elif kind == "sentinel255" and n:
        y = y.copy()
        y[0] = 255
    elif kind == "negative" and n:
        y = y.copy()
        y[0] = -1
    elif kind == "fractional" and n:
        y = y + 0.5
    elif kind == "gap":
        y = y * 2
    elif kind == "length":
        y = np.concatenate([y, [0]])
    source = base if ex["dtype"] != "bool" else (base > 0.5).astype(float)
    if ex["fixed"]:
        cut = n // 2
        arrays = dict(x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    else:
        arrays = dict(x=x, y=y)
    return arrays, source, y


def rename(arrays: dict, style: str) -> dict:
    if style == "keras":
        return {k.replace("x", "X", 1).replace("y", "Y", 1): v for k, v in arrays.items()}
    if style == "words":
        word = {"x": "images", "y": "labels"}
        return {("_".join([k.split("_")[1], word[k[0]]]) if "_" in k else word[k]): v for k, v in arrays.items()}
    return arrays


@settings(max_examples=250, **SETTINGS)
@given(ex=npz_examples())
def test_npz_loads_right_or_refuses(ex):
    arrays, source, y = build_npz(ex)
    bad_labels = ex["labels"] not in ("ok", "float_int") and ex["n"] > 0
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "d.npz"
        np.savez(p, **rename(arrays, ex["keys"]))
        cfg = DataConfig(path=str(p), input_size=8)
        present = len(set(np.asarray(y[:ex["n"]]).tolist()))
        must_fail = bad_labels or present < 2 or ex["n"] == 0
        if ex["fixed"]:  # the train half must hold every class
            must_fail = must_fail or len(set(np.asarray(arrays["y_train"]).tolist())) < present
        try:
            raw = load_raw(cfg)
            load_splits(cfg, seed=0)
        except DataError as e:
            event("refused: " + ex["labels"] if must_fail else "refused: " + e.message.split(": ")[1][:30])
            assert e.message and e.hint
            plenty = not must_fail and ex["n"] >= 7 * ex["k"] and not ex["fixed"]
            assert not plenty, f"refused a loadable dataset: {e}"
            return
        event("loaded")
        assert not must_fail, f"loaded bad labels {ex['labels']}: {raw.class_names}"
        assert raw.class_names == [str(i) for i in range(ex["k"])]
        assert len(raw.labels) == ex["n"] and raw.images.dtype == np.uint8
        c = 3 if ex["layout"].endswith("3") else 1
        assert raw.images.shape[1:] == (ex["h"], ex["w"], c)
        # images right: the pixel order of the source survives (no clipping, no wrap-around), zero stays
        # zero, and the brightest pixel is not crushed to black
        got = raw.images[..., 0].astype(int).ravel()
        src = source.ravel()
        order = np.argsort(src, kind="stable")
        assert (np.diff(got[order]) >= 0).all()
        stored = np.concatenate([np.asarray(v).ravel() for key, v in arrays.items() if key.startswith("x")])
        if stored.dtype != np.bool_ and float(stored.max()) > 255:  # high bit depth: >= 1/4 of the range used
            assert got.max() >= 60, (ex["dtype"], float(stored.max()), got.max())
