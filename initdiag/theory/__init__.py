"""What theory predicts at initialization: per-layer variance gains from the weights and the activations."""

from __future__ import annotations

from .gains import ACTIVATION_FACTOR, expected_gain, variance_profile

__all__ = ["ACTIVATION_FACTOR", "expected_gain", "variance_profile"]
