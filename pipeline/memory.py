"""Peak resident memory of this process per stage (Linux): VmHWM, reset before each stage.

Writing "5" to /proc/self/clear_refs resets the high-water mark to the current RSS (Linux 4.0+), so each
stage's figure is its own peak, not the run's so far. File-backed pages of memory-mapped data count, as in
any RSS. Elsewhere (or when the reset is refused) the figure is None, never a guess.
The reset also resets what the kernel reports as this process's max RSS (ru_maxrss, `/usr/bin/time -v`): for
a whole run's peak, read run.json's `peak_rss_mb` (the largest stage peak), not an outside timer.
"""
from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:  # not Linux, or not permitted: no per-stage peak (None below)
        return False


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS, RssFile, ...) in MB; None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # not Linux
        return None
    return None


def peak_rss_mb() -> float | None:
    return status_mb("VmHWM")
