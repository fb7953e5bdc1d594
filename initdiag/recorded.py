"""What the recorder records, and how its moment rows become statistics.

The vocabulary shared by the recorder, the checks and the report: kinds (:class:`Kind`), statistic
names (:class:`Stat`), the tidy frame's columns, which modules are recorded as weight layers or
activations, :class:`LayerInfo`; the recorder's per-layer bookkeeping (:class:`LayerState`); and the
arithmetic that turns rows of per-channel sums into the statistics (formulas in :func:`moment_chunk`
and :func:`weight_chunk`), done with numpy many steps at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import nn

from ._moments import Stream
from .initializers import WEIGHT_LAYER_TYPES

__all__ = [
    "ACTIVATION_TYPES",
    "FRAME_COLUMNS",
    "RECORDED_WEIGHT_TYPES",
    "RELU_FAMILY",
    "SATURATING",
    "Kind",
    "LayerInfo",
    "LayerState",
    "Stat",
    "activation_name",
    "column_dtype",
    "main_weight",
    "moment_chunk",
    "weight_chunk",
]


class Kind(StrEnum):
    """What a statistic describes."""

    FORWARD = "forward"
    BACKWARD = "backward"
    WEIGHT = "weight"
    WEIGHT_GRAD = "weight_grad"


class Stat(StrEnum):
    """Names of the recorded statistics (see the module docstring for their formulas)."""

    VAR = "var"
    MEAN_SQ = "mean_sq"
    ZERO_FRAC = "zero_frac"
    DEAD_FRAC = "dead_frac"
    SAT_FRAC = "sat_frac"


FRAME_COLUMNS: tuple[str, ...] = (
    "run", "initializer", "seed", "epoch", "step", "phase", "layer", "depth", "module", "kind", "stat",
    "value",
)

ACTIVATION_TYPES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Softplus: "softplus",
    nn.Tanh: "tanh",
    nn.Hardtanh: "hardtanh",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Hardswish: "hardswish",
}
RELU_FAMILY = frozenset({"relu", "relu6"})
"""Activations whose inactive outputs are exactly zero, so a unit can be dead."""
SATURATING: dict[str, tuple[float, float]] = {"tanh": (-1.0, 1.0), "hardtanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}
"""Bounded activations and their bounds, for ``sat_frac``."""

RECORDED_WEIGHT_TYPES: tuple[type[nn.Module], ...] = (
    *WEIGHT_LAYER_TYPES, nn.RNNBase, nn.MultiheadAttention, nn.Embedding,
)
"""Modules recorded as weight layers (role ``"weight"``, counted in ``depth``)."""

_FWD_STATS = (Stat.VAR, Stat.MEAN_SQ, Stat.ZERO_FRAC)
_BWD_STATS = (Stat.VAR, Stat.MEAN_SQ, Stat.ZERO_FRAC)
_W_STATS = (Stat.VAR,)


def main_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight whose variance is recorded: ``weight`` (Conv/Linear/Embedding), MultiheadAttention's
    ``in_proj_weight`` (``q_proj_weight`` when keys/values have other sizes), a recurrent layer's
    ``weight_ih_l0``; None when the module has none of them."""
    for attr in ("weight", "in_proj_weight", "q_proj_weight", "weight_ih_l0"):
        weight = getattr(module, attr, None)
        if isinstance(weight, torch.Tensor):
            return weight
    return None


def activation_name(module: nn.Module) -> str | None:
    """The activation family of ``module`` (``"relu"``, ``"tanh"``, ...), or None if not an activation.

    Subclasses count (the most specific registered base wins), e.g. ``nn.ReLU6`` is ``"relu6"``.
    """
    for cls in type(module).__mro__:
        if cls in ACTIVATION_TYPES:
            return ACTIVATION_TYPES[cls]
    return None


@dataclass(frozen=True)
class LayerInfo:
    """One recorded layer (one call site of a module), in the order of the first forward pass.

    ``depth`` counts weight-layer calls from 0 in execution order; an activation takes the depth of the
    weight layer before it. ``activation`` is, for a weight layer, the activation module that ran
    next before the next weight layer (``"linear"`` when none did); for an activation, its own family.
    ``weight_shape``: the shape of a Conv/Linear weight (None for other layers, whose variance theory
    the checks do not cover).
    """

    name: str
    module_name: str
    module: str
    role: str  # "weight" or "activation"
    depth: int
    activation: str | None
    weight_shape: tuple[int, ...] | None
    numel: int | None = None
    """Elements per sample of the output (all dims but the first) at the first recorded call."""


class LayerState:
    """The recorder's mutable bookkeeping for one call site while recording."""

    __slots__ = ("activation", "cdims", "code", "depth", "module", "module_name", "name", "numel", "role", "sites",
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
        conv_linear = role == "weight" and isinstance(module, WEIGHT_LAYER_TYPES)
        self.weight_shape = tuple(weight.shape) if conv_linear and weight is not None else None
        self.numel: int | None = None
        self.cdims: dict[int, int] = {}  # output dim -> channel dim, decided at the first call
        self.streams: dict[tuple[str, int], Stream] = {}  # (kind, channels) -> moment rows
        # kind -> (shape, strides, stream, kernel arguments...) of the last training-step tensor the C kernel
        # read: the next one of the same layout skips every other decision (see Recorder._push)
        self.sites: dict[str, tuple[Any, ...]] = {}

    def info(self) -> LayerInfo:
        return LayerInfo(self.name, self.module_name, self.module, self.role, self.depth, self.activation,
                         self.weight_shape, self.numel)


def moment_chunk(layer: LayerState, kind: str, rows: np.ndarray, meta: list[tuple[int, int, str, int]]
                  ) -> dict[str, np.ndarray]:
    """Statistics of a layer's forward or backward rows (one per step), with their labels.

    Per row: ``var = mean_c (s2_c / n - (s1_c / n)^2)``, ``mean_sq = mean_c (s1_c / n)^2``,
    ``zero_frac = 1 - nonzero / (n C)``, ``dead_frac = mean_c [s1_c == 0]`` (ReLU family),
    ``sat_frac = saturated / (n C)`` (bounded activations); ``n`` values per channel."""
    channels = (rows.shape[1] - 2) // 2
    s1, s2 = rows[:, :channels], rows[:, channels:2 * channels]
    n = np.fromiter((m[3] for m in meta), np.float64, len(meta))[:, None]
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    total = n[:, 0] * channels
    columns = [var.mean(1), (mean * mean).mean(1), 1.0 - rows[:, 2 * channels] / total]
    stats: tuple[str, ...] = _FWD_STATS if kind == Kind.FORWARD else _BWD_STATS
    if kind == Kind.FORWARD and layer.role == "activation" and layer.activation in RELU_FAMILY:
        columns.append((s1 == 0).mean(1))  # outputs >= 0: a channel is all zero iff its sum is 0
        stats = (*stats, Stat.DEAD_FRAC)
    elif kind == Kind.FORWARD and layer.role == "activation" and layer.activation in SATURATING:
        columns.append(rows[:, 2 * channels + 1] / total)
        stats = (*stats, Stat.SAT_FRAC)
    return {**labels(meta, layer.code, kind, stats), "value": np.stack(columns, 1).reshape(-1)}


def weight_chunk(kind: str, codes: tuple[int, ...], sizes: tuple[int, ...], rows: np.ndarray,
                  meta: list[tuple[int, int, str, int]]) -> dict[str, np.ndarray]:
    """Variance of each layer's weight (or its gradient) per step, ``s2 / n - (s1 / n)^2`` over its
    ``n`` elements, with the row labels."""
    cells = rows.reshape(len(rows), len(codes), 4)
    n = np.asarray(sizes, dtype=np.float64)
    mean = cells[:, :, 0] / n
    var = np.maximum(cells[:, :, 1] / n - mean * mean, 0.0)
    steps, k = len(meta), len(codes)
    return {
        "step": np.repeat(np.fromiter((m[0] for m in meta), np.int64, steps), k),
        "epoch": np.repeat(np.fromiter((m[1] for m in meta), np.int64, steps), k),
        "phase": np.full(steps * k, "train", dtype=object),
        "layer": np.tile(np.asarray(codes, dtype=np.int64), steps),
        "kind": np.full(steps * k, kind, dtype=object),
        "stat": np.full(steps * k, str(Stat.VAR), dtype=object),
        "value": var.reshape(-1),
    }


def labels(meta: list[tuple[int, int, str, int]], code: int, kind: str, stats: tuple[str, ...]
            ) -> dict[str, np.ndarray]:
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


def column_dtype(column: str) -> str:
    if column == "value":
        return "float64"
    if column in ("seed", "epoch", "step", "depth"):
        return "int64"
    return "object"
