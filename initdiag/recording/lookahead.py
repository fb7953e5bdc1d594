"""Look ahead a few steps: when do the zero parameters that get no gradient at the first step start to learn?

A zero parameter whose gradient is zero at step 1 is not necessarily stuck. Under Fixup (Zhang et al. 2019)
the classifier and the last layer of every residual branch start at zero: at step 1 only the classifier gets
a gradient, and the branches get theirs from step 2, once the classifier has moved. A zero convolution that
feeds a trainable block whose output passes another zero convolution (an adapter on a frozen trunk) is the
same pattern. Each zero in such a chain learns one step after the zero that shadows it, so the look-ahead
takes as many plain SGD steps on the first batch as there are zero parameters still waiting (at most
:data:`MAX_STEPS`); every weight zero stays zero whatever the number of steps.

Only the zeros step. A gradient that is exactly zero at step 1 is zero because a zero stands between the
parameter and the loss (a product with a zero weight, scale or input), and steps of the parameters that are
not zero cannot make that zero non-zero; the zeros' own steps can. So the parameters that are not zero are
held (``requires_grad`` off: no gradient buffers for them, gradients still flow through them), the model
steps in place, and only the zeros, the buffers (running statistics) and the flags are saved and restored:
no copy of the model, whose parameters, gradients and activations would come on top of the audit's.

Near-zero parameters (a layer scale of 1e-6) are zeros too (:func:`~initdiag.recording.snapshots.near_zero`);
:func:`zero_shadow` finds the layers whose input varies over the batch only through them.

Not a statistical test: exact zeros of gradients. The model, its buffers, its parameters' gradients and
``requires_grad`` flags and the random state (dropout) are as they were after.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..structure.functional import constant_over_batch
from .snapshots import Weights, leaves_zero, snapshot_grads

__all__ = ["LR", "MAX_STEPS", "later_learners", "zero_shadow"]

MAX_STEPS = 4
"""Steps looked ahead after the first: a chain of up to 5 zeros, one step each."""

LR = 0.01
"""Plain SGD's learning rate of the zeros' steps: only whether a gradient becomes non-zero matters, not how far a
step goes, so it is small enough to keep every model finite."""


def later_learners(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], zero: Mapping[str, bool],
                   names: Collection[str], transposed: Collection[str] = (),
                   first_grads: bool = False) -> tuple[dict[str, int], Weights]:
    """For the zero parameters of ``zero`` (name -> gets a gradient at step 1) that do not learn at step 1:
    the step (2 to ``MAX_STEPS + 1``) at which each first gets a finite non-zero gradient, and the gradients
    (:func:`~initdiag.recording.snapshots.snapshot_grads` of the weight-layer modules ``names``) of the modules
    that own one, at that step. ``loss_of(m)`` runs the first batch through ``m`` and returns its loss. Takes
    plain SGD steps at :data:`LR` of the zero parameters only (``zero``'s and every all-zero bias or vector), in
    place, everything restored after; parameters still waiting after ``MAX_STEPS`` are left out.
    ``first_grads``: the parameters' ``.grad`` already hold the first batch's gradients (the caller's own
    backward of it), so the first step is taken from them, without a forward and backward of its own, and they
    are dropped (``None`` after: not held beside the look-ahead's own passes)."""
    waiting = {name for name, learns in zero.items() if not learns}
    if not waiting:
        return {}, {}
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    moving = {n for n in zero if n in params} | {
        n for n, p in params.items() if p.dim() <= 1 and p.is_floating_point() and not bool(p.detach().any())}
    owners = {name.rpartition(".")[0] for name in waiting} & set(names)
    graded = moving | {f"{m}.{n}" if m else n for m in owners if m in modules
                       for n, _ in modules[m].named_parameters(recurse=False)}
    flags = [(p, p.requires_grad, None if first_grads else p.grad) for p in params.values()]  # grads: consumed
    saved = [(params[n], params[n].detach().clone()) for n in moving]
    buffers = [(m, n, b, b.detach().clone()) for m in model.modules() for n, b in m._buffers.items()
               if b is not None]
    try:
        if first_grads:
            _sgd(params[n] for n in moving)
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(p.requires_grad and n in graded)
        return _steps(model, {n: params[n] for n in moving}, loss_of, waiting, names, transposed,
                      2 if first_grads else 1)
    finally:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)
            for m, n, b, value in buffers:
                m._buffers[n] = b
                b.copy_(value)
        for p, req, grad in flags:
            p.requires_grad_(req)
            p.grad = grad


def _sgd(params: Iterable[torch.Tensor]) -> None:
    """One plain SGD step at :data:`LR` of each parameter with a finite gradient."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None and bool(torch.isfinite(p.grad).all()):
                p.add_(p.grad, alpha=-LR)


def _steps(work: nn.Module, moving: Mapping[str, nn.Parameter], loss_of: Callable[[nn.Module], torch.Tensor],
           waiting: set[str], names: Collection[str], transposed: Collection[str],
           first: int) -> tuple[dict[str, int], Weights]:
    """The SGD steps of :func:`later_learners` of the parameters ``moving`` of ``work`` (changed in place),
    from step ``first`` (2: the first step taken already)."""
    owners = {name.rpartition(".")[0] for name in waiting}
    started: dict[str, int] = {}
    grads: dict[str, tuple] = {}
    devices = [p.device.index or 0 for p in moving.values() if p.is_cuda][:1]
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        for step in range(first, MAX_STEPS + 2):
            work.zero_grad(set_to_none=True)
            loss = loss_of(work)
            if not loss.requires_grad or not torch.isfinite(loss):
                break
            loss.backward()
            if step > 1:
                now = {name for name in waiting if name in moving and leaves_zero(moving[name])}
                for name in now:
                    started[name] = step
                owned = {name.rpartition(".")[0] for name in now} & owners & set(names)
                grads.update(snapshot_grads(work, owned, transposed))
                waiting -= now
            if not waiting:
                break
            _sgd(moving.values())
    return started, grads


def zero_shadow(model: nn.Module, call: Callable[[nn.Module], Any], batch: int, params: Collection[str],
                names: Collection[str]) -> tuple[str, ...]:
    """The call sites of the weight-layer modules ``names`` (the module's name, ``@k`` from its second call on)
    whose input varies over the batch only through the near-zero parameters ``params``: equal for every
    sample with them set to exactly 0, not equal as they are (a class-attention block whose only data arrives
    through a layer scale of 1e-5 beside a learned class token). Two forwards ``call(model)`` of a batch of
    ``batch`` samples without gradients in eval mode (no running statistics updated, no dropout); values,
    modes and the random state restored."""
    named = dict(model.named_parameters())
    zeroed = [named[p] for p in params if p in named]
    modules = {name: m for name, m in model.named_modules() if name in names}
    if not zeroed or not modules or batch < 2:
        return ()
    seen: dict[str, bool] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
            k = counts[name] = counts.get(name, 0) + 1
            if x is not None:
                seen[name if k == 1 else f"{name}@{k}"] = constant_over_batch(x, batch, True)
        return pre

    def constant() -> dict[str, bool]:
        seen.clear()
        counts.clear()
        call(model)
        return dict(seen)

    modes = [(m, m.training) for m in model.modules()]
    saved = [(p, p.detach().clone()) for p in zeroed]
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    devices = [p.device.index or 0 for p in zeroed if p.is_cuda][:1]
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            before = constant()
            for p in zeroed:
                p.zero_()
            after = constant()
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)
        for m, mode in modes:
            m.training = mode
    return tuple(site for site, same in after.items() if same and not before.get(site, True))
