"""Outputs follow the user's umask like every Unix tool: temp-then-rename writes (mkstemp/mkdtemp make 0600/0700)
end with the mode open()/mkdir() would have given them."""
from __future__ import annotations

import os
import stat
import tarfile

import pytest

from pipeline.artifacts import atomic_dir, atomic_write_json, current_umask


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        f = atomic_write_json(tmp_path / f"r{mask:o}.json", {"a": 1})
        with atomic_dir(tmp_path / f"d{mask:o}") as d:
            (d / "x").write_text("x")
        assert current_umask() == mask  # reading the umask leaves it as it was
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / f"d{mask:o}").stat().st_mode) == 0o777 & ~mask


def test_a_run_folder_is_readable_as_the_umask_allows(fast_run):
    mask = current_umask()  # the CLI child inherited this process's umask
    for p in (fast_run / "run.json", fast_run / "report.html", fast_run / "report.md"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p
    stage_dirs = [d for d in (fast_run / "stages").glob("*/*") if d.is_dir()]
    assert stage_dirs and all(stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask for d in stage_dirs)
    tarball = next((fast_run / "stages").glob("bundle-onnxruntime/*/*.tar.gz"))
    assert stat.S_IMODE(tarball.stat().st_mode) == 0o666 & ~mask
    with tarfile.open(tarball) as tar:  # the bundle's own files are readable once extracted
        modes = {m.name: m.mode for m in tar.getmembers() if m.isfile()}
    assert modes and all(m & 0o444 == 0o444 & ~mask for m in modes.values()), modes
