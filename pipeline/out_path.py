"""Check an output folder (--out) before any work: an existing file, a path inside a file, or a folder that
cannot be written is exit 2 with the fix, not a traceback minutes later. Nothing is created here, so an
error found later (recipe, target) still leaves no run folder."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ConfigError


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is an existing file, not a folder",
                          hint=f"give {flag} a folder path (it is created when missing), or move the file away")
    probe = p
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if os.path.islink(probe) and not probe.exists():
        raise ConfigError(f"{flag} {p}: {probe} is a broken symbolic link",
                          hint=f"remove the link or give {flag} another folder")
    if not probe.is_dir():
        raise ConfigError(f"{flag} {p} lies inside {probe}, which is a file, not a folder",
                          hint=f"give {flag} a path under a folder (e.g. {probe.parent / (probe.name + '_runs')})")
    # access() also answers EROFS (a read-only mount) for root, whom permission bits do not stop.
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "" if probe == p else f" (its nearest existing folder {probe} is not writable)"
        raise ConfigError(f"{flag} {p} is not writable{what}",
                          hint=f"give {flag} a folder you can write to, or fix the permissions of {probe}")
    return p
