"""Per-layer statistics recorded with hooks, reduced on the device, collected into one tidy DataFrame.

This is the only module that registers recording hooks. Usage in any training loop::

    with Recorder(model, every=1) as rec:
        for epoch in range(epochs):
            rec.epoch = epoch
            for x, y in batches:
                loss = loss_fn(model(x), y)   # each forward of the model with grad enabled is one step
                loss.backward()
                ...
    frame = rec.frame()

What is recorded, for every weight layer (:data:`~initdiag.structure.RECORDED_WEIGHT_TYPES`: Conv/Linear,
and recurrent, attention and embedding layers) and every activation module (ReLU, tanh, GELU, ...), per
call (a module called twice per forward is recorded twice, as ``name`` and ``name@2``). Tuple/list/dict
outputs are walked (``name.0``, ``name.1.key``, ...); of a weight layer only the first floating-point
output is recorded (LSTM/GRU: the output sequence, not the final states; MultiheadAttention: the attended
output, not the attention weights):

* ``forward``: statistics of the module's output ``y`` per channel (a conv's channel, a linear layer's
  feature) over the batch and positions: ``var``, ``mean_sq``, ``zero_frac``; ``dead_frac`` for ReLU-family
  modules, ``sat_frac`` for tanh/sigmoid (formulas in :func:`~initdiag.recording.rows.moment_chunk`).
* ``backward``: the same of dL/dy, from a hook set in the forward hook on the autograd node that made the
  output (a pre-hook: the gradient a tensor hook on the output would get; a tensor hook for a leaf). Works
  with in-place activations, where ``register_full_backward_hook`` fails.
* ``weight`` / ``weight_grad``: ``var`` of each weight layer's weight (:func:`~initdiag.structure.main_weight`)
  and of its gradient, read once the backward pass has accumulated every ``.grad``.

One path per statistic: plain forward hooks, hooks on the output's autograd node, and one reduction
(:func:`~initdiag.recording.moments.reduce`) into a preallocated row per layer and kind. Hooks keep no
activations; rows are copied to the host when a buffer fills (never one sync per hook call) and turned
into statistics many steps at a time. The model is never altered: every hook comes off in ``finally``,
the user's own hooks keep working, and train/eval mode and parameters are untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..series import FRAME_COLUMNS, empty_frame
from ..structure.layers import CONV_TYPES, RECORDED_WEIGHT_TYPES, LayerInfo, activation_name, main_weight
from ..vocab import SATURATING, Kind, Phase, Role
from .moments import Geometry, Stream, reduce
from .rows import LayerState, Meta, moment_chunk

__all__ = ["Recorder"]

HOST_ROWS_BYTES = 32 << 20
"""Moment rows kept on the host before they are turned into statistics (the seed CNN: ~2,000 steps)."""


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


def _traced() -> bool:
    """True while torch.jit.trace or torch.compile traces the model: not a training step, no numbers (under
    torch.fx the outputs are proxies, not tensors, and nothing is recorded either)."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


class Recorder:
    """Context manager that records per-layer statistics of ``model`` (see the module docstring).

    Args:
        model: the model; its own hooks, train/eval mode and parameters are never changed.
        every: record every ``every``-th step (a step is one forward call of ``model`` with grad enabled).
        run, initializer, seed: labels copied into every row of :meth:`frame`.
        saturation_tol: an output within this distance of a bound of tanh/sigmoid counts as saturated.
        max_per_channel: in training steps, at most about this many values per channel enter the
            statistics (the last samples of the batch; at least one sample); None: all. Probes always use
            every value. 1024 values keep each channel's variance within about 4% (sd; the average over
            channels far closer) and cut the cost for large conv maps.
        flush_every: moment rows buffered per layer and kind (fewer for layers so wide that the buffer
            would pass 1 MiB) before they are copied to the host, all streams in one copy.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, run: str = "run", initializer: str = "",
                 seed: int = 0, saturation_tol: float = 0.01, max_per_channel: int | None = 1024,
                 flush_every: int = 256) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (got {every})")
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1 (got {flush_every})")
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
        self._phase: str = Phase.TRAIN
        self._recording = False
        self._handles: list[RemovableHandle] = []
        self._names: dict[int, str] = {}
        self._layers: list[LayerState] = []
        self._by_key: dict[tuple[int, int, str], LayerState] = {}
        self._first_site: dict[int, LayerState] = {}  # id(module) -> the layer of its first call site
        self._calls: dict[int, int] = {}  # id(module) -> calls in this forward
        self._last_weight: LayerState | None = None  # the weight layer that ran last, for its activation
        self._act_seen = False
        self._last_weight_out: tuple[torch.Size, int] | None = None  # its output's shape and channel dim
        self._step_weights: list[tuple[LayerState, torch.Tensor]] = []  # this step's weights, read after backward
        self._weights_queued = False
        self._layouts: dict[tuple[Any, ...], Geometry | None] = {}
        self._streams: list[tuple[LayerState, str, Stream]] = []  # every stream, in creation order
        self._host: dict[int, list[tuple[np.ndarray, Meta]]] = {}  # stream index -> rows on the host
        self._host_bytes = 0
        self._chunks: list[dict[str, np.ndarray]] = []
        self._frame: pd.DataFrame | None = None

    # -- attaching ----------------------------------------------------------------------------------
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
            role = (Role.WEIGHT if isinstance(module, RECORDED_WEIGHT_TYPES)
                    else Role.ACTIVATION if activation_name(module) is not None else None)
            if role is not None:
                self._handles.append(module.register_forward_hook(self._make_forward_hook(module, role)))

    def _detach(self) -> None:
        handles, self._handles = self._handles, []
        try:
            for handle in handles:
                handle.remove()
        finally:
            self._recording = False

    @property
    def active(self) -> bool:
        """True while hooks are attached."""
        return bool(self._handles)

    # -- steps and probes ----------------------------------------------------------------------------
    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()
        self._last_weight = None
        if _traced():
            self._recording = False
        elif self._phase != Phase.TRAIN:
            self._recording = True
        elif not torch.is_grad_enabled():
            self._recording = False
        else:
            self.step += 1
            self._recording = self.step % self.every == 0
            self._step_weights = []
            self._weights_queued = False

    @contextmanager
    def probe(self, phase: str) -> Iterator[None]:
        """Record the forward passes inside the block under ``phase`` (e.g. "init", "final").

        Meant for an evaluation batch under ``torch.no_grad()``: rows get the current step and epoch, and
        ``phase`` instead of "train"; steps are not advanced."""
        if phase == Phase.TRAIN:
            raise ValueError("probe phase must not be 'train'")
        old = self._phase
        self._phase = phase
        try:
            yield
        finally:
            self._phase = old
            self._recording = False

    # -- hooks ---------------------------------------------------------------------------------------
    def _layer_for(self, module: nn.Module, role: str, call: int, suffix: str) -> LayerState:
        key = (id(module), call, suffix)
        layer = self._by_key.get(key)
        if layer is None:
            base = self._names.get(id(module)) or type(module).__name__
            name = base + (f"@{call}" if call > 1 else "") + suffix
            if role == Role.WEIGHT:
                depth = sum(1 for lay in self._layers if lay.role == Role.WEIGHT)
                activation: str | None = "linear"
            else:
                depth = self._last_weight.depth if self._last_weight is not None else 0
                activation = activation_name(module)
            layer = LayerState(len(self._layers), name, base, module, role, depth, activation)
            self._layers.append(layer)
            self._by_key[key] = layer
            self._first_site.setdefault(id(module), layer)
        return layer

    def _channel_dim(self, module: nn.Module, role: str, y: torch.Tensor) -> int:
        """Channels of a conv output are dim 1, of other weight layers the last dim; an activation's are
        those of the weight layer before it when the shapes agree."""
        if y.dim() <= 1:
            return 0
        if role == Role.WEIGHT:
            return 1 if isinstance(module, CONV_TYPES) else y.dim() - 1
        if self._last_weight_out is not None and y.shape == self._last_weight_out[0]:
            return self._last_weight_out[1]
        return 1 if y.dim() >= 4 else y.dim() - 1

    def _make_forward_hook(self, module: nn.Module, role: str) -> Any:
        sat = SATURATING.get(activation_name(module) or "")
        weight_role = role == Role.WEIGHT
        module_id = id(module)
        weight = main_weight(module) if weight_role else None
        weight_name = next((n for n, p in module._parameters.items() if p is weight), None)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not self._recording:
                return
            call = self._calls.get(module_id, 0) + 1
            self._calls[module_id] = call
            if isinstance(output, torch.Tensor):
                tensors: Any = (("", output),) if output.is_floating_point() and output.numel() > 0 else ()
            else:
                tensors = _iter_tensors(output)
            for suffix, y in tensors:
                layer = self._by_key.get((module_id, call, suffix)) or self._layer_for(mod, role, call, suffix)
                cdim = layer.cdims.get(y.dim())
                if cdim is None:
                    cdim = layer.cdims[y.dim()] = self._channel_dim(mod, role, y)
                    layer.numel = y[0].numel() if y.dim() >= 2 else None
                if weight_role:
                    self._last_weight, self._act_seen, self._last_weight_out = layer, False, (y.shape, cdim)
                elif self._last_weight is not None and not self._act_seen:
                    self._last_weight.activation = layer.activation
                    self._act_seen = True
                self._push(layer, Kind.FORWARD, y, cdim, sat)
                if self._phase == Phase.TRAIN and y.requires_grad:
                    self._hook_gradient(layer, y, cdim)
                if weight_role:  # its first floating-point output only (see the module docstring)
                    break
            if weight_role and call == 1 and self._phase == Phase.TRAIN:
                current = mod._parameters.get(weight_name) if weight_name is not None else main_weight(mod)
                if current is not None:
                    self._step_weights.append((self._first_site[module_id], current))

        return hook

    def _hook_gradient(self, layer: LayerState, y: torch.Tensor, cdim: int) -> None:
        """Record dL/dy as ``layer``'s backward row of this step when the backward pass reaches it: a
        pre-hook on the node that made ``y`` (the gradient a tensor hook would get), a tensor hook for a
        leaf."""
        node = y.grad_fn
        if node is None:
            y.register_hook(functools.partial(self._on_grad, layer, cdim, self.step, self.epoch, 0))
        else:
            node.register_prehook(functools.partial(self._on_grad, layer, cdim, self.step, self.epoch, y.output_nr))

    def _on_grad(self, layer: LayerState, cdim: int, step: int, epoch: int, index: int,
                 grads: torch.Tensor | tuple[torch.Tensor | None, ...]) -> None:
        """A tensor hook (``grads`` is dL/dy) or a pre-hook of the node that made y (``grads[index]``)."""
        grad = grads if isinstance(grads, torch.Tensor) else grads[index]
        if grad is None or not self._handles:
            return
        if self._step_weights and not self._weights_queued:
            self._weights_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)
        self._push(layer, Kind.BACKWARD, grad, cdim, None, step, epoch)

    def _on_backward_end(self) -> None:
        """Each weight of this step and its gradient, once the backward pass has accumulated every ``.grad``."""
        taken, self._step_weights = self._step_weights, []
        self._weights_queued = False
        if not self._handles:
            return
        for layer, weight in taken:
            self._push(layer, Kind.WEIGHT, weight, -1, None)
            if weight.grad is not None:
                self._push(layer, Kind.WEIGHT_GRAD, weight.grad, -1, None)

    def _push(self, layer: LayerState, kind: str, y: torch.Tensor, cdim: int,
              sat: tuple[float, float] | None, step: int | None = None, epoch: int | None = None) -> None:
        """Reduce ``y`` into the next row of the layer's stream of ``kind`` (``cdim < 0``: one channel)."""
        phase = self._phase if kind != Kind.WEIGHT and kind != Kind.WEIGHT_GRAD else Phase.TRAIN
        channels = y.shape[cdim] if y.dim() > 1 and cdim >= 0 else 1
        stream = layer.streams.get((kind, channels))
        if stream is None:
            stream = layer.streams[(kind, channels)] = Stream(2 * channels + 2, y.device, self.flush_every)
            self._streams.append((layer, kind, stream))
        elif stream.full:
            self.flush()
        mid, thr = 0.0, -1.0
        if sat is not None:
            lo, hi = sat
            mid, thr = (lo + hi) / 2, (hi - lo) / 2 - self.saturation_tol
        cap = self.max_per_channel if phase == Phase.TRAIN else None
        count = reduce(y, cdim, cap, stream.buffer, stream.n, mid, thr, self._layouts)
        stream.commit(self.step if step is None else step, self.epoch if epoch is None else epoch, phase, count)

    # -- collection ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Copy the buffered rows to the host (one device-to-host copy in all) and empty the buffers.

        The statistics are derived later, many flushes at once (:meth:`frame`, or once the rows on the host
        pass :data:`HOST_ROWS_BYTES`): numpy costs a few microseconds per call whatever the number of rows."""
        taken = [(index, *stream.take()) for index, (_, _, stream) in enumerate(self._streams) if stream.n]
        if not taken:
            return
        raw = [rows for _, rows, _ in taken]
        if all(r.device.type == "cpu" for r in raw):
            host = [r.numpy().copy() for r in raw]
        else:
            flat = torch.cat([r.reshape(-1) for r in raw]).cpu().numpy()
            parts = np.split(flat, np.cumsum([r.numel() for r in raw])[:-1])
            host = [h.reshape(r.shape) for h, r in zip(parts, raw, strict=True)]
        for (index, _, meta), rows in zip(taken, host, strict=True):
            self._host.setdefault(index, []).append((rows, meta))
            self._host_bytes += rows.nbytes
        self._frame = None
        if self._host_bytes > HOST_ROWS_BYTES:
            self._derive()

    def _derive(self) -> None:
        host, self._host, self._host_bytes = self._host, {}, 0
        for index, parts in sorted(host.items()):
            layer, kind, _ = self._streams[index]
            rows = np.concatenate([r for r, _ in parts]) if len(parts) > 1 else parts[0][0]
            meta = [m for _, ms in parts for m in ms]
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                self._chunks.append(moment_chunk(layer, kind, rows, meta))

    def layers(self) -> list[LayerInfo]:
        """The recorded layers, in the order of the first forward pass."""
        return [layer.info() for layer in self._layers]

    def frame(self) -> pd.DataFrame:
        """All statistics so far as one tidy DataFrame with the columns of :data:`~initdiag.series.FRAME_COLUMNS`."""
        self.flush()
        if self._frame is not None:
            return self._frame
        self._derive()
        if not self._chunks:
            self._frame = empty_frame()
            return self._frame
        cols = {k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}
        codes = cols.pop("layer")
        names = np.array([lay.name for lay in self._layers], dtype=object)
        n = len(codes)
        data = {
            "run": pd.Categorical([self.run] * n),
            "initializer": pd.Categorical([self.initializer] * n),
            "seed": np.full(n, self.seed, dtype=np.int64),
            "epoch": cols["epoch"],
            "step": cols["step"],
            "phase": pd.Categorical(cols["phase"]),
            "layer": pd.Categorical(names[codes], categories=list(dict.fromkeys(names))),
            "depth": np.array([lay.depth for lay in self._layers], dtype=np.int64)[codes],
            "module": pd.Categorical(np.array([lay.module for lay in self._layers], dtype=object)[codes]),
            "kind": pd.Categorical(cols["kind"]),
            "stat": pd.Categorical(cols["stat"]),
            "value": cols["value"],
        }
        self._frame = pd.DataFrame(data, columns=list(FRAME_COLUMNS))
        return self._frame
