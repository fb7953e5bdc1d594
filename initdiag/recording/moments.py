"""The one reduction every recorded statistic goes through: a tensor to per-channel sums, as a buffer row.

:func:`reduce` turns a tensor ``y`` with channels along ``cdim`` into, per channel ``c`` (over the ``M``
values of that channel): ``s1_c = sum y``, ``s2_c = sum y^2``, plus the number of non-zero elements and
of elements within a tolerance of an activation's bounds, written as one row of a preallocated float64
buffer (:class:`Stream`). The statistics are derived from the rows later, many at once
(:mod:`initdiag.recording.rows`).

Two implementations give the same numbers: :func:`moments_torch`, torch operations on the device (no host
sync), the reference; and on the CPU, for float32, the optional compiled kernel
``initdiag.recording._kernel`` (a pure function of memory: addresses, sizes and strides in, sums out),
built by ``pip install`` when a C compiler is present (measured here: ~10 µs for the seed CNN's largest
training-step sample, against ~100 µs for the torch operations). ``INITDIAG_NO_FAST_KERNEL=1`` switches
it off.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

try:  # built by setup.py when a C compiler is present; optional
    from . import _kernel  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _kernel = None

__all__ = ["KERNEL", "Geometry", "Stream", "channel_moments", "channel_view", "kernel_geometry", "last_samples",
           "moments_torch", "reduce", "samples_kept", "use_kernel"]

KERNEL: Any = None if os.environ.get("INITDIAG_NO_FAST_KERNEL") else _kernel
"""The compiled kernel in use, or None (not built, or ``INITDIAG_NO_FAST_KERNEL`` set)."""

BUFFER_BYTES = 1 << 20
"""Upper bound on one stream's buffer; wide layers get fewer rows between flushes."""


def use_kernel(enabled: bool) -> bool:
    """Switch the compiled kernel on or off (for comparisons and tests); returns whether it is now in use."""
    global KERNEL
    KERNEL = _kernel if enabled else None
    return KERNEL is not None


def samples_kept(shape: tuple[int, ...], cdim: int, max_per_channel: int | None) -> int:
    """How many samples (dim 0) of a tensor of ``shape`` enter the statistics: the fewest that give at
    least ``max_per_channel`` values per channel, at most all of them (all when there is no cap, no batch
    dim or the channels are dim 0)."""
    if max_per_channel is None or len(shape) < 2 or cdim == 0 or shape[0] <= 1:
        return shape[0] if shape else 1
    per_sample = math.prod(shape) // (shape[0] * max(shape[cdim], 1))
    return min(shape[0], -(-max_per_channel // max(per_sample, 1)))


def last_samples(y: torch.Tensor, cdim: int, max_per_channel: int | None) -> torch.Tensor:
    """The last :func:`samples_kept` samples of ``y`` along dim 0 (``y`` itself when that is all).

    The last rather than the first: a layer writes its output (and autograd the gradient) in memory
    order, so when a hook runs the end of a large tensor is still in the CPU cache and its start is not.
    The batch is shuffled, so either end is an equally random sample."""
    keep = samples_kept(tuple(y.shape), cdim, max_per_channel)
    return y.narrow(0, y.shape[0] - keep, keep) if y.dim() >= 1 and keep < y.shape[0] else y


Geometry = tuple[int, int, int, int, int, int, int, int]
"""How the kernel reads one tensor layout: ``(G, C, P, sg, sc, sp, count, offset)``, ``count = G * P``
values per channel, from ``offset`` elements past the tensor's data pointer."""


def _merge(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int] | None:
    """Size and stride of ``shape``/``strides`` dims merged into one, or None when memory order forbids it."""
    dims = [(n, st) for n, st in zip(shape, strides, strict=True) if n != 1]
    if not dims:
        return 1, 0
    size, stride = dims[-1]
    for n, st in reversed(dims[:-1]):
        if st != stride * size:
            return None
        size *= n
    return size, stride


def _dense_size(shape: tuple[int, ...], strides: tuple[int, ...]) -> int | None:
    """The element count when the tensor fills one block of memory in some dim order (contiguous,
    channels-last, ...), so that it can be read as a flat array; else None."""
    dims = sorted((st, n) for n, st in zip(shape, strides, strict=True) if n != 1)
    expected = 1
    for st, n in dims:
        if st != expected:
            return None
        expected *= n
    return expected


def kernel_geometry(shape: tuple[int, ...], strides: tuple[int, ...], cdim: int,
                    max_per_channel: int | None) -> Geometry | None:
    """The kernel's reading of a tensor of this shape and strides (element units) as ``(G, C, P)`` with
    channels along ``cdim``, limited to the last samples as :func:`last_samples` does; a tensor of dim <= 1,
    or ``cdim < 0``, is one channel of all its elements (read in memory order when it is dense). None when
    the dims cannot be merged without a copy."""
    if len(shape) <= 1 or cdim < 0:
        numel = _dense_size(shape, strides)
        if numel is None:
            return None
        return 1, 1, numel, 0, 0, 1, numel, 0
    keep = samples_kept(shape, cdim, max_per_channel)
    offset = (shape[0] - keep) * strides[0]
    shape = (keep, *shape[1:])
    groups = _merge(shape[:cdim], strides[:cdim])
    positions = _merge(shape[cdim + 1:], strides[cdim + 1:])
    if groups is None or positions is None:
        return None
    (g, sg), (p, sp) = groups, positions
    return g, shape[cdim], p, sg, strides[cdim], sp, g * p, offset


def channel_view(y: torch.Tensor, cdim: int) -> torch.Tensor:
    """``y`` as a 3-d tensor ``(G, C, P)``: the dims before the channel dim ``cdim`` merged into ``G``,
    those after it into ``P`` (a view for the usual layouts, a copy only where none can express it). A
    tensor of dim <= 1, or ``cdim < 0``, is one channel."""
    y = y.detach()
    if y.dim() <= 1 or cdim < 0:
        return y.reshape(1, 1, -1)
    shape = y.shape
    return y.reshape(math.prod(shape[:cdim]), shape[cdim], math.prod(shape[cdim + 1:]))


def moments_torch(v: torch.Tensor, mid: float = 0.0, thr: float = -1.0) -> torch.Tensor:
    """The reference: ``[s1 (C), s2 (C), nonzero, saturated]`` of a ``(G, C, P)`` view, in float64 on its
    device; ``saturated`` counts ``|v - mid| >= thr`` (0 when ``thr < 0``)."""
    if not v.is_floating_point():
        v = v.float()
    f64 = torch.float64
    s1, s2 = v.sum((0, 2), dtype=f64), (v * v).sum((0, 2), dtype=f64)
    nonzero = (v != 0).sum().reshape(1).to(f64)
    saturated = ((v - mid).abs() >= thr).sum().reshape(1).to(f64) if thr >= 0 else \
        torch.zeros(1, dtype=f64, device=v.device)
    return torch.cat((s1, s2, nonzero, saturated))


def reduce(y: torch.Tensor, cdim: int, max_per_channel: int | None, out: torch.Tensor, row: int,
           mid: float = 0.0, thr: float = -1.0, layouts: dict[tuple[Any, ...], Geometry | None] | None = None) -> int:
    """Write the moments of ``y`` (channels along ``cdim``; at most ``max_per_channel`` values per channel,
    the last samples) into ``out[row]`` (float64, ``2C + 2`` wide, on ``y``'s device or the CPU); return the
    number of values per channel.

    ``layouts`` caches the kernel's geometry per (shape, strides, cdim, cap). The compiled kernel reads
    float32 CPU tensors whose dims merge without a copy; every other tensor goes through
    :func:`moments_torch`."""
    if KERNEL is not None and y.dtype == torch.float32 and y.is_cpu and out.is_cpu:
        key = (y.shape, y.stride(), cdim, max_per_channel)
        if layouts is not None and key in layouts:
            geometry = layouts[key]
        else:
            geometry = kernel_geometry(tuple(y.shape), y.stride(), cdim, max_per_channel)
            if layouts is not None:
                layouts[key] = geometry
        if geometry is not None:
            g, c, p, sg, sc, sp, count, offset = geometry
            KERNEL.moments(y.data_ptr() + 4 * offset, g, c, p, sg, sc, sp,
                           out.data_ptr() + row * out.stride(0) * 8, mid, thr)
            return count
    v = channel_view(last_samples(y.detach(), cdim, max_per_channel), cdim)
    out[row].copy_(moments_torch(v, mid, thr))
    return v.shape[0] * v.shape[2]


def channel_moments(y: torch.Tensor, cdim: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-channel ``sum y`` and ``sum y^2`` (float64, shape (C,)), the number of non-zero elements and the
    number of values per channel, of all of ``y`` (a one-off :func:`reduce`)."""
    channels = y.shape[cdim] if y.dim() > 1 and cdim >= 0 else 1
    out = torch.empty((1, 2 * channels + 2), dtype=torch.float64, device=y.device)
    count = reduce(y, cdim, None, out, 0)
    row = out[0].cpu()
    return row[:channels], row[channels:2 * channels], int(row[2 * channels]), count


class Stream:
    r"""Successive moment rows of one recorded quantity, in a preallocated float64 buffer on the device.

    ``meta`` holds the row labels ``(step, epoch, phase, count)``, ``count`` the number of values per
    channel. The caller fills row :attr:`n` (:func:`reduce`) and then :meth:`commit`\ s it with its labels;
    :meth:`take` hands back the committed rows and empties the stream.
    """

    __slots__ = ("buffer", "capacity", "meta", "n", "width")

    def __init__(self, width: int, device: torch.device, capacity: int) -> None:
        self.width = width
        self.capacity = max(4, min(capacity, BUFFER_BYTES // (8 * width)))
        self.buffer = torch.zeros((self.capacity, width), dtype=torch.float64, device=device)
        self.meta: list[tuple[int, int, str, int]] = []
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def commit(self, step: int, epoch: int, phase: str, count: int) -> None:
        """Label row :attr:`n`, just filled, and move on (the caller takes the rows first when :attr:`full`)."""
        self.meta.append((step, epoch, phase, count))
        self.n += 1

    def take(self) -> tuple[torch.Tensor, list[tuple[int, int, str, int]]]:
        """The committed rows (a view: use them before the next row is filled) and their labels; empties
        the stream."""
        rows, meta = self.buffer[:self.n], self.meta
        self.meta, self.n = [], 0
        return rows, meta
