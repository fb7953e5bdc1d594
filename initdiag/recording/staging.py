"""The torch path's reductions, many at once: each tensor copied once into a staging buffer, then summed together.

On the torch path (a GPU, or the CPU without the compiled kernel) one reduction of :func:`~.moments.moments_torch`
is about ten operations, each a launch on a GPU and a few microseconds of dispatch on any device, and a
recorded step has dozens of small tensors. :class:`Staging` instead copies each tensor's ``(G, C, P)`` view
into a float64 buffer of rows of :data:`ROW` values, each channel in whole rows of its own (one operation:
the copy widens float32 and narrower exactly; the rest of a channel's last row stays zero), and, when the
buffer fills or the rows are read, derives every staged row at once (:meth:`Staging.run`): per buffer row
``sum y``, then in place ``y^2`` and ``sum y^2``, then ``min(y^2, 2^-300)`` and its sum over ``2^-300``
(the number of ``y != 0``: a float32 value's square is 0 or at least ``2^-298``; a sum of powers of two
that small is exact); one ``index_add`` adds each buffer row's three sums straight to their places in the
streams' rows ``[s1 (C), s2 (C), nonzero, 0]`` laid end to end (``s1``, ``s2`` per channel, the count per
tensor; the rows in buffer order, so each sum adds in the order of its channel's rows), a float32-or-narrower
tensor's ``s2`` beyond :data:`~.moments.FLOAT32_MAX` becomes inf as in :func:`~.moments.moments_torch`, and
one list copy scatters the rows to their streams. About a dozen operations per run, whatever the number of
tensors staged.

The same numbers as :func:`~.moments.moments_torch` to within :func:`~.moments.sum_error_bound`: the same
float64 values, squared exactly, summed in float64 in another order; the counts exact, except that a tensor
holding NaN gets a NaN count (its sums are NaN too: the checks read the row as diverged). Tensors with a
saturation count (``thr >= 0``: tanh, sigmoid) or of float64 go through :func:`~.moments.moments_torch` at once.

A staged row is written only by :meth:`Staging.run`: whoever reads a stream's rows runs it first, and whoever
moves them to a new buffer says so (:meth:`Staging.moved`); :class:`~.collect.Collector` does both.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .moments import FLOAT32_MAX

__all__ = ["ROW", "STAGING_VALUES", "Staging"]

STAGING_VALUES = 1 << 20
"""Values one device's staging buffer holds (8 MiB of float64) before its rows are derived."""

ROW = 128
"""Values per row of a staging buffer: a channel takes whole rows (its values, then zeros)."""

_LAYOUTS = 64
"""Layouts kept (a training repeats a few: the rows of one step, staged between two runs)."""

_F64 = torch.float64
_TINY = 2.0**-300
_Layout = tuple[torch.Tensor, torch.Tensor, list[int]]


class Staging:
    """Rows to be derived, per device: the staged values, and for each row its target and its shape."""

    def __init__(self, capacity: int = STAGING_VALUES) -> None:
        self.capacity = capacity
        self._buffers: dict[torch.device, _Pending] = {}

    def stage(self, v: torch.Tensor, out: torch.Tensor, row: int) -> bool:
        """Copy the ``(G, C, P)`` view ``v`` to be reduced into ``out[row]`` (``2C + 2`` wide, on ``v``'s
        device) by the next :meth:`run`; False (nothing staged) when ``v`` is float64 or does not fit."""
        if v.dtype == _F64 or out.device != v.device:
            return False
        pending = self._buffers.get(v.device)
        if pending is None:
            pending = self._buffers[v.device] = _Pending(v.device, self.capacity)
        channels, count = v.shape[1], v.shape[0] * v.shape[2]
        if not pending.fits(channels, count):
            pending.run()
            if not pending.fits(channels, count):
                return False
        pending.add(v, out, row)
        return True

    def moved(self, old: torch.Tensor, new: torch.Tensor) -> None:
        """Rows staged for ``old`` go to the same rows of ``new`` (a stream's buffer grew, its rows copied)."""
        for pending in self._buffers.values():
            pending.rows = [(new if out is old else out, row) for out, row in pending.rows]

    def run(self) -> None:
        """Derive every staged row into its target."""
        for pending in self._buffers.values():
            pending.run()


class _Pending:
    """One device's staging buffer, ``(rows, ROW)`` float64 kept zero between runs, and the tensors staged in it:
    each channel's values fill whole rows, the rest of its last row left zero (zeros add to no sum or count)."""

    __slots__ = ("buffer", "flat", "layouts", "rows", "shapes", "used")

    def __init__(self, device: torch.device, capacity: int) -> None:
        self.buffer = torch.zeros((-(-capacity // ROW), ROW), dtype=_F64, device=device)
        self.flat = self.buffer.view(-1)
        self.used = 0  # rows
        self.rows: list[tuple[torch.Tensor, int]] = []
        self.shapes: list[tuple[int, int]] = []  # (channels, values per channel) of each staged tensor
        self.layouts: dict[tuple[tuple[int, int], ...], _Layout] = {}  # on this buffer's device

    def fits(self, channels: int, count: int) -> bool:
        return self.used + channels * _rows(count) <= self.buffer.shape[0]

    def add(self, v: torch.Tensor, out: torch.Tensor, row: int) -> None:
        """Copy ``v`` (``(G, C, P)``, any strides) into channel-major rows."""
        g, c, p = v.shape
        k = _rows(g * p)
        self.flat.as_strided((g, c, p), (p, k * ROW, 1), self.used * ROW).copy_(v)
        self.used += c * k
        self.rows.append((out, row))
        self.shapes.append((c, g * p))

    def run(self) -> None:
        if not self.rows:
            return
        rows, shapes = self.rows, tuple(self.shapes)
        data = self.buffer[:self.used]
        self.rows, self.shapes, self.used = [], [], 0
        layout = self.layouts.get(shapes)
        if layout is None:
            if len(self.layouts) >= _LAYOUTS:
                self.layouts.clear()
            layout = self.layouts[shapes] = _layout(shapes, data.device)
        target, cap, widths = layout
        s1_rows, s2_rows = data.sum(1), data.square_().sum(1)
        # a non-zero square is >= 2^-298 (float32's least subnormal squared): clamped to 2^-300, counted exactly
        nonzero_rows = data.clamp_(max=_TINY).sum(1).mul_(1.0 / _TINY)
        data.zero_()  # the padding of the rows staged next
        derived = cap.new_zeros(cap.shape).index_add_(0, target, torch.stack((s1_rows, s2_rows, nonzero_rows)).view(-1))
        derived.masked_fill_(derived > cap, math.inf)  # s2 beyond FLOAT32_MAX: every staged tensor is float32 or less
        torch._foreach_copy_([out[row] for out, row in rows], list(derived.split(widths)))


def _rows(count: int) -> int:
    """Buffer rows a channel of ``count`` values takes."""
    return -(-count // ROW)


def _layout(shapes: tuple[tuple[int, int], ...], device: torch.device) -> _Layout:
    """For staged tensors of these ``(channels, values per channel)``: where each buffer row's ``s1``, ``s2`` and
    count go in the rows ``[s1 (C), s2 (C), nonzero, 0]`` of the tensors laid end to end (the index into them
    of ``[s1 of every row | s2 of every row | count of every row]``), the largest finite value each place keeps
    (:data:`~.moments.FLOAT32_MAX` for an ``s2``, inf elsewhere) and the rows' widths."""
    channels = np.array([c for c, _ in shapes], dtype=np.int64)
    rows_per_channel = np.repeat(-(-np.array([n for _, n in shapes], dtype=np.int64) // ROW), channels)
    widths = 2 * channels + 2
    starts = np.concatenate(([0], np.cumsum(widths)[:-1]))
    first = np.repeat(starts, channels)  # of each channel: where its tensor's row starts
    index = np.arange(int(channels.sum())) - np.repeat(np.concatenate(([0], np.cumsum(channels)[:-1])), channels)
    s1_at = np.repeat(first + index, rows_per_channel)  # of each buffer row
    s2_at = np.repeat(first + index + np.repeat(channels, channels), rows_per_channel)
    count_at = np.repeat(np.repeat(starts + 2 * channels, channels), rows_per_channel)
    cap = np.full(int(widths.sum()), math.inf)
    cap[np.unique(s2_at)] = FLOAT32_MAX
    return (torch.from_numpy(np.concatenate((s1_at, s2_at, count_at))).to(device),
            torch.from_numpy(cap).to(device), widths.tolist())
