"""The heap of initdiag's training processes (internal, not public API): keep freed activation buffers for
reuse, give memory back on demand.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, the large activation
buffers of a training step (the seed CNN's first conv output at batch 64 is 5.5 MB) are either mapped
and unmapped with ``mmap`` on every step or trimmed from the top of the heap when freed, so every
step faults its working set back in (thousands of minor page faults per step). :func:`keep_heap` keeps
them in the heap, so each step reuses the last one's pages; the numbers out are the same.

Only glibc on Linux is tuned; elsewhere both functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["keep_heap", "release_heap", "shared_with_forks"]

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30
"""Allocations below this size come from the heap, not from fresh ``mmap`` pages (default: 128 KiB,
raised dynamically by glibc up to 32 MiB)."""
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
"""Free memory at the top of the heap up to this size is kept, not returned to the OS (glibc's default:
128 KiB, or twice the dynamic mmap threshold). The largest value glibc accepts."""


def _load_libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _load_libc()


def keep_heap() -> bool:
    """Make glibc keep freed memory in the heap for reuse (raise ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD``). Affects the whole process from now on (and processes it forks); meant for
    a process that trains, such as ``initdiag report``'s workers. Returns True when the settings took.

    Peak memory is unchanged (the same buffers are live at the peak); memory freed after the peak
    stays with the process until :func:`release_heap`.
    """
    if _LIBC is None:
        return False
    took_mmap = _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    took_trim = _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return took_mmap and took_trim


def release_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Small long-lived allocations between large short-lived ones fragment the heap; ``malloc_trim``
    returns the free pages inside it, not only those at its top.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@contextmanager
def shared_with_forks() -> Iterator[None]:
    """The Python objects alive on entry moved to the garbage collector's permanent generation
    (``gc.freeze``) while processes fork from this one, and moved back on exit (``gc.unfreeze``), unless some
    were frozen before (then all stay frozen: they cannot be told apart).

    A forked child's first collection writes the GC header of every object it inherited, so each memory page
    holding one is copied into the child: ~100 MiB per worker once torch, its compiler stack
    (``torch._dynamo``, which an optimizer imports) and pandas are loaded. Frozen objects are never traversed,
    and their pages stay shared with the parent. Python's documented use of ``gc.freeze`` (the ``gc``
    module's documentation: "call gc.freeze() right before fork()"). Objects created inside the block are
    collected as usual in every process."""
    frozen_before = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()
