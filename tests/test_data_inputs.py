"""Data as users find it (issue 10.3, 10.4, --out of 10.5): one test per row of docs/ERRORS.md "Data as found".

Layouts (split folder names, a data.path one level too high, junk folders, one class), the source inferred
from data.path, npz labels outside 0..K-1, image content (16-bit, every Pillow mode, EXIF, animations,
unreadable files) and too-small datasets. Loaders run in-process on tiny images; the CLI is run only where
the CLI itself is the subject (--out, the inferred-source line, exit codes).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.datasets import load_raw  # noqa: E402

from pipeline.data.store import load_splits  # noqa: E402
from pipeline.data.images import read_image, to_uint8  # noqa: E402
from pipeline.data.layout import fingerprint, split_of  # noqa: E402
from pipeline.errors import ConfigError, DataError  # noqa: E402
from pipeline.recipe import DataConfig  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def cfg(path, source: str = "auto", **kw) -> DataConfig:
    return DataConfig(source=source, path=str(path), input_size=kw.pop("input_size", 8), **kw)


def grey(value: int, size: int = 6) -> Image.Image:
    return Image.new("L", (size, size), value)


def folder(root: Path, classes=("a", "b"), per_class: int = 5, split: str = "", value=None) -> Path:
    """root/<split>/<class>/i.png, class i drawn at grey level 40 + 60 * i (or `value`)."""
    for ci, c in enumerate(classes):
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey(value if value is not None else 40 + 60 * ci).save(d / f"{i}.png")
    return root


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("names", [("Training", "Validation", "Testing"), ("train", "valid", "test"),
                                   ("TRAIN", "eval", "TESTING"), ("training_set", "val", "test_set"),
                                   ("seg_train", "validation", "seg_test")])
def test_split_folders_named_otherwise_are_recognised(tmp_path, names):
    for n in names:
        folder(tmp_path, per_class=3, split=n)
    raw = load_raw(cfg(tmp_path))
    assert raw.class_names == ["a", "b"]
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 6, "val": 6, "test": 6}


def test_split_names():
    assert [split_of(n) for n in ("Train", "trainset", "Validation", "dev", "Testing", "test_images", "cats",
                                  "trainer", "train_test")] == ["train", "train", "val", "val", "test", "test",
                                                                None, None, None]


def test_path_one_level_too_high_is_followed_with_a_line(tmp_path, capsys):
    folder(tmp_path / "archive" / "flowers", classes=("daisy", "rose", "tulip"), per_class=5)
    raw = load_raw(cfg(tmp_path))
    assert raw.class_names == ["daisy", "rose", "tulip"] and len(raw.labels) == 15
    err = capsys.readouterr().err
    assert f"using {tmp_path / 'archive' / 'flowers'}" in err
    # Kaggle: training_set/training_set/<classes>, test_set/test_set/<classes>
    k = tmp_path / "kaggle"
    folder(k / "training_set", per_class=4, split="training_set")
    folder(k / "test_set", per_class=2, split="test_set")
    raw = load_raw(cfg(k))
    assert raw.class_names == ["a", "b"] and len(raw.splits["train"]) == 8 and len(raw.splits["test"]) == 4


def test_path_holding_several_datasets_names_the_path_to_use(tmp_path):
    folder(tmp_path / "ds1", per_class=3, split="train")
    folder(tmp_path / "ds2", per_class=3, split="train")
    with pytest.raises(DataError) as e:
        load_raw(cfg(tmp_path))
    assert "one level too high" in e.value.message and f"data.path={tmp_path / 'ds1'}" in e.value.hint


def test_a_dataset_copy_beside_the_split_folders_is_explained(tmp_path):
    for root in (tmp_path, tmp_path / "chest_xray"):  # as the Kaggle chest X-ray archive unpacks
        for s in ("train", "test"):
            folder(root, per_class=3, split=s)
    with pytest.raises(DataError, match="and also chest_xray/ with split folders of its own") as e:
        load_raw(cfg(tmp_path))
    assert f"data.path={tmp_path / 'chest_xray'}" in e.value.hint


def test_npz_arrays_named_as_people_name_them(tmp_path):
    x = np.zeros((30, 4, 4), np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "a.npz", X_train=x[:20], Y_train=y[:20], X_test=x[20:], Y_test=y[20:])
    assert {k: len(v) for k, v in load_raw(cfg(tmp_path / "a.npz")).splits.items()} == {"train": 20, "test": 10}
    np.savez(tmp_path / "b.npz", images=x, labels=y, label_names=np.array(["r", "g", "b"]))
    assert load_raw(cfg(tmp_path / "b.npz")).class_names == ["r", "g", "b"]


def test_class_then_split_layout_is_explained(tmp_path):
    for c in ("cat", "dog"):
        folder(tmp_path / c, classes=("train", "test"), per_class=3)  # cat/train/*.png, cat/test/*.png
    with pytest.raises(DataError, match=r"laid out <class>/<split>/ \(cat/test/...\)"):
        load_raw(cfg(tmp_path))


def test_single_class_is_refused(tmp_path):
    folder(tmp_path, classes=("cat",), per_class=5)
    with pytest.raises(DataError, match=r"has 1 class \('cat'\): a classifier needs at least 2"):
        load_raw(cfg(tmp_path))


def test_system_and_hidden_folders_are_not_classes(tmp_path):
    folder(tmp_path, per_class=5)
    for junk in ("__MACOSX", ".ipynb_checkpoints", "$RECYCLE.BIN", "System Volume Information", "@eaDir"):
        folder(tmp_path / junk, classes=("x",), per_class=1)
    folder(tmp_path / "a" / "@eaDir", classes=("thumbs",), per_class=2)  # Synology thumbnails inside a class
    raw = load_raw(cfg(tmp_path))
    assert raw.class_names == ["a", "b"] and len(raw.labels) == 10


def test_unlabeled_test_folder_is_left_out_with_a_warning(tmp_path, capsys):
    folder(tmp_path, per_class=5, split="train")
    (tmp_path / "test").mkdir()
    grey(9).save(tmp_path / "test" / "1.png")
    raw = load_raw(cfg(tmp_path))
    assert sorted(raw.splits) == ["train"] and len(raw.labels) == 10
    assert "no class folders (unlabeled): left out" in capsys.readouterr().err


def test_labels_in_file_names_only_are_refused(tmp_path):
    for s in ("train", "test"):
        (tmp_path / s).mkdir()
        for i in range(3):
            grey(9).save(tmp_path / s / f"cat.{i}.png")
    with pytest.raises(DataError, match="only split folders"):
        load_raw(cfg(tmp_path))


# --------------------------------------------------------------------------- data.source inferred


def test_source_inferred_from_the_path_and_said(tmp_path, capsys):
    folder(tmp_path / "imgs", per_class=5)
    raw = load_raw(cfg(tmp_path / "imgs"))
    assert raw.class_names == ["a", "b"] and "data.source=imagefolder" in raw.notes[0]
    assert "data.source not set" in capsys.readouterr().err
    x = np.zeros((20, 4, 4), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    assert load_raw(cfg(tmp_path / "d.npz")).class_names == ["0", "1"]
    assert load_raw(DataConfig()).class_names == [str(i) for i in range(10)]  # no path: built-in digits
    with pytest.raises(ConfigError, match="does not read it"):
        load_raw(cfg(tmp_path / "imgs", source="builtin:digits"))
    (tmp_path / "npzdir").mkdir()
    np.savez(tmp_path / "npzdir" / "mnist.npz", x=x, y=np.arange(20) % 2)
    with pytest.raises(DataError, match="holding mnist.npz") as e:
        load_raw(cfg(tmp_path / "npzdir"))
    assert f"data.path={tmp_path / 'npzdir' / 'mnist.npz'}" in e.value.hint
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="is an archive"):
        load_raw(cfg(tmp_path / "data.zip"))


def test_source_inferred_for_cifar(tmp_path):
    from tests.test_data_sources import write_cifar10

    write_cifar10(tmp_path / "cifar-10-batches-py")
    raw = load_raw(cfg(tmp_path))
    assert len(raw.class_names) == 10 and "data.source=cifar" in raw.notes[0]


# --------------------------------------------------------------------------- npz labels


@pytest.mark.parametrize("labels,expected", [
    (np.arange(1, 21) % 2 + 1, "labels run 1..2 (1-based)"),
    (np.where(np.arange(20) < 2, 255, np.arange(20) % 3), "plus 255 (2 images)"),
    (np.where(np.arange(20) < 2, -1, np.arange(20) % 3), "negative labels (-1; 2 images)"),
    (np.arange(20) % 3 + 0.5, "non-integer labels (e.g. 0.5)"),
    (np.arange(20) % 2 * 7, "skip 1, 2, 3, 4, 5, 6"),
    (np.arange(19) % 2, "has shape (19,) for 20 images"),
    (np.zeros(20, np.int64), "has 1 class"),
])
def test_npz_labels_outside_0_to_k_are_an_error(tmp_path, labels, expected):
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 4, 4), np.uint8), y=labels)
    with pytest.raises(DataError) as e:
        load_raw(cfg(tmp_path / "d.npz"))
    assert expected in e.value.message and e.value.hint


def test_npz_16bit_and_float255_are_scaled(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 8), (20, 8, 1)).astype(np.uint16)  # 12-bit values in uint16
    np.savez(tmp_path / "d.npz", x=ramp, y=np.arange(20) % 2)
    raw = load_raw(cfg(tmp_path / "d.npz"))
    assert raw.images[0, 0, 0, 0] == 0 and raw.images[0, 0, -1, 0] == 255
    assert any("12-bit range" in n for n in raw.notes)
    np.savez(tmp_path / "f.npz", x=ramp.astype(np.float32) / 4095 * 255, y=np.arange(20) % 2)
    assert load_raw(cfg(tmp_path / "f.npz")).images[0, 0, -1, 0] == 255


# --------------------------------------------------------------------------- image content


def _png16(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(">u2")).save(path)  # Pillow stores mode I;16B as a 16-bit PNG


def test_16bit_folder_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 8), (8, 1))
    for c, scale in (("dark", 0.25), ("bright", 1.0)):
        (tmp_path / c).mkdir()
        for i in range(5):
            _png16(tmp_path / c / f"{i}.png", ramp * scale)
    raw = load_raw(cfg(tmp_path))
    assert Image.open(tmp_path / "dark" / "0.png").mode == "I;16"
    bright = raw.images[raw.labels == 0][0, :, :, 0]
    dark = raw.images[raw.labels == 1][0, :, :, 0]
    assert bright[0, 0] == 0 and bright[0, -1] == 255 and np.all(np.diff(bright[0].astype(int)) > 0)
    assert 60 <= dark[0, -1] <= 68  # a quarter of the range: the two classes keep their contrast
    assert any("16-bit range" in n for n in raw.notes)


def _mode_images() -> dict[str, tuple[Image.Image, tuple[int, int, int]]]:
    """Each mode Pillow reads -> (image, the RGB it must decode to)."""
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pt = p.copy()
    pt.info["transparency"] = 1
    return {
        "1": (Image.new("1", (4, 4), 1), (255, 255, 255)),
        "L": (Image.new("L", (4, 4), 77), (77, 77, 77)),
        "P": (p, (10, 200, 30)),
        "P-transparent": (pt, (255, 255, 255)),
        "LA": (Image.new("LA", (4, 4), (0, 128)), (127, 127, 127)),
        "RGBA": (rgba, (255, 255, 255)),
        "RGB": (Image.new("RGB", (4, 4), (1, 2, 3)), (1, 2, 3)),
        "CMYK": (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        "I;16": (Image.fromarray(np.full((4, 4), 65535, ">u2")), (255, 255, 255)),
        "I": (Image.new("I", (4, 4), 300), (75, 75, 75)),  # 300 of a 10-bit range (1023)
        "F": (Image.new("F", (4, 4), 0.5), (128, 128, 128)),  # float in [0, 1]
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_every_pillow_mode_decodes(tmp_path, mode):
    img, rgb = _mode_images()[mode]
    ext = "tif" if mode in ("CMYK", "I", "F", "I;16") else "png"
    path = tmp_path / f"x.{ext}"
    img.save(path)
    a = read_image(path, 3, 4)
    a, _ = to_uint8(a[None], "t") if a.dtype != np.uint8 else (a[None], None)
    a = a[0]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    assert np.abs(a[0, 0].astype(int) - rgb).max() <= 1, (mode, a[0, 0])


def test_ycbcr_jpeg_and_exif_orientation(tmp_path):
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 4, 4))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    a = read_image(tmp_path / "r.jpg", 1, None)[..., 0]
    assert a.shape == (8, 4)  # upright: portrait
    assert a[:4].mean() > 200 and a[4:].mean() < 50  # the white half ends on top


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("L", (4, 4), v) for v in (30, 220)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert abs(int(read_image(tmp_path / "a.gif", 1, None)[0, 0, 0]) - 30) <= 2


def test_unreadable_files_follow_bad_images(tmp_path, capsys):
    folder(tmp_path, per_class=5)
    (tmp_path / "a" / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    grey(5, 32).save(buf, "PNG")
    (tmp_path / "a" / "truncated.png").write_bytes(buf.getvalue()[:60])
    (tmp_path / "b" / "notes.txt").write_text("hello")
    (tmp_path / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "b" / "fifo.png")  # opening it would block forever
    fp1 = fingerprint(tmp_path)  # the hashing step reads every file: it must not crash or block
    raw = load_raw(cfg(tmp_path))
    assert len(raw.labels) == 10 and fp1 == fingerprint(tmp_path)
    err = capsys.readouterr().err
    assert "skipped 5 unreadable file(s)" in err and "empty file" in err
    with pytest.raises(DataError, match="is not a readable image"):
        load_raw(cfg(tmp_path, bad_images="error"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file: permissions cannot block it here")
def test_permission_denied_follows_bad_images(tmp_path):
    folder(tmp_path, per_class=5)
    locked = tmp_path / "a" / "locked.png"
    grey(5).save(locked)
    locked.chmod(0)
    try:
        fingerprint(tmp_path)
        assert len(load_raw(cfg(tmp_path)).labels) == 10
        with pytest.raises(DataError, match="locked.png is not a readable image"):
            load_raw(cfg(tmp_path, bad_images="error"))
    finally:
        locked.chmod(0o644)


# --------------------------------------------------------------------------- too small


def test_too_small_for_the_splits_names_the_minimum(tmp_path):
    folder(tmp_path, classes=("a", "b", "c"), per_class=4)
    with pytest.raises(DataError) as e:
        load_splits(cfg(tmp_path), seed=0)
    assert "12 images in 3 classes are too few" in e.value.message
    assert "the minimum is 14 in total and 3 per class" in e.value.message
    folder(tmp_path, classes=("d",), per_class=2)
    with pytest.raises(DataError, match=r"'d' 2; the minimum is 3 per class"):
        load_splits(cfg(tmp_path), seed=0)
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="have no images: 'e'"):
        load_splits(cfg(tmp_path), seed=0)
    ok = tmp_path / "ok"
    folder(ok, classes=("a", "b", "c"), per_class=5)  # 15 >= 14: splits fine
    s = load_splits(cfg(ok), seed=0)
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 15 and min(len(s.y_val), len(s.y_test)) >= 3


# --------------------------------------------------------------------------- CLI: --out and the inferred source


def test_cli_out_that_is_a_file_or_inside_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for out, phrase in ((f, "is an existing file, not a folder"), (f / "run", "lies inside")):
        r = run_cli("run", "--out", str(out), "--set", "distill.epochs=0", timeout=300)
        assert r.returncode == 2 and phrase in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert f.read_text() == "x"


def test_cli_out_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                          capture_output=True).returncode != 0:
            pytest.skip("running as root without permission to mount a read-only tmpfs: "
                        "chmod cannot make a folder unwritable for root")
    else:
        ro.chmod(0o500)
    try:
        r = run_cli("run", "--out", str(ro / "run"), "--set", "distill.epochs=0", timeout=300)
        assert r.returncode == 2 and "is not writable" in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], capture_output=True)
        else:
            ro.chmod(0o700)


def test_cli_infers_the_source_and_stops_on_a_single_class(tmp_path):
    folder(tmp_path / "one", classes=("cat",), per_class=3)
    r = run_cli("run", "--out", str(tmp_path / "run"), "--set", f"data.path={tmp_path / 'one'}", timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "using data.source=imagefolder" in r.stderr and "a classifier needs at least 2" in r.stderr


def test_bundle_runtime_reads_exif_and_alpha_as_training_does(tmp_path):
    """The bundle's preprocessing (targets/standalone/runtime.py) must match training for these files."""
    from pipeline.data.store import preprocess, preprocessing_spec
    from targets.standalone.runtime import preprocess_image

    img = Image.new("RGB", (8, 4), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.png", exif=exif)
    Image.new("RGBA", (6, 6), (200, 10, 10, 100)).save(tmp_path / "t.png")
    c = DataConfig(channels=3, input_size=6, mean=[0.5], std=[0.5])
    for name in ("r.png", "t.png"):
        trained = preprocess(read_image(tmp_path / name, 3, 6)[None], c)
        np.testing.assert_allclose(preprocess_image(tmp_path / name, preprocessing_spec(c)), trained, atol=1e-5)


def test_report_out_that_is_a_file(tmp_path, capsys):
    from pipeline.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["report", str(tmp_path), "--out", str(f / "rep")]) == 2
    assert "lies inside" in capsys.readouterr().err and f.read_text() == "x"
