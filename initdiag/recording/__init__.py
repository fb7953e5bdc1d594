"""Recording: hooks that reduce each layer's output, gradient and weight to per-channel sums, into a frame."""

from __future__ import annotations

from .recorder import Recorder

__all__ = ["Recorder"]
