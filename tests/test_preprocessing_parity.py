"""One preprocessing, proven (issue 18 #2): what the data stage does to a raw file, the bundle's runtime does to
the same file, for every kind of input a dataset holds (8-bit grey, 16-bit PNG holding 12-bit values, palette,
RGB JPEG with EXIF rotation, RGBA), at both geometries (small: resize; large: resize + centre crop).

The in-process test compares the data store's arrays with targets/standalone/runtime.preprocess_image on the
raw test files; the CLI test runs the pipeline on a 16-bit folder and checks the bundle: Pillow in its
requirements, raw samples shipped, `run.py --check-samples` and the README's `python run.py image` working.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, fast_args, read_run, run_cli

sys.path.insert(0, str(ROOT))

from pipeline.data.store import Normalizer, build_store, open_store  # noqa: E402
from pipeline.recipe import DataConfig  # noqa: E402
from targets.standalone.runtime import preprocess_image  # noqa: E402


def _mixed_folder(root: Path, n: int = 12) -> Path:
    """Two classes, each file of one kind in turn (a camera folder merged with a scanner's, as found)."""
    rng = np.random.default_rng(0)
    for ci, c in enumerate(("dark", "light")):
        d = root / c
        d.mkdir(parents=True)
        for i in range(n):
            h, w = 20 + i % 5, 24 + i % 3  # odd sizes: every file is resized
            base = 40 + 150 * ci
            kind = i % 5
            g = (base + rng.integers(-30, 31, size=(h, w))).clip(0, 255)
            if kind == 0:
                Image.fromarray((g * 16).astype(np.uint16)).save(d / f"{i}.png")  # 12-bit in a 16-bit PNG
            elif kind == 1:
                Image.fromarray(g.astype(np.uint8), "L").save(d / f"{i}.png")
            elif kind == 2:
                Image.fromarray(np.stack([g, g // 2, 255 - g], -1).astype(np.uint8), "RGB").convert(
                    "P", palette=Image.Palette.ADAPTIVE).save(d / f"{i}.png")
            elif kind == 3:
                img = Image.fromarray(np.stack([g, g, g // 3], -1).astype(np.uint8), "RGB")
                exif = img.getexif()
                exif[0x0112] = 6  # rotated 90 degrees: viewers (and training) show it upright
                img.save(d / f"{i}.jpg", quality=90, exif=exif)
            else:
                a = np.stack([g, g, g, np.full_like(g, 128)], -1).astype(np.uint8)
                Image.fromarray(a, "RGBA").save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 16), (1, 72)])
def test_runtime_reproduces_the_data_stage_on_raw_files(tmp_path, channels, size):
    data = _mixed_folder(tmp_path / "data")
    cfg = DataConfig(path=str(data), channels=channels, input_size=size, mean=[0.5], std=[0.25])
    out = tmp_path / "store"
    out.mkdir()
    info = build_store(cfg, seed=0, out=out)
    spec = info["preprocessing"]
    assert spec["high_bit_full"] == 4095.0, "the dataset's 16-bit map is recorded for the device"
    st = open_store(out, mmap=False)
    files = info["splits"]["test"]["files"]
    assert len(files) == len(st["y_test"])
    kinds = set()
    import torch

    norm = Normalizer(spec)
    for j, f in enumerate(files):
        with Image.open(f) as img:
            kinds.add(img.mode)
        trained = norm(torch.from_numpy(st["x_test"].uint8(j)[None]).permute(0, 3, 1, 2)).numpy()
        device = preprocess_image(f, spec)
        assert device.shape == trained.shape, f
        np.testing.assert_allclose(device, trained, atol=1e-5, err_msg=f"{f}: the bundle preprocesses it differently")
    assert "I;16" in kinds or "I" in kinds or len(files) < 5


def test_16bit_is_scaled_not_clipped_by_the_runtime(tmp_path):
    """The issue's case: 12-bit values in 16-bit PNGs; run.py clipped them (95% of pixels saturated)."""
    f = tmp_path / "x.png"
    Image.fromarray((np.linspace(0, 4095, 64).reshape(8, 8)).astype(np.uint16)).save(f)
    spec = {"size": [8, 8], "channels": 1, "mean": [0.0], "std": [1.0], "scale": 255.0, "high_bit_full": 4095.0}
    x = preprocess_image(f, spec)
    assert float((x >= 1.0).mean()) < 0.05 and float(x.max()) == 1.0
    del spec["high_bit_full"]  # an older manifest: the image's own bit depth (12) gives the same map
    np.testing.assert_allclose(preprocess_image(f, spec), x)


def test_bundle_ships_raw_samples_pillow_and_its_readme_command_works(tmp_path):
    data = tmp_path / "xray"
    rng = np.random.default_rng(1)
    for ci, c in enumerate(("normal", "opaque")):
        (data / c).mkdir(parents=True)
        for i in range(40):  # 12-bit scans in 16-bit PNGs, and 8-bit exports of them in the same folder
            g = (800 + 2400 * ci + rng.integers(-300, 301, size=(20, 20))).clip(0, 4095).astype(np.uint16)
            if i % 2:
                Image.fromarray((g // 16).astype(np.uint8), "L").save(data / c / f"{i:03d}.png")
            else:
                Image.fromarray(g).save(data / c / f"{i:03d}.png")
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), "--set", f"data.path={data}", *fast_args())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    a = next(x for x in read_run(out)["artifacts"] if x.get("bundle"))
    bundle = Path(a["bundle"])
    reqs = (bundle / "requirements.txt").read_text().lower()
    assert "pillow==" in reqs, reqs
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocessing"]["high_bit_full"] == 4095.0
    expected = json.loads((bundle / "samples" / "expected.json").read_text())
    kinds = {r["kind"] for r in expected["raw"]}
    assert {"PNG I;16", "PNG L"} <= kinds or {"PNG I", "PNG L"} <= kinds, kinds
    c = subprocess.run([sys.executable, "-B", "run.py", "--check-samples"], cwd=bundle, capture_output=True,
                       text=True, timeout=120)
    assert c.returncode == 0, c.stdout + c.stderr
    res = json.loads(c.stdout.strip().splitlines()[-1])
    assert res["raw_samples"] == len(expected["raw"]) and not res["failures"]
    r = subprocess.run([sys.executable, "-B", "run.py", f"samples/{expected['raw'][0]['file']}"], cwd=bundle,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["top_k"], r.stderr
