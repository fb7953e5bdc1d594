"""The tidy frame as W&B metrics of the active run, and the verdicts as a ``wandb.Table``.

Metric names are the TensorBoard tags (:mod:`initdiag.integrations.tensorboard`):
``initdiag/<kind>/<stat>/<layer>`` for training rows, ``...@init`` / ``...@final`` for the probes. W&B wants
the ``step=`` of a run to increase and the user's own training may log with its own steps, so none is
passed: every ``initdiag/*`` metric is plotted against its own x-axis, ``initdiag/step`` (the frame's
``step``; 0 for the init probe), logged in the same row (``define_metric("initdiag/*",
step_metric="initdiag/step")``). Each initdiag step is one ``run.log`` call, one history row, so W&B's own
``_step`` advances by one per row: a training loop that passes ``step=`` itself should log initdiag's rows
after it has finished (:func:`log_wandb`), not while it runs.

Needs the ``wandb`` package (``pip install 'initdiag[wandb]'``), imported only when used.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pandas as pd

from ..checks.verdict import Verdict
from ..errors import UsageError
from ._series import PREFIX, STEP_KEY, VERDICT_COLUMNS, VERDICTS_TAG, SeriesCursor, verdict_rows

__all__ = ["WandbSink", "active_run", "log_wandb"]

_INSTALL = "logging to W&B needs the wandb package: pip install 'initdiag[wandb]'"


def _wandb() -> ModuleType:
    """The ``wandb`` module, or a one-line UsageError naming the extra."""
    try:
        import wandb
    except ImportError:
        raise UsageError(_INSTALL) from None
    return wandb


def active_run() -> Any:
    """The active W&B run (``wandb.run``), or None."""
    return _wandb().run


class WandbSink:
    """Logs a growing tidy frame to a W&B run, each row once (the incremental form for training loops).

    Args:
        run: the W&B run; None: the active one (``wandb.run``); without one, a UsageError.

    Each :meth:`log` call logs the rows of its frame that are new, by the last step logged per series, so
    the whole frame so far (``recorder.frame()``) can be passed every time.
    """

    def __init__(self, run: Any = None) -> None:
        self._wandb = _wandb()
        self.run: Any = run if run is not None else self._wandb.run
        """The W&B run logged to."""
        if self.run is None:
            raise UsageError("no active W&B run: call wandb.init() first, or pass run=")
        self.run.define_metric(STEP_KEY)
        self.run.define_metric(f"{PREFIX}/*", step_metric=STEP_KEY)
        self._cursor = SeriesCursor()

    def log(self, frame: pd.DataFrame) -> int:
        """Log the rows of ``frame`` (one run) not logged before, one history row per step; returns how
        many values were logged."""
        batches = self._cursor.take(frame)
        for batch in batches:
            row: dict[str, float] = dict(zip(batch.tags, batch.values, strict=True))
            row[STEP_KEY] = batch.step
            self.run.log(row)
        return sum(len(b.values) for b in batches)

    def text(self, verdicts: Sequence[Verdict]) -> None:
        """The verdicts as a ``wandb.Table`` (columns check, signal, status, phase, layers, message), logged
        as ``initdiag/verdicts`` at the last step logged (or 0)."""
        table = self._wandb.Table(columns=list(VERDICT_COLUMNS), data=verdict_rows(verdicts))
        self.run.log({VERDICTS_TAG: table, STEP_KEY: self._cursor.last_step or 0})

    def close(self) -> None:
        """Nothing to release: the run stays open (``run.finish()`` is the caller's)."""


def log_wandb(frame: pd.DataFrame, verdicts: Sequence[Verdict] = (), *, run: Any = None) -> bool:
    """Log one run's tidy frame (and its verdicts) to a W&B run; returns False, logging nothing, when
    ``run`` is None and no run is active.

    Metric names and the ``initdiag/step`` x-axis as in the module docstring. A frame of several runs is
    refused: log each, ``frame[frame.run == name]``, to its own W&B run.
    """
    wandb = _wandb()
    if run is None and wandb.run is None:
        return False
    sink = WandbSink(run)
    sink.log(frame)
    if verdicts:
        sink.text(verdicts)
    return True
