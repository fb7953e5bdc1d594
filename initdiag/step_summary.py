"""GitHub Actions' job summary: the Markdown a command writes, appended to ``$GITHUB_STEP_SUMMARY`` too.

GitHub sets ``GITHUB_STEP_SUMMARY`` to a file per step; what a step appends there is rendered on the run's
summary page (GitHub-flavoured Markdown). initdiag appends the same ``summary.md`` (or ``compare.md``) it
writes, followed by a blank line, so several commands in one step stack. No torch import: ``compare`` uses it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ENV", "append_step_summary"]

ENV = "GITHUB_STEP_SUMMARY"


def append_step_summary(markdown: str) -> bool:
    """Append ``markdown`` to the file ``$GITHUB_STEP_SUMMARY`` names, when it is set; True when appended.

    A file that cannot be written costs one line on stderr, not the command: the report itself is written."""
    path = os.environ.get(ENV, "")
    if not path:
        return False
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown.rstrip("\n") + "\n\n")
    except OSError as exc:
        print(f"initdiag: cannot append to {ENV} ({path}): {exc.strerror or exc}", file=sys.stderr)
        return False
    return True
