"""Shared helpers for the benchmarks: the bootstrap interval of a median ratio (:func:`interval`); functions
timed from inside, by label (:class:`Timers`); run a
command, sampling the wall time and the peak memory of its whole process tree (workers included) from /proc:
the sum of each process's proportional set size (PSS), so pages that forked workers share with their parent
are counted once, not once per process."""

from __future__ import annotations

import functools
import os
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    output: str


def _pss_kib(proc: Path) -> int:
    try:
        for line in (proc / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_rss_kib(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid = int(entry.name)
        children.setdefault(int(fields.get("PPid", "0").strip()), []).append(pid)
        rss[pid] = _pss_kib(entry) if "VmRSS" in fields else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def proc_status_bytes(field: str) -> int:
    """This process's ``field`` of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Measured:
    """Run ``cmd``; return its wall time and the peak PSS of its process tree (sampled every 0.2 s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_kib(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    return Measured(time.perf_counter() - start, peak / 1024, proc.returncode, output)


def interval(ratios: np.ndarray, rng: np.random.Generator, draws: int = 4000) -> tuple[float, float, float]:
    """Median of ``ratios`` and a 95% bootstrap interval of the median (``draws`` resamples)."""
    boot = np.median(rng.choice(ratios, (draws, len(ratios))), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


class Timers:
    """Seconds spent in wrapped functions, per label: :meth:`wrap` returns ``f`` timed into ``label``, its
    behaviour unchanged (a call inside another of the same label, recursion included, counts once; labels
    nest freely, so an inner label's time is also in its caller's)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._open: set[str] = set()

    def clear(self) -> None:
        self.seconds.clear()

    def wrap(self, label: str, f: Callable[..., Any]) -> Callable[..., Any]:
        seconds, open_ = self.seconds, self._open

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if label in open_:
                return f(*args, **kwargs)
            open_.add(label)
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
                open_.discard(label)
        return wrapper
