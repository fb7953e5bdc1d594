"""Per-channel moments of one tensor, written as a row of a preallocated buffer (the recorder's hot path).

A hook call reduces a tensor ``y`` to, per channel ``c`` (over the ``M`` values of that channel):
``s1_c = sum y``, ``s2_c = sum y^2``, plus the count of non-zero elements and of elements within a
tolerance of an activation's bounds. These go into row ``n`` of a :class:`Stream`'s buffer; the
statistics are derived for all rows at once in :meth:`Stream.take` (see the recorder for the formulas).

On the CPU, a float32 tensor is reduced by the optional C kernel ``initdiag._fastmoments`` in one pass,
accumulating in double precision (measured here: ~10 µs for the seed CNN's largest training-step
sample, against ~100 µs for the four torch kernels it replaces). Elsewhere (GPU, other dtypes, or no
kernel built) torch operations give the same numbers, without a host sync.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

try:  # built by setup.py when a C compiler is present; optional
    from . import _fastmoments  # type: ignore[attr-defined]

    _fastmoments.bind(torch.float32, torch.channels_last)
except (ImportError, AttributeError):  # pragma: no cover - depends on the build (AttributeError: a stale one)
    _fastmoments = None

__all__ = ["FAST_KERNEL", "Geometry", "Stream", "channel_moments", "channel_view", "kernel_geometry", "kernel_usable",
           "last_samples", "moments_into", "samples_kept", "use_fast_kernel"]

FAST_KERNEL: Any = None if os.environ.get("INITDIAG_NO_FAST_KERNEL") else _fastmoments
"""The C kernel module in use, or None (not built, or ``INITDIAG_NO_FAST_KERNEL`` set)."""

BUFFER_BYTES = 1 << 20
"""Upper bound on one stream's buffer; wide layers get fewer rows between flushes."""


def use_fast_kernel(enabled: bool) -> bool:
    """Switch the C kernel on or off (for comparisons); returns whether it is now in use."""
    global FAST_KERNEL
    FAST_KERNEL = _fastmoments if enabled else None
    return FAST_KERNEL is not None


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
    order, so when a hook runs the end of a large tensor is still in the CPU cache and its start is not
    (seed CNN, first conv layer: 23 against 30 µs per read). The batch is shuffled, so either end is an
    equally random sample."""
    keep = samples_kept(tuple(y.shape), cdim, max_per_channel)
    return y.narrow(0, y.shape[0] - keep, keep) if y.dim() >= 1 and keep < y.shape[0] else y


Geometry = tuple[int, int, int, int, int, int, int, int]
"""Kernel arguments for one tensor layout: ``(G, C, P, sg, sc, sp, count, offset)``, ``count = G * P``
values per channel, reading from ``offset`` elements past the tensor's data pointer."""


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


def kernel_geometry(shape: tuple[int, ...], strides: tuple[int, ...], cdim: int,
                    max_per_channel: int | None) -> Geometry | None:
    """How the C kernel reads a tensor of this shape and strides (element units) as ``(G, C, P)`` with
    channels along ``cdim``, limited to the last samples as :func:`last_samples` does; None when the
    dims cannot be merged without a copy (then :func:`channel_view` copies)."""
    if len(shape) <= 1 or cdim < 0:
        numel = math.prod(shape)
        return 1, 1, numel, 0, 0, (strides[0] if shape else 1), numel, 0
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
    those after it into ``P``. A view for the usual layouts (channels-first, channels-last, (batch,
    features), (batch, time, features)); a copy only where no view can express it. A tensor of
    dim <= 1 is one channel."""
    y = y.detach()
    if y.dim() <= 1 or cdim < 0:
        return y.reshape(-1, 1, 1)
    shape = y.shape
    return y.reshape(math.prod(shape[:cdim]), shape[cdim], math.prod(shape[cdim + 1:]))


def _moments_torch(v: torch.Tensor, mid: float, thr: float) -> torch.Tensor:
    """Torch twin of the C kernel on a ``(G, C, P)`` view: ``[s1 (C), s2 (C), nonzero, saturated]``."""
    if not v.is_floating_point():
        v = v.float()
    channels = v.shape[1]
    if v.stride(1) == 1 and channels > 1:  # channels innermost: reduce rows (a view when they merge)
        rows = v.transpose(1, 2).reshape(-1, channels)
        s1, s2 = rows.sum(0), (rows * rows).sum(0)
    else:
        s1, s2 = v.sum((0, 2)), (v * v).sum((0, 2))
    nonzero = v.sign().abs_().sum()  # count_nonzero is slow on large CPU tensors
    saturated = ((v - mid).abs_() >= thr).sum() if thr >= 0 else torch.zeros((), device=v.device)
    return torch.cat((s1, s2, nonzero.reshape(1).to(s1.dtype), saturated.reshape(1).to(s1.dtype)))


def kernel_usable(y: torch.Tensor, out: torch.Tensor) -> bool:
    """True when the C kernel can reduce ``y`` into ``out``: built and enabled, float32, both on the CPU."""
    return FAST_KERNEL is not None and y.dtype == torch.float32 and y.is_cpu and out.is_cpu


def moments_into(v: torch.Tensor, out: torch.Tensor, row: int, mid: float = 0.0, thr: float = -1.0) -> None:
    """Write the moments of the ``(G, C, P)`` view ``v`` into ``out[row]`` (float64, ``2C + 2`` wide):
    ``[s1_0..s1_{C-1}, s2_0..s2_{C-1}, nonzero, saturated]``; ``saturated`` counts ``|y - mid| >= thr``
    (0 when ``thr < 0``)."""
    if v.numel() and kernel_usable(v, out):
        g, c, p = v.shape
        sg, sc, sp = v.stride()
        FAST_KERNEL.moments(v.data_ptr(), g, c, p, sg, sc, sp, out.data_ptr() + row * out.stride(0) * 8, mid, thr)
    else:
        out[row].copy_(_moments_torch(v, mid, thr))


def channel_moments(y: torch.Tensor, cdim: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-channel ``sum y`` and ``sum y^2`` (float64, shape (C,)), the number of non-zero elements and the
    number of values per channel, of ``y`` with channels along ``cdim`` (one-off use; the recorder
    writes into stream buffers instead)."""
    v = channel_view(y, cdim)
    channels = v.shape[1]
    out = torch.empty((1, 2 * channels + 2), dtype=torch.float64, device=v.device)
    moments_into(v, out, 0)
    row = out[0].cpu()
    return row[:channels], row[channels:2 * channels], int(row[2 * channels]), v.shape[0] * v.shape[2]


class Stream:
    """Successive moment rows of one recorded quantity, in a preallocated float64 buffer on the device.

    ``width`` doubles per row; ``meta`` holds the row labels ``(step, epoch, phase, count)`` where
    ``count`` is the number of values per channel. A row is reserved with :meth:`reserve` and filled by
    the caller (e.g. :func:`moments_into`); :meth:`take` hands back the filled rows and empties it.
    """

    __slots__ = ("address", "buffer", "capacity", "meta", "n", "row_bytes", "width")

    def __init__(self, width: int, device: torch.device, capacity: int) -> None:
        self.width = width
        self.row_bytes = 8 * width
        self.capacity = max(4, min(capacity, BUFFER_BYTES // (8 * width)))
        self.buffer = torch.zeros((self.capacity, width), dtype=torch.float64, device=device)
        self.address = self.buffer.data_ptr()
        """Where row ``i`` starts: ``address + i * row_bytes`` (the buffer is never reallocated)."""
        self.meta: list[tuple[int, int, str, int]] = []
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def reserve(self, step: int, epoch: int, phase: str, count: int) -> int:
        """The index of the next free row, labelled; the caller must flush first when :attr:`full`."""
        row = self.n
        self.meta.append((step, epoch, phase, count))
        self.n = row + 1
        return row

    def take(self) -> tuple[torch.Tensor, list[tuple[int, int, str, int]]]:
        """The filled rows (a view: use them before the next :meth:`reserve`) and their labels; empties
        the stream."""
        rows, meta = self.buffer[:self.n], self.meta
        self.meta, self.n = [], 0
        return rows, meta
