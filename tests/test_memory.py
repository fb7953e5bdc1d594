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
x = torch.ones(1)
for _ in range(3):  # warm up: the heap grows to its working size once
    (torch.empty(2_000_000) * 2).sum()
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


def test_keep_heap_is_public() -> None:
    import initdiag

    assert initdiag.keep_heap is initdiag.memory.keep_heap
