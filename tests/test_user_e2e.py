"""Issue acceptance: a user's own model file, a DataParallel checkpoint and an image folder, end to end.

The user's teacher (a small CNN in tmp/my_models.py, `build(num_classes, in_channels, width=8)`) is trained
briefly here on the same images, saved through nn.DataParallel (keys carry `module.`), and the pipeline
runs on PNG folders made from scikit-learn's digits: distill -> export -> ONNX Runtime INT8 -> bundle.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, artifact, fast_args, read_run, run_cli

sys.path.insert(0, str(ROOT))

MY_MODELS = '''
from torch import nn


class MyCNN(nn.Module):
    def __init__(self, num_classes, in_channels, width=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x))


def build(num_classes, in_channels, width=8):
    return MyCNN(num_classes, in_channels, width)
'''

PER_CLASS = 30
WIDTH = 16


def write_digit_folders(root: Path) -> Path:
    """10 classes x 30 PNGs, train/val/test = 20/5/5 per class, at 8..20 px (the loader resizes them)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    seen: dict[int, int] = {}
    for img, y in zip(d.images, d.target):
        k = seen.get(int(y), 0)
        if k >= PER_CLASS:
            continue
        seen[int(y)] = k + 1
        split = "train" if k < 20 else ("val" if k < 25 else "test")
        folder = root / split / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        side = (8, 12, 16, 20)[k % 4]
        Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((side, side), Image.BILINEAR).save(
            folder / f"{k:03d}.png")
    return root


def train_and_save_teacher(model_file: Path, data_root: Path, ckpt: Path) -> float:
    """Train the user's model briefly on the same data the pipeline will see; save it DataParallel-style."""
    import torch
    from torch import nn

    from pipeline.data.store import load_splits
    from pipeline.models.spec import build_model
    from pipeline.recipe import DataConfig

    s = load_splits(DataConfig(source="imagefolder", path=str(data_root), input_size=16), seed=0)
    torch.manual_seed(0)
    model = build_model(f"{model_file}:build", {"width": WIDTH}, in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    x, y = torch.from_numpy(s.x_train), torch.from_numpy(s.y_train)
    for _ in range(25):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(s.x_val)).argmax(1).numpy() == s.y_val).mean())
    wrapped = nn.DataParallel(model)  # CPU: no device split, but the saved keys carry `module.`
    sd = wrapped.state_dict()
    assert all(k.startswith("module.") for k in sd)
    torch.save(sd, ckpt)
    return acc


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("user_project")
    model_file = base / "my_models.py"
    model_file.write_text(MY_MODELS)
    data = write_digit_folders(base / "digits")
    ckpt = base / "teacher_dp.pt"
    val_acc = train_and_save_teacher(model_file, data, ckpt)
    return {"base": base, "model_file": model_file, "data": data, "ckpt": ckpt, "teacher_val_acc": val_acc}


def user_sets(project: dict, data: Path | None = None, extra: list[str] = ()) -> list[str]:
    return fast_args([
        "data.source=imagefolder", f"data.path={data or project['data']}",
        f"teacher.model={project['model_file']}:build", f"teacher.kwargs={{width: {WIDTH}}}",
        f"teacher.checkpoint={project['ckpt']}",
        "student.model=builtin:small_cnn", "student.kwargs={widths: [8, 16, 16]}",
        "distill.epochs=15", "distill.batch_size=16", *extra])


@pytest.fixture(scope="module")
def user_run(user_project) -> dict:
    """The acceptance run, with one corrupt PNG in the training folder (skipped with a warning)."""
    data = user_project["base"] / "digits_with_bad"
    shutil.copytree(user_project["data"], data)
    (data / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = user_project["base"] / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *user_sets(user_project, data))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"out": out, "proc": p, "summary": read_run(out)}


def test_user_model_checkpoint_and_folder_run_end_to_end(user_project, user_run):
    s = user_run["summary"]
    teacher, student = artifact(s, "teacher"), artifact(s, "student")
    int8 = artifact(s, "onnxruntime:int8")
    for a in (teacher, student, int8):
        assert 0.0 <= a["accuracy"] <= 1.0
        lo, hi = a["accuracy_ci95"]  # a 50-image split: its accuracy comes with its interval
        assert lo <= a["accuracy"] <= hi
    # The teacher was loaded (not retrained) from the `module.`-prefixed checkpoint: on the same validation
    # images it scores what it scored when saved (the same weights; a tolerance of one image for float order).
    assert abs(teacher["val_accuracy"] - user_project["teacher_val_acc"]) <= 1 / 50 + 1e-9
    # The INT8 target passed the gate, decided on validation; the test split's change is recorded, not gated
    # on one image.
    gate = s["targets"]["onnxruntime"]["gate"]
    assert gate["decision"] == "pass" and gate["validation"]["budget_held"]
    assert gate["test"]["samples"] == 50 and gate["test"]["mode"] == "stats"
    assert any("teacher loaded from" in n and "teacher_dp.pt" in n for n in s["notes"])
    assert any("imagefolder" in n and "10 classes" in n and "fixed splits" in n for n in s["notes"])
    data_stage = next(st for st in s["stages"] if st["stage"] == "data")
    meta = json.loads((user_run["out"] / data_stage["dir"] / "data.json").read_text())
    assert meta["class_names"] == [str(i) for i in range(10)]


def test_corrupt_image_was_skipped_with_one_warning(user_run):
    p = user_run["proc"]
    lines = [ln for ln in p.stderr.splitlines() if "unreadable" in ln]
    assert len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("warning: skipped 1 unreadable file(s)") and "broken.png" in lines[0]
    assert any("broken.png" in n for n in user_run["summary"]["notes"])


def test_bundle_manifest_records_the_preprocessing(user_run):
    bundle = Path(artifact(user_run["summary"], "onnxruntime:int8")["bundle"])
    m = json.loads((bundle / "manifest.json").read_text())
    pre = m["preprocessing"]
    assert pre["size"] == [16, 16] and pre["channels"] == 1 and pre["channel_order"] == "rgb"
    assert pre["mean"] == [0.5] and pre["std"] == [0.5] and pre["scale"] == 255.0 and pre["layout"] == "nchw"
    assert m["labels"] == [str(i) for i in range(10)]
    assert m["input"]["shape"] == [1, 1, 16, 16]


def test_bundle_preprocesses_a_user_png_like_training(user_project, user_run):
    """The device-side preprocessing of one of the user's PNGs gives the array the model was tested on."""
    from targets.standalone.runtime import preprocess_image

    from pipeline.data.store import load_splits
    from pipeline.recipe import DataConfig

    bundle = Path(artifact(user_run["summary"], "onnxruntime:int8")["bundle"])
    spec = json.loads((bundle / "manifest.json").read_text())["preprocessing"]
    s = load_splits(DataConfig(source="imagefolder", path=str(user_project["data"]), input_size=16), seed=0)
    first_test = sorted((user_project["data"] / "test" / "0").glob("*.png"))[0]
    np.testing.assert_allclose(preprocess_image(first_test, spec)[0], s.x_test[0], atol=1e-5)


def test_bad_image_under_error_policy_stops_with_exit_2(user_project, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(user_project["data"], data)
    (data / "val" / "7" / "corrupt.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out),
                *user_sets(user_project, data, ["data.bad_images=error"]))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "corrupt.png" in p.stderr and "is not a readable image" in p.stderr and "fix:" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (out / "run.json").exists() and not list(out.rglob("data.npz"))


def test_class_folders_differing_between_splits_stop_with_exit_2(user_project, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(user_project["data"], data)
    (data / "test" / "4").rename(data / "test" / "four")
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *user_sets(user_project, data))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    err = " ".join(p.stderr.split())  # rich may wrap long lines
    assert "class folders differ between the splits" in err
    assert "'4' (in train, val; missing in test)" in err and "'four' (in test; missing in train, val)" in err
    assert "Traceback" not in p.stderr and not (out / "run.json").exists()


def test_pickled_teacher_is_refused_on_the_cli(user_project, tmp_path):
    import torch

    from pipeline.models.spec import build_model

    full = tmp_path / "full_model.pt"
    torch.save(build_model(f"{user_project['model_file']}:build", {"width": WIDTH}, 1, 10), full)
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out),
                *user_sets(user_project, extra=[f"teacher.checkpoint={full}"]))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    err = " ".join(p.stderr.split())
    assert "pickled object" in err and "teacher.allow_pickle=true" in err and "Traceback" not in p.stderr
