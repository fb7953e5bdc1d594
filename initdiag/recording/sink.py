"""A recording's series streamed to Parquet as it goes: every recorded row on disk, a bounded view read back.

A :class:`ParquetSink` is a directory of numbered parts (``part-00000.parquet``, ...), one written each time the
recorder turns its buffered rows into statistics (every :data:`~initdiag.recording.collect.HOST_ROWS_BYTES` of
moment rows, and at the end), each under a temporary name first and renamed when complete: what a run that
stops halfway wrote stays readable (``pandas.read_parquet(directory)`` reads every part). Memory holds only the
rows not yet written, whatever the run's length; :meth:`ParquetSink.read` gives the series back, thinned to a
budget of training steps the way a bounded recording keeps them (:func:`~.thinning.thinned_steps`), so the
report's size stays bounded too while the directory keeps every step.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..series import CATEGORICAL, FRAME_COLUMNS, column_dtype, empty_frame
from ..vocab import Phase
from .thinning import thinned_steps

__all__ = ["ParquetSink", "read_series"]


def _pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the test extras install it
        raise ImportError("streaming a series to Parquet needs pyarrow: pip install 'initdiag[parquet]'") from exc


class ParquetSink:
    """Numbered Parquet parts of one recording's rows in ``directory`` (created; it must hold no parts)."""

    def __init__(self, directory: str | Path) -> None:
        _pyarrow()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if any(self.directory.glob("part-*.parquet")):
            raise FileExistsError(f"{self.directory} already holds a recorded series (part-*.parquet): stream each "
                                  "recording into a directory of its own")
        self.parts = 0
        self.steps: set[int] = set()
        """The training steps written so far."""

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (columns :data:`~initdiag.series.FRAME_COLUMNS`) as the next part."""
        if frame.empty:
            return
        path = self.directory / f"part-{self.parts:05d}.parquet"
        partial = path.with_suffix(".partial")
        frame.to_parquet(partial, index=False, compression="zstd")
        os.replace(partial, path)
        self.parts += 1
        train = (frame["phase"] == Phase.TRAIN).to_numpy()
        self.steps.update(np.unique(frame["step"].to_numpy()[train]).tolist())

    def read(self, layers: list[str], max_steps: int | None) -> pd.DataFrame:
        """The rows written, of the training steps :func:`thinned_steps` keeps within ``max_steps`` (None: all)
        and every probe row; ``layers`` orders the layer categories (the recorder's order)."""
        return read_series(self.directory, max_steps, layers, sorted(self.steps))


def read_series(directory: str | Path, max_steps: int | None = None, layers: list[str] | None = None,
                steps: list[int] | None = None) -> pd.DataFrame:
    """A streamed series read back from ``directory`` (:class:`ParquetSink`'s parts), thinned to ``max_steps``
    training steps (:func:`thinned_steps`) with every probe row, as the recorder's frame: the columns and
    dtypes of :data:`~initdiag.series.FRAME_COLUMNS`, layers ordered as ``layers`` (else as first written).
    ``steps``: the training steps written, when known (else read from the parts' step column)."""
    _pyarrow()
    import pyarrow.dataset as ds

    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        return empty_frame()
    dataset = ds.dataset([str(p) for p in parts], format="parquet")
    where = None
    if max_steps is not None:
        if steps is None:
            table = dataset.to_table(columns=["step", "phase"])
            train = np.asarray(table.column("phase").to_pandas().astype(str) == Phase.TRAIN)
            steps = np.unique(table.column("step").to_numpy()[train]).tolist()
        kept = thinned_steps(steps, max_steps)
        if len(kept) < len(steps):
            where = (ds.field("phase") != Phase.TRAIN) | ds.field("step").isin(kept.tolist())
    frame = dataset.to_table(filter=where).to_pandas()
    order = layers if layers is not None else list(dict.fromkeys(frame["layer"].astype(str)))
    out = {}
    for column in FRAME_COLUMNS:
        values = frame[column]
        if column == "layer":
            out[column] = pd.Categorical(values.astype(str), categories=order)
        elif column in CATEGORICAL:
            out[column] = pd.Categorical(values.astype(str))
        else:
            out[column] = values.to_numpy(column_dtype(column))
    return pd.DataFrame(out, columns=list(FRAME_COLUMNS))
