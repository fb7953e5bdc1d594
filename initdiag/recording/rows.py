"""The recorder's bookkeeping per call site, and the arithmetic that turns moment rows into statistics.

Each recorded quantity (a layer's output, dL/dy, its weight, the weight's gradient) is a
:class:`~initdiag.recording.streams.Stream` of rows ``[s1_0..s1_{C-1}, s2_0..s2_{C-1}, nonzero,
saturated]``, one per step. :func:`moment_chunk` derives the statistics of many rows at once with numpy
(formulas in its docstring).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..structure import Structure
from ..structure.activations import RELU_FAMILY, SATURATING
from ..structure.layers import WEIGHT_LAYER_TYPES, LayerInfo
from ..vocab import Kind, Role, Stat
from .streams import Stream

__all__ = ["LayerState", "Meta", "layer_infos", "moment_chunk"]

Meta = list[tuple[int, int, str, int]]
"""Row labels: ``(step, epoch, phase, values per channel)``."""

_OUTPUT_STATS = (Stat.VAR, Stat.MEAN_SQ, Stat.ZERO_FRAC)
_WEIGHT_STATS = (Stat.VAR, Stat.MEAN_SQ)


class LayerState:
    """The recorder's mutable bookkeeping for one call site while recording."""

    __slots__ = ("activation", "cdims", "code", "depth", "module", "module_name", "name", "numel", "role",
                 "streams", "weight_shape")

    def __init__(self, code: int, name: str, module_name: str, module: nn.Module, role: str, depth: int,
                 activation: str | None) -> None:
        self.code = code
        self.name = name
        self.module_name = module_name
        self.module = type(module).__name__
        self.role = role
        self.depth = depth
        self.activation = activation
        weight = getattr(module, "weight", None)
        conv_linear = role == Role.WEIGHT and isinstance(module, WEIGHT_LAYER_TYPES)
        self.weight_shape = tuple(weight.shape) if conv_linear and isinstance(weight, torch.Tensor) else None
        self.numel: int | None = None
        self.cdims: dict[int, int] = {}
        """Output dim -> channel dim, decided at the first call with that many dims."""
        self.streams: dict[tuple[str, int], Stream] = {}
        """(kind, channels) -> rows."""

    def info(self) -> LayerInfo:
        return LayerInfo(self.name, self.module_name, self.module, self.role, self.depth, self.activation,
                         self.weight_shape, self.numel)


def moment_chunk(layer: LayerState, kind: str, rows: np.ndarray, meta: Meta) -> dict[str, np.ndarray]:
    """Statistics of a layer's rows of one kind (one row per step), with their labels.

    Per row, with ``n`` values per channel and ``C`` channels: ``var = mean_c (s2_c / n - (s1_c / n)^2)``
    (population variance over the batch and positions, averaged over channels; it ignores constant
    offsets such as biases, Brock et al. 2021), ``mean_sq = mean_c (s1_c / n)^2``, ``zero_frac = 1 -
    nonzero / (n C)``; for a ReLU-family activation's output ``dead_frac = mean_c [s1_c == 0]`` (outputs
    are >= 0, so a channel is all zero iff its sum is 0); for a bounded activation ``sat_frac = saturated /
    (n C)``. A weight, its gradient or its update is one channel of all its elements (``var`` and ``mean_sq``;
the second moment ``E[w^2] = var + mean_sq``, so ``||W||^2 = numel (var + mean_sq)``). Rows of
    a diverged step (inf/NaN sums) give NaN, silently: the checks report the divergence."""
    channels = (rows.shape[1] - 2) // 2
    s1, s2 = rows[:, :channels], rows[:, channels:2 * channels]
    n = np.fromiter((m[3] for m in meta), np.float64, len(meta))[:, None]
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    if kind in (Kind.WEIGHT, Kind.WEIGHT_GRAD, Kind.UPDATE):
        moments = np.stack([var[:, 0], (mean * mean)[:, 0]], 1)
        return {**labels(meta, layer.code, kind, _WEIGHT_STATS), "value": moments.reshape(-1)}
    total = n[:, 0] * channels
    columns = [var.mean(1), (mean * mean).mean(1), 1.0 - rows[:, 2 * channels] / total]
    stats: tuple[str, ...] = _OUTPUT_STATS
    if kind == Kind.FORWARD and layer.role == Role.ACTIVATION and layer.activation in RELU_FAMILY:
        columns.append((s1 == 0).mean(1))
        stats = (*stats, Stat.DEAD_FRAC)
    elif kind == Kind.FORWARD and layer.role == Role.ACTIVATION and layer.activation in SATURATING:
        columns.append(rows[:, 2 * channels + 1] / total)
        stats = (*stats, Stat.SAT_FRAC)
    return {**labels(meta, layer.code, kind, stats), "value": np.stack(columns, 1).reshape(-1)}


def labels(meta: Meta, code: int, kind: str, stats: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row labels for ``len(meta)`` steps x ``len(stats)`` statistics of one layer and kind."""
    steps, width = len(meta), len(stats)
    return {
        "step": np.repeat(np.fromiter((m[0] for m in meta), np.int64, steps), width),
        "epoch": np.repeat(np.fromiter((m[1] for m in meta), np.int64, steps), width),
        "phase": np.repeat(np.asarray([m[2] for m in meta], dtype=object), width),
        "layer": np.full(steps * width, code, dtype=np.int64),
        "kind": np.full(steps * width, str(kind), dtype=object),
        "stat": np.tile(np.asarray([str(s) for s in stats], dtype=object), steps),
    }


def layer_infos(layers: list[LayerState], structure: Structure | None) -> list[LayerInfo]:
    """The recorded layers as :class:`LayerInfo`; with the structure, each weight layer's fans, activation,
    block, normalization and constant input as it saw them."""
    infos = [layer.info() for layer in layers]
    if structure is None:
        return infos
    found = {w.name: w for w in structure.weight_layers}
    out = []
    for info in infos:
        w = found.get(info.name) if info.role == Role.WEIGHT else None
        if w is not None:
            info = dataclasses.replace(info, fan_in=w.fan_in, fan_out=w.fan_out, activation=w.activation.name,
                                       block=w.block, norm_after=w.norm_after, constant_input=w.constant_input)
        out.append(info)
    return out
