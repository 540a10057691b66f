"""Errors the CLI turns into one clear line and an exit code.

Exit codes (docs/ERRORS.md): 0 done, 1 a gate or regression failed, 2 bad input or config,
3 a dependency for a requested target is missing, 4 an internal error (pipeline/cli.py: one line and
the path of the log holding the traceback).
"""
from __future__ import annotations


class PipelineError(Exception):
    """An error with a message meant for the user, a hint how to fix it and an exit code."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message + (f"\n  fix: {self.hint}" if self.hint else "")


class ConfigError(PipelineError):
    """Bad recipe, option or argument."""


class DataError(PipelineError):
    """Bad dataset, image or array."""


class CheckpointError(PipelineError):
    """Bad, unsafe or mismatching checkpoint or model file."""


class ModelError(PipelineError):
    """The user's model cannot be trained as written (e.g. an in-place op autograd cannot differentiate)."""


class BundleError(PipelineError):
    """A bundle that fails its checksums, its layout or its safe extraction."""


class GateError(PipelineError):
    """A quality gate failed (parity, accuracy budget, regression)."""

    exit_code = 1


class MissingDependency(PipelineError):
    """An optional dependency (a backend's extra) is not installed."""

    exit_code = 3
