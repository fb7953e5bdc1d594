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
    between, for layers whose output feeds another weight layer: hidden units, where dead or saturated units
    stop the gradient. A sigmoid on the model's output is the loss's link (a detector's logits start at the
    prior's -4.6 by design, Lin et al. 2017, and the loss's gradient does not pass through it). Assumes no
    constant scale or bias between layer and function, which the structure's search passes."""
    feeding = {a for a, _ in structure.flow_links}
    return {la.name: la.activation for la in structure.weight_layers
            if la.activation.source == "function" and la.norm_after is None and la.name in feeding
            and (la.activation.name in RELU_FAMILY or la.activation.name in SATURATING)}


def apply_activation(act: Activation, y: torch.Tensor) -> torch.Tensor:
    """``act`` (a registry function with its parameters) applied to ``y``, outside autograd."""
    with torch.no_grad():
        return ACTIVATION_FUNCTIONS[act.name](y.detach(), **dict(act.params))
