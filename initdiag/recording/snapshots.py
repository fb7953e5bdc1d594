"""Snapshots of a model: copies of its weights and gradients, the parameters that are all zero, the second
moment of each weight and what each normalization's affine parameters set. Plain reads of the model, taken
before or after training (no hooks); the checks judge them."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import torch
from torch import nn

from ..structure import Structure
from ..structure.layers import WEIGHT_LAYER_TYPES, main_weight, own_grad
from .tensor_stats import TensorMoments, tensor_moments

__all__ = ["NEAR_ZERO", "Weights", "input_groups", "leaves_zero", "near_zero", "norm_gains",
           "output_rows", "snapshot_grads", "snapshot_weights", "transposed_weights", "weight_moments",
           "zero_parameters"]

Weights = Mapping[str, tuple[np.ndarray, np.ndarray | None]]
"""Weight-layer module name -> (weight, bias) as numpy arrays."""

_BIASES = ("bias", "in_proj_bias", "bias_ih_l0")
_MULTIPLICATIVE_EXCLUDED = ("bias", "beta", "running_mean", "running_var")


def _numpy(t: torch.Tensor, copy: bool = True) -> np.ndarray:
    """``t`` as float32 numpy: a copy, or with ``copy=False`` a read-only view of ``t``'s memory where it is a
    float32 CPU tensor already (a conversion's result otherwise)."""
    array = t.detach().float().cpu().numpy()
    if copy:
        return array.copy()
    array.flags.writeable = False
    return array


def _bias(module: nn.Module) -> torch.Tensor | None:
    return next((b for b in (getattr(module, attr, None) for attr in _BIASES) if isinstance(b, torch.Tensor)), None)


def transposed_weights(structure: Structure | None) -> set[str]:
    """The modules whose weight is stored ``(in, out)`` (applied as ``x @ W``, as transformers' ``Conv1D``),
    so that a snapshot turns it into rows of output units like every other layer's."""
    if structure is None:
        return set()
    return {w.module_name for w in structure.weight_layers
            if w.op in ("addmm", "matmul", "mm") and len(w.param_shape) == 2 and w.param_shape[0] == w.fan_in}


def output_rows(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as one row per output unit, the unit's incoming weights: a transposed convolution's weight
    ``(in, out / groups, *k)`` becomes ``(out, in / groups * prod(k))`` (unit ``j`` of group ``g`` reads
    ``W[g-th in slice, j]``); every other layer's weight is already ``(out, ...)``."""
    if not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return weight
    groups = module.groups
    fan_in, per_group = weight.shape[0] // groups, weight.shape[1]
    kernel = tuple(weight.shape[2:])
    grouped = weight.reshape(groups, fan_in, per_group, *kernel).transpose(1, 2)
    return grouped.reshape(groups * per_group, -1)


def input_groups(model: nn.Module) -> dict[str, int]:
    """Weight-layer module name -> the number of groups of its output units that read disjoint inputs (a
    grouped or depthwise convolution's ``groups``; 1 elsewhere, left out). Only units of one group read the
    same inputs, so only they can be symmetric; :func:`output_rows` lists the units group by group."""
    return {name or type(m).__name__: int(m.groups) for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1}


def snapshot_weights(model: nn.Module, names: Collection[str] | None = None,
                     transposed: Collection[str] = (), copy: bool = True) -> Weights:
    """Copies of weight layers' weights and matching biases (for the symmetry check), by module name (the
    root as its class name): the modules in ``names`` whose weight (:func:`~initdiag.structure.main_weight`)
    has two or more dims, or, without ``names``, every Conv/Linear module. A weight of a module in
    ``transposed`` (:func:`transposed_weights`) is stored transposed: one row per output unit. With
    ``copy=False``, read-only views of the model's float32 CPU weights (no second copy of a large model;
    valid while the weights do not change: an audit, which takes no optimizer step)."""
    snap: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, module in model.named_modules():
        key = name or type(module).__name__
        if (names is None and not isinstance(module, WEIGHT_LAYER_TYPES)) or (names is not None and key not in names):
            continue
        weight = main_weight(module)
        if weight is None or weight.dim() < 2:
            continue
        bias = _bias(module)
        rows = weight.t() if key in transposed else output_rows(module, weight)
        snap[key] = (_numpy(rows, copy), None if bias is None else _numpy(bias, copy))
    return snap


def snapshot_grads(model: nn.Module, names: Collection[str], transposed: Collection[str] = (),
                   copy: bool = True) -> Weights:
    """Copies of the gradients (``.grad``) of the weights and biases :func:`snapshot_weights` takes, for the
    modules in ``names`` whose weight has a gradient (for the symmetry check's look-ahead), oriented alike;
    ``copy=False`` as there (the caller drops the model's ``.grad`` after, rather than accumulate into it)."""
    snap: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, module in model.named_modules():
        key = name or type(module).__name__
        weight = main_weight(module) if key in names else None
        grad = own_grad(weight) if weight is not None and weight.dim() >= 2 else None
        if grad is None:
            continue
        bias = _bias(module)
        bias_grad = own_grad(bias) if bias is not None else None
        snap[key] = (_numpy(grad.t() if key in transposed else output_rows(module, grad), copy),
                     None if bias_grad is None else _numpy(bias_grad, copy))
    return snap


NEAR_ZERO = 10 ** -4.5
"""A parameter is zero by design when its root mean square is at most this fraction of its natural scale (1
for a scale or gain, ``1/sqrt(fan_in)`` for a weight): what it multiplies then varies by at most
``NEAR_ZERO^2 = 1e-9`` of its square, the ``no_signal`` floor (``Thresholds.no_signal_rel``). Layer scales of
1e-5/1e-6 (CaiT, DINOv2, ConvNeXt) and a gate's weights of 1e-6 beside a bias of 1 (gMLP) are below it; no
initializer's scale is."""


def near_zero(p: torch.Tensor, moments: TensorMoments | None = None) -> bool:
    """Whether ``p`` is zero by design: all zero, or within :data:`NEAR_ZERO` of its natural scale (its
    :func:`~.moments.tensor_moments` when already taken)."""
    m = moments or tensor_moments(p)
    if m.nonzero == 0:
        return True
    natural = (p.shape[0] / p.numel()) ** 0.5 if p.dim() >= 2 else 1.0
    return m.mean_sq ** 0.5 <= NEAR_ZERO * natural


def leaves_zero(p: torch.Tensor) -> bool:
    """Whether the zero (or near-zero) ``p`` leaves zero at the next step: its ``.grad`` is finite and not
    zero."""
    g = p.grad
    return g is not None and bool(torch.isfinite(g).all()) and bool(g.detach().any())


def zero_parameters(model: nn.Module) -> dict[str, bool]:
    """The multiplicative parameters of ``model`` (weights, normalization scales, scalar gains: not biases)
    that are zero by design, by qualified name -> whether they leave zero at the next step
    (:func:`leaves_zero`, after a backward pass).

    Zero by design: all zero, or near zero (:func:`near_zero`) beside at least one weight matrix that is not,
    since a network whose every weight is near zero is broken, not designed. A zero parameter with a non-zero
    gradient breaks out of zero at the first step (a zero-initialized head, the last layer of a residual
    branch under Fixup, ``zero_init_residual``'s BatchNorm scale, SkipInit's gain, a layer scale of 1e-6);
    one whose gradient is zero too stays zero and silences what it multiplies."""
    params = [(name, p) for name, p in model.named_parameters()
              if not (name.rpartition(".")[2].lower() in _MULTIPLICATIVE_EXCLUDED
                      or name.rpartition(".")[2].lower().endswith("bias") or not p.is_floating_point()
                      or p.numel() == 0)]
    moments = {name: tensor_moments(p) for name, p in params}  # one pass over each parameter
    designed = any(p.dim() >= 2 and not near_zero(p, moments[name]) for name, p in params)
    return {name: leaves_zero(p) for name, p in params
            if moments[name].nonzero == 0 or (designed and near_zero(p, moments[name]))}


def weight_moments(model: nn.Module, structure: Structure | None) -> dict[str, float]:
    """Module name -> ``mean(W^2)`` of each weight layer's weight (its Var(W) for zero-mean weights): the
    structure's weight layers (their parameter as seen), or every Conv/Linear module without a structure."""
    modules = dict(model.named_modules())
    out: dict[str, float] = {}
    layers = [(w.module_name, w.param) for w in structure.weight_layers] if structure is not None else \
        [(name, "weight") for name, m in modules.items() if isinstance(m, WEIGHT_LAYER_TYPES)]
    for name, param in layers:
        module = modules.get(name)
        weight = getattr(module, param, None) if module is not None else None
        if isinstance(weight, torch.Tensor):
            out[name or type(module).__name__] = tensor_moments(weight).mean_sq
    return out


def norm_gains(model: nn.Module, structure: Structure | None) -> dict[str, float]:
    """Normalization call site -> ``mean(gamma^2) + mean(beta^2)``: the second moment its output has at
    initialization (1 without affine parameters)."""
    if structure is None:
        return {}
    modules = dict(model.named_modules())
    out: dict[str, float] = {}
    for norm in structure.norms:
        module = modules.get(norm.module_name) if norm.module_name is not None else None
        gamma = getattr(module, "weight", None) if module is not None else None
        beta = getattr(module, "bias", None) if module is not None else None
        g2 = float(gamma.detach().double().square().mean()) if isinstance(gamma, torch.Tensor) else 1.0
        b2 = float(beta.detach().double().square().mean()) if isinstance(beta, torch.Tensor) else 0.0
        out[norm.name] = g2 + b2
    return out
