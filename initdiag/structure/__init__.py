"""What a model is: its weight layers, activations, normalization layers and residual blocks, as plain data.

:func:`discover` (or :class:`StructureProbe` around an ordinary forward) watches one forward pass of any
``nn.Module`` and returns a :class:`Structure`; :mod:`.layers` holds what is known from module types alone.
"""

from __future__ import annotations

from .activations import ACTIVATIONS, ActivationInfo
from .discover import StructureProbe, discover
from .layers import (
    CONV_TYPES,
    RECORDED_WEIGHT_TYPES,
    WEIGHT_LAYER_TYPES,
    ConvLinear,
    LayerInfo,
    activation_name,
    fans,
    main_weight,
    shape_fans,
    weight_layers,
)
from .model import Activation, Block, NormLayer, Structure, WeightLayer

__all__ = [
    "ACTIVATIONS",
    "CONV_TYPES",
    "RECORDED_WEIGHT_TYPES",
    "WEIGHT_LAYER_TYPES",
    "Activation",
    "ActivationInfo",
    "Block",
    "ConvLinear",
    "LayerInfo",
    "NormLayer",
    "Structure",
    "StructureProbe",
    "WeightLayer",
    "activation_name",
    "discover",
    "fans",
    "main_weight",
    "shape_fans",
    "weight_layers",
]
