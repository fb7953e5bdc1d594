"""What a model is: its weight layers, activations, normalization layers and residual blocks, as plain data."""

from __future__ import annotations

from .layers import (
    ACTIVATION_TYPES,
    CONV_TYPES,
    RECORDED_WEIGHT_TYPES,
    WEIGHT_LAYER_TYPES,
    LayerInfo,
    WeightLayer,
    activation_name,
    fans,
    main_weight,
    shape_fans,
    weight_layers,
)

__all__ = [
    "ACTIVATION_TYPES",
    "CONV_TYPES",
    "RECORDED_WEIGHT_TYPES",
    "WEIGHT_LAYER_TYPES",
    "LayerInfo",
    "WeightLayer",
    "activation_name",
    "fans",
    "main_weight",
    "shape_fans",
    "weight_layers",
]
