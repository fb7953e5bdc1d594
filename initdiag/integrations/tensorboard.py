"""The tidy frame as TensorBoard scalars, and the verdicts as a text table.

Tags (one scalar series per layer, kind and statistic; :mod:`initdiag.integrations._series`):

* ``initdiag/<kind>/<stat>/<layer>``: training rows, at global step = the frame's ``step``;
* ``initdiag/<kind>/<stat>/<layer>@init`` / ``@final``: the probes before and after training, at step 0
  (the init probe's step -1 raised to 0) and at the last training step;
* ``initdiag/verdicts``: the verdicts as a Markdown table (TensorBoard's Text tab), at the last step.

Needs the ``tensorboard`` package (``pip install 'initdiag[tensorboard]'``), imported only when a sink is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

from ..checks.verdict import Verdict
from ..errors import UsageError
from ..recording import Recorder
from ._series import VERDICT_COLUMNS, VERDICTS_TAG, SeriesCursor, StepValues, verdict_rows

__all__ = ["TensorBoardSink", "verdicts_markdown", "write_tensorboard"]

_INSTALL = "writing TensorBoard logs needs the tensorboard package: pip install 'initdiag[tensorboard]'"


def _tensorboard() -> tuple[Any, Any]:
    """``SummaryWriter`` and the ``Summary`` proto, or a one-line UsageError naming the extra."""
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(_INSTALL) from None
    return SummaryWriter, Summary


def verdicts_markdown(verdicts: Sequence[Verdict]) -> str:
    """The verdicts as a Markdown table with the columns check, signal, status, phase, layers, message."""
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| " + " | ".join(VERDICT_COLUMNS) + " |", "|" + "---|" * len(VERDICT_COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in verdict_rows(verdicts)]
    return "\n".join(lines)


class TensorBoardSink:
    """Writes a growing tidy frame to TensorBoard, each row once (the incremental form for training loops).

    Args:
        log_dir: the directory for the event files (made if missing); or
        writer: an open ``SummaryWriter`` to write through instead (e.g. a Lightning logger's
            ``experiment``); it is flushed, not closed, by :meth:`close`.

    Each :meth:`log` call writes the rows of its frame that are new, by the last step written per series,
    so the whole frame so far (``recorder.frame()``) can be passed every time. With torch's
    ``SummaryWriter`` a step's values go out as one event (far fewer bytes to checksum than one event per
    value); any other writer gets ``add_scalar`` per value.
    """

    def __init__(self, log_dir: str | Path | None = None, *, writer: Any = None) -> None:
        if (log_dir is None) == (writer is None):
            raise UsageError("TensorBoardSink needs a log_dir or an open writer (one of them, not both)")
        summary_writer, self._summary = _tensorboard()
        self._owned = writer is None
        self.writer: Any = summary_writer(log_dir=str(log_dir)) if writer is None else writer
        """The ``SummaryWriter`` written through."""
        self._batched = isinstance(self.writer, summary_writer)
        self._cursor = SeriesCursor()

    @property
    def log_dir(self) -> Path:
        """Where the event files go."""
        return Path(self.writer.get_logdir())

    def log(self, frame: pd.DataFrame) -> int:
        """Write the rows of ``frame`` (one run) not written before; returns how many values were written."""
        batches = self._cursor.take(frame)
        file_writer = getattr(self.writer, "file_writer", None) if self._batched else None
        for batch in batches:
            if file_writer is not None:
                file_writer.add_summary(self._event(batch), batch.step)
            else:
                for name, value in zip(batch.tags, batch.values, strict=True):
                    self.writer.add_scalar(name, value, batch.step)
        return sum(len(b.values) for b in batches)

    def _event(self, batch: StepValues) -> Any:
        value = self._summary.Value
        return self._summary(value=[value(tag=t, simple_value=v) for t, v in zip(batch.tags, batch.values,
                                                                                    strict=True)])

    def text(self, verdicts: Sequence[Verdict]) -> None:
        """The verdicts as a Markdown table, tag ``initdiag/verdicts``, at the last step written (or 0)."""
        self.writer.add_text(VERDICTS_TAG, verdicts_markdown(verdicts), self._cursor.last_step or 0)

    def close(self) -> None:
        """Flush the events to disk; close the writer if this sink opened it."""
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_tensorboard(frame: pd.DataFrame | Recorder, log_dir: str | Path | None, verdicts: Sequence[Verdict] = (),
                      *, writer: Any = None) -> Path:
    """Write one run's tidy frame, or what a :class:`~initdiag.Recorder` recorded (its ``frame()``), and its
    verdicts as TensorBoard event files; returns the log dir.

    Tags as in the module docstring; ``log_dir=None`` with ``writer=`` writes through an open
    ``SummaryWriter``. A frame of several runs (a sweep, an audit) is refused: give each run its own log
    dir, e.g. ``log_dir / name`` for ``frame[frame.run == name]``, and TensorBoard shows them side by side.
    """
    with TensorBoardSink(log_dir, writer=writer) as sink:
        sink.log(frame.frame() if isinstance(frame, Recorder) else frame)
        if verdicts:
            sink.text(verdicts)
    return sink.log_dir
