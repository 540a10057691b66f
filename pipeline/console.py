"""The rich consoles every command prints through (stdout for results, stderr for errors).

Its own module so that pipeline/cli.py and pipeline/commands/* both import it without importing each other."""
from __future__ import annotations

import sys


def console():
    from rich.console import Console

    # A pipe or CI log gets a wide table instead of rich's 80-column default.
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 200)


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# --------------------------------------------------------------------------- terminals that cannot print UTF-8

# What the CLI prints beyond ASCII, and what an ASCII-only terminal shows instead; any other character (a
# class name in another script, a library's message) becomes its closest ASCII letters (NFKD: café -> cafe)
# or a \\uXXXX escape, never a UnicodeEncodeError.
ASCII_FOR = {"→": "->", "←": "<-", "↻": "(cached->rerun)", "✓": "ok", "✗": "x", "✔": "ok", "✘": "x", "…": "...",
             "—": "-", "–": "-", "×": "x", "±": "+/-", "≥": ">=", "≤": "<=", "≈": "~", "µ": "u", "°": "deg",
             "·": "*", "•": "*", "‘": "'", "’": "'", "“": '"', "”": '"', "█": "#", "░": ".", "▏": "|", "━": "-",
             "─": "-", "│": "|", "┃": "|", "\u00a0": " "}
ERRORS = "pipeline-ascii"


def _to_ascii(ch: str) -> str:
    import unicodedata

    if ch in ASCII_FOR:
        return ASCII_FOR[ch]
    plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
    return plain or ch.encode("ascii", "backslashreplace").decode()


def _handler(err: UnicodeError):
    if not isinstance(err, UnicodeEncodeError):
        raise err
    return "".join(_to_ascii(c) for c in err.object[err.start:err.end]), err.end


def can_print(stream, text: str = "→✓✗↻…") -> bool:
    enc = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(enc)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def ascii_fallback(streams=None) -> list[str]:
    """Streams whose encoding cannot print our symbols (LC_ALL=C with PYTHONUTF8=0: ASCII; latin-1 terminals)
    get the error handler that degrades every unprintable character to ASCII; returns their names."""
    import codecs

    try:
        codecs.lookup_error(ERRORS)
    except LookupError:
        codecs.register_error(ERRORS, _handler)
    done = []
    for name in streams or ("stdout", "stderr"):
        s = getattr(sys, name, None)
        if s is None or can_print(s):
            continue
        try:
            s.reconfigure(errors=ERRORS)
            done.append(name)
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture): left as it is
            continue
    return done
