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

What is recorded, for every weight layer (:data:`RECORDED_WEIGHT_TYPES`: Conv/Linear, and recurrent,
attention and embedding layers) and every activation module (ReLU, tanh, GELU, ...), per call (a module
called twice per forward is recorded twice, as ``name`` and ``name@2``). Tuple/list/dict outputs are
walked (``name.0``, ``name.1.key``, ...); of a weight layer only the first floating-point output is
recorded (LSTM/GRU: the output sequence ``name.0``, not the final states; MultiheadAttention: the
attended output, not the attention weights), since the others are often unused by the loss:

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
* ``weight`` / ``weight_grad``: population variance ``var`` of each weight layer's weight
  (:func:`main_weight`) and of its gradient.

Hooks keep no activations: each call reduces its tensor to per-channel sums on the device (in
training steps over at most ``max_per_channel`` values per channel, the first samples of the batch);
the statistics are derived from those sums in batches and copied to the host every ``flush_every``
hook calls, never one sync per hook call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math
import sys
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
    "RECORDED_WEIGHT_TYPES",
    "Kind",
    "LayerInfo",
    "Recorder",
    "Stat",
    "activation_name",
    "main_weight",
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
        conv_linear = role == "weight" and isinstance(module, WEIGHT_LAYER_TYPES)
        self.weight_shape = tuple(weight.shape) if conv_linear and weight is not None else None
        self.numel: int | None = None

    def info(self) -> LayerInfo:
        return LayerInfo(self.name, self.module_name, self.module, self.role, self.depth, self.activation,
                         self.weight_shape, self.numel)


def _load_libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def release_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    The small per-channel sums that wait for :meth:`Recorder.flush` sit between the large, short-lived
    activation buffers and fragment glibc's heap: measured here, a process grew by ~0.2 MB per
    training step (every=10) although nothing was retained, and ``malloc_trim`` returned all of it.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def first_samples(y: torch.Tensor, cdim: int, max_per_channel: int | None) -> torch.Tensor:
    """The first ``k`` samples of ``y`` along dim 0 (the batch), ``k`` the fewest that give at least
    ``max_per_channel`` values per channel; ``y`` itself when it has no more than that."""
    if max_per_channel is None or y.dim() < 2 or cdim == 0 or y.shape[0] <= 1:
        return y
    per_sample = y.numel() // (y.shape[0] * max(y.shape[cdim], 1))
    keep = -(-max_per_channel // max(per_sample, 1))
    return y.narrow(0, 0, keep) if keep < y.shape[0] else y


def channel_moments(y: torch.Tensor, cdim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Partial per-channel sums of ``y``, its count of non-zeros, and the number of values per channel.

    Returns ``(s1, norm, nonzero, count)`` where ``s1`` and ``norm`` have shape (groups, C): ``s1`` the
    sums and ``norm`` the Euclidean norms of each group's values, so that per channel
    ``sum y = s1.sum(0)`` and ``sum y^2 = (norm**2).sum(0)``. Finishing these reductions is left to the
    caller (the recorder does it for many steps at once), so a hook call costs about four kernels.
    Reduces along memory order: a channels-first output as (batch, channel, positions) with groups =
    batch; a channels-last or (batch, features) tensor as (rows, channel) with one group.
    """
    y = y.detach()
    if y.dim() <= 1:
        y = y.reshape(-1, 1)
        cdim = 1
    if not y.is_floating_point():
        y = y.float()
    channels = y.shape[cdim]
    count = y.numel() // max(channels, 1)
    # count_nonzero is slow on large CPU tensors; sign().abs().sum() is three cheap kernels.
    nonzero = torch.count_nonzero(y) if y.numel() <= 4096 else y.sign().abs_().sum()
    moved = y.movedim(cdim, -1)
    if moved.is_contiguous():  # channel innermost: (rows, C); column norms are slow, squares are not
        rows = moved.reshape(-1, channels)
        return rows.sum(0, keepdim=True), (rows * rows).sum(0, keepdim=True).sqrt_(), nonzero, count
    grouped = y.reshape(math.prod(y.shape[:cdim]), channels, -1)  # copies only for odd layouts
    return grouped.sum(2), torch.linalg.vector_norm(grouped, dim=2), nonzero, count


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


_FlatEntry = tuple[int, int, str, tuple[int, ...], torch.Tensor, torch.Tensor, tuple[int, ...]]
"""Weights (or their gradients) of all layers of one step: step, epoch, kind, layer codes, sums, sums of
squares, sizes."""


@dataclass
class _Pending:
    """One hook call's raw per-channel moments, waiting for :meth:`Recorder.flush`."""

    step: int
    epoch: int
    phase: str
    layer: int
    kind: str
    family: str  # "dead" (ReLU family), "sat" (bounded activation) or ""
    s1: torch.Tensor
    s2: torch.Tensor
    nonzero: torch.Tensor
    count: int
    extra: torch.Tensor | None


class Recorder:
    """Context manager that records per-layer statistics of ``model`` (see the module docstring).

    Args:
        model: the model; its own hooks, train/eval mode and parameters are never changed.
        every: record every ``every``-th step (a step is one forward call of ``model`` with grad enabled).
        run, initializer, seed: labels copied into every row of :meth:`frame`.
        saturation_tol: an output within this distance of a bound of tanh/sigmoid counts as saturated.
        max_per_channel: in training steps, at most about this many values per channel enter the
            statistics (the first samples of the batch; at least one sample); None: all. Probes always
            use every value. 1024 values keep each channel's variance within about 4% (sd; the
            average over channels far closer) and cut the cost for large conv maps (seed CNN: 2 of 64
            samples for the 26x26 first layer, 9 for the 11x11 second).
        flush_every: number of pending hook results after which they are turned into statistics and
            copied to the host in one batch.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, run: str = "run", initializer: str = "",
                 seed: int = 0, saturation_tol: float = 0.01, max_per_channel: int | None = 1024,
                 flush_every: int = 1_000) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (got {every})")
        self.model = model
        self.every = every
        self.run = run
        self.initializer = initializer
        self.seed = seed
        self.saturation_tol = saturation_tol
        self.flush_every = flush_every
        self.max_per_channel = max_per_channel
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
        self._pending: list[_Pending] = []
        self._step_weights: list[tuple[_Layer, torch.Tensor]] = []
        self._weights_queued = False
        self._segments: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
        # weights/weight grads of one step, all layers: (step, epoch, kind, layer codes, s1, s2, sizes)
        self._pending_flat: list[_FlatEntry] = []
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
            if isinstance(module, RECORDED_WEIGHT_TYPES):
                self._handles.append(module.register_forward_hook(self._make_forward_hook(module, "weight")))
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
        self._step_weights = []

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
            tensors = _iter_tensors(output)
            if role == "weight":  # its first floating-point output only (see the module docstring)
                tensors = itertools.islice(tensors, 1)
            for suffix, y in tensors:
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
                self._push_moments(layer, Kind.FORWARD, y.detach(), cdim, act)
                if phase == "train" and y.requires_grad:
                    y.register_hook(self._make_grad_hook(layer, cdim))
            weight = main_weight(mod)
            if role == "weight" and call == 1 and phase == "train" and isinstance(weight, torch.Tensor):
                self._step_weights.append((self._first_site[id(mod)], weight))

        return hook

    def _make_grad_hook(self, layer: _Layer, cdim: int) -> Any:
        step, epoch = self.step, self.epoch

        def hook(grad: torch.Tensor) -> None:
            if not self._handles:
                return
            if self._step_weights and not self._weights_queued:
                self._weights_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)
            self._push_moments(layer, Kind.BACKWARD, grad.detach(), cdim, None, step=step, epoch=epoch)

        return hook

    def _on_backward_end(self) -> None:
        """Weights and their gradients of this step, all layers in one batch (4 kernels, not 4 per layer).

        Runs as an autograd-engine callback once the backward pass has accumulated every ``.grad``."""
        entries, self._step_weights = self._step_weights, []
        self._weights_queued = False
        if not self._handles or not entries:
            return
        with torch.no_grad():
            layers = tuple(layer for layer, _ in entries)
            self._push_flat(layers, [w.detach().reshape(-1) for _, w in entries], Kind.WEIGHT)
            grads = [(layer, w.grad) for layer, w in entries if w.grad is not None]
            if grads:
                self._push_flat(tuple(lay for lay, _ in grads), [g.detach().reshape(-1) for _, g in grads],
                                Kind.WEIGHT_GRAD)

    def _push_flat(self, layers: tuple[_Layer, ...], tensors: list[torch.Tensor], kind: Kind) -> None:
        sizes = tuple(t.numel() for t in tensors)
        flat = torch.cat([t.float() for t in tensors])
        key = (sizes, flat.device)
        segments = self._segments.get(key)
        if segments is None:
            segments = torch.repeat_interleave(torch.arange(len(sizes), device=flat.device),
                                               torch.tensor(sizes, device=flat.device))
            self._segments[key] = segments
        s1 = torch.zeros(len(sizes), device=flat.device).index_add_(0, segments, flat)
        s2 = torch.zeros(len(sizes), device=flat.device).index_add_(0, segments, flat * flat)
        self._pending_flat.append((self.step, self.epoch, kind, tuple(lay.code for lay in layers), s1, s2, sizes))

    def _push_moments(self, layer: _Layer, kind: Kind, y: torch.Tensor, cdim: int, act: str | None,
                      step: int | None = None, epoch: int | None = None) -> None:
        """Reduce ``y`` to per-channel moments now; the statistics are derived in :meth:`flush`."""
        if self._phase == "train":
            y = first_samples(y, cdim, self.max_per_channel)
        s1, s2, nonzero, count = channel_moments(y, cdim)
        extra: torch.Tensor | None = None
        family = ""
        if kind == Kind.FORWARD and act in RELU_FAMILY:
            family = "dead"
        elif kind == Kind.FORWARD and act in SATURATING:
            lo, hi = SATURATING[act]
            half = (hi - lo) / 2
            extra = ((y - (lo + half)).abs() >= half - self.saturation_tol).sum()
            family = "sat"
        self._pending.append(_Pending(self.step if step is None else step, self.epoch if epoch is None else epoch,
                                      self._phase, layer.code, kind, family, s1, s2, nonzero, count, extra))
        if len(self._pending) >= self.flush_every:
            self.flush()

    # -- collection ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Turn pending moments into statistics and copy them to the host (one device sync in all).

        Entries of the same layer and kind are stacked and reduced together, so the cost per hook call
        is a few reductions, not a chain of small operations."""
        self._flush_flat()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self._flush_pending(pending)
        finally:
            del pending
            release_heap()

    def _flush_pending(self, pending: list[_Pending]) -> None:
        groups: dict[tuple[int, str, str, tuple[int, ...]], list[_Pending]] = {}
        for entry in pending:
            groups.setdefault((entry.layer, entry.kind, entry.family, tuple(entry.s1.shape)), []).append(entry)
        blocks: list[torch.Tensor] = []
        meta: list[tuple[list[_Pending], tuple[str, ...]]] = []
        for (_, kind, family, _), entries in groups.items():
            s1 = torch.stack([e.s1 for e in entries]).double().sum(1)  # (steps, C)
            s2 = torch.stack([e.s2 for e in entries]).double().square().sum(1)
            n = torch.tensor([float(e.count) for e in entries], dtype=torch.float64, device=s1.device)[:, None]
            mean = s1 / n
            var = (s2 / n - mean.square()).clamp_min(0.0)
            if kind in (Kind.WEIGHT, Kind.WEIGHT_GRAD):
                blocks.append(var.mean(1, keepdim=True))
                meta.append((entries, _W_STATS))
                continue
            nonzero = torch.stack([e.nonzero for e in entries]).double()
            columns = [var.mean(1), mean.square().mean(1), 1.0 - nonzero / (n[:, 0] * s1.shape[1])]
            stats: tuple[str, ...] = _FWD_STATS if kind == Kind.FORWARD else _BWD_STATS
            if family == "dead":  # ReLU-family outputs are >= 0: a channel is all zero iff its sum is 0
                columns.append((s1 == 0).double().mean(1))
                stats = (*stats, Stat.DEAD_FRAC)
            elif family == "sat":
                sat = torch.stack([e.extra for e in entries if e.extra is not None]).double()
                columns.append(sat / (n[:, 0] * s1.shape[1]))
                stats = (*stats, Stat.SAT_FRAC)
            blocks.append(torch.stack(columns, 1))
            meta.append((entries, stats))
        values = torch.cat([b.reshape(-1) for b in blocks]).cpu().numpy()
        steps: list[tuple[int, int]] = []
        epochs: list[int] = []
        phases: list[str] = []
        layers: list[int] = []
        kinds: list[str] = []
        stat_names: list[str] = []
        for entries, stats in meta:
            width = len(stats)
            for e in entries:
                steps.append((e.step, width))
                epochs.append(e.epoch)
                phases.append(e.phase)
                layers.append(e.layer)
                kinds.append(e.kind)
                stat_names.extend(stats)
        lengths = np.fromiter((w for _, w in steps), np.int64, len(steps))
        self._chunks.append({
            "step": np.repeat(np.fromiter((st for st, _ in steps), np.int64, len(steps)), lengths),
            "epoch": np.repeat(np.asarray(epochs, dtype=np.int64), lengths),
            "phase": np.repeat(np.asarray(phases, dtype=object), lengths),
            "layer": np.repeat(np.asarray(layers, dtype=np.int64), lengths),
            "kind": np.repeat(np.asarray(kinds, dtype=object), lengths),
            "stat": np.asarray(stat_names, dtype=object),
            "value": values,
        })
        self._frame = None

    def _flush_flat(self) -> None:
        if not self._pending_flat:
            return
        pending, self._pending_flat = self._pending_flat, []
        groups: dict[tuple[str, tuple[int, ...], tuple[int, ...]], list[tuple[int, int, torch.Tensor, torch.Tensor]]]
        groups = {}
        for step, epoch, kind, codes, s1, s2, sizes in pending:
            groups.setdefault((kind, codes, sizes), []).append((step, epoch, s1, s2))
        for (kind, codes, sizes), rows in groups.items():
            s1 = torch.stack([r[2] for r in rows]).double()
            s2 = torch.stack([r[3] for r in rows]).double()
            n = torch.tensor(sizes, dtype=torch.float64, device=s1.device)
            var = (s2 / n - (s1 / n).square()).clamp_min(0.0)  # (steps, layers)
            k = len(codes)
            self._chunks.append({
                "step": np.repeat(np.asarray([r[0] for r in rows], dtype=np.int64), k),
                "epoch": np.repeat(np.asarray([r[1] for r in rows], dtype=np.int64), k),
                "phase": np.full(len(rows) * k, "train", dtype=object),
                "layer": np.tile(np.asarray(codes, dtype=np.int64), len(rows)),
                "kind": np.full(len(rows) * k, str(kind), dtype=object),
                "stat": np.full(len(rows) * k, str(Stat.VAR), dtype=object),
                "value": var.reshape(-1).cpu().numpy(),
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
