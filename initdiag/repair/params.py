"""The weights a repair may touch, and how a change is made and recorded.

A repair only ever changes the weight of a weight layer that structure discovery saw (the parameter the
layer applied as a linear map, ``WeightLayer.param`` of ``WeightLayer.module_name``). Normalization
parameters, biases, embeddings and every other parameter are never touched; neither is a weight that is all
zeros (a zero head, ``zero_init_residual``, a Fixup or adapter zero: a deliberate zero that learns), unless a
rule says it redraws it. Changes are made under ``torch.no_grad()`` in place, so the parameter objects (and
an optimizer holding them) stay the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ..results import ParamChange
from ..structure import Structure
from ..structure.model import WeightLayer

__all__ = ["LOOKUPS", "rescale", "weight_layers_in_order", "weight_of", "weight_std"]

LOOKUPS = frozenset({"embedding", "embedding_bag"})
"""Ops whose weight is a table read by index, not a map whose scale sets the next layer's variance."""


def weight_of(model: nn.Module, layer: WeightLayer) -> tuple[str, nn.Parameter] | None:
    """``(qualified name, parameter)`` of the weight ``layer`` applied, None when it is not a parameter of the
    model (a buffer, a computed tensor)."""
    try:
        module = model.get_submodule(layer.module_name) if layer.module_name else model
    except AttributeError:
        return None
    param = getattr(module, layer.param, None)
    if not isinstance(param, nn.Parameter):
        return None
    return (f"{layer.module_name}.{layer.param}" if layer.module_name else layer.param), param


def weight_layers_in_order(model: nn.Module, structure: Structure) -> Iterator[tuple[WeightLayer, str, nn.Parameter]]:
    """Each weight layer's first call in execution order with its weight (lookups and weights that are not
    parameters left out; a module called several times appears once, at its first call)."""
    seen: set[str] = set()
    for layer in sorted(structure.weight_layers, key=lambda la: la.index):
        found = weight_of(model, layer)
        if found is None or layer.op in LOOKUPS or found[0] in seen:
            continue
        seen.add(found[0])
        yield layer, found[0], found[1]


def weight_std(weight: torch.Tensor) -> float:
    """The weight's root mean square (its standard deviation about zero, the scale a rule sets)."""
    with torch.no_grad():
        return float(weight.detach().double().square().mean().sqrt())


def rescale(layer: str, name: str, weight: nn.Parameter, target_std: float, answers: tuple[str, ...], rule: str,
            generator: torch.Generator | None = None) -> ParamChange | None:
    """Set ``weight``'s scale (root mean square) to ``target_std`` in place: multiplied by a factor, which keeps
    its pattern (orthogonality, structure), or drawn anew from ``N(0, target_std^2)`` with ``generator`` when
    every element is equal (a constant or zero weight: a factor keeps it symmetric). None when nothing changes
    (a non-finite or non-positive target, or a factor of 1 within float rounding)."""
    old = weight_std(weight)
    if not (math.isfinite(target_std) and target_std > 0):
        return None
    with torch.no_grad():
        flat = weight.detach().reshape(-1)
        if flat.numel() > 1 and bool((flat == flat[0]).all()):
            draw = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * target_std
            weight.copy_(draw.to(weight.dtype))
        else:
            factor = target_std / old
            if abs(factor - 1.0) < 1e-6:
                return None
            weight.mul_(factor)
    return ParamChange(layer, name, old, weight_std(weight), answers, rule)
