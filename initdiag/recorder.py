"""Per-layer statistics recorded with hooks, reduced on the device, collected into one tidy DataFrame.

This is the only module that registers hooks. Usage in any training loop::

    with Recorder(model, every=1) as rec:
        for epoch in range(epochs):
            rec.epoch = epoch
            for x, y in batches:
                loss = loss_fn(model(x), y)   # each forward with grad enabled is one step
                loss.backward()
                ...
    frame = rec.frame()

What is recorded, for every Conv/Linear module and every activation module (ReLU, tanh, GELU, ...),
per call (a module called twice per forward is recorded twice, as ``name`` and ``name@2``):

* ``forward``: statistics of the module's output ``y``, per channel ``c`` (a conv's channel, a linear
  layer's feature) over the batch and spatial positions (``M`` values each):
  ``var = mean_c [ (1/M) sum_i (y_ci - m_c)^2 ]`` (population variance, average over channels; it
  ignores constant offsets such as biases, Brock et al. 2021), ``mean_sq = mean_c m_c^2`` with
  ``m_c = (1/M) sum_i y_ci``, ``zero_frac`` = fraction of exact zeros; for ReLU-family modules
  ``dead_frac`` = fraction of channels that are zero for every input of the batch; for tanh/sigmoid
  ``sat_frac`` = fraction of outputs within ``saturation_tol`` of the bounds.
* ``backward``: the same ``var``, ``mean_sq``, ``zero_frac`` of dL/dy, the gradient of the loss with
  respect to the module's output, from a tensor hook set on the output in the forward hook (works
  with in-place activations, where ``register_full_backward_hook`` fails).
* ``weight`` / ``weight_grad``: population variance ``var`` of each Conv/Linear weight and of its
  gradient.

Hooks keep no tensors: each call reduces to a few scalars on the device; they are copied to the host
in one batch every ``flush_every`` entries, never one sync per hook call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .initializers import WEIGHT_LAYER_TYPES

__all__ = [
    "ACTIVATION_TYPES",
    "FRAME_COLUMNS",
    "Kind",
    "LayerInfo",
    "Recorder",
    "Stat",
    "activation_name",
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

_FWD_STATS = (Stat.VAR, Stat.MEAN_SQ, Stat.ZERO_FRAC)
_BWD_STATS = (Stat.VAR, Stat.MEAN_SQ, Stat.ZERO_FRAC)
_W_STATS = (Stat.VAR,)


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

    ``depth`` counts Conv/Linear calls from 0 in execution order; an activation takes the depth of the
    weight layer before it. ``activation`` is, for a weight layer, the activation module that ran
    next before the next weight layer (``"linear"`` when none did); for an activation, its own family.
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


class _Layer:
    """Mutable bookkeeping for one call site while recording."""

    __slots__ = ("activation", "code", "depth", "module", "module_name", "name", "numel", "role", "weight_shape")

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
        self.weight_shape = tuple(weight.shape) if role == "weight" and weight is not None else None
        self.numel: int | None = None

    def info(self) -> LayerInfo:
        return LayerInfo(self.name, self.module_name, self.module, self.role, self.depth, self.activation,
                         self.weight_shape, self.numel)


def channel_sums(y: torch.Tensor, cdim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per-channel ``(sum y, sum y^2, count of non-zeros)`` in float64, and the values per channel.

    Reduces along memory order (a channels-first conv output by (batch, channel) rows first, a
    channels-last or (batch, features) tensor down its rows): float32 partial sums over at most one
    row of contiguous values, combined in float64. The variance ``sum y^2 / M - (sum y / M)^2`` then
    has an absolute error of about ``1e-7 * mean^2``.
    """
    y = y.detach()
    if y.dim() == 0:
        y = y.reshape(1, 1)
        cdim = 1
    elif y.dim() == 1:
        y = y.reshape(-1, 1)
        cdim = 1
    if not y.is_floating_point():
        y = y.float()
    channels = y.shape[cdim]
    count = y.numel() // max(channels, 1)
    moved = y.movedim(cdim, -1)
    if moved.is_contiguous():  # channel innermost: (rows, C)
        rows = moved.reshape(-1, channels)
        s1 = rows.sum(0, dtype=torch.float64)
        s2 = torch.linalg.vector_norm(rows, dim=0, dtype=torch.float64).square()
        nonzero = torch.linalg.vector_norm(rows, ord=0, dim=0)
        return s1, s2, nonzero.double(), count
    grouped = y.reshape(math.prod(y.shape[:cdim]), channels, -1)  # copies only for odd layouts
    s1 = grouped.sum(2).double().sum(0)
    s2 = torch.linalg.vector_norm(grouped, dim=2).double().square().sum(0)
    nonzero = torch.linalg.vector_norm(grouped, ord=0, dim=2).double().sum(0)
    return s1, s2, nonzero, count


def _iter_tensors(output: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Walk a module output (tensor, tuple/list, dict) and yield (suffix, floating-point tensor)."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() and output.numel() > 0:
            yield path, output
    elif isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            yield from _iter_tensors(item, f"{path}.{i}")
    elif isinstance(output, dict):
        for key, item in output.items():
            yield from _iter_tensors(item, f"{path}.{key}")


class Recorder:
    """Context manager that records per-layer statistics of ``model`` (see the module docstring).

    Args:
        model: the model; its own hooks, train/eval mode and parameters are never changed.
        every: record every ``every``-th step (a step is one forward call of ``model`` with grad enabled).
        run, initializer, seed: labels copied into every row of :meth:`frame`.
        saturation_tol: an output within this distance of a bound of tanh/sigmoid counts as saturated.
        flush_every: number of pending entries after which they are copied to the host in one batch.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, run: str = "run", initializer: str = "",
                 seed: int = 0, saturation_tol: float = 0.01, flush_every: int = 20_000) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (got {every})")
        self.model = model
        self.every = every
        self.run = run
        self.initializer = initializer
        self.seed = seed
        self.saturation_tol = saturation_tol
        self.flush_every = flush_every
        self.epoch = 0
        self.step = -1
        self._phase = "train"
        self._recording = False
        self._handles: list[RemovableHandle] = []
        self._layers: list[_Layer] = []
        self._by_key: dict[tuple[int, int, str], _Layer] = {}
        self._first_site: dict[int, _Layer] = {}
        self._calls: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._last_weight: _Layer | None = None
        self._act_seen = False
        self._last_weight_cdim = 1
        self._last_weight_shape: torch.Size | None = None
        # pending: (step, epoch, phase, layer code, kind, stats) + one 1-D tensor of len(stats)
        self._pending_meta: list[tuple[int, int, str, int, str, tuple[str, ...]]] = []
        self._pending_vals: list[torch.Tensor] = []
        self._chunks: list[dict[str, np.ndarray]] = []
        self._frame: pd.DataFrame | None = None

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._handles:
            raise RuntimeError("Recorder is already active")
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._detach()
        if exc_type is None:
            self.flush()
        else:
            with suppress(Exception):  # the original error matters more than a flush of partial data
                self.flush()

    def _attach(self) -> None:
        self._names = {id(m): n for n, m in self.model.named_modules()}
        self._handles.append(self.model.register_forward_pre_hook(self._on_root_forward))
        for module in self.model.modules():
            if isinstance(module, WEIGHT_LAYER_TYPES):
                self._handles.append(module.register_forward_hook(self._make_forward_hook(module, "weight")))
                weight = getattr(module, "weight", None)
                if isinstance(weight, torch.Tensor) and weight.requires_grad:
                    self._handles.append(weight.register_hook(self._make_weight_grad_hook(module)))
            elif activation_name(module) is not None:
                self._handles.append(
                    module.register_forward_hook(self._make_forward_hook(module, "activation"))
                )

    def _detach(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._recording = False

    @property
    def active(self) -> bool:
        """True while hooks are attached."""
        return bool(self._handles)

    # -- step / probe control ----------------------------------------------------------------------
    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()
        self._last_weight = None
        if self._phase != "train":
            self._recording = True
            return
        if not torch.is_grad_enabled():
            self._recording = False
            return
        self.step += 1
        self._recording = self.step % self.every == 0

    @contextmanager
    def probe(self, phase: str) -> Iterator[None]:
        """Record the forward passes inside the block under ``phase`` (e.g. "init", "final").

        Meant for an evaluation batch under ``torch.no_grad()``: rows get the current step and epoch,
        and ``phase`` instead of "train". Steps are not advanced.
        """
        if phase == "train":
            raise ValueError("probe phase must not be 'train'")
        old = self._phase
        self._phase = phase
        try:
            yield
        finally:
            self._phase = old
            self._recording = False

    # -- hooks --------------------------------------------------------------------------------------
    def _layer_for(self, module: nn.Module, role: str, call: int, suffix: str) -> _Layer:
        key = (id(module), call, suffix)
        layer = self._by_key.get(key)
        if layer is None:
            base = self._names.get(id(module)) or type(module).__name__
            name = base + (f"@{call}" if call > 1 else "") + suffix
            if role == "weight":
                depth = sum(1 for lay in self._layers if lay.role == "weight")
                activation: str | None = "linear"
            else:
                depth = self._last_weight.depth if self._last_weight is not None else 0
                activation = activation_name(module)
            layer = _Layer(len(self._layers), name, base, module, role, depth, activation)
            self._layers.append(layer)
            self._by_key[key] = layer
            self._first_site.setdefault(id(module), layer)
        return layer

    def _channel_dim(self, module: nn.Module, role: str, y: torch.Tensor) -> int:
        if y.dim() <= 1:
            return 0
        if role == "weight":
            return 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else y.dim() - 1
        if self._last_weight_shape is not None and y.shape == self._last_weight_shape:
            return self._last_weight_cdim
        return 1 if y.dim() >= 4 else y.dim() - 1

    def _make_forward_hook(self, module: nn.Module, role: str) -> Any:
        act = activation_name(module)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not self._recording:
                return
            phase = self._phase
            call = self._calls.get(id(mod), 0) + 1
            self._calls[id(mod)] = call
            for suffix, y in _iter_tensors(output):
                layer = self._layer_for(mod, role, call, suffix)
                if layer.numel is None and y.dim() >= 2:
                    layer.numel = y[0].numel()
                cdim = self._channel_dim(mod, role, y)
                if role == "weight":
                    self._last_weight, self._act_seen = layer, False
                    self._last_weight_cdim, self._last_weight_shape = cdim, y.shape
                elif self._last_weight is not None and not self._act_seen:
                    self._last_weight.activation = act
                    self._act_seen = True
                self._record_output(layer, Kind.FORWARD, y.detach(), cdim, act)
                if phase == "train" and y.requires_grad:
                    y.register_hook(self._make_grad_hook(layer, cdim))
            weight = getattr(mod, "weight", None)
            if role == "weight" and call == 1 and phase == "train" and isinstance(weight, torch.Tensor):
                var = torch.var_mean(weight.detach().float(), correction=0)[0]
                self._push(self._first_site[id(mod)], Kind.WEIGHT, _W_STATS, var[None])

        return hook

    def _make_grad_hook(self, layer: _Layer, cdim: int) -> Any:
        step, epoch = self.step, self.epoch

        def hook(grad: torch.Tensor) -> None:
            if not self._handles:
                return
            self._record_output(layer, Kind.BACKWARD, grad.detach(), cdim, None, step=step, epoch=epoch)

        return hook

    def _make_weight_grad_hook(self, module: nn.Module) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if self._phase != "train" or not self._handles or self.step % self.every:
                return
            layer = self._first_site.get(id(module))
            if layer is None:
                return
            self._push(layer, Kind.WEIGHT_GRAD, _W_STATS,
                       torch.var_mean(grad.detach().float(), correction=0)[0][None])

        return hook

    def _record_output(self, layer: _Layer, kind: Kind, y: torch.Tensor, cdim: int, act: str | None,
                       step: int | None = None, epoch: int | None = None) -> None:
        s1, s2, nonzero, count = channel_sums(y, cdim)
        mean = s1 / count
        var = (s2 / count - mean.square()).clamp_min(0.0)
        parts = [var.mean(), mean.square().mean(), 1.0 - nonzero.sum() / y.numel()]
        stats: tuple[str, ...] = _FWD_STATS if kind == Kind.FORWARD else _BWD_STATS
        if kind == Kind.FORWARD and act in RELU_FAMILY:
            parts.append((nonzero == 0).double().mean())
            stats = (*stats, Stat.DEAD_FRAC)
        elif kind == Kind.FORWARD and act in SATURATING:
            lo, hi = SATURATING[act]
            tol = self.saturation_tol
            parts.append(((y <= lo + tol) | (y >= hi - tol)).double().mean())
            stats = (*stats, Stat.SAT_FRAC)
        self._push(layer, kind, stats, torch.stack(parts), step, epoch)

    def _push(self, layer: _Layer, kind: str, stats: tuple[str, ...], values: torch.Tensor,
              step: int | None = None, epoch: int | None = None) -> None:
        self._pending_meta.append((self.step if step is None else step, self.epoch if epoch is None else epoch,
                                   self._phase, layer.code, kind, stats))
        self._pending_vals.append(values)
        if len(self._pending_meta) >= self.flush_every:
            self.flush()

    # -- collection ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Copy pending statistics to the host (one device sync for all of them)."""
        if not self._pending_meta:
            return
        meta, vals = self._pending_meta, self._pending_vals
        self._pending_meta, self._pending_vals = [], []
        values = torch.cat([v.reshape(-1) for v in vals]).to("cpu", torch.float64).numpy()
        lengths = np.fromiter((len(m[5]) for m in meta), dtype=np.int64, count=len(meta))
        self._chunks.append({
            "step": np.repeat(np.fromiter((m[0] for m in meta), np.int64, len(meta)), lengths),
            "epoch": np.repeat(np.fromiter((m[1] for m in meta), np.int64, len(meta)), lengths),
            "phase": np.repeat(np.array([m[2] for m in meta], dtype=object), lengths),
            "layer": np.repeat(np.fromiter((m[3] for m in meta), np.int64, len(meta)), lengths),
            "kind": np.repeat(np.array([m[4] for m in meta], dtype=object), lengths),
            "stat": np.array([s for m in meta for s in m[5]], dtype=object),
            "value": values,
        })
        self._frame = None

    def layers(self) -> list[LayerInfo]:
        """The recorded layers, in the order of the first forward pass."""
        return [layer.info() for layer in self._layers]

    def frame(self) -> pd.DataFrame:
        """All statistics so far as one tidy DataFrame with columns :data:`FRAME_COLUMNS`."""
        self.flush()
        if self._frame is not None:
            return self._frame
        if not self._chunks:
            self._frame = pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in FRAME_COLUMNS})
            return self._frame
        cols = {k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}
        codes = cols.pop("layer")
        names = np.array([lay.name for lay in self._layers], dtype=object)
        depths = np.array([lay.depth for lay in self._layers], dtype=np.int64)
        modules = np.array([lay.module for lay in self._layers], dtype=object)
        n = len(codes)
        data = {
            "run": pd.Categorical([self.run] * n),
            "initializer": pd.Categorical([self.initializer] * n),
            "seed": np.full(n, self.seed, dtype=np.int64),
            "epoch": cols["epoch"],
            "step": cols["step"],
            "phase": pd.Categorical(cols["phase"]),
            "layer": pd.Categorical(names[codes], categories=list(dict.fromkeys(names))),
            "depth": depths[codes],
            "module": pd.Categorical(modules[codes]),
            "kind": pd.Categorical(cols["kind"]),
            "stat": pd.Categorical(cols["stat"]),
            "value": cols["value"],
        }
        self._frame = pd.DataFrame(data, columns=list(FRAME_COLUMNS))
        return self._frame


def _dtype(column: str) -> str:
    if column == "value":
        return "float64"
    if column in ("seed", "epoch", "step", "depth"):
        return "int64"
    return "object"
