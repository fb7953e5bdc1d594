"""What theory predicts at initialization: Gaussian expectations of any activation (the length map and its
backward twin), per-layer gains, chains of layers, residual streams and normalization."""

from __future__ import annotations

from .activations import ACTIVATION_FUNCTIONS, ActivationSpec, activation_function, as_activation
from .gains import (
    Transition,
    activation_factors,
    backward_gain,
    chain_profile,
    expected_gain,
    max_slope_second,
    phi_spec,
    slope_bound,
    variance_profile,
)
from .gauss import (
    GaussMoments,
    batchnorm_relu_gradient_gain,
    chi,
    gaussian_moments,
    late_gain,
    length_map,
    normalized,
    propagate_stream,
    residual_step,
)

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ActivationSpec",
    "GaussMoments",
    "Transition",
    "activation_factors",
    "activation_function",
    "as_activation",
    "backward_gain",
    "batchnorm_relu_gradient_gain",
    "chain_profile",
    "chi",
    "expected_gain",
    "gaussian_moments",
    "late_gain",
    "length_map",
    "max_slope_second",
    "normalized",
    "phi_spec",
    "propagate_stream",
    "residual_step",
    "slope_bound",
    "variance_profile",
]
