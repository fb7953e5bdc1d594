"""Where a recorded quantity's moment rows wait on the device: :class:`Stream`, one per layer, kind and width."""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .moments import Layout, Stager, kernel_function, kernel_row, layout_of, reduce
from .tensor_stats import reading_once

__all__ = ["BUFFER_BYTES", "FIRST_ROWS", "Stream"]

BUFFER_BYTES = 1 << 20
"""Upper bound on one stream's buffer; wide layers get fewer rows between flushes."""

FIRST_ROWS = 4
"""Rows of a stream's first buffer (it doubles from there as rows arrive)."""


class Stream:
    r"""Successive moment rows of one recorded quantity, in a float64 buffer on the device.

    ``meta`` holds the row labels ``(step, epoch, phase, count)``, ``count`` the number of values per
    channel. The caller makes room (:meth:`room`), fills row :attr:`n` (:func:`reduce`) and then
    :meth:`commit`\ s it with its labels; :meth:`take` hands back the committed rows and empties the stream.
    The buffer starts at :data:`FIRST_ROWS` rows and doubles as rows arrive, up to ``capacity`` rows (at most
    :data:`BUFFER_BYTES`): a recorder of a few steps (an audit) holds a few rows per stream, not the
    full buffer of a long training's.

    :meth:`fill` is :func:`reduce` into row :attr:`n` with, for the compiled kernel, the last layout the stream
    was filled from kept at hand: a call site sees the same shape, strides and bounds step after step, and a
    recorded step fills dozens of rows (a few microseconds of Python each are a percent of a small model's step).
    Inside :func:`~.tensor_stats.moments_once` (an audit, whose weights are written only in place and change
    only by its look-ahead), a tensor filled again unchanged (the same object, its version counter unmoved,
    the same layout) gets its last row copied instead of read: the weights of an audit's later batches.
    """

    __slots__ = ("address", "buffer", "capacity", "memo", "meta", "n", "rows", "seen", "width")

    def __init__(self, width: int, device: torch.device, capacity: int) -> None:
        self.width = width
        self.capacity = max(FIRST_ROWS, min(capacity, BUFFER_BYTES // (8 * width)))
        self.meta: list[tuple[int, int, str, int]] = []
        self.n = 0
        self.memo: tuple[torch.Size, tuple[int, ...], int, int | None, float, float, Layout] | None = None
        """The kernel's last ``(shape, strides, cdim, cap, mid, thr, layout)``."""
        self.seen: tuple[weakref.ref[torch.Tensor], int, int] | None = None
        """Inside :func:`~.tensor_stats.moments_once`: the tensor of row ``n - 1``, its version counter, its count."""
        self._use(torch.zeros((FIRST_ROWS, width), dtype=torch.float64, device=device))

    def _use(self, buffer: torch.Tensor) -> None:
        self.buffer, self.rows = buffer, buffer.shape[0]
        self.address = buffer.data_ptr() if buffer.is_cpu else 0  # of row 0, for the kernel

    def fill(self, y: torch.Tensor, cdim: int, max_per_channel: int | None, mid: float, thr: float,
             layouts: dict[tuple[Any, ...], Layout | None], staging: Stager | None) -> int:
        """:func:`reduce` of ``y`` into row :attr:`n` (made room for); the number of values per channel."""
        kernel = kernel_function()
        layout: Layout | None = None
        same = False
        if kernel is not None and self.address and y.dtype is torch.float32 and y.is_cpu:
            memo = self.memo
            if (memo is not None and memo[0] == y.shape and memo[1] == y.stride() and memo[2] == cdim
                    and memo[3] == max_per_channel and memo[4] == mid and memo[5] == thr):
                layout, same = memo[6], True
            else:
                layout = layout_of(y, cdim, max_per_channel, mid, thr, layouts)
                if layout is not None:
                    self.memo = (y.shape, y.stride(), cdim, max_per_channel, mid, thr, layout)
        seen, self.seen = self.seen, None
        if kernel is None or layout is None:
            return reduce(y, cdim, max_per_channel, self.buffer, self.n, mid, thr, layouts, staging)
        if not reading_once() or y.is_inference():
            return kernel_row(kernel, y, layout, self.address + 8 * self.width * self.n)
        version = y._version
        if same and seen is not None and self.n and seen[0]() is y and seen[1] == version:
            count = seen[2]
            self.buffer[self.n].copy_(self.buffer[self.n - 1])
        else:
            count = kernel_row(kernel, y, layout, self.address + 8 * self.width * self.n)
        self.seen = (weakref.ref(y), version, count)
        return count

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def room(self) -> None:
        """Make room for row :attr:`n` (below :attr:`capacity`): the buffer doubles when it is full."""
        rows = self.rows
        if self.n >= rows:
            grown = self.buffer.new_zeros((min(2 * rows, self.capacity), self.width))
            grown[:rows] = self.buffer
            self._use(grown)

    def commit(self, step: int, epoch: int, phase: str, count: int) -> None:
        """Label row :attr:`n`, just filled, and move on (the caller takes the rows first when :attr:`full`)."""
        self.meta.append((step, epoch, phase, count))
        self.n += 1

    def take(self) -> tuple[torch.Tensor, list[tuple[int, int, str, int]]]:
        """The committed rows (a view: use them before the next row is filled) and their labels; empties
        the stream."""
        rows, meta = self.buffer[:self.n], self.meta
        self.meta, self.n, self.seen = [], 0, None
        return rows, meta
