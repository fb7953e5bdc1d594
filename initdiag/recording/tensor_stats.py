"""Whole-tensor statistics in one pass: sums, the non-zero count, the smallest non-zero and largest magnitude,
and how many non-zero values fall below two thresholds.

One call of the compiled kernel's ``initdiag_abs_stats`` (``_kernel.c``) for a float32 CPU tensor that fills
one block of memory (contiguous, channels-last, transposed, ...): one vectorized read from memory, each block
of 2048 values summed and then measured while in L1 (~0.6 ms for 2 M values on one core, against ~5 ms for
the torch passes of the same; a tensor beyond the caches in ~0.7 of the time of a read for the sums and
another for the magnitudes); torch operations (the reference, for any dtype and device) otherwise, a handful of
passes. Both give the same counts and extremes exactly and the same sums within the bound of
:mod:`~.moments` (float64 sums of exact float64 squares; a float32 or narrower tensor's sum of squares
beyond :data:`~.moments.FLOAT32_MAX` is inf). The thresholds are compared in the tensor's own dtype (as
``a < t`` in torch), not in float64.

Used where a whole tensor's magnitude matters rather than its channels: a weight's moments
(:func:`tensor_moments`), a site's output and gradient in the audit's first batch
(:class:`~.extras.Extras`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from .moments import _KERNEL, _dense_size, channel_moments, moments_torch

__all__ = ["TensorMoments", "TensorStats", "array_moments", "moments_once", "reading_once", "sum_of_squares",
           "tensor_moments", "tensor_stats"]


@dataclass(frozen=True)
class TensorStats:
    """Of ``n`` values: ``total = sum x``, ``squares = sum x^2`` (float64), ``nonzero`` count, ``least`` non-zero
    ``|x|`` (inf when none, NaN when any value is NaN), ``top`` ``|x|`` (inf when any value is not finite),
    and the counts of non-zero values with ``|x| < below[0]`` and ``|x| < below[1]``."""

    n: int
    total: float
    squares: float
    nonzero: int
    least: float
    top: float
    under: tuple[int, int]


def tensor_stats(t: torch.Tensor, below: tuple[float, float] = (0.0, 0.0)) -> TensorStats:
    """:class:`TensorStats` of all of ``t`` (see the module docstring for the two paths)."""
    y = t.detach()
    n = y.numel()
    fn = _KERNEL.stats
    if fn is not None and _flat_float32(y):
        out = np.empty(7, dtype=np.float64)
        if fn(y.data_ptr(), n, float(below[0]), float(below[1]), out.ctypes.data):
            raise ValueError(f"compiled kernel refused {n} values")  # pragma: no cover
        total, squares, nonzero, least, top, u1, u2 = out.tolist()
        return TensorStats(n, total, squares, int(nonzero), least, top, (int(u1), int(u2)))
    return _stats_torch(y.reshape(-1), n, below)


def sum_of_squares(t: torch.Tensor) -> float:
    """``tensor_stats(t).squares`` (the same bits): where the compiled kernel reads ``t``, its moments pass
    alone (the sums, without the magnitudes), else :func:`tensor_stats`."""
    y = t.detach()
    if _KERNEL.stats is not None and _KERNEL.active is not None and _flat_float32(y):
        return float(channel_moments(y, -1)[1][0])  # the dense block as one channel: abs_stats' first pass
    return tensor_stats(y).squares


def _flat_float32(y: torch.Tensor) -> bool:
    """Whether the compiled kernel reads ``y`` as a flat array: float32 on the CPU, non-empty, filling one block
    of memory."""
    return bool(y.dtype == torch.float32 and y.is_cpu and y.numel() and _dense_size(tuple(y.shape), y.stride()))


def _stats_torch(y: torch.Tensor, n: int, below: tuple[float, float]) -> TensorStats:
    """The torch reference of :func:`tensor_stats` (one host transfer)."""
    if n == 0:
        return TensorStats(0, 0.0, 0.0, 0, math.inf, 0.0, (0, 0))
    if not y.is_floating_point():
        y = y.float()
    sums = moments_torch(y.reshape(1, 1, -1))[:3]  # sum, sum of squares, non-zero count: the moments' reference
    a = y.abs()
    live = a > 0
    least = torch.where(live, a, torch.full((), math.inf, dtype=a.dtype, device=a.device)).amin()
    rest = torch.stack([torch.isnan(a).any().double(), least.double(), a.amax().double(),
                        (live & (a < below[0])).sum().double(), (live & (a < below[1])).sum().double()])
    values = torch.cat((sums, rest)).tolist()
    total, sq, nonzero, nan, low, high, u1, u2 = values
    return TensorStats(n, total, sq, int(nonzero), math.nan if nan else low,
                       high if math.isfinite(high) else math.inf, (int(u1), int(u2)))


@dataclass(frozen=True)
class TensorMoments:
    """One pass over a whole tensor: ``n`` values, ``mean``, ``mean_sq`` (float64 sums), ``nonzero`` count and
    the largest ``|value|`` (``top``; inf when any value is not finite)."""

    n: int
    mean: float
    mean_sq: float
    nonzero: int
    top: float

    @property
    def var(self) -> float:
        """``mean_sq - mean^2`` (0 for a constant tensor)."""
        return 0.0 if self.top == abs(self.mean) else max(self.mean_sq - self.mean**2, 0.0)


_ONCE: ContextVar[dict[tuple[int, int], tuple[torch.Tensor, TensorMoments]] | None] = ContextVar(
    "initdiag_moments_once", default=None)


@contextmanager
def moments_once() -> Iterator[None]:
    """Within the block, :func:`tensor_moments` reads each tensor object once per version: a later call on the
    same tensor (``is``, the tensor held so its id is not reused) with the same version counter returns the
    first result (and a recorder's stream copies its last row for the tensor it last read, unchanged:
    :meth:`~.streams.Stream.fill`). For a block whose writes to the tensors it reads go through in-place
    operations (they move the counter; a write through ``.data`` does not): an audit's weights, written only
    by its look-ahead steps and restores."""
    token = _ONCE.set({})
    try:
        yield
    finally:
        _ONCE.reset(token)


def reading_once() -> bool:
    """Whether the caller is inside :func:`moments_once`: tensors it reads are written only in place."""
    return _ONCE.get() is not None


def tensor_moments(t: torch.Tensor) -> TensorMoments:
    """:class:`TensorMoments` of ``t`` from :func:`tensor_stats` (the compiled kernel where it applies: one
    read of each value; once per tensor and version inside :func:`moments_once`)."""
    memo = _ONCE.get() if not t.is_inference() else None  # an inference tensor has no version counter
    if memo is None:
        return _moments(t)
    key = (id(t), t._version)
    hit = memo.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    m = memo[key] = (t, _moments(t))
    return m[1]


def _moments(t: torch.Tensor) -> TensorMoments:
    s = tensor_stats(t)
    if s.n == 0:
        return TensorMoments(0, math.nan, math.nan, 0, 0.0)
    return TensorMoments(s.n, s.total / s.n, s.squares / s.n, s.nonzero, s.top)


def array_moments(a: np.ndarray) -> TensorMoments:
    """:func:`tensor_moments` of a numpy array (read-only views of a model's weights included: only read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that a read-only array could be written
        return tensor_moments(torch.from_numpy(np.ascontiguousarray(a) if min(a.strides, default=0) < 0 else a))
