"""The tidy frame every recorded statistic goes into, and the few ways it is read back.

One row per (run, step, layer, kind, stat): columns :data:`FRAME_COLUMNS`, ``value`` float64. The
recorder builds it (:meth:`initdiag.Recorder.frame`); the checks, the report and the store read it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .vocab import Phase, Stat

__all__ = ["FRAME_COLUMNS", "column_dtype", "concat", "empty_frame", "first_step_values"]

FRAME_COLUMNS: tuple[str, ...] = (
    "run", "initializer", "seed", "epoch", "step", "phase", "layer", "depth", "module", "kind", "stat",
    "value",
)
CATEGORICAL: frozenset[str] = frozenset({"run", "initializer", "phase", "layer", "module", "kind", "stat"})
"""Columns held as pandas categoricals (``layer`` ordered by the first forward pass)."""
INTEGER: frozenset[str] = frozenset({"seed", "epoch", "step", "depth"})


def column_dtype(column: str) -> str:
    """The dtype of a frame column: float64 values, int64 counters, object (categorical) labels."""
    if column == "value":
        return "float64"
    return "int64" if column in INTEGER else "object"


def empty_frame() -> pd.DataFrame:
    """A frame with the columns and dtypes of :data:`FRAME_COLUMNS` and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=column_dtype(c)) for c in FRAME_COLUMNS})


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``frames`` in order, as one frame (an empty frame when there are none)."""
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()


def first_step_values(frame: pd.DataFrame, kind: str, stat: str = Stat.VAR) -> dict[str, float]:
    """Per layer: ``stat`` of ``kind`` at the first training step recorded (phase "train")."""
    if frame.empty:
        return {}
    sub = frame[(frame["phase"] == Phase.TRAIN) & (frame["kind"] == kind) & (frame["stat"] == stat)]
    if sub.empty:
        return {}
    sub = sub[sub["step"] == sub["step"].min()]
    return {str(k): float(v) for k, v in sub.groupby("layer", observed=True, sort=False)["value"].first().items()}
