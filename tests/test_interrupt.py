"""Ctrl-C and SIGTERM during a long stage (issue 18 #2): the run stops within seconds (between batches), says
so in one line, and leaves nothing of the interrupted stage behind (no temporary, no empty stage folder);
the next run resumes from the finished stages."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, fast_args


def _start(out: Path) -> subprocess.Popen:
    env = cli_env()
    env.pop("PIPELINE_QUIET", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--target", "onnxruntime", "--out", str(out),
                             *fast_args(["teacher.train.epochs=400", "data.workers=1"])], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_teacher(out: Path, p: subprocess.Popen, limit: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < limit:
        assert p.poll() is None, p.communicate()
        if list((out / "stages").glob("teacher*/*.tmp-*")):
            time.sleep(2.0)  # well inside the training loop (400 epochs take minutes)
            return
        time.sleep(0.1)
    raise AssertionError("the teacher stage never started")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_stops_a_long_teacher_stage_and_leaves_nothing(tmp_path, sig, code, word):
    out = tmp_path / "run"
    p = _start(out)
    _wait_for_teacher(out, p)
    t = time.time()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"{sig.name} did not stop the run within 30 s")
    took = time.time() - t
    assert p.returncode == code, err[-2000:]
    assert took < 6.0, f"{sig.name} took {took:.1f} s to stop the run"
    assert f"{word}: finished stages are kept" in err and "Traceback" not in err, err[-2000:]
    stages = {d.name for d in (out / "stages").iterdir()}
    assert not any(s.startswith("teacher") for s in stages), f"the interrupted stage left {stages}"
    assert not list(out.rglob("*.tmp-*")), "no temporary left behind"
    assert {"data", "calibration"} <= stages, "finished stages are kept"


def test_helper_thread_noise_after_an_interrupt_goes_to_the_log(tmp_path, capsys):
    """multiprocessing's resource sharer reports a dead DataLoader worker through sys.excepthook during the
    unwinding: after a signal that goes to the run's log, never to the terminal."""
    import threading

    from pipeline import cli

    saved = sys.excepthook, threading.excepthook, cli._RUN_DIR
    try:
        cli._RUN_DIR = tmp_path
        (tmp_path / "logs").mkdir()
        cli._quiet_helper_threads()
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            sys.excepthook(*sys.exc_info())
    finally:
        sys.excepthook, threading.excepthook, cli._RUN_DIR = saved
    assert "Connection reset by peer" in (tmp_path / "logs" / "run.log").read_text()
    assert "Traceback" not in capsys.readouterr().err
