"""Errors initdiag raises on purpose: each carries one clear line for the user and an exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DataError",
    "InitDiagError",
    "Interrupted",
    "ModelLoadError",
    "OutputError",
    "UsageError",
    "did_you_mean",
]


class InitDiagError(Exception):
    """Base class: a known failure that the CLI prints as one line (no traceback)."""

    exit_code: int = 2


class UsageError(InitDiagError):
    """Bad command-line or API input: an unknown name, a malformed or out-of-range number."""


class DataError(InitDiagError):
    """The data set is missing, truncated or malformed."""


class ModelLoadError(InitDiagError):
    """A user's model reference could not be imported, built or run."""


class OutputError(InitDiagError):
    """The output location cannot be written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (exit code 130) or SIGTERM (143) during a run; raised so that cleanup code runs."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__("interrupted by " + ("SIGTERM" if exit_code == 143 else "Ctrl-C"))
        self.exit_code = exit_code


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
