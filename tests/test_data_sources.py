"""Users' own data (pipeline/data/sources.py): image folders, CIFAR pickle batches, .npz arrays.

Small synthetic datasets made from scikit-learn's digits; everything runs in-process in a few seconds.
"""
from __future__ import annotations

import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.store import preprocessing_spec  # noqa: E402

from pipeline.data.store import load_splits  # noqa: E402
from pipeline.data.sources import load_user_source  # noqa: E402
from pipeline.errors import ConfigError, DataError  # noqa: E402
from pipeline.recipe import DataConfig  # noqa: E402


def _digits(n_classes: int = 3, per_class: int = 10) -> list[tuple[np.ndarray, int]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    out, count = [], {}
    for img, y in zip(d.images, d.target):
        if y < n_classes and count.get(y, 0) < per_class:
            count[y] = count.get(y, 0) + 1
            out.append(((img * 255 / 16).astype(np.uint8), int(y)))
    return out


def write_folder(root: Path, splits: bool = True, n_classes: int = 3, per_class: int = 10, rgb: bool = False) -> Path:
    """Digits as PNGs of several sizes: root/{train,val,test}/<class>/ or root/<class>/."""
    for i, (img, y) in enumerate(_digits(n_classes, per_class)):
        part = ("train", "train", "train", "val", "test")[i % 5] if splits else ""
        folder = root / part / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img).resize((8 + 4 * (i % 4),) * 2, Image.NEAREST)  # 8, 12, 16, 20 px
        if rgb:
            im = Image.merge("RGB", (im, im.point(lambda v: 255 - v), im))
        im.save(folder / f"{i}.png")
    return root


def cfg(source: str, path, **kw) -> DataConfig:
    return DataConfig(source=source, path=str(path), input_size=kw.pop("input_size", 16), **kw)


# --------------------------------------------------------------------------- image folders


def test_imagefolder_fixed_splits_resizes_and_labels(tmp_path):
    root = write_folder(tmp_path / "ds")
    (root / "train" / "0" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored silently
    raw = load_user_source(cfg("imagefolder", root))
    assert raw.images.dtype == np.uint8 and raw.images.shape[1:] == (16, 16, 1)
    assert raw.class_names == ["0", "1", "2"]
    assert sorted(raw.splits) == ["test", "train", "val"]
    assert sum(len(v) for v in raw.splits.values()) == len(raw.labels) == 30
    assert set(raw.labels[raw.splits["train"]]) == {0, 1, 2}
    assert "imagefolder" in raw.notes[0] and "fixed splits" in raw.notes[0]
    s = load_splits(cfg("imagefolder", root), seed=0)
    assert s.x_train.shape[1:] == (1, 16, 16) and len(s.y_val) == len(raw.splits["val"])
    assert s.notes == raw.notes


def test_imagefolder_by_ratio_and_rgb(tmp_path):
    root = write_folder(tmp_path / "ds", splits=False, per_class=12, rgb=True)
    c = cfg("imagefolder", root, channels=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    raw = load_user_source(c)
    assert raw.splits is None and raw.images.shape == (36, 16, 16, 3)
    s = load_splits(c, seed=0)
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 36 and s.x_test.shape[1] == 3


def test_imagefolder_missing_val_is_carved_from_train(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=20)
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "val").iterdir()):
        d.rmdir()
    (root / "val").rmdir()
    raw = load_user_source(cfg("imagefolder", root))
    assert sorted(raw.splits) == ["test", "train"]
    s = load_splits(cfg("imagefolder", root), seed=0)
    assert len(s.y_val) > 0 and len(s.y_train) + len(s.y_val) == len(raw.splits["train"])
    assert len(s.y_test) == len(raw.splits["test"])


def test_imagefolder_preprocessing_matches_the_bundle_runtime(tmp_path):
    """What the model trains on equals what the bundle's run.py makes of the same image file on a device."""
    from targets.standalone.runtime import preprocess_image

    root = write_folder(tmp_path / "ds", splits=False, per_class=5, rgb=True)  # 15: the fewest 3 classes split into
    c = cfg("imagefolder", root, channels=3, channel_order="bgr", mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4],
            input_size=14)
    raw = load_user_source(c)
    from pipeline.data.store import preprocess

    x = preprocess(raw.images, c)
    files = sorted((root / "1").glob("*.png"))
    spec = preprocessing_spec(c)
    device = preprocess_image(files[0], spec)
    i = int(np.flatnonzero(raw.labels == 1)[0])
    assert device.shape == x[i:i + 1].shape
    np.testing.assert_allclose(device, x[i:i + 1], atol=1e-5)


def test_corrupt_image_is_skipped_with_one_warning(tmp_path, capsys):
    root = write_folder(tmp_path / "ds")
    (root / "train" / "1" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "2" / "notes.txt").write_text("hello")
    good = Image.open(next((root / "val" / "0").glob("*.png")))
    with open(root / "test" / "0" / "truncated.png", "wb") as f:
        import io

        buf = io.BytesIO()
        good.resize((64, 64)).save(buf, format="PNG")
        f.write(buf.getvalue()[:60])
    raw = load_user_source(cfg("imagefolder", root))
    assert len(raw.labels) == 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("warning: skipped 3 unreadable file(s)")
    assert "broken.png" in err[0] and "notes.txt" in err[0] and "truncated.png" in err[0]
    assert any("skipped 3" in n for n in raw.notes)


def test_corrupt_image_stops_under_bad_images_error(tmp_path):
    root = write_folder(tmp_path / "ds")
    (root / "train" / "1" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as e:
        load_user_source(cfg("imagefolder", root, bad_images="error"))
    assert "broken.png" in e.value.message and "bad_images=skip" in e.value.hint


def test_class_folders_differing_between_splits_are_named(tmp_path):
    root = write_folder(tmp_path / "ds")
    (root / "val" / "2").rename(root / "val" / "two")
    with pytest.raises(DataError) as e:
        load_user_source(cfg("imagefolder", root))
    msg = e.value.message
    assert "'2' (in train, test; missing in val)" in msg and "'two' (in val; missing in train, test)" in msg
    assert "same class sub-folders" in e.value.hint


@pytest.mark.parametrize("case", ["missing", "empty", "loose_files", "file", "mixed", "no_train", "no_path"])
def test_bad_folders_give_a_clear_error(tmp_path, case):
    root = tmp_path / "ds"
    if case == "empty":
        root.mkdir()
    elif case == "loose_files":
        root.mkdir()
        Image.new("L", (8, 8)).save(root / "a.png")
    elif case == "file":
        root.write_bytes(b"x")
    elif case == "mixed":
        write_folder(root)
        (root / "cats").mkdir()
    elif case == "no_train":
        write_folder(root)
        import shutil

        shutil.rmtree(root / "train")
    c = cfg("imagefolder", root)
    if case == "no_path":
        c = DataConfig(source="imagefolder")
    with pytest.raises(DataError) as e:
        load_user_source(c)
    text = str(e.value)
    assert "fix:" in text
    if case != "no_path":
        assert str(root) in e.value.message
    expected = {"missing": "does not exist", "empty": "it is empty", "loose_files": "1 files lie directly",
                "file": "is a file", "mixed": "cats", "no_train": "no train/", "no_path": "needs data.path"}[case]
    assert expected in e.value.message


def test_only_unreadable_images_is_an_error(tmp_path):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "a" / "x.png").write_bytes(b"no")
    with pytest.raises(DataError, match="holds no readable images"):
        load_user_source(cfg("imagefolder", tmp_path / "ds"))


def test_unknown_source_is_a_config_error():
    with pytest.raises(ConfigError):
        load_user_source(DataConfig(source="parquet", path="x"))


# --------------------------------------------------------------------------- CIFAR


def _cifar_batch(n: int, n_classes: int, seed: int, labels_key: str = "labels") -> dict:
    rng = np.random.default_rng(seed)
    # every class appears (a class without training images is refused, as in a real CIFAR it never is)
    return {b"batch_label": b"batch", labels_key.encode(): [int(v) for v in rng.permutation(np.arange(n) % n_classes)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _dump(obj, path: Path) -> None:
    # Protocol 2 like the original files; write the numpy module the way numpy 1.x (and Python 2) name it.
    data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def write_cifar10(folder: Path, per_batch: int = 20) -> Path:
    folder.mkdir(parents=True)
    for i in range(1, 3):
        _dump(_cifar_batch(per_batch, 10, i), folder / f"data_batch_{i}")
    _dump(_cifar_batch(per_batch, 10, 99), folder / "test_batch")
    _dump({b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                    "frog", "horse", "ship", "truck"]], b"num_cases_per_batch": 20},
          folder / "batches.meta")
    return folder


def test_cifar10_batches(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    raw = load_user_source(cfg("cifar", tmp_path))  # the parent folder works too
    assert raw.images.shape == (60, 32, 32, 3) and raw.images.dtype == np.uint8
    assert raw.class_names[0] == "airplane" and len(raw.class_names) == 10
    assert len(raw.splits["train"]) == 40 and len(raw.splits["test"]) == 20
    # pixel layout: CIFAR rows are R plane, G plane, B plane of 32x32
    b1 = pickle.loads(pickle.dumps(_cifar_batch(20, 10, 1)))
    np.testing.assert_array_equal(raw.images[0, :, :, 1], b1[b"data"][0, 1024:2048].reshape(32, 32))
    s = load_splits(cfg("cifar", folder, channels=3, mean=[0.5], std=[0.5]), seed=0)
    assert len(s.y_test) == 20 and len(s.y_train) + len(s.y_val) == 40 and s.x_train.shape[1:] == (3, 16, 16)


def test_cifar100_and_tarball(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(_cifar_batch(200, 100, 1, "fine_labels"), folder / "train")
    _dump(_cifar_batch(10, 100, 2, "fine_labels"), folder / "test")
    _dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []}, folder / "meta")
    tgz = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(folder, arcname="cifar-100-python")
    for path in (folder, tgz):
        raw = load_user_source(cfg("cifar", path))
        assert raw.images.shape == (210, 32, 32, 3) and raw.class_names[5] == "c5"
        assert "CIFAR-100" in raw.notes[0]


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path / "c")
    marker = tmp_path / "PWNED"
    batch = _cifar_batch(5, 10, 1)
    batch[b"labels"] = _RunsCode(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError) as e:
        load_user_source(cfg("cifar", folder))
    assert "not allowed" in e.value.message and "data_batch_1" in e.value.message
    assert not marker.exists()


def test_cifar_missing_batches(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no CIFAR batches"):
        load_user_source(cfg("cifar", tmp_path / "c"))
    with pytest.raises(DataError, match="does not exist"):
        load_user_source(cfg("cifar", tmp_path / "nope"))


# --------------------------------------------------------------------------- npz


def _imgs(n=24, h=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, h, 3), dtype=np.uint8), np.arange(n) % 3


def test_npz_nhwc_uint8_by_ratio(tmp_path):
    x, y = _imgs()
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    raw = load_user_source(cfg("npz", tmp_path / "d.npz"))
    np.testing.assert_array_equal(raw.images, x)
    assert raw.class_names == ["a", "b", "c"] and raw.splits is None and "npz" in raw.notes[0]


def test_npz_nchw_float_is_detected_and_scaled(tmp_path):
    x, y = _imgs()
    xf = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.savez(tmp_path / "d.npz", x_train=xf[:12], y_train=y[:12], x_val=xf[12:18], y_val=y[12:18],
             x_test=xf[18:], y_test=y[18:])
    raw = load_user_source(cfg("npz", tmp_path / "d.npz"))
    np.testing.assert_array_equal(raw.images, x)
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert raw.class_names == ["0", "1", "2"]
    s = load_splits(cfg("npz", tmp_path / "d.npz", channels=3), seed=0)
    assert len(s.y_train) == 12 and s.x_val.shape == (6, 3, 16, 16)


def test_npz_grey_and_layout_override(tmp_path):
    x, y = _imgs()
    np.savez(tmp_path / "g.npz", x=x[..., 0], y=y)
    assert load_user_source(cfg("npz", tmp_path / "g.npz")).images.shape == (24, 10, 10, 1)
    # (N, 3, 3, 3) is ambiguous: NHWC unless a layout array says otherwise
    small = np.arange(24 * 27, dtype=np.uint8).reshape(24, 3, 3, 3)
    np.savez(tmp_path / "l.npz", x=small, y=y, layout=np.array("nchw"))
    np.testing.assert_array_equal(load_user_source(cfg("npz", tmp_path / "l.npz")).images,
                                  small.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("case,expected", [
    ("float_normalized", "negative values"),
    ("keys", "expected x and y"),
    ("labels_len", "for 24 images"),
    ("onehot", "expected (24,) integer labels"),
    ("channels", "no axis of 1 or 3 channels"),
    ("object", "without pickle"),
    ("names_short", "class_names has 2 names"),
    ("missing", "does not exist"),
    ("not_npz", "not a readable .npz"),
])
def test_npz_bad_inputs(tmp_path, case, expected):
    x, y = _imgs()
    p = tmp_path / "d.npz"
    if case == "float_normalized":  # mean/std already applied: not raw pixels
        np.savez(p, x=(x.astype(np.float32) - 128) / 64, y=y)
    elif case == "keys":  # positional savez: arr_0, arr_1 say nothing about which is which
        np.savez(p, x, y)
    elif case == "labels_len":
        np.savez(p, x=x, y=y[:10])
    elif case == "onehot":
        np.savez(p, x=x, y=np.eye(3)[y])
    elif case == "channels":
        np.savez(p, x=np.zeros((24, 5, 6, 7), np.uint8), y=y)
    elif case == "object":
        np.savez(p, x=x, y=np.array([{"a": 1}] * 24, dtype=object))
    elif case == "names_short":
        np.savez(p, x=x, y=y, class_names=np.array(["a", "b"]))
    elif case == "not_npz":
        p.write_bytes(b"not a zip")
    with pytest.raises(DataError) as e:
        load_user_source(cfg("npz", p))
    assert expected in e.value.message and e.value.hint


def test_preprocessing_spec_is_complete():
    spec = preprocessing_spec(DataConfig(channels=3, mean=[0.4, 0.5, 0.6], std=[0.2], channel_order="bgr",
                                         input_size=24))
    assert spec["size"] == [24, 24] and spec["channels"] == 3 and spec["channel_order"] == "bgr"
    assert spec["mean"] == [0.4, 0.5, 0.6] and spec["std"] == [0.2, 0.2, 0.2]
    assert spec["scale"] == 255.0 and spec["layout"] == "nchw" and spec["resize"] == "bilinear"


class _Py2StyleArray:
    """Pickles like numpy under Python 2 read with encoding='latin1': the raw pixel data arrives as a str."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def __reduce__(self):
        from pipeline.data.sources import _numpy_reconstruct

        reconstruct, _ = _numpy_reconstruct()
        state = (1, self.arr.shape, self.arr.dtype, False, self.arr.tobytes().decode("latin1"))
        return (reconstruct, (np.ndarray, (0,), b"b"), state)


def test_cifar_python2_style_batch(tmp_path):
    folder = write_cifar10(tmp_path / "c")
    batch = _cifar_batch(7, 10, 5)
    want = batch[b"data"].copy()
    batch[b"data"] = _Py2StyleArray(want)
    _dump(batch, folder / "data_batch_1")
    raw = load_user_source(cfg("cifar", folder))
    np.testing.assert_array_equal(raw.images[:7], want.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
