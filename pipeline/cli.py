"""Command line: `python -m pipeline run|targets|init|...`.

Exit codes: 0 done, 1 a gate or regression failed, 2 bad input or config, 3 a missing dependency,
4 an internal error (one line, the path of its log with the traceback). Errors print one clear line
(and a fix); `--debug` (any subcommand) shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.console import console as _console, err_console as _err_console


def cmd_run(args) -> int:
    from pipeline.orchestrate import run_pipeline
    from pipeline.recipe import load_recipe, recipe_to_yaml

    sets = list(args.set or []) + ([f"distill.nproc={args.nproc}"] if getattr(args, "nproc", None) is not None else [])
    recipe = load_recipe(args.config, sets, args.target or None)
    if args.print_config:
        print(recipe_to_yaml(recipe, explain=args.explain), end="")
        return 0
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    from pipeline.out_path import check_out_dir

    check_out_dir(out, "--out" if args.out else "the run folder")
    global _RUN_DIR
    _RUN_DIR = out  # where an internal error's log goes (runs/<name>/logs/)
    console = _console()
    console.print(f"[bold]run[/bold] {recipe.name} -> {out}  targets: {', '.join(recipe.targets)}")
    result = run_pipeline(recipe, out, args.profiles or [], console=console)
    from pipeline.summary import print_summary

    print_summary(result.summary, console)
    console.print(f"run.json: {out / 'run.json'}")
    return 1 if result.failed_targets else 0


def cmd_targets(args) -> int:
    from rich.table import Table

    from targets.base import get_backend
    from targets.profiles import load_profiles

    table = Table(title="device profiles")
    for col in ("profile", "aliases", "backend", "arch", "precision", "threads", "runnable here", "install"):
        table.add_column(col)
    for p in load_profiles(args.profiles or []).values():
        backend = get_backend(p.backend)
        ok, why = backend.availability()
        table.add_row(p.name, ", ".join(p.aliases), p.backend, p.cpu_arch, p.default_precision, str(p.threads),
                      ("yes: " if ok else "no: ") + why, "" if ok else backend.install_hint())
    _console().print(table)
    return 0


def cmd_init(args) -> int:
    from pipeline.artifacts import atomic_write_text
    from pipeline.errors import ConfigError
    from pipeline.recipe import Recipe, recipe_to_yaml

    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists", hint="choose another path or pass --force")
    atomic_write_text(path, "# Edge pipeline recipe: every field shown with its default.\n" + recipe_to_yaml(Recipe()))
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description="Distill, prune, quantize, compile and "
                                 "benchmark a PyTorch model for edge targets.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="teacher -> distill -> prune -> export -> per target quantize/compile/"
                                     "evaluate/benchmark/bundle")
    run.add_argument("--config", help="recipe YAML (default: the built-in recipe)")
    run.add_argument("--target", action="append", help="profile name or alias, repeatable, or 'all'")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. distill.epochs=5")
    run.add_argument("--out", help="run folder (default runs/<recipe name>)")
    run.add_argument("--profiles", action="append", help="extra device profile file or folder")
    run.add_argument("--nproc", type=int, metavar="N", help="distill with N DDP processes under torchrun "
                     "(sets distill.nproc)")
    run.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    run.add_argument("--explain", action="store_true", help="with --print-config: each field's description as a "
                     "comment above it")
    run.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(fn=cmd_run)

    tg = sub.add_parser("targets", help="list device profiles and what runs on this host")
    tg.add_argument("--profiles", action="append", help="extra device profile file or folder")
    tg.set_defaults(fn=cmd_targets)

    init = sub.add_parser("init", help="write a starter recipe with every field and its default")
    init.add_argument("path", nargs="?", default="recipe.yaml")
    init.add_argument("--force", action="store_true")
    init.set_defaults(fn=cmd_init)

    from pipeline import cli_tools

    cli_tools.add_commands(sub)
    from pipeline.commands import profile as profile_cmd

    profile_cmd.add_parser(sub)
    for sp in sub.choices.values():  # `--debug` is accepted after any subcommand too
        if "--debug" not in sp._option_string_actions:
            sp.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


_RUN_DIR: Path | None = None
LOGS_DIR = "logs"  # runs/<name>/logs/: shared with the third-party log capture


def write_error_log(exc: BaseException, argv: list[str]) -> Path:
    """The full traceback of an unexpected error, in the run folder's logs/ (or a temp folder when there is
    no run folder yet: an error before any work must not create one)."""
    import tempfile
    import time
    import traceback

    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = (f"command: python -m pipeline {' '.join(argv)}\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    folder = None
    if _RUN_DIR is not None and _RUN_DIR.is_dir():
        folder = _RUN_DIR / LOGS_DIR
    for candidate in ([folder] if folder else []) + [None]:
        try:
            if candidate is None:
                candidate = Path(tempfile.mkdtemp(prefix="pipeline-error-"))
            candidate.mkdir(parents=True, exist_ok=True)
            path = candidate / f"error-{stamp}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:  # an unwritable run folder: fall back to a temp folder
            continue
    raise OSError("no folder to write the error log to")


def _internal_error(exc: BaseException, argv: list[str]) -> int:
    """Exit 4: one line naming the error, where its log is, and how to see the traceback."""
    from rich.markup import escape

    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    try:
        where = f"full log: {write_error_log(exc, argv)}"
    except OSError as e:  # nowhere to write: still one line
        where = f"the log could not be written ({e})"
    _err_console().print(f"[red]internal error:[/red] {escape(type(exc).__name__)}: {escape(first)}", soft_wrap=True)
    _err_console().print(f"  {where}; rerun with --debug for the traceback", markup=False, soft_wrap=True)
    return 4


def _map_environment_error(e: BaseException):
    """A full disk (ENOSPC) -> exit 2; a module that cannot be imported -> exit 3. Else None."""
    import errno

    from pipeline.errors import MissingDependency, PipelineError

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return PipelineError(f"no space left on the device (the disk is full): {e}",
                             hint="free disk space (or choose another --out) and run the same command again; "
                                  "finished stages are reused")
    if isinstance(e, ImportError):
        name = getattr(e, "name", None) or "a module"
        return MissingDependency(f"{name} could not be imported: {e}",
                                 hint="install the extra of the target that needs it, e.g. "
                                      "pip install -e '.[openvino]' (`python -m pipeline targets` lists them)")
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a CI timeout, systemd): unwound like Ctrl-C, so the stage being written is removed
    (pipeline.artifacts.atomic_dir) instead of being left half-written by the default kill."""


def _terminate_like_interrupt() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        _quiet_helper_threads()  # before the unwinding stops a DataLoader worker (see _quiet_helper_threads)
        raise Terminated()

    def interrupt(signum, frame):
        _quiet_helper_threads()
        raise KeyboardInterrupt()

    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, interrupt)
    except (ValueError, OSError):  # not settable here (an embedding interpreter): keep the default
        pass


def _quiet_helper_threads() -> None:
    """After Ctrl-C/SIGTERM the helper threads of libraries die too: multiprocessing's resource sharer, whose
    DataLoader worker just went, reports a ConnectionResetError through sys.excepthook. That is third-party
    noise: it goes to the run's log (when the command knows its folder), not the terminal."""
    import threading
    import traceback

    def to_log(exc_type, exc, tb) -> None:
        if _RUN_DIR is None:
            return
        from pipeline.logs import log_path

        try:
            with open(log_path(_RUN_DIR), "a", encoding="utf-8") as f:
                traceback.print_exception(exc_type, exc, tb, file=f)
        except OSError:
            pass

    sys.excepthook = to_log
    threading.excepthook = lambda a: to_log(a.exc_type, a.exc_value, a.exc_traceback)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import PipelineError

    global _RUN_DIR
    _RUN_DIR = None  # set by a command once it knows its run folder
    from pipeline.console import ascii_fallback

    ascii_fallback()  # an ASCII-only (or latin-1) terminal: our symbols degrade to ASCII, never a crash
    _terminate_like_interrupt()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PIPELINE_DEBUG") == "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            return int(args.fn(args) or 0)
        except PipelineError:
            raise
        except SystemExit as e:  # code below us (a user's model, a library) tried to end the run
            if debug:
                raise
            return _internal_error(RuntimeError(f"sys.exit({e.code!r}) was called inside the command"), argv)
        except Exception as e:  # last-resort mapping of environment failures to clear errors
            mapped = _map_environment_error(e)
            if debug:
                raise
            if mapped is None:
                return _internal_error(e, argv)  # exit 4: one line + the log's path
            raise mapped from None
    except PipelineError as e:
        if debug:
            raise
        from rich.markup import escape

        _err_console().print(f"[red]error:[/red] {escape(e.message)}", soft_wrap=True)
        if e.hint:
            _err_console().print(f"  fix: {e.hint}", markup=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt as e:
        _quiet_helper_threads()
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        _err_console().print(f"{what}: finished stages are kept; run the same command again to resume")
        return 143 if isinstance(e, Terminated) else 130


def entry() -> None:
    sys.exit(main())
