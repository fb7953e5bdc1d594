"""The tidy frame as dashboard scalars: one series per (phase, kind, stat, layer), each row handed out once.

Shared by the TensorBoard and W&B adapters, so that both name and step their series the same way:

* tag ``initdiag/<kind>/<stat>/<layer>`` for training rows (phase ``train``), at the row's ``step``;
* tag ``initdiag/<kind>/<stat>/<layer>@<phase>`` for probe rows (``@init``, ``@final``), at the row's
  ``step`` raised to 0 (the init probe runs before the first training step and has step -1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from ..checks.verdict import Verdict
from ..errors import UsageError
from ..vocab import Phase

__all__ = ["PREFIX", "SERIES_COLUMNS", "STEP_KEY", "VERDICTS_TAG", "VERDICT_COLUMNS", "SeriesCursor", "StepValues",
           "tag", "verdict_rows"]

PREFIX = "initdiag"
STEP_KEY = f"{PREFIX}/step"
"""The W&B x-axis of every ``initdiag/*`` metric."""
VERDICTS_TAG = f"{PREFIX}/verdicts"
SERIES_COLUMNS: tuple[str, ...] = ("run", "phase", "step", "layer", "kind", "stat", "value")
"""The frame columns the adapters read."""
VERDICT_COLUMNS: tuple[str, ...] = ("check", "signal", "status", "phase", "layers", "message")
_KEY = ("phase", "kind", "stat", "layer")


def tag(kind: str, stat: str, layer: str, phase: str = Phase.TRAIN) -> str:
    """The dashboard tag of a series (see the module docstring)."""
    base = f"{PREFIX}/{kind}/{stat}/{layer}"
    return base if phase == Phase.TRAIN else f"{base}@{phase}"


def verdict_rows(verdicts: Iterable[Verdict]) -> list[list[str]]:
    """One row of :data:`VERDICT_COLUMNS` per verdict (layers joined by ``", "``, no signal as ``""``)."""
    return [[str(v.check), str(v.signal or ""), str(v.status), str(v.phase), ", ".join(v.layers), v.message]
            for v in verdicts]


@dataclass(frozen=True)
class StepValues:
    """The values of one dashboard step: ``values[i]`` is the value of series ``tags[i]``."""

    step: int
    tags: list[str]
    values: list[float]


def _codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes of a label column and the label of each code."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(np.int64), [str(c) for c in column.cat.categories]
    codes, labels = pd.factorize(column)
    return codes.astype(np.int64), [str(c) for c in labels]


class SeriesCursor:
    """Hands out the rows of a frame that grows during training, each once.

    It keeps the last ``step`` handed out per series: a row is new when its step is beyond that. A
    cursor belongs to one run (the ``run`` column); a frame of several runs is refused.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._run: str | None = None
        self.last_step: int | None = None
        """The largest dashboard step handed out so far (None before any)."""

    def take(self, frame: pd.DataFrame) -> list[StepValues]:
        """The rows of ``frame`` not handed out before, grouped by dashboard step, in step order."""
        missing = [c for c in SERIES_COLUMNS if c not in frame.columns]
        if missing:
            raise UsageError(f"not a tidy initdiag frame: no column {', '.join(missing)}")
        if frame.empty:
            return []
        self._check_run(frame["run"])
        key = np.zeros(len(frame), dtype=np.int64)
        labels: list[list[str]] = []
        for column in _KEY:
            codes, names = _codes(frame[column])
            key = key * (len(names) + 1) + codes + 1  # a missing label (code -1) stays distinct
            labels.append(names)
        series, uniques = pd.factorize(key)
        names = [tag(*self._labels(int(k), labels)) for k in uniques]
        step = frame["step"].to_numpy(np.int64)
        done = np.array([self._last.get(n, np.iinfo(np.int64).min) for n in names], dtype=np.int64)
        new = np.flatnonzero(step > done[series])
        if new.size == 0:
            return []
        shown = np.maximum(step[new], 0)
        order = np.argsort(shown, kind="stable")
        new, shown = new[order], shown[order]
        last = done.copy()
        np.maximum.at(last, series[new], step[new])
        self._last.update((n, int(s)) for n, s, d in zip(names, last, done, strict=True) if s != d)
        tags = np.asarray(names, dtype=object)[series[new]]
        values = frame["value"].to_numpy(np.float64)[new]
        cuts = [0, *(np.flatnonzero(np.diff(shown)) + 1).tolist(), len(new)]
        out = [StepValues(int(shown[a]), tags[a:b].tolist(), values[a:b].tolist())
               for a, b in pairwise(cuts)]
        self.last_step = max(out[-1].step, self.last_step if self.last_step is not None else out[-1].step)
        return out

    @staticmethod
    def _labels(key: int, labels: Sequence[list[str]]) -> tuple[str, str, str, str]:
        """The (kind, stat, layer, phase) of a combined key (inverse of the loop in :meth:`take`)."""
        parts = []
        for names in reversed(labels):
            key, code = divmod(key, len(names) + 1)
            parts.append(names[code - 1] if code else "")
        layer, stat, kind, phase = parts
        return kind, stat, layer, phase

    def _check_run(self, column: pd.Series) -> None:
        runs = [str(r) for r in pd.unique(column)]
        if len(runs) > 1:
            raise UsageError(f"the frame holds {len(runs)} runs ({', '.join(runs[:4])}); write one run per log "
                             "dir or W&B run: frame[frame.run == name]")
        if self._run is None:
            self._run = runs[0]
        elif runs[0] != self._run:
            raise UsageError(f"this sink writes run {self._run!r}, not {runs[0]!r}: use one sink per run")
