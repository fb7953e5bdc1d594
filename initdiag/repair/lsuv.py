"""LSUV: layer-sequential unit-variance repair, measured on one batch.

Mishkin & Matas (2015), "All you need is a good init" (arXiv:1511.06422), Algorithm 1: for each weight layer
in turn, push a batch through the model, measure the variance of the layer's output, divide the weight by
``sqrt(Var / target)`` and repeat until ``|Var / target - 1| <= tol`` or ``max_iter`` rescalings; optionally
pre-initialize each weight with a (semi-)orthogonal matrix first (their step 1, Saxe et al. 2014).

Done as the paper means it, and as the ``lsuv`` package (ducha-aiki/lsuv) does not:

- layers in **execution** order (the order structure discovery saw), not registration order: a layer is
  fitted on inputs that the layers before it in the forward already fixed;
- each measurement stops the forward as soon as the layer's output is seen, so it costs the forward up to
  that layer; ``forwards`` counts them, partial ones included;
- deliberate zeros (a zero head, ``zero_init_residual``, Fixup, layer scale) are left alone, as are layers
  whose output has no variance to scale (zero, not finite, never reached): those are named in
  ``unconverged``, as is a layer that does not reach the target (its closest scale is kept, the original
  weight when no scale came closer: a weight-standardized layer, whose output ignores the weight's scale);
- only the weights change: biases, normalization parameters, buffers (BatchNorm running statistics),
  every module's train/eval mode, ``requires_grad``, ``.grad`` and the global RNG state are as before.

The forwards run in train mode (as the audit does) under ``torch.no_grad()``, each with the same RNG state,
so dropout draws the same masks in every measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..audit.inputs import Inputs, tensors_in
from ..errors import UsageError
from ..modes import preserve_modes
from ..results import ParamChange
from ..structure import Structure, WeightLayer
from ..structure.functional import function_name
from .params import weight_layers_in_order, weight_std

__all__ = ["LsuvOutcome", "lsuv_repair"]

SOURCE = "LSUV (Mishkin & Matas 2015)"

_MAP_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""Modules whose output is their ``weight``'s linear map (plus bias): measured with a forward hook."""

MIN_GAIN = 1e-3
"""An unconverged layer keeps a scale only when it brought ``|log(Var / target)|`` closer by more than this
(0.1%): a layer whose output ignores the weight's scale (weight standardization) keeps its weight as it was."""


@dataclass(frozen=True)
class LsuvOutcome:
    """What :func:`lsuv_repair` did: each weight it changed (in execution order), the call sites of the layers
    it could not bring to the target variance (skipped or unconverged), and the forward passes it ran
    (partial ones included)."""

    changes: tuple[ParamChange, ...]
    unconverged: tuple[str, ...]
    forwards: int


class _Seen(BaseException):
    """Raised once the watched layer's output is captured: ends the forward there (a BaseException, so that a
    model's own ``except Exception`` does not swallow it)."""


def _storage(t: torch.Tensor) -> int | None:
    """The address of ``t``'s storage (shared by its views: ``w.t()``, ``w.view(...)``), None without one."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class _OpWatch(TorchFunctionMode):
    """Captures the output of the first torch call named ``op`` that takes ``weight`` (or a view of it)."""

    def __init__(self, op: str, weight: torch.Tensor, seen: list[torch.Tensor]) -> None:
        super().__init__()
        self.op, self.seen = op, seen
        self.storage = _storage(weight)

    def _takes_weight(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return self.storage is not None and any(_storage(t) == self.storage for t in tensors_in((args, kwargs)))

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if function_name(func) == self.op and self._takes_weight(args, kwargs):
            found = tensors_in(out)
            if found:
                self.seen.append(found[0])
                raise _Seen
        return out


@contextmanager
def _watch(model: nn.Module, layer: WeightLayer, weight: nn.Parameter) -> Iterator[list[torch.Tensor]]:
    """While inside, the layer's first output in a forward lands in the yielded list and ends the forward: a
    forward hook on a Linear/Conv module, else the output of the first call of its op on its weight."""
    seen: list[torch.Tensor] = []
    module = model.get_submodule(layer.module_name) if layer.module_name else model
    if isinstance(module, _MAP_MODULES) and layer.param == "weight":
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            found = tensors_in(output)
            if found:
                seen.append(found[0])
                raise _Seen

        handle = module.register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()
    else:
        with _OpWatch(layer.op, weight, seen):
            yield seen


@dataclass
class _Measure:
    """Runs the batch to one layer's output and returns its variance; counts forwards."""

    model: nn.Module
    batch: Inputs
    replay: Callable[[], None]
    forwards: int = 0

    def variance(self, layer: WeightLayer, weight: nn.Parameter) -> float:
        """Population variance (float64) of all elements of the layer's first output; NaN when not reached."""
        self.replay()
        self.forwards += 1
        with _watch(self.model, layer, weight) as seen:
            with suppress(_Seen):
                self.batch(self.model)
        return float(seen[0].detach().double().var(correction=0)) if seen else math.nan


def _rng_replay(devices: list[int]) -> Callable[[], None]:
    """A function that sets the CPU and ``devices``' RNG states back to what they are now."""
    cpu = torch.get_rng_state()
    cuda = [(d, torch.cuda.get_rng_state(d)) for d in devices]

    def replay() -> None:
        torch.set_rng_state(cpu)
        for d, state in cuda:
            torch.cuda.set_rng_state(state, d)

    return replay


def _orthogonalize(weight: nn.Parameter, generator: torch.Generator) -> None:
    """Replace ``weight`` by a (semi-)orthogonal matrix of its shape flattened to ``(out, rest)``: orthonormal
    rows when ``out <= rest``, else orthonormal columns (``torch.nn.init.orthogonal_``, Saxe et al. 2014)."""
    flat = torch.empty(weight.shape[0], weight[0].numel(), dtype=torch.float64)
    nn.init.orthogonal_(flat, generator=generator)
    weight.copy_(flat.reshape(weight.shape).to(weight.dtype))


def _off(var: float, target: float) -> float:
    """How far ``var`` is from ``target``, for keeping the closest scale: ``|log(var / target)|``."""
    return abs(math.log(var / target)) if math.isfinite(var) and var > 0 else math.inf


def _rule(target_var: float, tol: float, iterations: int, orthogonal: bool, var: float, converged: bool) -> str:
    first = ", orthogonal first" if orthogonal else ""
    band = f"Var(output) = {target_var:g} ± {tol * target_var:g}"
    its = f"{iterations} iteration{'s' if iterations != 1 else ''}"
    if converged:
        return f"{SOURCE}{first}: scaled until {band} ({its})"
    return f"{SOURCE}{first}: {band} not reached in {its}; the closest scale kept (Var = {var:.3g})"


def _fit(measure: _Measure, layer: WeightLayer, weight: nn.Parameter, target_var: float, tol: float,
         max_iter: int, generator: torch.Generator | None) -> tuple[bool, int, float, bool]:
    """Fit one layer in place: ``(changed, iterations, variance of the weight kept, converged)``. A layer whose
    output cannot be measured (not reached, zero or non-finite variance), or whose forward raises, gets its
    original weight back."""
    original = weight.detach().clone()
    try:
        return _scale(measure, layer, weight, original, target_var, tol, max_iter, generator)
    except BaseException:
        weight.copy_(original)
        raise


def _scale(measure: _Measure, layer: WeightLayer, weight: nn.Parameter, original: torch.Tensor, target_var: float,
           tol: float, max_iter: int, generator: torch.Generator | None) -> tuple[bool, int, float, bool]:
    if generator is not None:
        _orthogonalize(weight, generator)
    start = weight.detach().clone() if generator is not None else original
    var = measure.variance(layer, weight)
    if _off(var, target_var) == math.inf:
        weight.copy_(original)
        return False, 0, var, False
    factor, iterations = 1.0, 0
    best, best_factor, best_var = _off(var, target_var), 1.0, var
    while abs(var / target_var - 1.0) > tol and iterations < max_iter:
        factor *= math.sqrt(target_var / var)
        weight.copy_(start * factor)
        iterations += 1
        var = measure.variance(layer, weight)
        if _off(var, target_var) < best - MIN_GAIN:
            best, best_factor, best_var = _off(var, target_var), factor, var
        if not (math.isfinite(var) and var > 0):
            break
    converged = math.isfinite(var) and abs(var / target_var - 1.0) <= tol
    if not converged:
        factor, var = best_factor, best_var
        weight.copy_(start * factor)
    if generator is None and factor == 1.0:
        weight.copy_(original)  # bitwise the weight it was
        return False, iterations, var, converged
    return True, iterations, var, converged


def lsuv_repair(model: nn.Module, batch: Inputs, structure: Structure, *, answers: tuple[str, ...] = (),
                target_var: float = 1.0, tol: float = 0.1, max_iter: int = 10, orthogonal: bool = False,
                seed: int = 0) -> LsuvOutcome:
    """Rescale each weight layer of ``model`` in place so that its output has variance ``target_var`` on
    ``batch`` (LSUV, Mishkin & Matas 2015, Algorithm 1).

    For each layer of ``structure`` in execution order (:func:`~initdiag.repair.params.weight_layers_in_order`;
    weights that are all zeros skipped): ``V`` = population variance (float64) of every element of the
    layer's first output on ``batch`` (model in train mode, the forward stopped there); while
    ``|V / target_var - 1| > tol`` and fewer than ``max_iter`` rescalings: ``W <- W * sqrt(target_var / V)``,
    measure again. ``orthogonal``: each weight is first replaced by a (semi-)orthogonal matrix of its shape
    flattened to ``(out, rest)``, drawn from a ``torch.Generator`` seeded with ``seed``.

    ``batch`` must be on the model's device. Layers skipped (output never reached, variance zero or not
    finite: weight untouched) or not converged (closest scale kept) are named, by call site, in
    ``unconverged``. Each changed weight is a :class:`~initdiag.results.ParamChange` answering ``answers``.
    Everything but those weights is as it was afterwards: buffers, train/eval modes, ``requires_grad``,
    ``.grad``, the RNG state.
    """
    if not (math.isfinite(target_var) and target_var > 0):
        raise UsageError(f"LSUV's target variance must be a positive number, not {target_var}")
    if not (math.isfinite(tol) and tol >= 0) or max_iter < 0:
        raise UsageError(f"LSUV needs tol >= 0 and max_iter >= 0 (got tol={tol}, max_iter={max_iter})")
    generator = torch.Generator().manual_seed(seed) if orthogonal else None
    layers = [(layer, name, w) for layer, name, w in weight_layers_in_order(model, structure)
              if w.is_floating_point() and bool(w.detach().any())]  # deliberate zeros are left alone
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.is_cuda})
    changes: list[ParamChange] = []
    unconverged: list[str] = []
    measure: _Measure | None = None
    with preserve_modes(model), torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            model.train()
            measure = _Measure(model, batch, _rng_replay(devices))
            for layer, name, weight in layers:
                old_std = weight_std(weight)
                changed, iterations, var, converged = _fit(measure, layer, weight, target_var, tol, max_iter,
                                                           generator)
                if not converged:
                    unconverged.append(layer.name)
                if changed:
                    changes.append(ParamChange(layer.name, name, old_std, weight_std(weight), tuple(answers),
                                               _rule(target_var, tol, iterations, orthogonal, var, converged)))
        finally:
            for b, saved in buffers:
                b.copy_(saved)
    return LsuvOutcome(tuple(changes), tuple(unconverged), measure.forwards if measure is not None else 0)
