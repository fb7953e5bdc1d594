"""Activations called as functions in ``forward`` (``F.relu``, ``torch.sigmoid``): no module to hook, so the
recorder applies the function to the output of the weight layer that feeds it and records the result as the
activation ``<layer>:<function>`` (forward statistics only: dead and saturated units)."""

from __future__ import annotations

import torch

from ..structure import Structure
from ..structure.activations import RELU_FAMILY, SATURATING
from ..structure.model import Activation
from ..theory.activations import ACTIVATION_FUNCTIONS

__all__ = ["apply_activation", "functional_activations"]


def functional_activations(structure: Structure) -> dict[str, Activation]:
    """Weight-layer site -> the ReLU-family or bounded function its output reaches without a normalization
    between (where dead or saturated units can be counted). Assumes no constant scale or bias between them,
    which the structure's search passes."""
    return {la.name: la.activation for la in structure.weight_layers
            if la.activation.source == "function" and la.norm_after is None
            and (la.activation.name in RELU_FAMILY or la.activation.name in SATURATING)}


def apply_activation(act: Activation, y: torch.Tensor) -> torch.Tensor:
    """``act`` (a registry function with its parameters) applied to ``y``, outside autograd."""
    with torch.no_grad():
        return ACTIVATION_FUNCTIONS[act.name](y.detach(), **dict(act.params))
