"""Terminals that cannot print UTF-8 (issue 18 #2): LC_ALL=C with PYTHONUTF8=0 gives Python an ASCII stdout; the
run died printing its first "->" line. Every character the CLI prints degrades to ASCII (our symbols to their
ASCII spelling, letters to their base letter, anything else to a \\uXXXX escape), never a UnicodeEncodeError."""
from __future__ import annotations

import io
import os
import random
import sys

from conftest import cli_env, fast_args, run_cli


def test_a_whole_run_on_an_ascii_terminal(tmp_path):
    env = {k: v for k, v in cli_env().items() if k not in ("PYTHONIOENCODING", "LANG", "LC_CTYPE")}
    env.update(LC_ALL="C", PYTHONUTF8="0")
    env.pop("PIPELINE_QUIET", None)  # the progress lines too
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *fast_args(), env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "UnicodeEncodeError" not in p.stdout + p.stderr
    assert all(ord(c) < 128 for c in p.stdout + p.stderr), "only ASCII on an ASCII terminal"
    assert "->" in p.stdout + p.stderr
    # a second, cached run prints its cached-stage lines too; `report` and an error line likewise
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), *fast_args(), env=env)
    assert p.returncode == 0 and all(ord(c) < 128 for c in p.stdout + p.stderr), p.stderr[-1000:]
    p = run_cli("run", "--target", "onnxruntime", "--set", "data.path=/nonexistent/caf\u00e9", env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr and all(ord(c) < 128 for c in p.stderr), p.stderr


def test_any_non_ascii_character_degrades(monkeypatch):
    """Not only the symbols we know: generated text from many scripts, through a real ASCII TextIOWrapper."""
    from pipeline.console import ASCII_FOR, ascii_fallback

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", stream)
    assert ascii_fallback(["stdout"]) == ["stdout"]
    rng = random.Random(0)
    ranges = [(0xA0, 0x250), (0x370, 0x3FF), (0x400, 0x4FF), (0x2000, 0x2BFF), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
              (0x1F300, 0x1F64F)]
    text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(5000)) + "".join(ASCII_FOR)
    print(text, "caf\u00e9 \u2192 \u2713", file=sys.stdout)
    got = raw.getvalue().decode("ascii")
    assert "cafe -> ok" in got
    for sym, plain in ASCII_FOR.items():
        assert plain in got
    # a UTF-8 stream is left alone
    utf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", utf)
    assert ascii_fallback(["stdout"]) == []
