"""Subcommands beyond `run`: bench, compare, verify, report, import-results (registered here)."""
from __future__ import annotations


def add_commands(sub) -> None:
    return None
