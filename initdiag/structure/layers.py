"""Which modules are weight layers and activations, by type: the part of a model's structure known before it runs.

A weight layer's fans follow PyTorch's convention for a weight of shape ``(out, in, *kernel)``:
``fan_in = in x prod(kernel)`` (inputs summed into one output unit), ``fan_out = out x prod(kernel)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..shapes import shape_fans
from ..vocab import ActivationFamily, ActivationName
from .activations import activation_of_module

__all__ = [
    "CONV_TYPES",
    "RECORDED_WEIGHT_TYPES",
    "WEIGHT_LAYER_TYPES",
    "ConvLinear",
    "LayerInfo",
    "activation_name",
    "fans",
    "main_weight",
    "own_grad",
    "shape_fans",
    "weight_layers",
]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, *CONV_TYPES)
"""Conv/Linear: the layers initializers re-initialize and whose variance theory the checks cover."""
ConvLinear = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
RECORDED_WEIGHT_TYPES: tuple[type[nn.Module], ...] = (
    *WEIGHT_LAYER_TYPES, nn.RNNBase, nn.MultiheadAttention, nn.Embedding,
)
"""Modules recorded as weight layers (role ``"weight"``, counted in ``depth``)."""


def activation_name(module: nn.Module) -> ActivationName | None:
    """The activation ``module`` computes (``"relu"``, ``"tanh"``, ...; ``"module"`` for an elementwise torch
    module outside the families), or None if it is not an activation module (``nn.Identity`` is none). Subclasses
    count (the most specific registered base wins), e.g. ``nn.ReLU6`` is ``"relu6"``; the registry:
    :data:`~initdiag.structure.activations.ACTIVATIONS`."""
    info = activation_of_module(module)
    return None if info is None or info.family == ActivationFamily.LINEAR else info.name


def main_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight whose variance is recorded: ``weight`` (Conv/Linear/Embedding), MultiheadAttention's
    ``in_proj_weight`` (``q_proj_weight`` when keys/values have other sizes), a recurrent layer's
    ``weight_ih_l0``; None when the module has none of them."""
    for attr in ("weight", "in_proj_weight", "q_proj_weight", "weight_ih_l0"):
        weight = getattr(module, attr, None)
        if isinstance(weight, torch.Tensor):
            return weight
    return None


def own_grad(t: torch.Tensor) -> torch.Tensor | None:
    """``t.grad`` of a leaf tensor (a parameter); None for a computed one (a parametrization's weight, weight
    norm's), whose gradient is its parameters' and whose ``.grad`` torch warns about reading."""
    return t.grad if t.is_leaf else None


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """:func:`shape_fans` of a weight tensor."""
    return shape_fans(tuple(weight.shape))


def weight_layers(model: nn.Module) -> Iterator[tuple[str, ConvLinear]]:
    """``(qualified name, module)`` of every Conv/Linear module, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYER_TYPES):
            yield name, module  # type: ignore[misc]


@dataclass(frozen=True)
class LayerInfo:
    """One recorded layer (one call site of a module), in the order of the first forward pass.

    ``name`` is the call site: the module's qualified name (the root's class name), ``@k`` for its k-th
    call in one forward (k >= 2), ``.0``/``.key`` for a tensor inside a tuple/dict output. ``depth``
    counts weight-layer call sites from 0 in execution order; an activation takes the depth of the
    weight layer before it. ``activation`` is, for a weight layer, the activation module that ran next
    before the next weight layer (``"linear"`` when none did); for an activation, its own family.
    ``weight_shape``: the shape of a Conv/Linear weight (None for other layers). ``numel``: elements per
    sample of the output (all dims but the first) at the first recorded call. With the model's
    :class:`~initdiag.structure.Structure` known, a weight layer also has ``fan_in``/``fan_out`` as seen
    (any weight layer: transformers' ``Conv1D`` too), the activation its output reaches (a module or a
    function call), the ``block`` it belongs to, the normalization after it (``norm_after``) and whether its
    input did not vary over the batch (``constant_input``); a block (role ``block``) has its stream index as
    ``depth``.
    """

    name: str
    module_name: str
    module: str
    role: str
    depth: int
    activation: str | None
    weight_shape: tuple[int, ...] | None
    numel: int | None = None
    fan_in: float | None = None
    fan_out: float | None = None
    block: str | None = None
    norm_after: str | None = None
    constant_input: bool = False
