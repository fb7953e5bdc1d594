"""Progress display: a live bar on a terminal, a few quiet lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["NullProgress", "Progress"]


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """One run's progress: ``[he/seed0] epoch 2/5 [#####.....] 450/938 loss 0.0812 ETA 1:12``.

    On a terminal the line is redrawn at most every ``interval`` seconds; elsewhere one line is
    printed per epoch.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.width = width
        self._label = ""
        self._start = 0.0
        self._last = 0.0
        self._total = 0

    def start(self, label: str, total_steps: int) -> None:
        self._label, self._total = label, max(total_steps, 1)
        self._start = self._last = time.perf_counter()
        if not self.tty:
            self._write(f"[{label}] training: {total_steps} steps\n")

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
        """Called after each training step (``step`` counts within the epoch, from 1)."""
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < self.interval and step != steps:
            return
        self._last = now
        done = (epoch - 1) * steps + step
        eta = (now - self._start) / done * (self._total - done)
        filled = int(self.width * step / steps)
        bar = "#" * filled + "." * (self.width - filled)
        self._write(f"\r[{self._label}] epoch {epoch}/{epochs} [{bar}] {step}/{steps} "
                    f"loss {loss:.4f} ETA {_clock(eta)}\033[K")

    def epoch(self, epoch: int, epochs: int, train_loss: float, test_loss: float, accuracy: float) -> None:
        elapsed = _clock(time.perf_counter() - self._start)
        text = (f"[{self._label}] epoch {epoch}/{epochs}: train loss {train_loss:.4f}, "
                f"test loss {test_loss:.4f}, test accuracy {accuracy:.4f} ({elapsed})")
        self._write(("\r" + text + "\033[K\n") if self.tty else text + "\n")

    def message(self, text: str) -> None:
        self._write(("\r\033[K" if self.tty else "") + text + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class NullProgress(Progress):
    """Prints nothing (API use and tests)."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stderr)
        self.tty = False

    def _write(self, text: str) -> None:
        pass
