"""The one reduction every recorded statistic goes through: a tensor to per-channel sums, as a buffer row.

:func:`reduce` turns a tensor ``y`` with channels along ``cdim`` into, per channel ``c`` (over the ``M``
values of that channel): ``s1_c = sum y``, ``s2_c = sum y^2``, plus the number of non-zero elements and
of elements within a tolerance of an activation's bounds, written as one row of a preallocated float64
buffer (:class:`~.streams.Stream`). The statistics are derived from the rows later, many at once
(:mod:`initdiag.recording.rows`).

Two implementations give the same numbers to within the bound below: :func:`moments_torch`, torch
operations on the device (no host sync), the reference; and on the CPU, for float32, the optional compiled
kernel ``_kernel.c`` (a plain C shared library loaded with :mod:`ctypes`, a pure function of memory:
addresses, sizes and strides in, sums out), built by ``pip install`` when a C compiler is present. Whether
it is used is decided once, at import: not when ``INITDIAG_NO_FAST_KERNEL`` is set (to anything but ``0``)
or when the library is absent or does not load; :func:`kernel_status` says which (``initdiag --version``
prints it), :func:`kernel_disabled` runs a block on the torch path, where the recorder stages its tensors
(:mod:`.staging`). Measured on a 2-core AMD EPYC with ``python benchmarks/user_loop.py --paired 600``
(seed CNN, every=1, recorded / plain step time): 1.04-1.07 with the kernel, 1.13-1.18 on the torch path.

Accuracy, both paths: each float32 value is widened to float64 (exact) and squared in float64 (exact:
24-bit significands), and the sums are float64, so with ``n`` values per channel and ``u = 2^-53``, in any
summation order (Higham 2002, eq. 4.4; to first order in ``u``)::

    |s1 - sum y| <= (n - 1) u sum |y|          |s2 - sum y^2| <= (n - 1) u sum y^2

and the counts are exact. The kernel's order is fixed in its code for each memory layout (not by the CPU's
vector width), so it gives the same bits on every CPU; the two paths differ by at most twice the bound above
(:func:`sum_error_bound`). Statistics derived by cancellation, ``var = s2/n - (s1/n)^2``, inherit an
absolute error of at most ``3 (n + C + 1) u E[y^2]`` (:func:`variance_error_bound`), i.e. a relative
error amplified by ``E[y^2] / var = 1 + mean^2 / var`` (3e-8 of ``var`` for ``n = 10^6`` and ``E[y^2] = 100
var``).

Overflow, both paths: a channel's sum of squares of a float32 (or narrower) tensor beyond float32's largest
finite value (:data:`FLOAT32_MAX`, ~3.4e38) is reported as inf, as the model's own float32 arithmetic on
those values (a norm, a loss) would overflow; the divergence check reads a non-finite statistic as overflow.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["FLOAT32_MAX", "Geometry", "Layout", "Stager", "channel_moments", "channel_view", "kernel_disabled",
           "kernel_function", "kernel_geometry", "kernel_in_use", "kernel_layout", "kernel_row", "kernel_status",
           "last_samples", "layout_of", "moments_torch", "reduce", "samples_kept", "sum_error_bound",
           "variance_error_bound"]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""A sum of squares of a float32 (or narrower) tensor beyond this is reported as inf (overflow), on both paths."""

UNIT_ROUNDOFF = 2.0**-53
"""``u`` of float64, the accumulation type of both paths."""

_ABI = 5
"""``initdiag_moments_abi()`` of the library this module calls (``INITDIAG_ABI`` in ``_kernel.c``)."""

_Moments = Callable[..., int]


def _load_kernel() -> tuple[_Moments | None, _Moments | None, str]:
    """The compiled ``initdiag_moments_at`` and ``initdiag_abs_stats`` functions, or None, and a one-line account
    of which (run once). ``initdiag_moments_at`` takes four addresses (the tensor's, its geometry's, the row's,
    the bounds'): ctypes's cost grows with the arguments it converts, and a step of a small model calls it
    dozens of times."""
    if os.environ.get("INITDIAG_NO_FAST_KERNEL", "") not in ("", "0"):
        return None, None, "disabled by INITDIAG_NO_FAST_KERNEL: torch path"
    here = Path(__file__).resolve().parent
    found = [here / f"_kernel{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        return None, None, "not built: torch path"
    try:
        lib = ctypes.CDLL(str(path))
        if not hasattr(lib, "initdiag_moments_abi") or lib.initdiag_moments_abi() != _ABI:
            return None, None, f"stale build {path} (reinstall to rebuild): torch path"
        fn, stats = lib.initdiag_moments_at, lib.initdiag_abs_stats
    except (OSError, AttributeError) as exc:
        return None, None, f"does not load ({exc}): torch path"
    fn.argtypes = [ctypes.c_void_p] * 4
    stats.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_double, ctypes.c_void_p]
    fn.restype = stats.restype = ctypes.c_int
    return fn, stats, f"in use ({path})"


class _Kernel:
    """The kernel decided at import (``loaded``, ``status``) and whether a :func:`kernel_disabled` block
    has it off (``active``: the function :func:`reduce` calls, or None; ``stats``: the one
    :func:`~.tensor_stats.tensor_stats` calls, or None)."""

    __slots__ = ("active", "loaded", "stats", "status")

    def __init__(self) -> None:
        self.loaded, self.stats, self.status = _load_kernel()
        self.active = self.loaded


_KERNEL = _Kernel()


def kernel_status() -> str:
    """One line: whether the compiled kernel is in use, and its file, or why the torch path is taken."""
    state = _KERNEL.status if _KERNEL.active is not None or _KERNEL.loaded is None else \
        "built, switched off by kernel_disabled(): torch path"
    return f"compiled kernel: {state}"


def kernel_function() -> _Moments | None:
    """The compiled ``initdiag_moments_at`` that :func:`reduce` calls now, or None (the torch path)."""
    return _KERNEL.active


def kernel_in_use() -> bool:
    """Whether :func:`reduce` sends float32 CPU tensors through the compiled kernel now."""
    return _KERNEL.active is not None


@contextmanager
def kernel_disabled() -> Iterator[None]:
    """Run the block on the torch path (for comparisons and tests); the previous state comes back on exit,
    also when the block raises. Process-wide, not per thread."""
    previous = _KERNEL.active, _KERNEL.stats
    _KERNEL.active = _KERNEL.stats = None
    try:
        yield
    finally:
        _KERNEL.active, _KERNEL.stats = previous


def sum_error_bound(n: int, magnitude: float) -> float:
    """Bound on the rounding error of a float64 sum of ``n`` float32 values, or of their squares, in any
    order: ``gamma_{n-1} magnitude``, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53`` (Higham 2002, eq. 4.4),
    where ``magnitude`` is the sum of the absolute values (``sum |y|``, or ``sum y^2``)."""
    k = max(n - 1, 0) * UNIT_ROUNDOFF
    return k / (1.0 - k) * magnitude


def variance_error_bound(n: int, channels: int, second_moment: float) -> float:
    """Bound on the rounding error of ``var = mean_c (s2_c/n - (s1_c/n)^2)`` and of ``mean_sq = mean_c
    (s1_c/n)^2`` (:mod:`initdiag.recording.rows`) computed in float64 from one path's sums, against the
    exact statistics of the float32 values: ``3 (n + channels + 1) u E[y^2]`` (first order in ``u``), with
    ``second_moment = E[y^2] = mean_c E[y_c^2] = var + mean_sq``.

    Per channel, ``s2_c/n`` is off by ``<= n u E[y_c^2]``, ``m_c = s1_c/n`` by ``<= n u E|y_c|`` so
    ``m_c^2`` by ``<= (2n + 1) u E[y_c^2]`` (``|m_c| E|y_c| <= E[y_c^2]``), the subtraction by ``u
    E[y_c^2]``: ``(3n + 2) u E[y_c^2]``; the mean over ``C`` channels adds ``C u`` relative. The
    cancellation in ``var`` shows as a relative error amplified by ``E[y^2] / var``."""
    return 3.0 * (n + channels + 1) * UNIT_ROUNDOFF * second_moment


def samples_kept(shape: tuple[int, ...], cdim: int, max_per_channel: int | None) -> int:
    """How many samples (dim 0) of a tensor of ``shape`` enter the statistics: the fewest that give at
    least ``max_per_channel`` values per channel, at most all of them (all when there is no cap, no batch
    dim, the channels are dim 0, or ``cdim < 0``: one channel of the whole tensor, a weight, as
    :func:`kernel_geometry` reads it)."""
    if max_per_channel is None or len(shape) < 2 or cdim <= 0 or shape[0] <= 1:
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


class Stager(Protocol):
    """Where :func:`reduce` can leave a tensor's row to be derived later (:class:`~.staging.Staging`)."""

    def stage(self, v: torch.Tensor, out: torch.Tensor, row: int) -> bool: ...


Geometry = tuple[int, int, int, int, int, int, int, int]
"""How the kernel reads one tensor layout: ``(G, C, P, sg, sc, sp, count, offset)``, ``count = G * P``
values per channel, from ``offset`` elements past the tensor's data pointer."""

Layout = tuple[Geometry, int, int, Any]
"""A :data:`Geometry` with the addresses of its ``(G, C, P, sg, sc, sp)`` as int64 and of the bounds
``(mid, thr)`` as float64, in memory the fourth item keeps alive: the kernel's arguments, made once per
layout (:func:`kernel_layout`)."""


def kernel_layout(geometry: Geometry, mid: float, thr: float) -> Layout:
    """``geometry`` and the bounds ``(mid, thr)`` as the kernel's ``initdiag_moments_at`` reads them."""
    sizes = (ctypes.c_int64 * 6)(*geometry[:6])
    bounds = (ctypes.c_double * 2)(mid, thr)
    return geometry, ctypes.addressof(sizes), ctypes.addressof(bounds), (sizes, bounds)


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


def moments_torch(v: torch.Tensor, mid: float = 0.0, thr: float = -1.0,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: ``[s1 (C), s2 (C), nonzero, saturated]`` of a ``(G, C, P)`` view, in float64 on its
    device; ``saturated`` counts ``|v - mid| >= thr`` (0 when ``thr < 0``), in ``v``'s own dtype. Written
    into ``out`` (a contiguous float64 row of ``2C + 2``) when given, which is returned.

    The values are widened to float64 before they are squared and summed (exact squares for float32 and
    narrower: the bound in the module docstring; a float64 input adds ``u`` per square). Costs one float64
    copy of ``v``, squared in place; the sums go straight into ``out`` (few operations: on a GPU each is a
    launch, and the reductions of a step are many small ones)."""
    if not v.is_floating_point():
        v = v.float()
    f64 = torch.float64
    channels = v.shape[1]
    row = torch.empty(2 * channels + 2, dtype=f64, device=v.device) if out is None else out
    wide = v.to(f64, copy=True)
    torch.sum(wide, (0, 2), out=row[:channels])
    s2 = torch.sum(wide.square_(), (0, 2), out=row[channels:2 * channels])
    if v.dtype != f64:  # beyond float32's range: what a float32 (or narrower) model's own arithmetic overflows
        s2.masked_fill_(s2 > FLOAT32_MAX, math.inf)
    row[2 * channels].copy_(torch.count_nonzero(v))
    if thr >= 0:
        row[2 * channels + 1].copy_(torch.count_nonzero((v - mid).abs_() >= thr))
    else:
        row[2 * channels + 1].zero_()
    return row


def reduce(y: torch.Tensor, cdim: int, max_per_channel: int | None, out: torch.Tensor, row: int,
           mid: float = 0.0, thr: float = -1.0, layouts: dict[tuple[Any, ...], Layout | None] | None = None,
           staging: Stager | None = None) -> int:
    """Write the moments of ``y`` (channels along ``cdim``; at most ``max_per_channel`` values per channel,
    the last samples) into ``out[row]`` (float64, ``2C + 2`` wide, on ``y``'s device or the CPU); return the
    number of values per channel.

    ``layouts`` caches the kernel's :data:`Layout` per (shape, strides, cdim, cap, bounds). The compiled
    kernel, when in use, reads float32 CPU tensors whose dims merge without a copy; every other tensor goes
    through ``staging`` when given (:mod:`.staging`: the row is written by its next run, many rows at once)
    or :func:`moments_torch`."""
    kernel = _KERNEL.active
    if kernel is not None and not (y.dtype == torch.float32 and y.is_cpu and out.is_cpu):
        kernel = None
    stage = staging.stage if staging is not None and thr < 0 else None
    if kernel is not None or stage is not None:
        layout = layout_of(y, cdim, max_per_channel, mid, thr, layouts)
        if layout is not None:
            if kernel is not None:
                return kernel_row(kernel, y, layout, out.data_ptr() + row * out.stride(0) * 8)
            g, c, p, sg, sc, sp, count, offset = layout[0]
            if stage is not None:
                if stage(y.detach().as_strided((g, c, p), (sg, sc, sp), y.storage_offset() + offset), out, row):
                    return count
                stage = None  # refused (float64, too large): the one-tensor path
    v = channel_view(last_samples(y.detach(), cdim, max_per_channel), cdim)
    if stage is not None and stage(v, out, row):  # dims that merge only by a copy
        return v.shape[0] * v.shape[2]
    target = out[row]
    if target.is_contiguous() and target.device == v.device:
        moments_torch(v, mid, thr, target)
    else:  # a host buffer for a device tensor
        target.copy_(moments_torch(v, mid, thr))
    return v.shape[0] * v.shape[2]


def kernel_row(kernel: _Moments, y: torch.Tensor, layout: Layout, address: int) -> int:
    """``kernel`` on the float32 CPU tensor ``y`` read as ``layout``, its row written at ``address``; the number
    of values per channel."""
    geometry, sizes, bounds, _ = layout
    if kernel(y.data_ptr() + 4 * geometry[7], sizes, address, bounds):
        raise ValueError(f"compiled kernel refused geometry {geometry}")  # pragma: no cover
    return geometry[6]


def layout_of(y: torch.Tensor, cdim: int, max_per_channel: int | None, mid: float, thr: float,
               layouts: dict[tuple[Any, ...], Layout | None] | None) -> Layout | None:
    """The kernel's :data:`Layout` of ``y`` (None when its dims do not merge), from ``layouts`` when there."""
    key = (y.shape, y.stride(), cdim, max_per_channel, mid, thr)
    if layouts is not None and key in layouts:
        return layouts[key]
    geometry = kernel_geometry(tuple(y.shape), y.stride(), cdim, max_per_channel)
    layout = kernel_layout(geometry, mid, thr) if geometry is not None else None
    if layouts is not None:
        layouts[key] = layout
    return layout


def channel_moments(y: torch.Tensor, cdim: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-channel ``sum y`` and ``sum y^2`` (float64, shape (C,)), the number of non-zero elements and the
    number of values per channel, of all of ``y`` (a one-off :func:`reduce`)."""
    channels = y.shape[cdim] if y.dim() > 1 and cdim >= 0 else 1
    out = torch.empty((1, 2 * channels + 2), dtype=torch.float64, device=y.device)
    count = reduce(y, cdim, None, out, 0)
    row = out[0].cpu()
    return row[:channels], row[channels:2 * channels], int(row[2 * channels]), count
