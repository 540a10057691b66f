"""Third-party output goes to the run's log file; the terminal shows the pipeline's own lines.

During `run`, ``capture_run_output(out)`` sends into ``runs/<name>/logs/run.log``:
- C-level writes to file descriptors 1 and 2 (absl/oneDNN/TensorFlow banners, XNNPACK, MLIR, child processes
  whose output nobody reads): the descriptors point at the log for the whole run;
- Python logging (ONNX Runtime's pre-processing hint, torchao's library-load failures, nncf, torch) through
  a handler on the root logger, and Python warnings (``logging.captureWarnings``);
- Python-level writes to ``sys.stdout``/``sys.stderr``: these become routing streams that send a write to the
  terminal when the code that made it is ours (pipeline, targets, calibration, benchmarks, a user's model
  file), and to the log when it is a library's (NNCF's and LiteRT-Torch's rich progress, a library's print).
  Presentation layers (rich, tqdm) and the standard library are looked through to find who wrote.

``third_party()`` sends everything inside it to the log; before any capture (the backend imports that pick
the targets run before the run folder may be created) it holds the output in a temporary file that the next
capture copies into its log. The log folder is shared with the CLI's internal-error log (``log_path``).
Why by hand: neither logging nor contextlib.redirect_stdout reaches writes that C code makes to the
descriptors, and a descriptor-level redirect alone would hide the pipeline's own lines too.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

LOG_DIR = "logs"
LOG_FILE = "run.log"
OUR_PACKAGES = frozenset({"pipeline", "targets", "calibration", "benchmarks", "__main__"})
LOOKED_THROUGH = frozenset({"rich", "tqdm", "colorama", "_distutils_hack"}) | frozenset(sys.stdlib_module_names)


def log_path(out: Path | str) -> Path:
    """The run's log file (``<run folder>/logs/run.log``)."""
    return Path(out) / LOG_DIR / LOG_FILE


def _flush_c_stdio() -> None:
    """fflush(NULL): what C libraries buffered goes where the descriptors point now, not later."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def _written_by_a_library() -> bool:
    """Whether the code writing now (outside the routing stream) is a third-party library's."""
    f: Any = sys._getframe(2)
    while f is not None:
        name = f.f_globals.get("__name__") or ""
        top = name.partition(".")[0]
        if top in OUR_PACKAGES:
            return False
        if top not in LOOKED_THROUGH:
            path = f.f_code.co_filename
            return "site-packages" in path or "dist-packages" in path  # else a user's own file
        f = f.f_back
    # Nothing but presentation and stdlib frames: a refresh thread. Ours never use rich's live display.
    return type(threading.current_thread()).__module__.startswith("rich")


class _RoutingStream(io.TextIOBase):
    """sys.stdout/sys.stderr during a capture: our writes to the terminal, a library's to the log."""

    def __init__(self, terminal: Any, log: Any):
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        return (self.log if _written_by_a_library() else self.terminal).write(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.terminal, "errors", None)

    @property
    def buffer(self) -> Any:
        return self.terminal.buffer


def _point_handlers(old: Any, new: Any) -> None:
    """Logging handlers writing to stream ``old`` write to ``new`` from now on."""
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and h.stream is old:
                h.setStream(new)


class _Capture:
    def __init__(self, path: Path):
        self.path = path
        self.log_fd = -1
        self.log: Any = None  # text stream appending to the log
        self.saved: dict[int, int] = {}  # 1/2 -> copy of the terminal's descriptor
        self.swapped: dict[str, tuple[Any, Any]] = {}  # "stdout" -> (old stream, routing stream)
        self.handler: logging.Handler | None = None
        self.root_level = logging.WARNING

    def open_log(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.log = open(os.dup(self.log_fd), "a", buffering=1, encoding="utf-8", errors="replace")

    def start(self) -> None:
        global _pending
        self.log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n")
        if _pending is not None:  # output held before the run folder existed
            _pending.seek(0)
            self.log.write(_pending.read().decode("utf-8", errors="replace"))
            _pending.close()
            _pending = None
        _flush_c_stdio()
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name)
            with contextlib.suppress(Exception):
                stream.flush()
            try:
                on_fd = stream.fileno() == fd
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                on_fd = False  # e.g. pytest's capsys: its writes never reach the descriptor
            try:
                self.saved[fd] = os.dup(fd)
            except OSError:
                continue  # no such descriptor
            terminal = stream
            if on_fd:
                terminal = open(os.dup(self.saved[fd]), "w", buffering=1,
                                encoding=getattr(stream, "encoding", None) or "utf-8",
                                errors=getattr(stream, "errors", None) or "replace")
            routing = _RoutingStream(terminal, self.log)
            self.swapped[name] = (stream, routing)
            setattr(sys, name, routing)
            os.dup2(self.log_fd, fd)
        self.handler = logging.StreamHandler(self.log)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(self.handler)
        self.root_level = root.level
        root.setLevel(min(root.level or logging.WARNING, logging.INFO))
        logging.captureWarnings(True)

    def stop(self) -> None:
        _flush_c_stdio()
        logging.captureWarnings(False)
        root = logging.getLogger()
        if self.handler is not None:
            root.removeHandler(self.handler)
        root.setLevel(self.root_level)
        for name, (old, routing) in self.swapped.items():
            with contextlib.suppress(Exception):
                routing.flush()
            setattr(sys, name, old)
            _point_handlers(routing, old)  # handlers made during the run outlive it
            if routing.terminal is not old:
                with contextlib.suppress(Exception):
                    routing.terminal.close()
        for fd, copy in self.saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        _point_handlers(self.log, sys.stderr)
        self.log.close()
        os.close(self.log_fd)


_active: _Capture | None = None
_pending: Any = None  # temporary file holding output made outside a capture


@contextlib.contextmanager
def capture_run_output(out: Path | str) -> Iterator[Path | None]:
    """Third-party output of the run goes to ``log_path(out)``; yields that path (None when it cannot be
    written: the run goes on without a log rather than failing on it)."""
    global _active
    if _active is not None:  # a run inside a run: the outer capture already routes everything
        yield _active.path
        return
    cap = _Capture(log_path(out))
    try:
        cap.open_log()
    except OSError:
        yield None
        return
    cap.start()
    _active = cap
    try:
        yield cap.path
    finally:
        _active = None
        cap.stop()


@contextlib.contextmanager
def third_party() -> Iterator[None]:
    """Everything written inside goes to the log: C-level and Python-level, with a capture or without one
    (then into a temporary file that the next capture copies into its log)."""
    global _pending
    old = sys.stdout, sys.stderr
    cap = _active
    if cap is not None:
        sys.stdout = sys.stderr = cap.log
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old
            _point_handlers(cap.log, old[1])  # a library imported here keeps writing through the router
        return
    if _pending is None:
        _pending = tempfile.TemporaryFile()
    held = open(os.dup(_pending.fileno()), "a", buffering=1, encoding="utf-8", errors="replace")
    for s in old:
        with contextlib.suppress(Exception):
            s.flush()
    _flush_c_stdio()
    saved: dict[int, int] = {}
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            copy = os.dup(fd)
            os.dup2(held.fileno(), fd)
            saved[fd] = copy
    sys.stdout = sys.stderr = held
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old
        _flush_c_stdio()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        _point_handlers(held, old[1])  # e.g. nncf's handler, made at import: it writes to stderr
        held.close()
