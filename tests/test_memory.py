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


FORK_SCRIPT = """
import gc, os, sys
import initdiag.memory as memory
objects = [[i] for i in range(1_000_000)]  # GC-tracked (a list always is; a dict of ints is not), ~90 MB
def private_dirty_kib():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty"))
def child_copies():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = private_dirty_kib()
        gc.collect()
        os.write(w, str(private_dirty_kib() - before).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return int(os.read(r, 64))
plain = child_copies()
frozen_before = gc.get_freeze_count()
with memory.shared_with_forks():
    frozen = child_copies()
print(plain, frozen, frozen_before, gc.get_freeze_count())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc/self/smaps_rollup")
def test_forked_children_leave_the_parents_objects_shared() -> None:
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, check=True)
    plain, frozen, frozen_before, frozen_after = map(int, out.stdout.split())
    assert plain > 20_000  # KiB: without the freeze, the child's collection copies the pages of the objects
    assert frozen < plain / 10
    assert frozen_before == frozen_after == 0  # unfrozen again on exit


def test_objects_frozen_by_the_caller_stay_frozen() -> None:
    import gc

    from initdiag.memory import shared_with_forks

    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with shared_with_forks():
            assert gc.get_freeze_count() >= count
        assert gc.get_freeze_count() >= count
    finally:
        gc.unfreeze()


TRAIN_SCRIPT = """
import torch
import initdiag.memory as memory
from initdiag.models import seed_cnn
from initdiag.progress import NullProgress
from initdiag.training import prepare_model, train
memory.keep_heap()  # as initdiag's training processes run
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x, y = torch.rand(60_000, 1, 28, 28, generator=g), torch.randint(0, 10, (60_000,), generator=g)  # MNIST's size
def private_dirty_kib():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty"))
class Enough(Exception):
    pass
seen = {}
class Watch(NullProgress):
    def step(self, epoch, epochs, step, steps, loss):
        if step in (10, 190):
            seen[step] = private_dirty_kib()
        if step == 190:
            raise Enough
try:
    train(prepare_model(seed_cnn(), "cpu"), x, y, x[:64], y[:64], epochs=1, progress=Watch())
except Enough:
    print(seen[190] - seen[10])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap settings and /proc/self/smaps_rollup")
def test_training_steps_do_not_grow_the_heap() -> None:
    out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], capture_output=True, text=True, check=True)
    growth_kib = int(out.stdout.strip())
    # a 0-d tensor kept per step (the loss, the gradient norm) pinned the heap above each step's activations:
    # ~0.85 MiB per step, ~150 MiB over these 180 steps
    assert growth_kib < 30 * 1024
