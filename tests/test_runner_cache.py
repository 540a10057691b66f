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
