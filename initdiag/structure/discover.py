"""Structure discovery: what a model is, seen at its first forward, as plain data.

::

    with StructureProbe(model) as probe:
        loss = loss_fn(model(x), y)      # any ordinary forward: grad enabled or not
    s = probe.structure()                 # weight layers, norms, activations, residual blocks

    s = discover(model, x)                # the same, one forward under torch.no_grad()

The probe registers forward pre-hooks and hooks (``with_kwargs=True``) on every module, one of each
first (``prepend=True``) and one last, and enters a :class:`torch.overrides.TorchFunctionMode`. The
first forward of the root inside the block is recorded as a dataflow graph of plain data
(:mod:`~initdiag.structure.graph`); torch calls made by other hooks (between ours) are not part of it,
and inputs or outputs such a hook replaces are taken to stand for the ones it was given. Later
forwards pass through at the cost of one check per torch call. Hooks are removed when the first
forward ends (in the root's last hook), and at the latest in ``__exit__`` (in ``finally``, also when
the forward raised), where the mode is left too and every tensor reference is dropped.

The probe only observes: outputs, parameters, buffers, train/eval flags and the user's hooks stay as
they are. Its own work on tensors (the numeric test of an unknown parameter-free module, which runs it
once more on a shuffled copy of its input; comparing a layer's input rows) runs under no_grad, with the
RNG state forked and a local generator. One difference can show: with a torch function mode active,
``has_torch_function`` is true, so ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` skip
their fused inference fast path (eval mode, no grad) and compute the same result by the regular path,
equal up to rounding. Global module hooks (``register_module_forward_hook``) run outside the bracket
and their torch calls are recorded.

What each part finds and where it can be wrong: :mod:`~initdiag.structure.graph` (weight layers,
constant inputs), :mod:`~initdiag.structure.analysis` (norms, activations, chains),
:mod:`~initdiag.structure.blocks` (residual blocks), :mod:`~initdiag.structure.functional` (what a
torch function or module means).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .analysis import build
from .graph import DONE, RECORDING, Tracker
from .model import Structure
from .records import Graph


class StructureProbe:
    """Context manager that records the structure of the first forward of ``model`` inside it."""

    def __init__(self, model: nn.Module) -> None:
        self.model: nn.Module | None = model
        self._root = type(model).__name__
        self._tracker: Tracker | None = None
        self._handles: list[RemovableHandle] = []
        self._graph: Graph | None = None
        self._pshapes: dict[int, dict[str, tuple[int, ...]]] = {}
        self._structure: Structure | None = None
        self._failed = False
        self._used = False
        self._mode_on = False

    def __enter__(self) -> StructureProbe:
        if self._used or self.model is None:
            raise RuntimeError("a StructureProbe can be entered only once")
        self._used = True
        tracker = Tracker(self.model)
        tracker.on_done = self._seen_all
        self._tracker = tracker
        try:
            for m in self.model.modules():
                self._handles += [m.register_forward_pre_hook(tracker.pre_first, with_kwargs=True, prepend=True),
                                  m.register_forward_pre_hook(tracker.pre_last, with_kwargs=True),
                                  m.register_forward_hook(tracker.post_first, with_kwargs=True, prepend=True),
                                  m.register_forward_hook(tracker.post_last, with_kwargs=True)]
            tracker.__enter__()
            self._mode_on = True
        except BaseException:
            self._remove_hooks()
            self._tracker = None
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        tracker = self._tracker
        try:
            self._remove_hooks()
        finally:
            try:
                if tracker is not None and self._mode_on:
                    self._mode_on = False
                    tracker.__exit__(None, None, None)
            finally:
                if tracker is not None:
                    self._failed = tracker.state == RECORDING  # the forward did not finish
                    tracker.finish()
                    self._graph, self._pshapes = tracker.graph, tracker.info.pshapes
                self._tracker = None
                self.model = None

    @property
    def seen(self) -> bool:
        """True once the first forward inside the block has been recorded completely (the probe can be left)."""
        return self._tracker is not None and self._tracker.state == DONE

    def _seen_all(self) -> None:
        """The first forward is complete (the root's last hook): the hooks and the function mode go now, so
        nothing of the probe runs between then and the end of the with-block."""
        self._remove_hooks()
        if self._mode_on and self._tracker is not None:
            self._mode_on = False
            self._tracker.__exit__(None, None, None)

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def structure(self) -> Structure:
        """What the first forward inside the block showed (after the block; computed once)."""
        if self._structure is None:
            if self._tracker is not None:
                raise RuntimeError("structure() is available after the probe's with-block")
            if self._graph is None or self._failed or not self._graph.complete:
                raise RuntimeError("no complete forward of the model was seen inside the StructureProbe")
            self._structure = build(self._graph, self._root, self._pshapes)
            self._graph, self._pshapes = None, {}
        return self._structure


def discover(model: nn.Module, *args: Any, **kwargs: Any) -> Structure:
    """The structure of ``model`` from one forward ``model(*args, **kwargs)`` under ``torch.no_grad()``.

    The forward's side effects on the model are undone: buffers (e.g. BatchNorm running statistics in
    train mode) are copied back and the RNG state is forked, so the model and later random draws are
    as if it had not run."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.is_cuda})
    probe = StructureProbe(model)
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), probe:
            model(*args, **kwargs)
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    return probe.structure()
