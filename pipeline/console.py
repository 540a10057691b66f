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
