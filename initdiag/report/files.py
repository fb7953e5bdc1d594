"""Writing a report's files: the output directory checked once, each requested format made and written
atomically (one path for the experiment, audit and sweep reports)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import OutputError, UsageError
from ..step_summary import append_step_summary
from ..store import atomic_write

__all__ = ["Writers", "write_files"]

Writers = Mapping[str, tuple[str, Callable[[], bytes | str]]]
"""Format name -> (file name, a function making the file's content)."""


def write_files(out_dir: Path, formats: Sequence[str], writers: Writers) -> dict[str, Path]:
    """Write each of ``formats`` into ``out_dir`` (created if needed), atomically; return their paths. The
    Markdown (``md``) is also appended to ``$GITHUB_STEP_SUMMARY`` when it is set (:mod:`initdiag.step_summary`).

    OutputError (one line) when ``out_dir`` cannot be created or written; UsageError for a format that
    ``writers`` does not know."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"the output directory {out_dir} is not writable")
    paths: dict[str, Path] = {}
    for name in formats:
        if name not in writers:
            raise UsageError(f"unknown report format '{name}'; choose from {', '.join(writers)}")
        file_name, make = writers[name]
        paths[name] = out_dir / file_name
        content = make()
        atomic_write(paths[name], content)
        if name == "md" and isinstance(content, str):
            append_step_summary(content)
    return paths
