"""Stage cache: hit, miss, invalidation by config and by input content; atomic stage folders."""
from __future__ import annotations


import pytest

from conftest import fast_args, read_run, run_cli
from pipeline.runner import Runner


def _write(value: str):
    def fn(ctx):
        (ctx.dir / "out.txt").write_text(value)
        ctx.metrics["value"] = value
    return fn


def test_cache_hit_miss_and_downstream_invalidation(tmp_path):
    calls = []

    def first(ctx):
        calls.append("a")
        (ctx.dir / "a.txt").write_text(ctx_value["a"])

    def second(ctx):
        calls.append("b")
        (ctx.dir / "b.txt").write_text((a.dir / "a.txt").read_text() + "!")

    ctx_value = {"a": "one"}
    r = Runner(tmp_path)
    a = r.stage("a", first, config={"x": 1})
    b = r.stage("b", second, inputs={"a": a})
    assert not a.cached and not b.cached and calls == ["a", "b"]

    r = Runner(tmp_path)
    a = r.stage("a", first, config={"x": 1})
    b = r.stage("b", second, inputs={"a": a})
    assert a.cached and b.cached and calls == ["a", "b"]

    # A different config reruns the stage; its new output changes the downstream key.
    ctx_value["a"] = "two"
    r = Runner(tmp_path)
    a = r.stage("a", first, config={"x": 2})
    b2 = r.stage("b", second, inputs={"a": a})
    assert not a.cached and not b2.cached
    assert (b2.dir / "b.txt").read_text() == "two!"
    # The old entry is still there: going back to x=1 reuses it.
    r = Runner(tmp_path)
    assert r.stage("a", first, config={"x": 1}).cached


def test_same_output_content_keeps_downstream_cached(tmp_path):
    r = Runner(tmp_path)
    a = r.stage("a", _write("same"), config={"v": 1})
    r.stage("b", _write("b"), inputs={"a": a})
    r = Runner(tmp_path)
    a2 = r.stage("a", _write("same"), config={"v": 2})  # new key, identical output
    b2 = r.stage("b", _write("b"), inputs={"a": a2})
    assert not a2.cached and b2.cached


def test_failed_stage_leaves_nothing(tmp_path):
    def boom(ctx):
        (ctx.dir / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Runner(tmp_path).stage("c", boom)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_cli_rerun_is_fully_cached_and_epochs_rerun_only_downstream(tmp_path):
    out = tmp_path / "run"
    # A 2-epoch student is fragile in INT8; this test is about the cache, not the accuracy budget.
    args = ["run", "--target", "onnxruntime", "--out", str(out), *fast_args(["quantize.max_accuracy_drop=0.5"])]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    stages = read_run(out)["stages"]
    assert stages and all(s["cached"] for s in stages), [s["name"] for s in stages if not s["cached"]]

    third = run_cli(*args, "--set", "distill.epochs=2")
    assert third.returncode == 0, third.stderr
    st = {s["stage"]: s["cached"] for s in read_run(out)["stages"]}
    assert st["data"] and st["calibration"] and st["teacher"] and st["export-teacher"]
    assert not st["distill"] and not st["export"] and not st["quantize-onnxruntime"]
    assert not st["bundle-onnxruntime"]


def test_atomic_write_to_a_device_does_not_replace_it(tmp_path):
    import os
    import stat

    from pipeline.artifacts import atomic_write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer does not block
    try:
        atomic_write_text(fifo, "report")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
        assert os.read(fd, 100) == b"report"
    finally:
        os.close(fd)
    atomic_write_text("/dev/null", "x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --------------------------------------------------------------------------- outputs checked on a cache hit


def test_changed_or_deleted_output_reruns_the_stage(tmp_path):
    import os

    calls = []

    def fn(ctx):
        calls.append(1)
        (ctx.dir / "model.bin").write_bytes(b"weights-0123456789")
        (ctx.dir / "sub").mkdir()
        (ctx.dir / "sub" / "info.txt").write_text("info")

    first = Runner(tmp_path).stage("s", fn)
    assert first.meta["output_stats"]["model.bin"]["size"] == 18
    model = first.dir / "model.bin"

    # same size, other bytes: the mtime moved, so the sha256 is checked and differs
    model.write_bytes(b"weights-XXXXXXXXXX")
    again = Runner(tmp_path).stage("s", fn)
    assert not again.cached and len(calls) == 2
    assert "model.bin changed content" in again.meta["rerun_reason"]
    assert model.read_bytes() == b"weights-0123456789", "the stage rewrote its output"

    # same size, same bytes, only the mtime moved (a copy, a touch): the sha256 matches, still cached
    os.utime(model, ns=(1, 1))
    assert Runner(tmp_path).stage("s", fn).cached and len(calls) == 2

    # another size: rerun without hashing; a deleted output: rerun
    model.write_bytes(b"short")
    assert not Runner(tmp_path).stage("s", fn).cached and len(calls) == 3
    (first.dir / "sub" / "info.txt").unlink()
    r = Runner(tmp_path).stage("s", fn)
    assert not r.cached and len(calls) == 4 and "sub/info.txt is missing" in r.meta["rerun_reason"]
    assert Runner(tmp_path).stage("s", fn).cached and len(calls) == 4


def test_rerun_after_a_bad_output_is_said_in_one_line(tmp_path):
    import io

    from rich.console import Console

    Runner(tmp_path).stage("s", _write("x"))
    (next((tmp_path / "stages" / "s").iterdir()) / "out.txt").unlink()
    buf = io.StringIO()
    Runner(tmp_path, console=Console(file=buf, width=200)).stage("s", _write("x"))
    lines = [ln for ln in buf.getvalue().splitlines() if "rerunning" in ln]
    assert len(lines) == 1 and "out.txt is missing" in lines[0], buf.getvalue()


# --------------------------------------------------------------------------- the code in the key


def test_hashing_failure_is_an_error_not_a_placeholder(tmp_path):
    from pipeline.code_closure import CodeHashError
    from pipeline.errors import PipelineError

    with pytest.raises(CodeHashError, match="no such file"):
        Runner(tmp_path).stage("a", _write("x"), code=(tmp_path / "missing.py",))
    broken = tmp_path / "broken_helper.py"
    broken.write_text("def f(:\n")
    with pytest.raises(PipelineError, match="SyntaxError"):
        Runner(tmp_path).stage("a", _write("x"), code=(broken,))
    assert not (tmp_path / "stages" / "a").exists() or not any((tmp_path / "stages" / "a").iterdir())


def test_closure_follows_lazy_imports_and_declared_data_files():
    from pipeline.code_closure import DATA_READS, ROOT, closure, module_file

    files = {p.relative_to(ROOT).as_posix() for p in closure((ROOT / "pipeline" / "stages" / "data.py").resolve())}
    assert {"pipeline/data/datasets.py", "pipeline/data/sources.py", "pipeline/runner.py"} <= files
    assert "pipeline/stages/bundle.py" not in files, "an unrelated stage is not in the data stage's key"
    target = {p.relative_to(ROOT).as_posix() for p in closure((ROOT / "pipeline" / "stages" / "target.py").resolve())}
    # pipeline.measure.harness is imported inside a function of target.py; bench.py is run, not imported
    assert {"pipeline/measure/harness.py", "targets/standalone/bench.py", "targets/standalone/runtime.py"} <= target
    bundle = {p.relative_to(ROOT).as_posix() for p in closure((ROOT / "pipeline" / "stages" / "bundle.py").resolve())}
    assert "targets/standalone/tensorrt/build_engine.sh" in bundle
    for mod, paths in DATA_READS.items():  # a moved module or file must be updated here
        assert module_file(mod) is not None, f"DATA_READS names {mod}, which is not a module of the project"
        for rel in paths:
            assert (ROOT / rel).exists(), f"DATA_READS: {rel} does not exist"


_DATA_STAGE = """
import sys
from pathlib import Path
from pipeline.recipe import load_recipe
from pipeline.runner import Runner
from pipeline.stages.data import run_data
recipe = load_recipe(sets=["data.input_size=8", "data.limit=200"])
print("CACHED" if run_data(Runner(Path(sys.argv[1])), recipe).cached else "RAN")
"""


def test_editing_data_preprocessing_code_reruns_data(tmp_path):
    """A copy of the project: editing a module under pipeline/data/ gives the data stage a new key."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    src = tmp_path / "src"
    for pkg in ("pipeline", "targets", "calibration", "benchmarks"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}

    def data_stage() -> str:
        p = subprocess.run([sys.executable, "-c", _DATA_STAGE, str(tmp_path / "run")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout.strip().splitlines()[-1]

    assert data_stage() == "RAN"
    assert data_stage() == "CACHED"
    with open(src / "pipeline" / "data" / "datasets.py", "a") as f:
        f.write("\n# an edit of the preprocessing code\n")
    assert data_stage() == "RAN"
    with open(src / "pipeline" / "stages" / "bundle.py", "a") as f:
        f.write("\n# an edit elsewhere\n")
    assert data_stage() == "CACHED"


MODEL_FILE = """
from torch import nn
from my_blocks import WIDTH


def build(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, WIDTH, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(WIDTH, num_classes))
"""


def test_editing_a_module_the_user_model_imports_reruns_teacher_and_after(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "my_model.py").write_text(MODEL_FILE)
    (models / "my_blocks.py").write_text("WIDTH = 8\n")
    out = tmp_path / "run"
    args = ["run", "--target", "onnxruntime", "--out", str(out), *fast_args([
        f"teacher.model={models / 'my_model.py'}:build", "teacher.kwargs={}", "teacher.train.epochs=1",
        "distill.epochs=1", "data.limit=300", "benchmark.enabled=false", "quantize.max_accuracy_drop=1.0"])]
    p = run_cli(*args)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (models / "my_blocks.py").write_text("WIDTH = 6\n")  # the model file itself is unchanged
    p = run_cli(*args)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    st = {s["stage"]: s["cached"] for s in read_run(out)["stages"]}
    assert st["data"] and st["calibration"], st
    assert not st["teacher"] and not st["distill"] and not st["export"] and not st["export-teacher"], st
    assert not st["quantize-onnxruntime"] and not st["bundle-onnxruntime"], st

    # a cached output deleted by hand: that stage reruns (and says so), the others stay cached
    calib = next(out / s["dir"] for s in read_run(out)["stages"] if s["stage"] == "calibration")
    (calib / "calibration.npz").unlink()
    p = run_cli(*args)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    st = {s["stage"]: s["cached"] for s in read_run(out)["stages"]}
    assert not st["calibration"] and st["teacher"] and st["export"], st
    assert (calib / "calibration.npz").is_file()


def test_model_fingerprint_covers_local_imports_only(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.models.model_sources import model_source_files
    from pipeline.models.spec import spec_fingerprint

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "helper.py").write_text("SCALE = 1\n")
    (tmp_path / "my_blocks.py").write_text("from sub import helper\nWIDTH = 8\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    model = tmp_path / "my_model.py"
    model.write_text("import numpy\n\ndef build(num_classes, in_channels):\n    import my_blocks\n    return None\n")
    root, files = model_source_files(str(model))
    assert sorted(f.relative_to(root).as_posix() for f in files) == [
        "my_blocks.py", "my_model.py", "sub/__init__.py", "sub/helper.py"]
    spec = f"{model}:build"
    a = spec_fingerprint(spec)
    (tmp_path / "unrelated.py").write_text("X = 2\n")
    assert spec_fingerprint(spec) == a, "a file the model does not import is not in its key"
    (tmp_path / "sub" / "helper.py").write_text("SCALE = 2\n")  # two imports away, inside a function
    b = spec_fingerprint(spec)
    assert b != a
    (tmp_path / "my_blocks.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match="SyntaxError"):
        spec_fingerprint(spec)
    with pytest.raises(ConfigError, match="does not exist"):
        spec_fingerprint(f"{tmp_path / 'nope.py'}:build")


def test_each_stage_records_its_own_peak_rss(tmp_path):
    """The runner resets VmHWM before each stage: a stage that touches 300 MB says so, the next one does not
    inherit it (the per-stage figures are how a growing stage is found at 224 px)."""
    import sys

    import numpy as np

    from pipeline.memory import reset_peak
    from pipeline.runner import Runner

    if not sys.platform.startswith("linux") or not reset_peak():
        pytest.skip("per-stage peak RSS needs Linux's /proc/self/clear_refs")
    runner = Runner(tmp_path)
    held = {}

    def big(ctx):
        held["a"] = np.ones(300 * 2 ** 20, dtype=np.uint8)  # touched: resident
        del held["a"]
        (ctx.dir / "x").write_text("1")

    def small(ctx):
        (ctx.dir / "y").write_text("1")

    a = runner.stage("big", big, config={"k": 1})
    b = runner.stage("small", small, config={"k": 1})
    pa, pb = a.meta["peak_rss_mb"], b.meta["peak_rss_mb"]
    assert pa is not None and pb is not None
    assert pa - pb > 250, (pa, pb)
    assert [r["peak_rss_mb"] for r in runner.records] == [pa, pb]
