"""The variance gain each layer should have at initialization, from its weights' variance and its activation.

For a layer ``y = W phi(x)`` with zero-mean i.i.d. weights of variance ``Var(W)``, the variance of ``y``
is ``fan_in x Var(W) x c x Var(x)`` and, backward, that of dL/dx is ``fan_out x Var(W) x c x Var(dL/dy)``,
with ``c = E[phi(z)^2] / Var(z)`` for the activation between the two layers: 1/2 for ReLU, 1 for linear
(He et al. 2015, eq. 7-13; Glorot & Bengio 2010). Examples for square layers: Xavier + ReLU 1/2,
He + ReLU 1, LeCun + linear 1, PyTorch's default + ReLU 1/6.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..structure.layers import shape_fans

__all__ = ["ACTIVATION_FACTOR", "expected_gain", "variance_profile"]

ACTIVATION_FACTOR: dict[str, float] = {"relu": 0.5, "linear": 1.0, "identity": 1.0, "tanh": 1.0}
"""``c = E[phi(z)^2] / Var(z)`` for z ~ N(0, s^2): exact for ReLU and linear; for tanh 1 is an upper bound,
exact in its linear regime."""


def expected_gain(activation: str, weight_var: float, shape: tuple[int, ...], direction: str = "forward"
                  ) -> float | None:
    """``fan x Var(W) x c``: the per-layer variance gain of a Conv/Linear weight of ``shape`` and variance
    ``weight_var`` after ``activation`` (``fan = fan_in`` forward, ``fan_out`` backward). None for an
    activation whose factor ``c`` is not fixed here."""
    factor = ACTIVATION_FACTOR.get(activation)
    if factor is None:
        return None
    fan_in, fan_out = shape_fans(shape)
    return (fan_in if direction == "forward" else fan_out) * weight_var * factor


def variance_profile(anchor: float, transitions: Sequence[tuple[str, float, tuple[int, ...]]],
                     direction: str) -> list[float] | None:
    """The variance theory expects at each of ``len(transitions) + 1`` layers, from the measured ``anchor``.

    ``transitions[i] = (activation before layer i+1, Var(W) of layer i+1, its weight shape)``. Forward the
    profile starts at the first layer, ``var_l = g_l var_{l-1}``; backward (dL/dy flows from the loss) at the
    last, ``var_{l-1} = g_l var_l``, with ``g_l`` from :func:`expected_gain`. None when a gain is not fixed."""
    gains = [expected_gain(act, var, shape, direction) for act, var, shape in transitions]
    if any(g is None for g in gains):
        return None
    profile = [float(anchor)]
    for gain in gains if direction == "forward" else gains[::-1]:
        profile.append(profile[-1] * float(gain))  # type: ignore[arg-type]
    return profile if direction == "forward" else profile[::-1]
