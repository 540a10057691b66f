"""The uint8 memory-mapped store, augmentation by resolution, device selection and the teacher-view cache."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.data import augment as aug  # noqa: E402
from pipeline.data import store  # noqa: E402
from pipeline.recipe import DataConfig, DistillConfig  # noqa: E402


def write_folder(root: Path, n: int = 36, size: int = 40, classes: int = 3, splits: bool = True) -> Path:
    """RGB PNGs of varied sizes: class-coloured squares on noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % classes
        part = ("train", "train", "train", "val", "test")[i % 5] if splits else ""
        h, w = size + (i % 3) * 4, size + (i % 4) * 6
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[h // 4:3 * h // 4, w // 4:3 * w // 4, c] = 250
        d = root / part / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return root


def folder_cfg(root: Path, size: int, **kw) -> DataConfig:
    return DataConfig(source="imagefolder", path=str(root), input_size=size, channels=3, mean=[0.5, 0.4, 0.3],
                      std=[0.2, 0.25, 0.3], **kw)


# --------------------------------------------------------------------------- store


def test_store_is_built_in_chunks_and_read_memory_mapped(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "ds", n=60)
    appended, decoded = [], []
    real_append, real_read = store.NpyAppender.append, store._plan_folder

    def spy_append(self, chunk):
        appended.append(len(chunk))
        return real_append(self, chunk)

    def spy_plan(cfg):
        plan = real_read(cfg)
        inner = plan.read

        def read(idx, g):
            decoded.append(len(idx))
            return inner(idx, g)

        plan.read = read
        return plan

    monkeypatch.setattr(store.NpyAppender, "append", spy_append)
    monkeypatch.setattr(store, "_plan_folder", spy_plan)
    cfg = folder_cfg(root, 16)
    out = tmp_path / "store"
    out.mkdir()
    info = store.build_store(cfg, 0, out, chunk=5)
    # never more than one chunk decoded or written at a time
    assert decoded and max(decoded) <= 5 and max(appended) <= 5
    assert sum(appended) == sum(s["images"] for s in info["splits"].values()) == 60
    st = store.open_store(out)
    x = st["x_train"]
    assert isinstance(x.images, np.memmap) and x.images.dtype == np.uint8 and x.images.shape[1:] == (16, 16, 3)
    assert x.shape == (len(st["y_train"]), 3, 16, 16) and x[:4].dtype == np.float32
    from pipeline.artifacts import sha256_file

    assert info["splits"]["test"]["sha256"] == sha256_file(out / "x_test.npy")
    with pytest.raises(TypeError, match="in batches"):
        np.asarray(x)  # a whole split never turns into float by accident
    # normalisation per batch: uint8 -> (v/255 - mean) / std per channel
    raw = x.uint8([0])[0].astype(np.float32) / 255
    want = (raw - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    np.testing.assert_allclose(x[0], want.transpose(2, 0, 1), atol=1e-5)


def test_store_pickles_by_file_name_for_loader_workers(tmp_path):
    import pickle

    root = write_folder(tmp_path / "ds", n=30)
    out = tmp_path / "s"
    out.mkdir()
    store.build_store(folder_cfg(root, 16), 0, out)
    x = store.open_store(out)["x_train"]
    blob = pickle.dumps(x)
    assert len(blob) < 2000  # the file name, not the pixels
    np.testing.assert_array_equal(pickle.loads(blob)[:3], x[:3])


@pytest.mark.parametrize("size", [16, 96])
def test_host_eval_preprocessing_equals_the_bundle_runtime(tmp_path, size):
    """A test image as the model is evaluated on the host == run.py's preprocessing of the same file."""
    from pipeline.data.store import preprocessing_spec
    from pipeline.data.store import load_splits
    from targets.standalone.runtime import preprocess_image

    root = write_folder(tmp_path / "ds", n=30, size=120)
    cfg = folder_cfg(root, size, augment=True)
    spec = preprocessing_spec(cfg)
    assert ("resize_size" in spec) == (size > 64)
    s = load_splits(cfg, seed=0)
    test_files = sorted((root / "test").rglob("*.png"))  # class folders in order, files sorted: the store's order
    for i, f in enumerate(test_files[:3]):
        np.testing.assert_allclose(preprocess_image(f, spec)[0], s.x_test[i], atol=1e-5)
    # above 64 px with augmentation the train split is stored whole at input_size (RandomResizedCrop source)
    assert s.x_train.shape[-2:] == (size, size)


# --------------------------------------------------------------------------- augmentation


def _reference_pad_crop(x, dx, dy, flip, pad=4):
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])
    out[flip] = out[flip].flip(-1)
    return out


def test_pad_crop_flip_matches_the_per_image_loop():
    x = torch.randn(9, 3, 12, 12)
    g = torch.Generator().manual_seed(1)
    a = aug.Augmenter("padcrop", 12, hflip=True)
    p = a.draw(9, g)
    got = a.apply(x, p)
    want = _reference_pad_crop(x, p[:, 0].long(), p[:, 1].long(), p[:, 2] > 0.5)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want)


def test_resized_crop_shapes_determinism_and_identity():
    x = torch.randn(6, 3, 80, 80)
    a = aug.Augmenter("rrc", 80, hflip=True)
    p1 = a.draw(6, torch.Generator().manual_seed(3))
    p2 = a.draw(6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(p1, p2)  # seeded draws
    y = a.apply(x, p1)
    assert y.shape == (6, 3, 80, 80)
    torch.testing.assert_close(y, a.apply(x, p1))  # apply is deterministic: a view can be regenerated
    boxes = p1[:, :4]
    assert (boxes[:, 2] * boxes[:, 3] >= 0.25 * 80 * 80 * 0.9).all() and (boxes[:, :2] + boxes[:, 2:4] <= 80).all()
    # the whole image, unflipped, is the identity; flipped, the mirror
    whole = torch.tensor([[0, 0, 80, 80, 0], [0, 0, 80, 80, 1]], dtype=torch.float32)
    out = a.apply(x[:2], whole)
    torch.testing.assert_close(out[0], x[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], x[1].flip(-1), atol=1e-4, rtol=0)


def test_augmentation_is_chosen_by_resolution():
    assert aug.augmenter_for(DataConfig(input_size=32, augment=True)).kind == "padcrop"
    assert aug.augmenter_for(DataConfig(input_size=96, augment=True)).kind == "rrc"
    assert aug.augmenter_for(DataConfig(input_size=96, augment=False)) is None


def test_epoch_order_drops_a_trailing_single_image_batch():
    from pipeline.train import epoch_order

    order = epoch_order(65, 32, torch.Generator().manual_seed(0))
    assert [len(b) for b in order] == [32, 32]
    assert [len(b) for b in epoch_order(66, 32, torch.Generator().manual_seed(0))] == [32, 32, 2]
    assert [len(b) for b in epoch_order(1, 32, torch.Generator().manual_seed(0))] == [1]


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the host without CUDA")
def test_device_selection_without_cuda():
    from pipeline.device import resolve
    from pipeline.errors import MissingDependency

    c = resolve("auto")
    assert c.device.type == "cpu" and not c.channels_last and c.threads >= 1
    assert resolve("cpu", "fp32").amp is None and resolve("cpu", "bf16").amp is torch.bfloat16
    with pytest.raises(MissingDependency, match="device=cuda") as e:
        resolve("cuda")
    assert e.value.exit_code == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the host without CUDA")
def test_cli_device_cuda_without_gpu_exits_3(tmp_path):
    from conftest import run_cli

    p = run_cli("run", "--out", str(tmp_path / "r"), "--set", "device=cuda", timeout=300)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "device=cuda" in p.stderr and "no CUDA GPU" in p.stderr
    assert not (tmp_path / "r" / "stages").exists()  # stopped before any stage


# --------------------------------------------------------------------------- KD on the CPU, teacher views


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    from pipeline.stages.data import read_splits

    out = tmp_path_factory.mktemp("store")
    store.build_store(DataConfig(input_size=12, augment=True, limit=300), 0, out)

    class _Res:
        dir = out

    return read_splits(_Res)


def _models(n_classes=10):
    from pipeline.models.zoo import small_cnn

    torch.manual_seed(0)
    return small_cnn(1, n_classes, widths=(8, 12, 16)), small_cnn(1, n_classes, widths=(4, 8, 8))


def test_kd_loop_runs_with_device_cpu_explicitly(tiny_splits):
    from pipeline.device import resolve
    from pipeline.stages.distill import distill_student
    from pipeline.train import fit, predict

    teacher, student = _models()
    fit(teacher, tiny_splits.x_train, tiny_splits.y_train, tiny_splits.x_val, tiny_splits.y_val, epochs=3, lr=0.05,
        batch_size=32, momentum=0.9, weight_decay=0, seed=0)
    compute = resolve("cpu", "auto", threads=1)
    cfg = DistillConfig(epochs=3, lr=0.05, batch_size=32, teacher_views=0)
    hist, how = distill_student(student, teacher, tiny_splits, cfg, 0, True, False,
                                augmenter=aug.augmenter_for(DataConfig(input_size=12, augment=True)), compute=compute)
    assert how is False  # online teacher (teacher_views=0 with augmentation)
    assert len(hist.epochs) == 3 and all(np.isfinite(e["loss"]) for e in hist.epochs)
    assert all(e["images_per_s"] > 0 for e in hist.epochs)
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]  # it learns from the teacher
    # the student comes back as an fp32 CPU model, in contiguous memory
    p = next(student.parameters())
    assert p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()
    assert predict(student, tiny_splits.x_val).shape == (len(tiny_splits.y_val), 10)


def test_teacher_views_regenerate_the_view_the_teacher_saw(tiny_splits):
    from pipeline.device import resolve
    from pipeline.distill.views import TeacherViews

    teacher, _ = _models()
    teacher.eval()
    a = aug.Augmenter("padcrop", 12, hflip=True)
    compute = resolve("cpu", "fp32", channels_last=False)
    views = TeacherViews(teacher, tiny_splits.x_train, a, 3, seed=0, compute=compute, batch=64)
    try:
        assert views.logits.shape == (len(tiny_splits.x_train), 3, 10) and views.logits.dtype == np.float16
        idx = torch.tensor([5, 0, 17, 100])
        params = views.select(idx, torch.Generator().manual_seed(0))
        x = torch.from_numpy(tiny_splits.x_train[idx.numpy()])
        with torch.no_grad():
            want = teacher(a.apply(x, params))
        torch.testing.assert_close(views.current, want, atol=2e-2, rtol=1e-2)  # float16 storage
        # another draw picks other views of the same images: other parameters, stored logits for them
        p2 = views.select(idx, torch.Generator().manual_seed(5))
        assert p2.shape == (4, 5)
    finally:
        views.close()


def test_default_teacher_views_follow_the_epochs():
    from pipeline.distill.views import default_views

    # views from 4 epochs (epochs // 4, at most 8): fewer views than that cost augmentation diversity
    assert [default_views(e) for e in (0, 1, 2, 3, 4, 7, 8, 30, 100)] == [0, 0, 0, 0, 1, 1, 2, 7, 8]


def test_fp32_kd_default_caches_teacher_views_with_the_frozen_teacher(tiny_splits):
    """An fp32 CPU run of 4 epochs with augmentation and distill.teacher_views unset (the AVX2 path, where
    the online teacher made KD 0.95x a plain loop) precomputes one view per image with the frozen teacher."""
    from pipeline.device import resolve
    from pipeline.stages.distill import distill_student

    teacher, student = _models()
    compute = resolve("cpu", "fp32", threads=1, channels_last=False)
    cfg = DistillConfig(epochs=4, lr=0.05, batch_size=32)
    assert cfg.teacher_views is None
    info: dict = {}
    hist, how = distill_student(student, teacher, tiny_splits, cfg, 0, True, False, compute=compute, info=info,
                                augmenter=aug.augmenter_for(DataConfig(input_size=12, augment=True)))
    assert how == 1 and info["teacher_forward"] == "frozen"
    assert len(hist.epochs) == 4 and all(np.isfinite(e["loss"]) for e in hist.epochs)
    # the teacher itself is left as it was: an eager fp32 module on the CPU
    assert isinstance(teacher, torch.nn.Module) and not isinstance(teacher, torch.jit.ScriptModule)
    assert next(teacher.parameters()).dtype == torch.float32


def test_frozen_teacher_equals_the_eager_teacher_and_falls_back_where_it_cannot(tiny_splits):
    from pipeline.device import resolve
    from pipeline.distill.fast_teacher import inference_teacher

    teacher, _ = _models()
    teacher.eval()
    fp32 = resolve("cpu", "fp32", channels_last=False)
    x = torch.from_numpy(np.asarray(tiny_splits.x_train[:4]))
    fwd, how = inference_teacher(teacher, x, fp32)
    assert how == "frozen" and fwd is not teacher
    xb = torch.from_numpy(np.asarray(tiny_splits.x_train[:37]))  # another (odd) batch size than the traced one
    with torch.inference_mode():
        torch.testing.assert_close(fwd(xb), teacher(xb), atol=1e-5, rtol=1e-5)
    # bf16 autocast: the eager teacher (the frozen copy would run fp32 numerics under another precision)
    assert inference_teacher(teacher, x, resolve("cpu", "bf16", channels_last=False)) == \
        (teacher, "eager (frozen copy only for fp32 on the CPU)")

    class BakedBatch(torch.nn.Module):  # the tracer records the batch size as a constant
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(144, 10)

        def forward(self, x):
            return self.fc(x.reshape(int(x.shape[0]), -1))

    baked = BakedBatch()
    fwd, how = inference_teacher(baked, x, fp32)
    assert fwd is baked and how.startswith("eager (")


def test_cached_views_from_the_frozen_teacher_equal_the_online_teachers_logits(tiny_splits):
    """What the student is taught with views on (frozen teacher, float16 store) is the online eager teacher's
    logits for the very view the student sees."""
    from pipeline.device import resolve
    from pipeline.distill.fast_teacher import inference_teacher
    from pipeline.distill.views import TeacherViews

    teacher, _ = _models()
    teacher.eval()
    a = aug.Augmenter("padcrop", 12, hflip=True)
    compute = resolve("cpu", "fp32", channels_last=False)
    fwd, how = inference_teacher(teacher, torch.from_numpy(np.asarray(tiny_splits.x_train[:4])), compute)
    assert how == "frozen"
    views = TeacherViews(fwd, tiny_splits.x_train, a, 2, seed=3, compute=compute, batch=64)
    try:
        idx = torch.arange(0, len(tiny_splits.x_train), 7)
        params = views.select(idx, torch.Generator().manual_seed(1))
        x = torch.from_numpy(tiny_splits.x_train[idx.numpy()])
        with torch.inference_mode():
            want = teacher(a.apply(x, params))
        torch.testing.assert_close(views.current, want, atol=2e-2, rtol=1e-2)  # float16 storage
        assert (views.current.argmax(1) == want.argmax(1)).float().mean() >= 0.99
    finally:
        views.close()


def test_odd_batch_guard_runs_odd_cpu_batches_without_onednn():
    """torch 2.13's oneDNN conv path corrupts the heap on odd-sized training batches with 2+ CPU threads
    (resnet8 width 8 finetune aborted under OMP_NUM_THREADS=2): such steps run with oneDNN off."""
    import torch

    from pipeline.device import resolve

    c = resolve("cpu", "fp32", None)
    with c.odd_batch_guard(4):
        assert torch.backends.mkldnn.enabled
    with c.odd_batch_guard(5):
        assert torch.backends.mkldnn.enabled == (torch.get_num_threads() < 2)
    assert torch.backends.mkldnn.enabled


def _rss_file_mb() -> float | None:
    from pipeline.memory import status_mb

    return status_mb("RssFile")


def test_reading_a_split_does_not_keep_its_pages_resident(tmp_path, monkeypatch):
    """An epoch over a memory-mapped split hands its pages back as it goes: the file-backed RSS after reading
    120 MB stays far below 120 MB (without the release it holds all of it)."""
    import numpy as np

    from pipeline.data import store

    if _rss_file_mb() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 255, (480, 512, 512), dtype=np.uint8))  # 120 MB
    monkeypatch.setattr(store, "RELEASE_EVERY", 8 * 2 ** 20)

    def epoch_growth(release: bool) -> float:
        if not release:
            monkeypatch.setattr(store, "release_pages", lambda images, nbytes: False)
        images = np.load(path, mmap_mode="r")
        before = _rss_file_mb()
        order = np.random.default_rng(1).permutation(len(images))
        for i in range(0, len(images), 32):
            store.gather(images, order[i:i + 32])
        grown = _rss_file_mb() - before
        del images
        return grown

    kept = epoch_growth(release=True)
    held = epoch_growth(release=False)
    assert kept < 40, kept
    assert held > 80, held  # the control: the same reads without the release hold the pages
