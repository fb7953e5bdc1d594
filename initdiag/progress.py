"""Progress display: a live bar on a terminal, a few quiet lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["MultiProgress", "NullProgress", "Progress", "QueueProgress"]


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


class QueueProgress(Progress):
    """Worker side of parallel runs: sends progress events to the parent through a queue."""

    def __init__(self, queue: Any) -> None:
        super().__init__(stream=sys.stderr)
        self.queue = queue
        self.tty = True  # the parent decides what to show; send every (rate-limited) step

    def start(self, label: str, total_steps: int) -> None:
        self._label = label
        self._last = 0.0
        self.queue.put(("start", label, (total_steps,)))

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self._last < self.interval and step != steps:
            return
        self._last = now
        self.queue.put(("step", self._label, (epoch, epochs, step, steps, loss)))

    def epoch(self, epoch: int, epochs: int, train_loss: float, test_loss: float, accuracy: float) -> None:
        self.queue.put(("epoch", self._label, (epoch, epochs, train_loss, test_loss, accuracy)))

    def message(self, text: str) -> None:
        self.queue.put(("message", self._label, (text,)))


class MultiProgress:
    """Parent side of parallel runs: one status line for all active runs on a terminal, epoch lines
    always (``[he/seed0] epoch 2/5: ...``)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._active: dict[str, tuple[int, int, int, int, float, float]] = {}
        self._starts: dict[str, float] = {}
        self._totals: dict[str, int] = {}

    def handle(self, event: tuple[str, str, tuple[Any, ...]]) -> None:
        kind, label, payload = event
        p = self.progress
        if kind == "start":
            self._starts[label] = time.perf_counter()
            self._totals[label] = int(payload[0])
            if not p.tty:
                p._write(f"[{label}] training: {payload[0]} steps\n")
        elif kind == "step":
            epoch, epochs, step, steps, loss = payload
            self._active[label] = (epoch, epochs, step, steps, loss, time.perf_counter())
            if p.tty:
                self._redraw()
        elif kind == "epoch":
            epoch, epochs, train_loss, test_loss, accuracy = payload
            elapsed = _clock(time.perf_counter() - self._starts.get(label, time.perf_counter()))
            p.message(f"[{label}] epoch {epoch}/{epochs}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
                      f"test accuracy {accuracy:.4f} ({elapsed})")
            if epoch == epochs:
                self._active.pop(label, None)
            if p.tty:
                self._redraw()
        elif kind == "message":
            p.message(str(payload[0]))
            self._active.pop(label, None)

    def _redraw(self) -> None:
        parts = []
        for label, (epoch, epochs, step, steps, loss, _) in self._active.items():
            done = ((epoch - 1) * steps + step) / max(self._totals.get(label, 1), 1)
            parts.append(f"[{label} e{epoch}/{epochs} {100 * done:3.0f}% loss {loss:.3f}]")
        self.progress._write("\r" + " ".join(parts) + "\033[K")
