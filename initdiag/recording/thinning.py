"""Bounded recordings: which training steps a long recording keeps.

A recorder at ``every=k`` records the steps ``0, k, 2k, ...``: a 50k-step fine-tune would grow its series, its
``series.csv`` and the report's heatmaps without bound. With a budget of ``max_steps`` recorded steps, the first
``dense`` of them (:data:`DENSE`, or half the budget when that is smaller) are all kept, where initialization
problems show; after them every ``stride``-th recorded step is, the stride starting at 1 and doubling each time
the kept steps pass the budget, when the kept steps off the new stride are dropped. The kept steps then span
the whole run evenly after the dense start, between ``max_steps / 2`` and ``max_steps`` of them, and memory is
bounded by the budget whatever the run's length: ``O(max_steps x layers)`` rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DENSE", "Thinning", "thinned_steps"]

DENSE = 256
"""Recorded steps kept one by one at the start of a bounded recording (at most half its budget)."""


class Thinning:
    """The steps a recording at ``every`` keeps within ``max_steps`` (None: every recorded step, unbounded)."""

    def __init__(self, every: int, max_steps: int | None = None) -> None:
        if max_steps is not None and max_steps < 2:
            raise ValueError(f"max_steps must be >= 2 or None (got {max_steps})")
        self.every, self.max_steps = every, max_steps
        self.dense = DENSE if max_steps is None else min(DENSE, max_steps // 2)
        self.stride = 1
        self.kept = 0

    def _on(self, recorded: np.ndarray | int, stride: int) -> np.ndarray | bool:
        return (recorded < self.dense) | ((recorded - self.dense) % stride == 0)

    def records(self, step: int) -> bool:
        """Whether training step ``step`` is recorded (and counted as kept)."""
        if step % self.every:
            return False
        if self.max_steps is None:
            return True
        on = bool(self._on(step // self.every, self.stride))
        self.kept += on
        return on

    def over(self) -> bool:
        """True when the kept steps passed the budget: the stride doubled, and :meth:`keep` drops the steps off
        it (the caller prunes what it holds)."""
        if self.max_steps is None or self.kept <= self.max_steps:
            return False
        self.stride *= 2
        thinned = self.kept - self.dense
        self.kept = self.dense + (thinned + 1) // 2
        return True

    def keep(self, steps: np.ndarray) -> np.ndarray:
        """Of recorded training steps ``steps``, those the current stride keeps."""
        steps = np.asarray(steps)
        return np.asarray(self._on(steps // self.every, self.stride), dtype=bool) & (steps % self.every == 0)


def thinned_steps(steps: list[int] | np.ndarray, max_steps: int | None) -> np.ndarray:
    """Of the recorded training steps ``steps`` of a whole run (ascending), those a bounded recording of
    ``max_steps`` keeps at its end: :class:`Thinning`'s dense start, then its stride, doubled until at most
    ``max_steps`` steps stay (the online rule applied once, to a series streamed in full)."""
    steps = np.asarray(steps, dtype=np.int64)
    if max_steps is None or len(steps) <= max_steps:
        return steps
    thin, recorded = Thinning(1, max_steps), np.arange(len(steps))
    while int(np.count_nonzero(thin._on(recorded, thin.stride))) > max_steps:
        thin.stride *= 2
    return steps[np.asarray(thin._on(recorded, thin.stride), dtype=bool)]
