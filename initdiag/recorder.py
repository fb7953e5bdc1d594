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
  respect to the module's output, from a hook set in the forward hook on the autograd node that made
  the output (a pre-hook: what a tensor hook on the output would get, cheaper to set; a tensor hook
  for a leaf). Works with in-place activations, where ``register_full_backward_hook`` fails.
* ``weight`` / ``weight_grad``: population variance ``var`` of each weight layer's weight
  (:func:`main_weight`) and of its gradient.

Hooks keep no activations: each call reduces its tensor to per-channel sums on the device (in
training steps over at most ``max_per_channel`` values per channel, the last samples of the batch),
written as one row of a preallocated buffer per layer and kind (:mod:`initdiag._moments`; on the CPU
one pass of a small C kernel). The rows are copied to the host when a buffer fills, never one sync
per hook call, and turned into statistics many steps at a time.

What recording costs on a CPU is mostly Python running cold between the training kernels (~17 µs for
a reduction there against 4 µs warm), so the usual training step takes a short path:

* each plain ``nn.Sequential`` calls its children's ``forward`` and the recorder's hooks itself while
  recording, instead of torch's generic hook dispatch (:mod:`initdiag._dispatch`);
* a Conv/Linear layer followed by ``nn.ReLU`` in such a Sequential is recorded as a pair (the ReLU is
  then the only reader of the layer's output, :meth:`Recorder.run_pair`): one C pass over the layer's
  output gives both forward rows, and one post-hook on the ReLU's autograd node, itself in C, both
  backward rows;
* a tensor laid out as the last one of its layer and kind is reduced, and its row labelled, by one C
  call (``_fastmoments.tap``), the weights and their gradients by another (``_fastmoments.weights``).

The statistics are those of the general path (tested side by side), which any other case takes.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import _dispatch, _moments
from ._moments import Stream, channel_view, last_samples
from .initializers import WEIGHT_LAYER_TYPES
from .recorded import (
    ACTIVATION_TYPES,
    FRAME_COLUMNS,
    RECORDED_WEIGHT_TYPES,
    SATURATING,
    Kind,
    LayerInfo,
    LayerState,
    Stat,
    activation_name,
    column_dtype,
    main_weight,
    moment_chunk,
    weight_chunk,
)

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


HOST_ROWS_BYTES = 32 << 20
"""Moment rows kept on the host before they are turned into statistics (the seed CNN: about 2,000
recorded steps)."""



def _weight_attr(module: nn.Module) -> str | None:
    """The name of :func:`main_weight`'s parameter of ``module`` when it is a registered parameter."""
    weight = main_weight(module)
    return next((name for name, p in module._parameters.items() if p is weight and weight is not None), None)


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
        max_per_channel: in training steps, at most about this many values per channel enter the
            statistics (the last samples of the batch; at least one sample); None: all. Probes always
            use every value. 1024 values keep each channel's variance within about 4% (sd; the
            average over channels far closer) and cut the cost for large conv maps (seed CNN: 2 of 64
            samples for the 26x26 first layer, 9 for the 11x11 second).
        flush_every: moment rows buffered per layer and kind (fewer for layers so wide that the buffer
            would pass 1 MiB) before the statistics are derived and copied to the host, all in one
            batch.
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
        self._phase = "train"
        self._recording = False
        self._handles: list[RemovableHandle] = []
        self._taken: list[nn.Sequential] = []  # the model's nn.Sequential, run by _dispatch while attached
        self.direct_hooks: dict[int, tuple[int, Any]] = {}
        """``id(module) -> (handle id, forward hook)`` while attached, for :mod:`initdiag._dispatch`."""
        self._layers: list[LayerState] = []
        self._by_key: dict[tuple[int, int, str], LayerState] = {}
        self._first_site: dict[int, LayerState] = {}
        self._calls: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._last_weight: LayerState | None = None
        self._act_seen = False
        self._last_weight_cdim = 1
        self._last_weight_shape: torch.Size | None = None
        # every stream, in creation order: (layer or None for weights, kind, stream, weight layer codes, sizes)
        self._streams: list[tuple[LayerState | None, str, Stream, tuple[int, ...], tuple[int, ...]]] = []
        # weights (or their gradients) of all layers of a step: (kind, layer codes, sizes) -> rows of
        # [s1, s2, nonzero, saturated] per layer
        self._weight_streams: dict[tuple[str, tuple[int, ...], tuple[int, ...]], Stream] = {}
        self._step_layers: list[LayerState] = []  # the weight layers of this step, in call order
        self._step_tensors: list[torch.Tensor] = []  # and their weights
        self._weights_queued = False
        # (layers, weight stream, gradient stream, sizes) of the last step whose weights the C kernel read
        self._weight_plan: tuple[list[LayerState], Stream, Stream, tuple[int, ...]] | None = None
        self._geometry: dict[tuple[Any, ...], _moments.Geometry | None] = {}  # layout -> kernel arguments
        self.pairs: dict[int, nn.Module] = {}
        """``id(weight layer) -> the nn.ReLU after it`` (:meth:`_fusable_pairs`), for :mod:`initdiag._dispatch`."""
        # id(weight layer) -> (its layer, the ReLU's layer, its weight's name) once both were recorded apart
        self._pair_layers: dict[int, tuple[LayerState, LayerState, str | None]] = {}
        self.fused_calls = 0
        """Forward passes of a layer and its ReLU recorded as one pair (:meth:`_fusable_pairs`)."""
        self._host: dict[int, list[tuple[np.ndarray, list[tuple[int, int, str, int]]]]] = {}  # stream -> rows
        self._host_bytes = 0
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
        self.pairs = self._fusable_pairs()
        self._taken = _dispatch.take_over(self)
        if self.model not in self._taken:  # else RecordingSequential.forward calls _on_root_forward
            self._handles.append(self.model.register_forward_pre_hook(self._on_root_forward))
        for module in self.model.modules():
            role = ("weight" if isinstance(module, RECORDED_WEIGHT_TYPES)
                    else "activation" if activation_name(module) is not None else None)
            if role is not None:
                hook = self._make_forward_hook(module, role)
                handle = module.register_forward_hook(hook)
                self._handles.append(handle)
                self.direct_hooks[id(module)] = (handle.id, hook)

    def _detach(self) -> None:
        handles, self._handles = self._handles, []
        try:
            for handle in handles:
                handle.remove()
        finally:
            taken, self._taken = self._taken, []
            _dispatch.release(taken)
            self.direct_hooks = {}
            self._recording = False

    def _fusable_pairs(self) -> dict[int, nn.Module]:
        """Conv/Linear layers followed by an ``nn.ReLU`` in an ``nn.Sequential``, each module used once in
        the model (``id(layer) -> the ReLU``). When the Sequential's own loop runs them
        (:class:`~initdiag._dispatch.RecordingSequential`), the ReLU is the only reader of the layer's
        output, so one pass over that output gives the ReLU's forward statistics too (``max(y, 0)``),
        and one hook on the ReLU's backward node both gradients (dL/d relu-output in, dL/dy out)
        (:meth:`run_pair`). Saves per pair and step a hook call, a hook registration and a read of
        memory; the statistics are the same (tested)."""
        uses = Counter(id(m) for _, m in self.model.named_modules(remove_duplicate=False))
        pairs: dict[int, nn.Module] = {}
        for seq in self.model.modules():
            if type(seq) is not nn.Sequential:  # only RecordingSequential runs pairs (initdiag._dispatch)
                continue
            children = list(seq)
            for a, b in itertools.pairwise(children):
                if isinstance(a, WEIGHT_LAYER_TYPES) and type(b) is nn.ReLU and uses[id(a)] == 1 and uses[id(b)] == 1:
                    pairs[id(a)] = b
        return pairs

    @property
    def active(self) -> bool:
        """True while hooks are attached."""
        return bool(self._handles)

    # -- step / probe control ----------------------------------------------------------------------
    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()
        self._last_weight = None
        if _dispatch.traced():  # torch.jit.trace, torch.fx: not a training step, and no numbers to record
            self._recording = False
            return
        if self._phase != "train":
            self._recording = True
            return
        if not torch.is_grad_enabled():
            self._recording = False
            return
        self.step += 1
        self._recording = self.step % self.every == 0
        self._step_layers, self._step_tensors = [], []
        self._weights_queued = False

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
    def _layer_for(self, module: nn.Module, role: str, call: int, suffix: str) -> LayerState:
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
            layer = LayerState(len(self._layers), name, base, module, role, depth, activation)
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
        sat_bounds = SATURATING.get(act or "")
        weight_role = role == "weight"
        module_id = id(module)
        weight_attr = _weight_attr(module) if weight_role else None
        first: list[LayerState] = []  # the layer of this module's first call, once known

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not self._recording:
                return
            train = self._phase == "train"
            calls = self._calls
            call = calls.get(module_id, 0) + 1
            calls[module_id] = call
            if (call == 1 and first and train and weight_role and type(output) is torch.Tensor
                    and self._forward_weight_layer(mod, first[0], output, weight_attr)):
                return  # the usual training call of a weight layer, all done
            if isinstance(output, torch.Tensor):  # the common case, without walking
                tensors: Any = (("", output),) if output.is_floating_point() and output.numel() > 0 else ()
            else:
                tensors = _iter_tensors(output)
            for suffix, y in tensors:
                layer = self._by_key.get((id(mod), call, suffix)) or self._layer_for(mod, role, call, suffix)
                if call == 1 and not suffix and not first:
                    first.append(layer)
                cdim = layer.cdims.get(y.dim())
                if cdim is None:
                    cdim = layer.cdims[y.dim()] = self._channel_dim(mod, role, y)
                    layer.numel = y[0].numel() if y.dim() >= 2 else None
                if weight_role:
                    self._saw_weight_layer(layer, cdim, y.shape, act_seen=False)
                elif self._last_weight is not None and not self._act_seen:
                    self._last_weight.activation = act
                    self._act_seen = True
                self._push(layer, Kind.FORWARD, y, cdim, sat_bounds, self.step, self.epoch)
                if train:
                    self._hook_gradient(layer, y, cdim, self.step, self.epoch)
                if weight_role:  # its first floating-point output only (see the module docstring)
                    break
            if weight_role and call == 1 and train:
                self._take_weight(mod, self._first_site[id(mod)], weight_attr)

        return hook

    def _forward_weight_layer(self, mod: nn.Module, layer: LayerState, y: torch.Tensor,
                              weight_attr: str | None) -> bool:
        """The forward hook's work for the first call of a weight layer in a training step, when its output
        ``y`` has the layout seen before (the C kernel reads it); False, with nothing done, otherwise."""
        cdim = layer.cdims.get(y.dim())
        if cdim is None or layer.sites.get(Kind.FORWARD) is None:
            return False
        self._saw_weight_layer(layer, cdim, y.shape, act_seen=False)
        step, epoch = self.step, self.epoch
        self._push(layer, Kind.FORWARD, y, cdim, None, step, epoch)
        self._hook_gradient(layer, y, cdim, step, epoch)
        self._take_weight(mod, layer, weight_attr)
        return True

    def _hook_gradient(self, layer: LayerState, y: torch.Tensor, cdim: int, step: int, epoch: int) -> None:
        """Record dL/dy as ``layer``'s backward row of ``step`` when the backward pass reaches it: a pre-hook
        on the node that made ``y`` (the same gradient as a tensor hook, cheaper to register), a tensor
        hook for a leaf."""
        if not y.requires_grad:
            return
        node = y.grad_fn
        if node is None:
            y.register_hook(functools.partial(self._on_grad, layer, cdim, step, epoch, 0))
        else:
            node.register_prehook(functools.partial(self._on_grad, layer, cdim, step, epoch, y.output_nr))

    def _saw_weight_layer(self, layer: LayerState, cdim: int, shape: torch.Size, act_seen: bool) -> None:
        """Note the weight layer that just ran (its output's channel dim and shape, for an activation
        layer first seen after it: :meth:`_channel_dim`), and whether its activation was seen."""
        self._last_weight, self._act_seen = layer, act_seen
        self._last_weight_cdim, self._last_weight_shape = cdim, shape

    def _take_weight(self, mod: nn.Module, layer: LayerState, weight_attr: str | None) -> None:
        """Queue the weight of ``mod`` (the ``weight_attr`` parameter, else :func:`main_weight`) for the
        statistics at the end of the backward pass."""
        weight: torch.Tensor | None = mod._parameters.get(weight_attr) if weight_attr is not None else None
        if weight is None:
            weight = main_weight(mod)
        if weight is not None:
            self._step_layers.append(layer)
            self._step_tensors.append(weight)

    def run_pair(self, mod: nn.Module, mod_hook: Any, relu: nn.Module, relu_hook: Any, x: Any) -> Any:
        """``relu(mod(x))`` for a pair of :meth:`_fusable_pairs` that :class:`~initdiag._dispatch.
        RecordingSequential` runs, each module with this recorder's forward hook as its only hook.

        In a training step after the first, when the C kernel can read the layer's output ``y``: one pass
        over ``y`` gives the forward rows of both (the ReLU's as ``max(y, 0)``, before an in-place ReLU
        overwrites ``y``), and one post-hook on the ReLU's autograd node both backward rows (dL/d relu
        output came in, dL/dy went out: the ReLU is the only reader of ``y``, so that is its whole
        gradient; ``_fastmoments.pair_grads`` writes both rows, or hands a gradient the kernel cannot read to
        :meth:`_push`). Otherwise the two hooks, as ``Module.__call__`` would run them."""
        y = mod.forward(x)
        layers = self._pair_layers.get(id(mod))
        kernel, calls = _moments.FAST_KERNEL, self._calls
        if (layers is not None and kernel is not None and self._recording and self._phase == "train"
                and type(y) is torch.Tensor and y.requires_grad and id(mod) not in calls and id(relu) not in calls):
            layer, relu_layer, weight_attr = layers
            cdim = layer.cdims.get(y.dim())
            step, epoch = self.step, self.epoch
            if cdim is not None and kernel.tap(y, layer.sites.get(Kind.FORWARD), step, epoch,
                                               relu_layer.sites.get(Kind.FORWARD)):
                out = relu.forward(y)
                calls[id(mod)] = calls[id(relu)] = 1
                self._saw_weight_layer(layer, cdim, y.shape, act_seen=True)
                node = out.grad_fn
                if node is not None and (type(node) is _RELU_BACKWARD or len(node.next_functions) == 1):
                    node.register_hook(functools.partial(kernel.pair_grads, self, relu_layer, layer, Kind.BACKWARD,
                                                         cdim, step, epoch))
                self._take_weight(mod, layer, weight_attr)
                self.fused_calls += 1
                return out
        mod_hook(mod, (x,), y)
        out = relu.forward(y)
        relu_hook(relu, (y,), out)
        if layers is None:
            first, relu_first = self._by_key.get((id(mod), 1, "")), self._by_key.get((id(relu), 1, ""))
            if first is not None and relu_first is not None:
                self._pair_layers[id(mod)] = (first, relu_first, _weight_attr(mod))
        return out

    def _queue_weights(self) -> None:
        """At the first backward hook of a step: the weight statistics once the backward pass is done."""
        if self._step_layers and not self._weights_queued:
            self._weights_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)

    def _on_grad(self, layer: LayerState, cdim: int, step: int, epoch: int, index: int,
                 grads: torch.Tensor | tuple[torch.Tensor | None, ...]) -> None:
        """Backward hook of a recorded output: a tensor hook (``grads`` is dL/dy) or a pre-hook of the
        node that made it (``grads[index]`` is dL/dy, None when y got no gradient)."""
        grad = grads if isinstance(grads, torch.Tensor) else grads[index]
        if grad is None or not self._handles:
            return
        self._queue_weights()
        self._push(layer, Kind.BACKWARD, grad, cdim, None, step, epoch)

    def _push(self, layer: LayerState, kind: Kind, y: torch.Tensor, cdim: int, sat_bounds: tuple[float, float] | None,
              step: int, epoch: int) -> None:
        """Reduce ``y`` to per-channel moments, written as the next row of the layer's stream."""
        phase = self._phase
        kernel = _moments.FAST_KERNEL
        # the hot path: a tensor laid out as the last one of this layer and kind, one C call
        if phase == "train" and kernel is not None and kernel.tap(y, layer.sites.get(kind), step, epoch):
            return
        cap = self.max_per_channel if phase == "train" else None
        channels = y.shape[cdim] if y.dim() > 1 else 1
        stream = layer.streams.get((kind, channels))
        if stream is None:
            stream = layer.streams[(kind, channels)] = Stream(2 * channels + 2, y.device, self.flush_every)
            self._streams.append((layer, kind, stream, (), ()))
        elif stream.full:
            self.flush()
        mid, thr = 0.0, -1.0
        if sat_bounds is not None and kind == Kind.FORWARD:
            lo, hi = sat_bounds
            mid, thr = (lo + hi) / 2, (hi - lo) / 2 - self.saturation_tol
        if _moments.kernel_usable(y, stream.buffer):  # no tensor views, one C call
            key = (y.shape, y.stride(), cdim, cap)
            if key in self._geometry:
                geometry = self._geometry[key]
            else:
                geometry = self._geometry[key] = _moments.kernel_geometry(tuple(y.shape), y.stride(), cdim, cap)
            if geometry is not None:
                g, c, p, sg, sc, sp, count, offset = geometry
                row = stream.reserve(step, epoch, phase, count)
                _moments.FAST_KERNEL.moments(y.data_ptr() + 4 * offset, g, c, p, sg, sc, sp,
                                             stream.address + row * stream.row_bytes, mid, thr)
                if phase == "train":
                    layer.sites[kind] = (y.shape, y.stride(), stream, g, c, p, sg, sc, sp, count, 4 * offset,
                                         mid, thr)
                return
        y = y.detach()  # before narrowing: a view of a tensor that requires grad costs an autograd node
        if cap is not None:
            y = last_samples(y, cdim, cap)
        v = channel_view(y, cdim)
        row = stream.reserve(step, epoch, phase, v.shape[0] * v.shape[2])
        _moments.moments_into(v, stream.buffer, row, mid, thr)

    def _on_backward_end(self) -> None:
        """Weights and their gradients of this step, all layers in one row each.

        Runs as an autograd-engine callback once the backward pass has accumulated every ``.grad``."""
        layers, weights = self._step_layers, self._step_tensors
        self._step_layers, self._step_tensors = [], []
        self._weights_queued = False
        if not self._handles or not layers:
            return
        plan, kernel = self._weight_plan, _moments.FAST_KERNEL
        if (plan is not None and kernel is not None and layers == plan[0]
                and kernel.weights(plan[1], plan[2], self.step, self.epoch, weights, plan[3])):
            return  # the usual step: the same layers as last time, one C call
        self._weight_plan = None
        w_stream = self._push_weights(layers, weights, Kind.WEIGHT)
        grads = [w.grad for w in weights]
        if all(g is not None for g in grads):
            g_stream = self._push_weights(layers, grads, Kind.WEIGHT_GRAD)  # type: ignore[arg-type]
            if w_stream is not None and g_stream is not None:
                self._weight_plan = (layers, w_stream, g_stream, tuple([w.numel() for w in weights]))
        else:
            present = [(layer, g) for layer, g in zip(layers, grads, strict=True) if g is not None]
            if present:
                self._push_weights([layer for layer, _ in present], [g for _, g in present], Kind.WEIGHT_GRAD)

    def _push_weights(self, layers: list[LayerState], tensors: list[torch.Tensor], kind: Kind) -> Stream | None:
        """One row of ``[s1, s2, nonzero, 0]`` per tensor, each tensor read whole (on the CPU: one C call
        for all of them); returns the stream when that C call read them."""
        sizes = tuple([t.numel() for t in tensors])
        key = (str(kind), tuple([layer.code for layer in layers]), sizes)
        stream = self._weight_streams.get(key)
        if stream is None:
            stream = self._weight_streams[key] = Stream(4 * len(tensors), tensors[0].device, self.flush_every)
            self._streams.append((None, str(kind), stream, key[1], sizes))
        elif stream.full:
            self.flush()
        row = stream.reserve(self.step, self.epoch, "train", 0)
        if all(_moments.kernel_usable(t, stream.buffer) and _dense(t) for t in tensors):
            args: list[int] = []
            for t in tensors:  # each whole tensor as one channel, in memory order
                args += (t.data_ptr(), t.numel())
            _moments.FAST_KERNEL.flat(stream.address + row * stream.row_bytes, *args)
            return stream
        with torch.no_grad():
            flat = [t.detach().float() for t in tensors]
            s1 = torch.stack([t.sum() for t in flat])
            s2 = torch.stack(torch._foreach_norm(flat)).square()
            cells = stream.buffer[row].view(len(tensors), 4)
            cells[:, 0].copy_(s1)
            cells[:, 1].copy_(s2)
        return None

    # -- collection ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Copy the buffered moment rows to the host (one device-to-host copy in all) and free the buffers.

        The statistics are derived from the rows later, many flushes at once (:meth:`frame`, or once
        the rows on the host pass :data:`HOST_ROWS_BYTES`): numpy costs a few microseconds per call
        whatever the number of rows, so deriving per flush would cost more than the copy."""
        taken = [(index, *stream.take()) for index, (_, _, stream, _, _) in enumerate(self._streams) if stream.n]
        if not taken:
            return
        raw = [rows for _, rows, _ in taken]
        if all(r.device.type == "cpu" for r in raw):
            host = [r.numpy().copy() for r in raw]
        else:  # one copy for all streams
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
        """Turn the moment rows on the host into statistics (chunks of the frame). Rows of a diverged
        step (inf/NaN sums) give NaN statistics, silently: the checks report the divergence."""
        host, self._host, self._host_bytes = self._host, {}, 0
        for index, parts in sorted(host.items()):
            layer, kind, _, codes, sizes = self._streams[index]
            rows = np.concatenate([r for r, _ in parts]) if len(parts) > 1 else parts[0][0]
            meta = [m for _, ms in parts for m in ms]
            with np.errstate(invalid="ignore", over="ignore"):
                if layer is None:
                    self._chunks.append(weight_chunk(kind, codes, sizes, rows, meta))
                else:
                    self._chunks.append(moment_chunk(layer, kind, rows, meta))

    def layers(self) -> list[LayerInfo]:
        """The recorded layers, in the order of the first forward pass."""
        return [layer.info() for layer in self._layers]

    def frame(self) -> pd.DataFrame:
        """All statistics so far as one tidy DataFrame with columns :data:`FRAME_COLUMNS`."""
        self.flush()
        if self._frame is not None:
            return self._frame
        self._derive()
        if not self._chunks:
            self._frame = pd.DataFrame({c: pd.Series(dtype=column_dtype(c)) for c in FRAME_COLUMNS})
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


def _dense(t: torch.Tensor) -> bool:
    """True when ``t`` fills one block of memory (any dim order), so it can be read as a flat array."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))

_RELU_BACKWARD = type(torch.relu(torch.ones(1, requires_grad=True)).grad_fn)
