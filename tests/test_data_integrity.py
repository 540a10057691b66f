"""Data integrity (issue 18 #1): no silent relabelling, every class in every split, no silent loss of colour.

Fixtures are folders laid out like public datasets (path/<class>/*.png, train/val/test/<class>/), images made
with Pillow in the relevant modes; the loaders run in-process through the same store as the data stage
(pipeline/data/store.py), the CLI where its terminal output is the subject.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.store import load_splits  # noqa: E402
from pipeline.recipe import DataConfig  # noqa: E402


def cfg(path, **kw) -> DataConfig:
    return DataConfig(source=kw.pop("source", "auto"), path=str(path), input_size=kw.pop("input_size", 8), **kw)


def pngs(d: Path, n: int, start: int = 0, mode: str = "L", colour=None, seed: int = 0) -> list[Path]:
    """n distinct small PNGs in folder d (noise around `colour`, so no two files are byte-identical)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + start + hash(d.name) % 1000)
    out = []
    for i in range(start, start + n):
        base = np.array(colour if colour is not None else 120, dtype=np.int16)
        c = 3 if mode == "RGB" else 1
        a = (base + rng.integers(-20, 21, size=(8, 8, c))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(a if c == 3 else a[..., 0], mode)
        img.save(d / f"{i:04d}.png")
        out.append(d / f"{i:04d}.png")
    return out


# --------------------------------------------------------------------------- every class in every split


@pytest.mark.parametrize("rare", [3, 4, 5])
def test_rare_class_is_in_every_split(tmp_path, rare, capsys):
    """3..5 'rare' among 300 'common' (split by ratio): stratification alone leaves val without 'rare'."""
    pngs(tmp_path / "common", 300)
    pngs(tmp_path / "rare", rare, colour=200)
    s = load_splits(cfg(tmp_path), seed=0)
    rare_id = s.class_names.index("rare")
    for name in ("train", "val", "test"):
        y = getattr(s, f"y_{name}")
        assert (y == rare_id).sum() >= 1, f"no 'rare' image in {name}"
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 300 + rare, "nothing duplicated or dropped"
    err = capsys.readouterr().err
    if rare == 3:  # stratified splitting rounds one carved split's 'rare' to 0 (3 = 2 train + 1 val + 0 test)
        assert "split got 1 image each of 'rare' from train" in err, err
        assert any("every class is in every split" in n for n in s.notes)


def test_fixed_val_folder_without_a_class_is_named(tmp_path, capsys):
    """A fixed val/ whose 'rare' folder is empty (allowed: the class exists): the run says which class is
    missing where, instead of selecting the model on a val split that cannot see it."""
    pngs(tmp_path / "train" / "common", 40)
    pngs(tmp_path / "train" / "rare", 6, colour=200)
    pngs(tmp_path / "val" / "common", 10, start=100)
    (tmp_path / "val" / "rare").mkdir(parents=True)
    s = load_splits(cfg(tmp_path), seed=0)
    err = capsys.readouterr().err
    assert "warning: the val split holds no image of class 'rare' (it is a fixed split folder)" in err, err
    assert any("no image of class 'rare'" in n for n in s.notes)
    assert (s.y_test == s.class_names.index("rare")).sum() >= 1, "the carved test split still gets one"


def test_limit_keeps_every_class_in_train(tmp_path):
    pngs(tmp_path / "common", 200)
    pngs(tmp_path / "rare", 5, colour=200)
    for seed in range(5):
        s = load_splits(cfg(tmp_path, limit=10), seed=seed)
        assert len(s.y_train) == 10 and set(s.y_train.tolist()) == {0, 1}, seed


# --------------------------------------------------------------------------- links and duplicates


def test_symlink_loop_in_a_class_folder_is_not_followed(tmp_path, capsys):
    """`a/loop -> ..` (the issue's case: 60 files became 557 images, b's relabelled 'a'): each file once."""
    pngs(tmp_path / "a", 30, colour=60)
    pngs(tmp_path / "b", 30, colour=200)
    os.symlink("..", tmp_path / "a" / "loop")
    os.symlink(".", tmp_path / "b" / "self")
    s = load_splits(cfg(tmp_path), seed=0)
    assert s.class_names == ["a", "b"]
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 60
    assert np.bincount(np.concatenate([s.y_train, s.y_val, s.y_test])).tolist() == [30, 30]
    err = capsys.readouterr().err
    assert "warning: 2 linked folder(s)" in err and "a/loop" in err and "link loop" in err, err


def test_link_into_another_class_is_not_followed(tmp_path, capsys):
    pngs(tmp_path / "cat", 12, colour=60)
    pngs(tmp_path / "dog", 12, colour=200)
    os.symlink(tmp_path / "dog", tmp_path / "cat" / "more")
    s = load_splits(cfg(tmp_path), seed=0)
    assert np.bincount(np.concatenate([s.y_train, s.y_val, s.y_test])).tolist() == [12, 12]
    assert "inside another class folder" in capsys.readouterr().err


def test_a_linked_folder_outside_the_dataset_is_followed_once(tmp_path, capsys):
    """A class folder holding links to images kept elsewhere (a common way to build a subset) is read; two
    links to the same folder, and a file linked twice, give each file once."""
    store = tmp_path / "store"
    pngs(store, 10, colour=200)
    data = tmp_path / "data"
    pngs(data / "a", 10, colour=60)
    (data / "b").mkdir()
    os.symlink(store, data / "b" / "x")
    os.symlink(store, data / "b" / "y")
    os.symlink(store / "0000.png", data / "b" / "again.png")
    os.link(store / "0001.png", data / "b" / "hard.png")
    s = load_splits(cfg(data), seed=0)
    assert np.bincount(np.concatenate([s.y_train, s.y_val, s.y_test])).tolist() == [10, 10]
    err = capsys.readouterr().err
    assert "a link loop" in err and "2 file(s) in" in err and "reached by two paths" in err, err


def test_byte_identical_files_in_two_classes_are_reported(tmp_path, capsys):
    """The same 30 files copied into two class folders: one warning with the count and an example."""
    pngs(tmp_path / "a", 40, colour=60)
    pngs(tmp_path / "b", 40, colour=200)
    for f in sorted((tmp_path / "a").glob("*.png"))[:30]:
        (tmp_path / "b" / f"copy_{f.name}").write_bytes(f.read_bytes())
    s = load_splits(cfg(tmp_path), seed=0)
    err = capsys.readouterr().err
    assert "warning: 30 image(s) in" in err and "byte-identical across classes (60 files" in err, err
    assert any("byte-identical across classes" in n for n in s.notes)


def test_duplicates_across_splits_leave_the_test_side(tmp_path, capsys):
    """Kaggle-style train/ and test/ folders sharing 8 files: those 8 are removed from test (never scored on
    an image the model trained on); a by-ratio folder with copies likewise keeps them out of test."""
    for c, colour in (("cat", 60), ("dog", 200)):
        pngs(tmp_path / "train" / c, 30, colour=colour)
        pngs(tmp_path / "test" / c, 10, start=100, colour=colour)
    for f in sorted((tmp_path / "train" / "cat").glob("*.png"))[:8]:
        (tmp_path / "test" / "cat" / f"dup_{f.name}").write_bytes(f.read_bytes())
    s = load_splits(cfg(tmp_path), seed=0)
    assert len(s.y_test) == 20, "the 8 copies are not scored"
    err = capsys.readouterr().err
    assert "removed 8 test image(s) that are byte-identical to train or val images" in err, err
    # the digests of what was kept: no test image equals a training image
    tr = {x.tobytes() for x in s.x_train}
    assert not any(x.tobytes() in tr for x in s.x_test)


def test_copies_in_one_class_split_by_ratio_never_straddle_test(tmp_path):
    pngs(tmp_path / "a", 30, colour=60)
    pngs(tmp_path / "b", 30, colour=200)
    for f in sorted((tmp_path / "a").glob("*.png"))[:15]:
        (tmp_path / "a" / f"copy_{f.name}").write_bytes(f.read_bytes())
    s = load_splits(cfg(tmp_path), seed=0)
    held = {x.tobytes() for x in np.concatenate([s.x_val, s.x_test])}
    assert not any(x.tobytes() in held for x in s.x_train)


# --------------------------------------------------------------------------- colour dropped by data.channels=1


def _colour_folder(root: Path, colours: dict[str, tuple[int, int, int]], n: int = 20) -> Path:
    for c, rgb in colours.items():
        pngs(root / c, n, mode="RGB", colour=rgb)
    return root


# red (255, 0, 0) and a green of the same luma: 0.299 * 255 = 76.2 = 0.587 * 130
SAME_GREY = {"red": (255, 0, 0), "green": (0, 130, 0)}


def test_colour_classes_with_the_same_grey_warn(tmp_path, capsys):
    """The issue's case: classes that differ only in colour, default data.channels=1 -> grey means ~equal."""
    s = load_splits(cfg(_colour_folder(tmp_path, SAME_GREY)), seed=0)
    err = capsys.readouterr().err
    assert "warning: data.channels=1 converts the colour images" in err and "data.channels=3" in err, err
    assert "'green' and 'red'" in err
    assert any("data.channels=3" in n for n in s.notes)
    # with channels=3 nothing to say; a grey dataset (L mode) and colour that does not differ say nothing either
    load_splits(cfg(tmp_path, channels=3, mean=[0.5], std=[0.5]), seed=0)
    assert "data.channels" not in capsys.readouterr().err
    grey = tmp_path / "grey"
    pngs(grey / "dark", 20, colour=60)
    pngs(grey / "light", 20, colour=200)
    load_splits(cfg(grey), seed=0)
    sepia = tmp_path / "sepia"  # every class the same tint, told apart by brightness: grey keeps the signal
    pngs(sepia / "dark", 20, mode="RGB", colour=(80, 60, 40))
    pngs(sepia / "light", 20, mode="RGB", colour=(220, 180, 140))
    load_splits(cfg(sepia), seed=0)
    assert "data.channels" not in capsys.readouterr().err


def test_colour_npz_with_channels_1_warns_and_the_note_says_grey(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 2
    x = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    x[y == 0] = SAME_GREY["red"]
    x[y == 1] = SAME_GREY["green"]
    x = (x.astype(np.int16) + rng.integers(-10, 11, size=x.shape)).clip(0, 255).astype(np.uint8)
    np.savez(tmp_path / "colour.npz", x=x, y=y)
    s = load_splits(cfg(tmp_path / "colour.npz"), seed=0)
    err = capsys.readouterr().err
    assert "warning: data.channels=1 converts the colour images" in err, err
    assert any("converted to 1 channel (grey" in n for n in s.notes)


def test_linked_class_folders_that_repeat_images_are_left_out(tmp_path, capsys):
    """`data/all -> .` (a loop at the class level) and `data/kitty -> cat` (a second label for cat's images)."""
    pngs(tmp_path / "cat", 12, colour=60)
    pngs(tmp_path / "dog", 12, colour=200)
    os.symlink(".", tmp_path / "all")
    os.symlink("cat", tmp_path / "kitty")
    s = load_splits(cfg(tmp_path), seed=0)
    assert s.class_names == ["cat", "dog"]
    assert np.bincount(np.concatenate([s.y_train, s.y_val, s.y_test])).tolist() == [12, 12]
    err = capsys.readouterr().err
    assert "a link loop): not a class" in err and "links to the class folder cat/" in err, err
