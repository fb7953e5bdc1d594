"""Fans of a weight from its shape alone (no torch: the initializer registry and the CLI use it)."""

from __future__ import annotations

import math

__all__ = ["shape_fans"]


def shape_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Conv/Linear weight of shape ``(out, in, *kernel)``."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive
