"""The variance gain each layer should have at initialization, from its weights and its activation.

For a layer ``y = W phi(x)`` with zero-mean i.i.d. weights of variance ``Var(W)`` and input ``x`` of
second moment ``q``, the length map gives ``E[y^2] = fan_in Var(W) E[phi(sqrt(q) z)^2] + Var(b)``, and
going backward ``E[(dL/dx)^2] = fan_out Var(W) E[phi'(sqrt(q) z)^2] E[(dL/dy)^2]`` (Poole et al. 2016;
Schoenholz et al. 2017; He et al. 2015 and Glorot & Bengio 2010 for ReLU and linear). The Gaussian
expectations come from :mod:`initdiag.theory.gauss` for any elementwise activation. The per-layer factor
``E[phi(sqrt(q) z)^2] / q`` is 1/2 for ReLU and 1 for linear at any ``q``; for tanh it falls below 1 as
``q`` grows (so a deep tanh net's variance decays polynomially at sigma_w^2 = 1, not geometrically).
Examples for square layers: Xavier + ReLU 1/2, He + ReLU 1, LeCun + linear 1, PyTorch's default + ReLU 1/6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..structure.layers import shape_fans
from .activations import ActivationSpec, activation_function
from .gauss import PANEL_NODES, gaussian_moments, split_rule, values_and_slopes

__all__ = ["Transition", "activation_factors", "backward_gain", "chain_profile", "expected_gain", "max_slope_second",
           "phi_spec", "slope_bound", "variance_profile"]

Params = tuple[tuple[str, object], ...]


def phi_spec(name: str, params: Params = ()) -> ActivationSpec | None:
    """The theory's activation for a registry name (or alias) and its parameters; None for one it cannot
    evaluate (an unrecognized module of the model's own, an unknown function)."""
    try:
        return activation_function(name, **dict(params))  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError):
        return None


def activation_factors(name: str, q: float, params: Params = ()) -> tuple[float, float] | None:
    """``(E[phi(sqrt(q) z)^2] / q, E[phi'(sqrt(q) z)^2])``: what the activation does to the second moment of
    the signal going forward and of the gradient going backward, at input second moment ``q`` (the limit
    q -> 0 at 0); None when the activation cannot be evaluated."""
    spec = phi_spec(name, params)
    if spec is None or not math.isfinite(q) or q < 0:
        return None
    moments = gaussian_moments(spec, q)
    forward = moments.second / q if q > 0 else moments.slope_second
    return forward, moments.slope_second


def expected_gain(activation: str, weight_var: float, shape: tuple[int, ...] | None, direction: str = "forward",
                  *, fans: tuple[float, float] | None = None, q: float = 1.0, params: Params = ()) -> float | None:
    """``fan x Var(W) x c``: the per-layer gain of a weight of variance ``weight_var`` after ``activation``
    (``fan = fan_in`` forward, ``fan_out`` backward, from ``fans`` or a Conv/Linear ``shape``; ``c`` from
    :func:`activation_factors` at input second moment ``q``). None when the activation cannot be evaluated."""
    factors = activation_factors(activation, q, params)
    if factors is None or (fans is None and shape is None):
        return None
    fan_in, fan_out = fans if fans is not None else shape_fans(shape)  # type: ignore[arg-type]
    return (fan_in * factors[0] if direction == "forward" else fan_out * factors[1]) * weight_var


def max_slope_second(name: str, q: float, m: float, params: Params = ()) -> float | None:
    """``E[phi'(sqrt(q) M)^2]`` with ``M`` the largest of ``m`` independent standard normals: what the activation
    passes of the gradient that a max-pool over ``m`` of its outputs routes to the window's maximum (density
    ``m phi(z) Phi(z)^(m-1)``; ReLU: ``1 - 2^-m``, against 1/2 without the pool). ``m`` may be fractional (an
    average window size). None when the activation cannot be evaluated."""
    spec = phi_spec(name, params)
    if spec is None or not (math.isfinite(q) and q >= 0 and math.isfinite(m) and m >= 1):
        return None
    if q == 0:  # every value of the window is 0
        return gaussian_moments(spec, 0.0).slope_second
    z, w = split_rule(math.sqrt(q), PANEL_NODES, spec.breakpoints, spec.scale)
    _, slope = values_and_slopes(spec, math.sqrt(q) * z)
    return float(w @ (slope * slope * m * special.ndtr(z) ** (m - 1)))


@dataclass(frozen=True)
class Transition:
    """From one layer of a chain to the next: the activation between them (family name and parameters), and
    the next layer's ``Var(W)``, ``Var(b)``, ``fan_in`` and ``fan_out``. ``route``: the poolings and
    concatenations between them (:attr:`~initdiag.structure.model.WeightLayer.route_in`); ``spread``: elements of
    the previous layer's output per element of the next layer's input (4 after a 2x2 pool)."""

    activation: str
    weight_var: float
    fan_in: float
    fan_out: float
    bias_var: float = 0.0
    params: Params = ()
    route: str = ""
    spread: float = 1.0


def slope_bound(name: str, params: Params = ()) -> float | None:
    """``sup_x phi'(x)^2`` (1 for ReLU, tanh and linear): the most of a gradient the activation can pass, reached
    when the gradient falls only where the slope is largest. None when the activation cannot be evaluated."""
    spec = phi_spec(name, params)
    if spec is None:
        return None
    x = np.concatenate([np.linspace(-50.0, 50.0, 20001), np.asarray(spec.breakpoints, float)])
    _, slope = values_and_slopes(spec, x)
    return float(np.max(slope * slope))


def backward_gain(t: Transition, q: float, bound: str = "independent") -> float | None:
    """The per-element gain of dL/dy from the next layer's output back to the previous one's, whose output has
    second moment ``q``: ``fan_out Var(W) c / r``. The next layer's input gets ``fan_out Var(W)`` (fan_out counts
    the outputs each input element feeds); between them the activation passes ``c = E[phi'^2]`` and the routing
    spreads the gradient over ``spread = m`` times as many elements: a max-pool keeps the energy and sends it to
    each window's maximum (``r = m``, ``c`` from :func:`max_slope_second`), an average pool divides it by m
    (``r = m^2``), a concatenation hands each input its own slice (``r = 1``), a view or slice keeps it
    (``r = m``). A route that mixes these: None.

    The max-pool's ``c`` assumes the m values of a window independent; neighbours of an image are positively
    correlated, which by Slepian's inequality makes the maximum less often large, so ``bound="low"`` takes the
    fully correlated window (``c = E[phi'^2]``) and the two bracket what a max-pool can do; ``"independent"`` and
    ``"high"`` take the independent window."""
    factors = activation_factors(t.activation, q, t.params)
    if factors is None:
        return None
    slope, m = factors[1], t.spread
    if t.route in ("", "max", "avg") and math.isclose(m, 1.0):
        return t.fan_out * t.weight_var * slope
    if t.route == "max":
        pooled = (slope if bound == "low" else max_slope_second(t.activation, q, m, t.params)) if m > 1 else None
        return None if pooled is None else t.fan_out * t.weight_var * pooled / m
    route = {"": m, "avg": m * m, "cat": 1.0}.get(t.route)
    return None if route is None else t.fan_out * t.weight_var * slope / route


def chain_profile(anchor: float, transitions: Sequence[Transition], direction: str,
                  inputs: Sequence[float] | None = None) -> list[float] | None:
    """The second moment theory expects at each of ``len(transitions) + 1`` layers of a chain.

    Forward, from the measured ``anchor`` at the first layer's output: ``q_l = fan_in Var(W_l) E[phi(sqrt(q_{l-1})
    z)^2] + Var(b_l)``. Backward (dL/dy flows from the loss), from the measured ``anchor`` at the last layer:
    ``g_{l-1} = g_l`` x :func:`backward_gain` (``fan_out Var(W_l) E[phi'(sqrt(q_{l-1}) z)^2]`` without pooling),
    with ``q_{l-1}`` the forward second moment of layer l-1's output: ``inputs`` (measured) where given, else the
    forward profile from ``inputs[0]``. None when an activation cannot be evaluated."""
    if direction == "forward":
        profile = [float(anchor)]
        for t in transitions:
            moments = activation_factors(t.activation, profile[-1], t.params)
            if moments is None:
                return None
            profile.append(t.fan_in * t.weight_var * moments[0] * profile[-1] + t.bias_var)
        return profile
    qs = list(inputs) if inputs is not None and len(inputs) == len(transitions) + 1 else None
    if qs is None:
        return None
    back = [float(anchor)]
    for t, q in zip(transitions[::-1], qs[-2::-1], strict=True):
        gain = backward_gain(t, q)
        if gain is None:
            return None
        back.append(back[-1] * gain)
    return back[::-1]


def variance_profile(anchor: float, transitions: Sequence[tuple[str, float, tuple[int, ...]]],
                     direction: str) -> list[float] | None:
    """:func:`chain_profile` for Conv/Linear weights given by shape, ``(activation, Var(W), shape)`` per
    transition, biases zero; backward with the inputs' second moment taken as 1 (exact for ReLU and linear,
    whose factors do not depend on it). None when an activation cannot be evaluated."""
    steps = [Transition(act, var, *shape_fans(shape)) for act, var, shape in transitions]
    if direction == "forward":
        return chain_profile(anchor, steps, direction)
    return chain_profile(anchor, steps, direction, inputs=[1.0] * (len(steps) + 1))
