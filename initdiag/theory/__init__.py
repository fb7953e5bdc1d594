"""What theory predicts at initialization: Gaussian expectations of any activation (the length map and its
backward twin), per-layer gains, chains of layers, residual streams and normalization, the correlation map
between inputs, and the logit statistics of attention and classifiers."""

from __future__ import annotations

from .activations import ACTIVATION_FUNCTIONS, ActivationSpec, activation_function, as_activation
from .cmap import (
    attention_logit_var,
    chi_c,
    correlation_map,
    correlation_profile,
    expected_ce_loss,
    output_var_prediction,
    relu_arccos,
    softmax_entropy_gaussian,
    uniform_attention_entropy,
)
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
    "attention_logit_var",
    "backward_gain",
    "batchnorm_relu_gradient_gain",
    "chain_profile",
    "chi",
    "chi_c",
    "correlation_map",
    "correlation_profile",
    "expected_ce_loss",
    "expected_gain",
    "gaussian_moments",
    "late_gain",
    "length_map",
    "max_slope_second",
    "normalized",
    "output_var_prediction",
    "phi_spec",
    "propagate_stream",
    "relu_arccos",
    "residual_step",
    "slope_bound",
    "softmax_entropy_gaussian",
    "uniform_attention_entropy",
    "variance_profile",
]
