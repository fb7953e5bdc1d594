"""Recording: hooks that reduce each layer's output, gradient and weight to per-channel sums, into a frame."""

from __future__ import annotations

from .recorder import Recorder
from .sink import ParquetSink, read_series
from .snapshots import (
    Weights,
    input_groups,
    norm_gains,
    output_rows,
    snapshot_grads,
    snapshot_weights,
    transposed_weights,
    weight_moments,
    zero_parameters,
)

__all__ = [
    "ParquetSink",
    "Recorder",
    "Weights",
    "input_groups",
    "norm_gains",
    "output_rows",
    "read_series",
    "snapshot_grads",
    "snapshot_weights",
    "transposed_weights",
    "weight_moments",
    "zero_parameters",
]
