"""pipeline/logs.py: during a run, third-party output (C-level writes, logging, warnings, a library's prints)
goes to runs/<name>/logs/run.log and the terminal keeps the pipeline's own lines.

The end-to-end checks (real ONNX Runtime, OpenVINO/NNCF and LiteRT runs) are in tests/test_terminal_clean.py
and on the shared fast_run; these run the mechanism in a child process with stand-ins whose output is known."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LIBRARY = '''
import os, sys
def noisy():
    print("LIBRARY-PRINT to stdout")
    print("LIBRARY-PRINT to stderr", file=sys.stderr)
    os.write(1, b"C-LEVEL fd1\\n")
    os.write(2, b"C-LEVEL fd2\\n")
'''

SCRIPT = '''
import logging, os, sys, warnings
sys.path.insert(0, {lib!r})
from pipeline.logs import capture_run_output, third_party, log_path

with third_party():  # before the run folder exists: held, then copied into the log
    os.write(2, b"HELD-BEFORE-CAPTURE\\n")
    print("HELD-PRINT")
print("OURS before")
with capture_run_output({out!r}) as path:
    import fakelib  # a "library": its file lies under site-packages
    print("OURS stdout")
    print("OURS stderr", file=sys.stderr)
    fakelib.noisy()
    logging.getLogger("onnxruntime").warning("LOGGED by a library")
    logging.warning("LOGGED on the root logger")
    warnings.warn("WARNED by someone", UserWarning)
    with third_party():
        print("INSIDE third_party")
print("OURS after")
os.write(1, b"C-LEVEL after the run\\n")
print("LOG", path == log_path({out!r}))
'''


def _run(tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "fakelib.py").write_text(LIBRARY)
    out = tmp_path / "run"
    script = SCRIPT.format(lib=str(lib), out=str(out))
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    log = (out / "logs" / "run.log").read_text() if (out / "logs" / "run.log").exists() else ""
    return p, log


def test_library_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path):
    p, log = _run(tmp_path)
    assert p.returncode == 0, p.stderr
    # (sorted: Python's buffered stdout and a direct descriptor write interleave in any order through a pipe)
    assert sorted(p.stdout.splitlines()) == sorted(["OURS before", "OURS stdout", "OURS after",
                                                    "C-LEVEL after the run", "LOG True"])
    assert p.stderr.splitlines() == ["OURS stderr"]
    for line in ("LIBRARY-PRINT to stdout", "LIBRARY-PRINT to stderr", "C-LEVEL fd1", "C-LEVEL fd2",
                 "LOGGED by a library", "LOGGED on the root logger", "UserWarning: WARNED by someone",
                 "INSIDE third_party", "HELD-BEFORE-CAPTURE", "HELD-PRINT"):
        assert line in log, f"{line!r} not in the log:\n{log}"
    assert "OURS" not in log


def test_a_log_that_cannot_be_written_does_not_stop_the_run(tmp_path):
    from pipeline.logs import capture_run_output

    blocker = tmp_path / "run"
    blocker.mkdir()
    (blocker / "logs").write_text("a file where the log folder goes")
    with capture_run_output(blocker) as path:
        assert path is None
