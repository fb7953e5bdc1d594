"""Per-layer statistics recorded with hooks, reduced on the device, collected into one tidy DataFrame.

The only module that registers recording hooks. In any training loop (each forward of the model with grad
enabled is one step; ``rec.epoch = e`` labels the rows)::

    with Recorder(model, every=1) as rec:
        for x, y in batches: loss_fn(model(x), y).backward(); ...
    frame = rec.frame()

Recorded for every weight layer (:data:`~initdiag.structure.RECORDED_WEIGHT_TYPES`: Conv/Linear, recurrent,
attention, embedding) and activation module (ReLU, tanh, GELU, ...), per call (``name``, ``name@2``), outputs
walked (``name.0``, ``name.1.key``; of a weight layer the first floating-point one: LSTM/GRU's sequence,
MultiheadAttention's attended output):

* ``forward``: statistics of the module's output ``y`` per channel over the batch and positions: ``var``,
  ``mean_sq``, ``zero_frac``; ``dead_frac`` for ReLU-family modules, ``sat_frac`` for tanh/sigmoid
  (:func:`~initdiag.recording.rows.moment_chunk`), also as ``<layer>:<function>`` for such functions called in
  ``forward`` (:mod:`~initdiag.recording.functional`).
* ``backward``: the same of dL/dy, from a hook set in the forward hook on the autograd node that made the
  output (a pre-hook: the gradient a tensor hook on the output would get; a tensor hook for a leaf). Works with
  in-place activations, where ``register_full_backward_hook`` fails.
* ``weight`` / ``weight_grad``: ``var`` and ``mean_sq`` of each weight layer's weight
  (:func:`~initdiag.structure.main_weight`) and of its gradient, read once the backward pass has accumulated
  every ``.grad``; ``update`` (``updates=True``): the same of the change the optimizer made to the weight
  after the recorded step, read at the next forward (:mod:`~initdiag.recording.updates`).
* with the model's :class:`~initdiag.structure.Structure` (given, or discovered during the first forward, then
  used from the next step on): every weight layer it found (any module whose parameter of 2+ dims acts as a
  linear map: transformers' ``Conv1D``, timm's standardized convs, ...), its elementwise activation modules,
  and each residual block's output, the residual stream (role ``block``, ``depth`` = its index in the stream;
  ``<first block>:in`` is the stream entering it, depth -1), forward and backward.

One path per statistic: forward hooks, hooks on the output's autograd node, one reduction (:func:`~.moments.reduce`)
into a row per layer and kind, copied to the host when a buffer fills (no sync per hook). The model is never
altered: hooks come off in ``finally``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..structure import Structure, StructureProbe
from ..structure.activations import SATURATING
from ..structure.layers import RECORDED_WEIGHT_TYPES, LayerInfo, activation_name, main_weight, own_grad
from ..structure.model import Activation
from ..vocab import Kind, Phase, Role
from .collect import Collector
from .functional import apply_activation, functional_activations
from .moments import Layout
from .rows import LayerState, layer_infos
from .sink import ParquetSink
from .sites import channel_dim, iter_tensors, traced
from .thinning import Thinning
from .updates import StepWeights

__all__ = ["Recorder"]

_STEP_KINDS = frozenset({Kind.WEIGHT, Kind.WEIGHT_GRAD, Kind.UPDATE})


class Recorder:
    """Context manager that records per-layer statistics of ``model`` (see the module docstring).

    Args:
        model: the model; its own hooks, train/eval mode and parameters are never changed.
        every: record every ``every``-th step (a step is one forward call of ``model`` with grad enabled).
        run, initializer, seed: labels copied into every row of :meth:`frame`.
        saturation_tol: an output within this distance of a bound of tanh/sigmoid counts as saturated.
        max_per_channel: in training steps, at most about this many values per channel (the batch's last
            samples; None: all; probes use all): 1024 keep each channel's variance within ~4% (sd).
        flush_every: moment rows buffered per layer and kind (at most 1 MiB) before one copy to the host.
        structure: the model's structure (:func:`initdiag.structure.discover`); None: discovered during
            the first forward inside the recorder (its blocks and extra layers recorded from the next step).
        updates: record each recorded step's weight update (one copy of the weights per recorded step).
        grads_at: ``"backward"``: weights and their gradients are read when the backward pass ends;
            ``"optimizer"``: when :meth:`before_optimizer_step` is called (after gradient clipping).
        max_steps: keep at most this many recorded steps, the first ones all, then thinned evenly
            (:mod:`~initdiag.recording.thinning`); None: every recorded step.
        stream_to: a directory: every recorded step's rows go there as Parquet parts (:mod:`~.sink`), memory
            bounded without thinning; :meth:`frame` reads them back, thinned to ``max_steps``.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, run: str = "run", initializer: str = "",
                 seed: int = 0, saturation_tol: float = 0.01, max_per_channel: int | None = 1024,
                 flush_every: int = 256, structure: Structure | None = None, updates: bool = True,
                 grads_at: str = "backward", max_steps: int | None = None, stream_to: str | Path | None = None) -> None:
        if every < 1 or flush_every < 1 or grads_at not in ("backward", "optimizer"):
            raise ValueError(f"every and flush_every must be >= 1 and grads_at 'backward' or 'optimizer' (got "
                             f"every={every}, flush_every={flush_every}, grads_at={grads_at!r})")
        self.grads_at, self.model, self.every, self.run = grads_at, model, every, run
        self.initializer, self.seed, self.saturation_tol = initializer, seed, saturation_tol
        self.max_per_channel, self.structure, self.epoch, self.step = max_per_channel, structure, 0, -1
        self._phase: str = Phase.TRAIN
        self._recording = self._paused = self._act_seen = False
        self._handles: list[RemovableHandle] = []
        self._hooked: set[int] = set()  # id() of the modules with a recording hook
        self._probe: StructureProbe | None = None
        self._names: dict[int, str] = {}
        self._layers: list[LayerState] = []
        self._by_key: dict[tuple[int, int, str], LayerState] = {}
        self._first_site: dict[int, LayerState] = {}  # id(module) -> the layer of its first call site
        self._calls: dict[int, int] = {}  # id(module) -> calls in this forward
        self._last_weight: LayerState | None = None  # the weight layer that ran last, for its activation
        self._last_weight_out: tuple[torch.Size, int] | None = None  # its output's shape and channel dim
        self._weights = StepWeights(updates)  # this step's weights, read after backward; the last step's copies
        self._layouts: dict[tuple[Any, ...], Layout | None] = {}
        sink = ParquetSink(stream_to) if stream_to is not None else None
        self._collector = Collector(flush_every, self._layers, (run, initializer, seed), sink)
        self._thin, self.max_steps = Thinning(every, max_steps if sink is None else None), max_steps
        self._functional: dict[str, Activation] = {}  # weight-layer site -> the functional activation it feeds

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
        with suppress(Exception) if exc_type is not None else nullcontext():  # the original error matters more
            self._collector.settle()

    def _attach(self) -> None:
        self._names = {id(m): n for n, m in self.model.named_modules()}
        self._handles.append(self.model.register_forward_pre_hook(self._on_root_forward))
        for module in self.model.modules():
            role = (Role.WEIGHT if isinstance(module, RECORDED_WEIGHT_TYPES)
                    else Role.ACTIVATION if activation_name(module) is not None else None)
            if role is not None:
                self._hook(module, role)
        if self.structure is not None:
            self._hook_structure(self.structure)
        else:
            self._probe = StructureProbe(self.model)
            self._probe.__enter__()

    def _hook(self, module: nn.Module, role: str) -> None:
        if id(module) not in self._hooked:
            self._hooked.add(id(module))
            self._handles.append(module.register_forward_hook(self._make_forward_hook(module, role)))

    def _hook_structure(self, structure: Structure) -> None:
        """Hooks for what only the structure knows: weight layers of other types, elementwise activation
        modules of the model's own, the residual blocks and the stream entering the first."""
        modules = dict(self.model.named_modules())
        for layer in structure.weight_layers:
            if layer.module_name in modules:
                self._hook(modules[layer.module_name], Role.WEIGHT)
        for act in structure.activations:
            if act.source == "module" and act.module_name in modules:
                self._hook(modules[act.module_name], Role.ACTIVATION)
        self._functional = functional_activations(structure)
        for block in structure.blocks:
            module = modules.get(block.module_name)
            if module is None or id(module) in self._hooked:
                continue
            if block.index == 0:
                self._handles.append(module.register_forward_pre_hook(self._make_stream_input_hook(module, block.name),
                                                                      with_kwargs=True))
            self._hook(module, Role.BLOCK)

    def _end_discovery(self) -> None:
        """Leave the structure probe; with a structure seen, hook what it found (from the next step on)."""
        probe, self._probe = self._probe, None
        if probe is None:
            return
        probe.__exit__(None, None, None)
        with suppress(RuntimeError):  # no complete forward was seen: the recorder keeps to module types
            self.structure = probe.structure()
        if self.structure is not None and self._handles:
            self._hook_structure(self.structure)

    def _detach(self) -> None:
        handles, self._handles = self._handles, []
        try:
            self._end_discovery()  # the structure seen is kept; with no handles, nothing more is hooked
        finally:
            for handle in handles:
                handle.remove()
            self._hooked.clear()
            self._recording = False
            self._weights.clear()

    @property
    def active(self) -> bool:  # True while hooks are attached
        return bool(self._handles)

    def joined_forward(self) -> None:
        """Count the forward now running as a step (a recorder attached inside it missed its root pre-hook)."""
        self._on_root_forward(self.model, ())

    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()
        self._last_weight = None
        if self._probe is not None and self._probe.seen:
            self._end_discovery()
        if traced() or self._paused:
            self._recording = False
            return
        self._collector.staging.run()  # the last step's rows at once (:mod:`.staging`)
        for layer, update, step, epoch in self._weights.updates():
            self._push(layer, Kind.UPDATE, update, -1, None, step, epoch)
        if self._phase != Phase.TRAIN:
            self._recording = True
        elif not torch.is_grad_enabled():
            self._recording = False
        else:
            self.step += 1
            self._recording = self._thin.records(self.step)
            if self._thin.over():
                self._collector.prune(self._thin.keep)
            self._weights.reset()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward and backward passes inside the block are no steps and record nothing (an audit's look-ahead)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = self._recording = False

    @contextmanager
    def probe(self, phase: str) -> Iterator[None]:
        """Record the forward passes inside the block under ``phase`` (e.g. "init", "final"): an evaluation
        batch under ``torch.no_grad()``; rows get the current step and epoch; steps are not advanced."""
        if phase == Phase.TRAIN:
            raise ValueError("probe phase must not be 'train'")
        old = self._phase
        self._phase = phase
        try:
            yield
        finally:
            self._phase = old
            self._recording = False

    def _layer_for(self, module: nn.Module, role: str, call: int, suffix: str) -> LayerState:
        key = (id(module), call, suffix)
        layer = self._by_key.get(key)
        if layer is None:
            base = self._names.get(id(module)) or type(module).__name__
            name = base + (f"@{call}" if call > 1 else "") + suffix
            if role == Role.WEIGHT:
                depth = sum(1 for lay in self._layers if lay.role == Role.WEIGHT)
                activation: str | None = "linear"
            elif role == Role.BLOCK:
                blocks = self.structure.blocks if self.structure is not None else ()  # stream index; -1 entering
                depth = -1 if suffix == ":in" else next((b.index for b in blocks if b.name == name), len(blocks))
                activation = None
            else:
                depth = self._last_weight.depth if self._last_weight is not None else 0
                activation = activation_name(module) or "module"
            layer = LayerState(len(self._layers), name, base, module, role, depth, activation)
            self._layers.append(layer)
            self._by_key[key] = layer
            self._first_site.setdefault(id(module), layer)
        return layer

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
                tensors = iter_tensors(output)
            for suffix, y in tensors:
                suffix = suffix if role == Role.ACTIVATION else ""  # one output: named as the module
                layer = self._by_key.get((module_id, call, suffix)) or self._layer_for(mod, role, call, suffix)
                cdim = layer.cdims.get(y.dim())
                if cdim is None:
                    cdim = layer.cdims[y.dim()] = channel_dim(mod, role, y, self._last_weight_out)
                    layer.numel = y[0].numel() if y.dim() >= 2 else None
                if weight_role:
                    self._last_weight, self._act_seen, self._last_weight_out = layer, False, (y.shape, cdim)
                elif role == Role.ACTIVATION and self._last_weight is not None and not self._act_seen:
                    self._last_weight.activation = layer.activation
                    self._act_seen = True
                self._push(layer, Kind.FORWARD, y, cdim, sat)
                if weight_role and layer.name in self._functional:
                    self._push_functional(mod, call, layer.name, y, cdim)
                if self._phase == Phase.TRAIN and y.requires_grad:
                    self._hook_gradient(layer, y, cdim)
                if role != Role.ACTIVATION:  # a weight layer's or block's first floating-point output only
                    break
            if weight_role and call == 1 and self._phase == Phase.TRAIN:
                current = mod._parameters.get(weight_name) if weight_name is not None else main_weight(mod)
                if current is not None:
                    self._weights.add(self._first_site[module_id], current)

        return hook

    def _push_functional(self, module: nn.Module, call: int, site: str, y: torch.Tensor, cdim: int) -> None:
        """The forward rows of the functional activation fed by the weight layer at ``site`` (:mod:`.functional`)."""
        act = self._functional[site]
        layer = self._by_key.get((id(module), call, f":{act.name}")) or \
            self._layer_for(module, Role.ACTIVATION, call, f":{act.name}")
        layer.activation = layer.module = act.name
        self._push(layer, Kind.FORWARD, apply_activation(act, y), cdim, SATURATING.get(act.name))

    def _make_stream_input_hook(self, module: nn.Module, name: str) -> Any:
        """A forward pre-hook on the first block: its input, the stream entering the blocks."""
        def hook(mod: nn.Module, args: Any, kwargs: Any) -> None:
            if not self._recording or self._calls.get(id(mod), 0):
                return
            y = next((t for _, t in iter_tensors((args, kwargs))), None)
            if y is None:
                return
            layer = self._by_key.get((id(mod), 1, ":in")) or self._layer_for(mod, Role.BLOCK, 1, ":in")
            cdim = layer.cdims.get(y.dim())
            if cdim is None:
                cdim = layer.cdims[y.dim()] = channel_dim(mod, Role.BLOCK, y, None)
                layer.numel = y[0].numel() if y.dim() >= 2 else None
            self._push(layer, Kind.FORWARD, y, cdim, None)
            if self._phase == Phase.TRAIN and y.requires_grad:
                self._hook_gradient(layer, y, cdim)

        return hook

    def _hook_gradient(self, layer: LayerState, y: torch.Tensor, cdim: int) -> None:
        """Record dL/dy as ``layer``'s backward row of this step when the backward pass reaches it: a pre-hook
        on the node that made ``y`` (the gradient a tensor hook would get), a tensor hook for a leaf."""
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
        if self._weights.pending and not self._weights.queued and self.grads_at == "backward":
            self._weights.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)
        self._push(layer, Kind.BACKWARD, grad, cdim, None, step, epoch)

    def before_optimizer_step(self) -> None:
        """With ``grads_at="optimizer"``: read the recorded step's weights and gradients now (call it after
        gradient clipping, before the optimizer's step; Hugging Face's ``on_pre_optimizer_step``)."""
        if self.grads_at == "optimizer":
            self._on_backward_end()

    def _on_backward_end(self) -> None:
        """Each weight of this step and its gradient, once the backward pass has accumulated every ``.grad``."""
        if not self._handles:
            self._weights.reset()
            return
        for layer, weight in self._weights.take(self.step, self.epoch):
            self._push(layer, Kind.WEIGHT, weight, -1, None)
            if (grad := own_grad(weight)) is not None:
                self._push(layer, Kind.WEIGHT_GRAD, grad, -1, None)

    def _push(self, layer: LayerState, kind: str, y: torch.Tensor, cdim: int,
              sat: tuple[float, float] | None, step: int | None = None, epoch: int | None = None) -> None:
        """Reduce ``y`` into the next row of the layer's stream of ``kind`` (``cdim < 0``: one channel)."""
        phase = Phase.TRAIN if kind in _STEP_KINDS else self._phase
        channels = y.shape[cdim] if cdim >= 0 and y.dim() > 1 else 1
        stream = self._collector.stream(layer, kind, channels, y)
        mid, thr = (0.0, -1.0) if sat is None else ((sat[0] + sat[1]) / 2, (sat[1] - sat[0]) / 2 - self.saturation_tol)
        cap = self.max_per_channel if phase == Phase.TRAIN else None
        count = stream.fill(y, cdim, cap, mid, thr, self._layouts, self._collector.staging)
        stream.commit(self.step if step is None else step, self.epoch if epoch is None else epoch, phase, count)

    def flush(self) -> None:
        """Copy the buffered rows to the host (one transfer) and empty the device buffers."""
        self._collector.flush()

    def layers(self) -> list[LayerInfo]:
        """The recorded layers, in the order of the first forward pass; with the structure, each weight
        layer's fans, activation, block, normalization and constant input as it saw them."""
        return layer_infos(self._layers, self.structure)

    def frame(self) -> pd.DataFrame:
        """All statistics so far as one tidy DataFrame with the columns of :data:`~initdiag.series.FRAME_COLUMNS`."""
        return self._collector.frame(self.max_steps)
