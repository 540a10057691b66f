"""Bad input: exit 2 (bad input/config) or 3 (missing dependency), one clear message, no traceback, nothing written.

Every row of docs/ERRORS.md is a case here. Each case runs the real CLI in a child process and asserts:
- the exit code;
- a key phrase of the message (and a `fix:` hint);
- no "Traceback" in stderr (tracebacks only with --debug);
- nothing written for the failing stage: no run.json, no bundle (.tar.gz), no stage folder for the
  failing stage, no temporary (`.tmp-`) left anywhere; errors found before any work (config, target,
  dependency) leave no run folder at all.
Runs are tiny (digits, 16x16, 60 training images, 1 epoch): most cases stop in the first stages.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import ROOT, cli_env, fast_args, run_cli

TINY = ["data.limit=60", "teacher.train.epochs=1", "distill.epochs=1", "benchmark.enabled=false",
        "calibration.samples=16"]


def tiny_run(out: Path, *extra: str, target: str = "onnxruntime") -> list[str]:
    return ["run", "--target", target, "--out", str(out), *fast_args(TINY), *extra]


def sets(*assignments: str) -> list[str]:
    out = []
    for a in assignments:
        out += ["--set", a]
    return out


# --------------------------------------------------------------------------- input files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    import torch
    from PIL import Image

    from pipeline.models.zoo import resnet8, small_cnn

    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)

    def png(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(path)

    # an image folder with one corrupt PNG and one text file among 16 good images
    for cls in ("a", "b"):
        for i in range(8):
            png(d / "imgs_bad" / cls / f"{i}.png")
    (d / "imgs_bad" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (d / "imgs_bad" / "b" / "notes.txt").write_text("not an image\n")
    # fixed splits whose class folders differ (a typo in test/)
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "dgo"))):
        for cls in classes:
            for i in range(3):
                png(d / "splits" / split / cls / f"{i}.png")
    (d / "empty").mkdir()
    # checkpoints for the default teacher (builtin:resnet8 width 32, 1 channel, 10 classes)
    teacher = resnet8(in_channels=1, num_classes=10, width=32)
    torch.save(teacher.state_dict(), d / "good.pt")
    blob = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (d / "garbage.pt").write_bytes(os.urandom(4096))
    torch.save(small_cnn(in_channels=1, num_classes=10).state_dict(), d / "other_model.pt")
    torch.save(teacher, d / "pickled.pt")  # a full pickled model: refused without teacher.allow_pickle
    nan_sd = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() and k.endswith("weight") else v)
              for k, v in teacher.state_dict().items()}
    torch.save(nan_sd, d / "nan_teacher.pt")
    # arrays with a NaN
    x = rng.random((60, 8, 8)).astype(np.float32)
    x[3, 2, 2] = np.nan
    np.savez(d / "nan.npz", x=x, y=np.arange(60) % 3)
    # a corrupt ONNX file
    (d / "corrupt.onnx").write_bytes(b"\x08\x07" + b"this is not a protobuf model" * 8)
    # recipes
    (d / "bad_yaml.yaml").write_text("distill:\n  epochs: 3\n  lr: [1, 2\nseed: 1\n")
    (d / "wrong_type.yaml").write_text("export:\n  opset: seventeen\n")
    (d / "not_mapping.yaml").write_text("- just\n- a list\n")
    (d / "deep.yaml").write_text("seed: " + "[" * 3000 + "]" * 3000 + "\n")
    (d / "bad_profile.yaml").write_text("name: my-board\nbackend: nosuchbackend\n")
    # a user model file built for 1-channel inputs whatever it is asked for
    (d / "gray_model.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def build(num_classes=10, **kwargs):
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, num_classes))
    """))
    # Simulated missing optional dependency (these folders go first on PYTHONPATH of the child):
    # `absent/` hides openvino entirely (sys.modules entry None: find_spec says absent, import fails);
    # `broken/` holds a fake openvino package whose import raises ImportError (a broken install).
    (d / "absent").mkdir()
    (d / "absent" / "sitecustomize.py").write_text(
        "# test stub: simulates that openvino is not installed\nimport sys\nsys.modules['openvino'] = None\n")
    (d / "broken" / "openvino").mkdir(parents=True)
    (d / "broken" / "openvino" / "__init__.py").write_text(
        "# test stub: simulates a broken/absent openvino install\n"
        "raise ImportError('simulated: openvino runtime library not found')\n")
    return d


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    args: Callable[[Path, Path], list[str]]  # (inputs, out) -> CLI args after `python -m pipeline`
    code: int
    phrase: str  # a key phrase of the first line of the message (case-insensitive)
    stage: str | None = None  # the stage that fails (its folder must not exist); None: no run folder at all
    env: Callable[[Path], dict] = field(default=lambda d: {})
    module: str = "pipeline"  # `python -m MODULE`
    xfail: str | None = None  # a known gap, owned elsewhere (the reason says where)


def _pythonpath(extra: Path) -> dict:
    env = cli_env()
    env["PYTHONPATH"] = str(extra) + os.pathsep + env["PYTHONPATH"]
    return env


CASES = [
    # data
    Case("missing data folder", lambda d, o: tiny_run(o, *sets("data.source=imagefolder", f"data.path={d}/nope")),
         2, "does not exist", "data"),
    Case("empty data folder", lambda d, o: tiny_run(o, *sets("data.source=imagefolder", f"data.path={d}/empty")),
         2, "has no class sub-folders (it is empty)", "data"),
    Case("corrupt image, data.bad_images=error",
         lambda d, o: tiny_run(o, *sets("data.source=imagefolder", f"data.path={d}/imgs_bad", "data.bad_images=error")),
         2, "is not a readable image", "data"),
    Case("class folders differ between splits",
         lambda d, o: tiny_run(o, *sets("data.source=imagefolder", f"data.path={d}/splits")),
         2, "class folders differ between the splits", "data"),
    Case("npz with NaN", lambda d, o: tiny_run(o, *sets("data.source=npz", f"data.path={d}/nan.npz")),
         2, "nan", "data"),
    # checkpoints and models
    Case("truncated checkpoint", lambda d, o: tiny_run(o, *sets(f"teacher.checkpoint={d}/truncated.pt")),
         2, "is truncated or not a PyTorch checkpoint", "teacher"),
    Case("corrupt checkpoint (random bytes)", lambda d, o: tiny_run(o, *sets(f"teacher.checkpoint={d}/garbage.pt")),
         2, "is truncated or not a PyTorch checkpoint", "teacher"),
    Case("missing checkpoint", lambda d, o: tiny_run(o, *sets(f"teacher.checkpoint={d}/nope.pt")),
         2, "does not exist", "teacher"),
    Case("checkpoint keys do not match the model",
         lambda d, o: tiny_run(o, *sets(f"teacher.checkpoint={d}/other_model.pt")),
         2, "does not match the model: missing in checkpoint: ", "teacher"),
    Case("pickled full model without opt-in", lambda d, o: tiny_run(o, *sets(f"teacher.checkpoint={d}/pickled.pt")),
         2, "is a pickled object, not plain weights", "teacher"),
    Case("input shape the model rejects",
         lambda d, o: tiny_run(o, *sets("data.channels=3", f"teacher.model={d}/gray_model.py:build", "teacher.kwargs={}")),
         2, "rejects the data's input shape", "teacher"),
    Case("NaN in the teacher's outputs", lambda d, o: tiny_run(o, *sets(f"teacher.checkpoint={d}/nan_teacher.pt")),
         2, "NaN/Inf in the teacher's outputs at step", "distill"),
    # recipe
    Case("unknown target", lambda d, o: tiny_run(o, target="nosuch"), 2, "unknown target 'nosuch'"),
    Case("profile file missing", lambda d, o: tiny_run(o, "--profiles", str(d / "nope.yaml")), 2, "nope.yaml"),
    Case("invalid profile file", lambda d, o: tiny_run(o, "--profiles", str(d / "bad_profile.yaml")), 2,
         "bad_profile.yaml"),
    Case("recipe file missing", lambda d, o: tiny_run(o, "--config", str(d / "nope.yaml")), 2,
         "recipe file"),
    Case("invalid YAML", lambda d, o: tiny_run(o, "--config", str(d / "bad_yaml.yaml")), 2,
         "is not valid YAML at line 4, column 5"),
    Case("recipe not a mapping", lambda d, o: tiny_run(o, "--config", str(d / "not_mapping.yaml")), 2,
         "must be a YAML mapping"),
    Case("recipe nests too deeply", lambda d, o: tiny_run(o, "--config", str(d / "deep.yaml")), 2,
         "nests too deeply"),
    Case("wrong type in recipe file", lambda d, o: tiny_run(o, "--config", str(d / "wrong_type.yaml")), 2,
         'export.opset = "seventeen"'),
    Case("wrong type in --set", lambda d, o: tiny_run(o, *sets("distill.epochs=abc")), 2, 'distill.epochs = "abc"'),
    Case("unknown field", lambda d, o: tiny_run(o, *sets("distill.epoch=3")), 2, "distill.epoch: unknown field"),
    Case("--set without =", lambda d, o: tiny_run(o, *sets("distill.epochs")), 2, "is not of the form"),
    Case("negative epochs", lambda d, o: tiny_run(o, *sets("distill.epochs=-1")), 2,
         "distill.epochs = -1: Input should be greater than or equal to 0"),
    Case("pruning ratio outside 0..1", lambda d, o: tiny_run(o, *sets("prune.ratio=1.5")), 2,
         "prune.ratio = 1.5: Input should be less than 1"),
    Case("zero calibration samples", lambda d, o: tiny_run(o, *sets("calibration.samples=0")), 2,
         "calibration.samples = 0: Input should be greater than or equal to 1"),
    Case("unknown data source", lambda d, o: tiny_run(o, *sets("data.source=csv", "data.path=x.csv")), 2,
         "data.source = 'csv' is not known", "data"),
    # missing optional dependency (simulated by the PYTHONPATH stubs described in `inputs`)
    Case("target runtime not installed (simulated)", lambda d, o: tiny_run(o, target="x86"), 3,
         "needs the openvino runtime", env=lambda d: _pythonpath(d / "absent")),
    Case("target runtime fails to import (simulated)", lambda d, o: tiny_run(o, target="x86"), 3,
         "needs the openvino runtime", env=lambda d: _pythonpath(d / "broken")),
    # user ONNX files
    Case("corrupt ONNX: qdq_lint", lambda d, o: [str(d / "corrupt.onnx")], 2, "not an ONNX model",
         module="targets.qdq_lint"),
    Case("corrupt ONNX: pipeline.measure.harness",
         lambda d, o: [str(d / "corrupt.onnx"), "--no-progress", "--no-baseline", "--json", str(o / "bench.json")], 2,
         "cannot load the model", module="pipeline.measure.harness"),
]


def _pipeline_has(command: str) -> bool:
    import contextlib
    import io

    from pipeline.cli import build_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args([command, "--help"])
    except SystemExit as e:
        return e.code == 0
    except Exception:  # the CLI module is being changed elsewhere: treat as absent
        return False
    return True


def assert_clean(p: subprocess.CompletedProcess, case_code: int, phrase: str) -> None:
    err = p.stderr
    assert p.returncode == case_code, f"exit {p.returncode}, expected {case_code}\n{p.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in p.stdout, err[-3000:]
    assert phrase.lower() in err.lower(), f"{phrase!r} not in:\n{err[-3000:]}"
    assert "error" in err.lower(), err


def assert_nothing_written(out: Path, stage: str | None) -> None:
    if stage is None:
        leftovers = [p for p in out.rglob("*") if p.name != "bench.json"] if out.exists() else []
        assert not (out / "bench.json").exists()
        assert not out.exists() or not leftovers, f"{out} should not exist: {leftovers}"
        return
    assert not (out / "run.json").exists()
    assert not list(out.rglob("*.tar.gz")), list(out.rglob("*.tar.gz"))
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], list(out.rglob("*.tmp-*"))
    assert not (out / "stages" / stage).exists(), sorted(str(p.relative_to(out)) for p in (out / "stages").rglob("*"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    if case.module == "pipeline.measure.harness":
        out.mkdir()
    args = case.args(inputs, out)
    env = case.env(inputs) or cli_env()
    p = subprocess.run([sys.executable, "-m", case.module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert_clean(p, case.code, case.phrase)
    if case.module == "pipeline":
        assert "fix:" in p.stderr, p.stderr
    if case.module == "pipeline.measure.harness":
        assert not (out / "bench.json").exists()
        return
    assert_nothing_written(out, case.stage)


def test_bad_input_debug_shows_traceback(inputs: Path, tmp_path: Path) -> None:
    """--debug is the one way to get the traceback of a bad input."""
    p = run_cli("--debug", *tiny_run(tmp_path / "run", *sets(f"teacher.checkpoint={inputs}/truncated.pt")))
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "CheckpointError" in p.stderr


@pytest.mark.skipif(not _pipeline_has("bench"), reason="`python -m pipeline bench` is not there yet")
def test_corrupt_onnx_pipeline_bench(inputs: Path, tmp_path: Path) -> None:
    """`pipeline bench` takes a run folder or a bundle: a bare corrupt .onnx is refused with exit 2."""
    p = run_cli("bench", str(inputs / "corrupt.onnx"), "--json", str(tmp_path / "b.json"))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "corrupt.onnx" in p.stderr and "fix:" in p.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.mark.skipif(not _pipeline_has("bench"), reason="`python -m pipeline bench` is not there yet")
def test_corrupt_onnx_pipeline_bench_model_in_bundle(inputs: Path, tmp_path: Path, fast_run: Path) -> None:
    """Where the pipeline reads a user's ONNX: `bench BUNDLE --model FILE` (a model built on the device)."""
    bundle = next(p for p in (fast_run / "stages").glob("bundle-onnxruntime/*/*") if p.is_dir())
    p = run_cli("bench", str(bundle), "--model", str(inputs / "corrupt.onnx"), "--no-progress",
                "--json", str(tmp_path / "b.json"))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "cannot load the model" in p.stderr
    assert not (tmp_path / "b.json").exists()


def test_corrupt_image_skipped_with_warning_and_count(inputs: Path, tmp_path: Path) -> None:
    """data.bad_images=skip (the default): unreadable files are skipped, counted and named in one warning.

    The run is stopped right after the calibration stage (PIPELINE_FAULT_STAGE) to keep the test short:
    the data stage is complete by then.
    """
    out = tmp_path / "run"
    env = cli_env()
    env["PIPELINE_FAULT_STAGE"] = "calibration"
    p = run_cli(*tiny_run(out, *sets("data.source=imagefolder", f"data.path={inputs}/imgs_bad")), env=env)
    assert p.returncode == -9, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert "skipped 2 unreadable file(s)" in p.stderr, p.stderr[-3000:]
    assert "broken.png" in p.stderr
    import json

    meta = json.loads(next((out / "stages" / "data").glob("*/meta.json")).read_text())
    m = meta["metrics"]
    assert m["train"] + m["val"] + m["test"] == 16  # the 16 good images, nothing else
    assert any("skipped 2 unreadable file(s)" in n for n in meta["notes"])


# --------------------------------------------------------------------------- a full disk

ENOSPC_WRAPPER = """
import errno, sys
import numpy as np

_real = np.savez

def _full(*a, **k):  # simulates a full disk while the data stage writes its arrays
    raise OSError(errno.ENOSPC, "No space left on device")

np.savez = _full
np.save = _full  # the data stage's store writes .npy files (labels with np.save)
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _check_disk_full(p: subprocess.CompletedProcess, out: Path) -> None:
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "no space left on the device while writing" in p.stderr and "disk is full" in p.stderr, p.stderr
    assert "run the same command again" in p.stderr and "reused" in p.stderr, p.stderr
    assert not (out / "run.json").exists()
    assert not [q for q in out.rglob("*") if ".tmp-" in q.name], list(out.rglob("*"))


def test_disk_full_simulated(tmp_path: Path) -> None:
    """ENOSPC raised in-process (numpy.save/savez patched in the child) -> exit 2, disk-full message, no partial files."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", ENOSPC_WRAPPER, *tiny_run(out)], cwd=ROOT, env=cli_env(),
                       capture_output=True, text=True, timeout=600)
    _check_disk_full(p, out)
    assert not (out / "stages" / "data").exists()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the in-process ENOSPC test covers this path)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_real_tmpfs(tiny_tmpfs: Path) -> None:
    """--out on a 256 KiB tmpfs: a real ENOSPC (or torch.save's RuntimeError on a full disk) -> exit 2."""
    out = tiny_tmpfs / "run"
    # 8x8 inputs: the data stage fits in 256 KiB, the teacher's torch.save then fills the disk
    p = run_cli(*tiny_run(out, *sets("data.input_size=8")))
    _check_disk_full(p, out)
