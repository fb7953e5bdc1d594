"""The heap settings of training processes, measured by page faults in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
import initdiag.memory as memory
if sys.argv[1] == "keep":
    assert memory.keep_heap()
else:  # glibc's initial mmap threshold (128 KiB), held fixed: glibc otherwise raises it after the first
    # free of a large block, on a schedule that varied between machines (5,900 or 40,000+ faults here)
    import ctypes
    assert ctypes.CDLL("libc.so.6").mallopt(memory.M_MMAP_THRESHOLD, 128 * 1024) == 1
x = torch.ones(1)
for _ in range(5):  # warm up with the same step (written, not only read: reading maps the zero page)
    (torch.empty(2_000_000).fill_(1.0) * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # like a training step: an 8 MB buffer allocated, written and freed
    (torch.empty(2_000_000).fill_(1.0) * 2).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap settings")
def test_keep_heap_stops_faulting_buffers_back_in_every_step() -> None:
    default, kept = _faults("default"), _faults("keep")
    assert default >= 20 * 1000  # 8 MB = ~2,000 pages per buffer, faulted in on every allocation
    assert kept < default / 20


def test_keep_heap_is_internal() -> None:
    import initdiag

    assert "keep_heap" not in initdiag.__all__ and not hasattr(initdiag, "keep_heap")
