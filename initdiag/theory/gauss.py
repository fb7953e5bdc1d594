"""Signal propagation at initialization for any elementwise activation (mean-field theory).

For a layer ``h' = W phi(h) + b`` with zero-mean i.i.d. ``W_ij`` of variance ``sigma_w^2 / fan_in`` and
``b_i`` of variance ``sigma_b^2``, wide layers make the pre-activations Gaussian, and their second moment
``q`` (the "length") follows the length map (Poole et al. 2016, "Exponential expressivity in deep neural
networks through transient chaos"; Schoenholz et al. 2017, "Deep information propagation")::

    q' = sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2,        z ~ N(0, 1)

while back-propagated gradients' second moment is multiplied per layer by (Schoenholz et al. 2017,
under the usual assumption that the backward weights are independent of the forward ones)::

    chi = sigma_w^2 E_z[phi'(sqrt(q) z)^2]     with sigma_w^2 = fan_out Var(W) for the backward map.

``sigma_w^2 = fan_in Var(W)`` forward: He init + ReLU gives q'/q = 1, Xavier (square) + ReLU 1/2, PyTorch's
default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` + ReLU 1/6, LeCun + linear 1.

The Gaussian expectations come from quadrature on the nodes of ``phi`` evaluated by torch in float64, with
``phi'`` from ``torch.autograd.grad``, so any elementwise torch callable or ``nn.Module`` works:

* closed forms for relu, leaky_relu/prelu and linear/identity (``activations.closed_form_moments``);
* probabilists' Gauss–Hermite (``hermegauss``, weights / sqrt(2 pi), 128 nodes) for the smooth registry
  families (gelu, silu, mish, softplus, tanh, sigmoid) while ``q <= scale^2``: measured relative error
  <= 3e-11 (tanh, softplus at q = 1; ~1e-16 at q <= 0.5) against scipy's adaptive quadrature;
* otherwise a split rule: Gauss–Legendre (20 nodes a panel) on panels of z in [-12, 12] with edges at the
  integers, at 0, at every kink of the activation and at ``+-scale 2^j / sqrt(q)`` (j = -4..10, where the
  activation has its features). It serves the kinked families (relu6, elu, selu, celu, hardtanh, hardsigmoid,
  hardswish, softsign), smooth ones at ``q > scale^2`` and arbitrary callables (whose smoothness is unknown;
  the edge at 0 makes kinks at 0 exact). Measured for q = 1e-3 .. 1e4 against exact piecewise-polynomial
  expectations (relu6, hardtanh, hardsigmoid, hardswish) and scipy's adaptive quadrature (the others):
  relative error <= 2e-13 on E[phi], E[phi^2] and E[phi'^2], except hardsigmoid's E[phi'^2], 6e-8 off 1/36
  because torch's backward uses 1/6 rounded to float32. Plain Gauss–Hermite is far worse across a kink (the
  ReLU mean: 3e-3 relative with 128 nodes, error ~ 1/n) and at large q (tanh at q = 10: 9e-3 with 128 nodes).

At q = 0 the moments are ``phi(0)``, ``phi(0)^2`` and the q -> 0 limit ``(phi'(0+)^2 + phi'(0-)^2) / 2``
of ``E[phi'^2]`` (1/2 for ReLU: torch's ``relu'(0) = 0`` would otherwise make it depend on a convention).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

from .activations import ActivationSpec, as_activation, closed_form_moments

__all__ = [
    "HERMITE_NODES",
    "PANEL_NODES",
    "ChainProfile",
    "GaussMoments",
    "LayerTheory",
    "Phi",
    "asymptotic_regime",
    "batchnorm_relu_gradient_gain",
    "chi",
    "gaussian_moments",
    "late_gain",
    "length_map",
    "normalized",
    "propagate_chain",
    "propagate_stream",
    "residual_step",
    "split_rule",
    "values_and_slopes",
]

Phi = str | ActivationSpec | Callable[[torch.Tensor], torch.Tensor]
"""An activation: a registry name, an ``ActivationSpec``, or any elementwise torch callable / ``nn.Module``."""
Method = Literal["auto", "hermite", "split"]
Regime = Literal["geometric-decay", "geometric-growth", "subgeometric"]

HERMITE_NODES = 128
"""Gauss–Hermite nodes by default."""
PANEL_NODES = 20
"""Gauss–Legendre nodes per panel of the split rule by default."""
_Z_MAX = 12.0  # P(|z| > 12) = 4e-33: the split rule's range
_Q0_STEP = 1e-100  # the one-sided points at which q = 0 reads phi'(0+) and phi'(0-)


@dataclass(frozen=True)
class GaussMoments:
    """Moments of ``phi(x)`` for ``x = sqrt(q) z``, z ~ N(0, 1): ``mean = E[phi]``, ``second = E[phi^2]``,
    ``variance = second - mean^2``, ``slope_second = E[phi'(x)^2]``; ``method`` names the rule used
    ("exact", "hermite", "split" or "point" at q = 0)."""

    q: float
    mean: float
    second: float
    variance: float
    slope_second: float
    method: str


@functools.cache
def _hermite_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = hermegauss(nodes)
    return z, w / math.sqrt(2.0 * math.pi)


@functools.cache
def _legendre_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = leggauss(nodes)
    return t, w


def split_rule(sqrt_q: float, nodes: int, breakpoints: tuple[float, ...], scale: float) -> tuple[np.ndarray, ...]:
    """Composite Gauss–Legendre for E_z[f(z)] on [-12, 12], panel edges at the integers and at the kinks and
    feature scales of f mapped to z = x / sqrt(q)."""
    features = [0.0, *breakpoints, *(s * scale * 2.0**j for j in range(-4, 11) for s in (-1.0, 1.0))]
    grid = range(-int(_Z_MAX), int(_Z_MAX) + 1)
    edges = np.unique(np.clip([*grid, *(f / sqrt_q for f in features)], -_Z_MAX, _Z_MAX))
    edges = edges[np.concatenate(([True], np.diff(edges) > 1e-12))]
    t, wt = _legendre_rule(nodes)
    mid, half = (edges[1:] + edges[:-1]) / 2.0, np.diff(edges) / 2.0
    z = mid[:, None] + half[:, None] * t[None, :]
    w = half[:, None] * wt[None, :] * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return z.ravel(), w.ravel()


def values_and_slopes(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``phi(x)`` and ``phi'(x)`` (autograd) in float64, whatever grad mode the caller is in."""
    with torch.inference_mode(False), torch.enable_grad():
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        y = fn(xt)
        if not isinstance(y, torch.Tensor) or y.shape != xt.shape:
            raise TypeError(f"phi must be an elementwise torch callable; it returned {type(y).__name__} "
                            f"of shape {getattr(y, 'shape', None)} for an input of shape {tuple(xt.shape)}")
        y = y.to(torch.float64)
        grad = torch.autograd.grad(y.sum(), xt, allow_unused=True)[0] if y.requires_grad else None
    g = np.zeros_like(x) if grad is None else grad.detach().numpy()
    return y.detach().numpy(), g


def _integrate(fn: Callable[[torch.Tensor], torch.Tensor], q: float, nodes: int | None, method: Method,
               breakpoints: tuple[float, ...], scale: float, smooth: bool) -> GaussMoments:
    if q == 0.0:
        y, g = values_and_slopes(fn, np.array([0.0, _Q0_STEP, -_Q0_STEP]))
        out = GaussMoments(0.0, float(y[0]), float(y[0]) ** 2, 0.0, float(g[1] ** 2 + g[2] ** 2) / 2.0, "point")
    else:
        hermite = method == "hermite" or (method == "auto" and smooth and q <= scale * scale)
        if hermite:
            z, w = _hermite_rule(nodes or HERMITE_NODES)
        else:
            z, w = split_rule(math.sqrt(q), nodes or PANEL_NODES, breakpoints, scale)
        y, g = values_and_slopes(fn, math.sqrt(q) * z)
        mean = float(w @ y)
        out = GaussMoments(q, mean, float(w @ (y * y)), float(w @ (y - mean) ** 2), float(w @ (g * g)),
                           "hermite" if hermite else "split")
    if not all(math.isfinite(v) for v in (out.mean, out.second, out.slope_second)):
        raise ValueError(f"phi or phi' is not finite on the quadrature nodes at q = {q}: {out}")
    return out


@functools.lru_cache(maxsize=1 << 16)
def _spec_moments(spec: ActivationSpec, q: float, nodes: int | None, method: Method) -> GaussMoments:
    exact = closed_form_moments(spec, q) if method == "auto" else None
    if exact is not None:
        mean, second, slope = exact
        return GaussMoments(q, mean, second, max(second - mean * mean, 0.0), slope, "exact")
    return _integrate(spec, q, nodes, method, spec.breakpoints, spec.scale, not spec.breakpoints)


def gaussian_moments(phi: Phi, q: float, *, nodes: int | None = None, method: Method = "auto",
                     breakpoints: Sequence[float] | None = None) -> GaussMoments:
    """E[phi(sqrt(q) z)], E[phi(sqrt(q) z)^2], their variance and E[phi'(sqrt(q) z)^2] for z ~ N(0, 1).

    ``phi``: a registry name ("tanh"), an ``ActivationSpec`` (``activation_function("elu", alpha=0.5)``), a
    standard torch activation module/function (recognised, so ``nn.ReLU()`` gets the exact closed form), or
    any elementwise torch callable (a lambda, a user's ``nn.Module``). ``q >= 0`` is the second moment of the
    (zero-mean Gaussian) pre-activation. ``method``: "auto" (closed form, else Gauss–Hermite for a smooth
    registry family at ``q <= scale^2``, else the split rule, always for arbitrary callables; see the module
    docstring), or force "hermite" / "split". ``nodes``: Gauss–Hermite nodes, or Gauss–Legendre nodes per
    panel for the split rule. ``breakpoints``: pre-activation values where a callable has kinks (the split
    rule has edges at 0 and +-2^j already; a kink elsewhere left out, e.g. relu6's at 6 or hardswish's at +-3
    given as lambdas, costs up to 4e-3 relative, measured for q = 1e-3 .. 1e4).
    Registry activations are cached by (spec, q, nodes, method); arbitrary callables are not.
    """
    q = float(q)
    if not (math.isfinite(q) and q >= 0.0):
        raise ValueError(f"q must be a finite second moment >= 0, got {q}")
    if method not in ("auto", "hermite", "split"):
        raise ValueError(f"method must be 'auto', 'hermite' or 'split', got {method!r}")
    if nodes is not None and (int(nodes) != nodes or nodes < 2):
        raise ValueError(f"nodes must be an integer >= 2, got {nodes!r}")
    spec = as_activation(phi)
    if spec is not None and breakpoints is None:
        return _spec_moments(spec, q, nodes, method)
    if spec is None and not callable(phi):
        raise TypeError(f"phi must be an activation name, an ActivationSpec or a torch callable, got {phi!r}")
    fn = spec if spec is not None else cast(Callable[[torch.Tensor], torch.Tensor], phi)
    kinks = tuple(float(b) for b in (breakpoints or ()))
    return _integrate(fn, q, nodes, method, kinks, 1.0 if spec is None else spec.scale, False)


def length_map(phi: Phi, q: float, sigma_w2: float, sigma_b2: float = 0.0, *, nodes: int | None = None) -> float:
    """The next layer's pre-activation second moment ``q' = sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2``
    (Poole et al. 2016; Schoenholz et al. 2017), ``sigma_w2 = fan_in Var(W)``, ``sigma_b2 = Var(b)``. Wide
    layers, zero-mean i.i.d. weights, Gaussian pre-activations."""
    return sigma_w2 * gaussian_moments(phi, q, nodes=nodes).second + sigma_b2


def chi(phi: Phi, q: float, sigma_w2: float, *, nodes: int | None = None) -> float:
    """The per-layer factor on back-propagated gradients' second moment, ``sigma_w2 E[phi'(sqrt(q) z)^2]``
    (Schoenholz et al. 2017: their chi_1 when q is the fixed point q*), ``sigma_w2 = fan_out Var(W)`` for the
    backward map (equal to fan_in Var(W) on square layers). Assumes gradients independent of the forward
    weights (the mean-field gradient-independence assumption), wide layers, Gaussian pre-activations."""
    return sigma_w2 * gaussian_moments(phi, q, nodes=nodes).slope_second


@dataclass(frozen=True)
class LayerTheory:
    """One weight layer of a chain: ``sigma_w2_in = fan_in Var(W)`` (forward), ``sigma_w2_out = fan_out Var(W)``
    (backward), ``sigma_b2 = Var(b)``, and ``phi_before``: the activation applied to the previous layer's output
    before this layer (None or "linear" for the first layer or a linear path)."""

    sigma_w2_in: float
    sigma_w2_out: float
    sigma_b2: float = 0.0
    phi_before: Phi | None = None

    @classmethod
    def from_variance(cls, var_w: float, fan_in: int, fan_out: int, *, var_b: float = 0.0,
                      phi_before: Phi | None = None) -> LayerTheory:
        """The layer of a weight with element variance ``var_w`` (e.g. 2 / fan_in for He, 2 / (fan_in + fan_out)
        for Xavier, 1 / (3 fan_in) for PyTorch's default) and bias variance ``var_b``."""
        return cls(fan_in * var_w, fan_out * var_w, var_b, phi_before)


@dataclass(frozen=True)
class ChainProfile:
    """The predicted profile of a chain of layers.

    ``forward[l]``: second moment of layer l's output (pre-activation), from ``q0`` at the first layer's input;
    ``backward[l]``: second moment of dL/d(output of layer l) relative to the last layer's (``backward[-1] = 1``);
    ``forward_gains[l] = forward[l] / forward[l - 1]`` (``q0`` for l = 0); ``backward_gains[l] = backward[l] /
    backward[l + 1]``, the factor the step from layer l + 1 back to layer l applies (l = 0 .. L - 2).
    """

    q0: float
    forward: tuple[float, ...]
    backward: tuple[float, ...]
    forward_gains: tuple[float, ...]
    backward_gains: tuple[float, ...]


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0.0 else (math.nan if a == 0.0 else math.inf)


def _moments_or_linear(phi: Phi | None, q: float, nodes: int | None) -> tuple[float, float]:
    """``(E[phi^2], E[phi'^2])`` at q, ``(q, 1)`` for a linear path (None, "linear", "identity")."""
    if phi is None or (isinstance(phi, str) and phi in ("linear", "identity")):
        return q, 1.0
    m = gaussian_moments(phi, q, nodes=nodes)
    return m.second, m.slope_second


def propagate_chain(layers: Sequence[LayerTheory], q0: float, *, nodes: int | None = None) -> ChainProfile:
    """Forward and backward second-moment profiles of a chain (Poole et al. 2016; Schoenholz et al. 2017).

    Forward: ``q_l = sigma_w2_in(l) E[phi_l(sqrt(q_{l-1}) z)^2] + sigma_b2(l)``, ``q_{-1} = q0`` (the first
    layer's input; ``E[phi^2] = q`` for a linear path, exact for any input distribution). Backward, from the
    output (``g_{L-1} = 1``): ``g_{l-1} = g_l sigma_w2_out(l) E[phi_l'(sqrt(q_{l-1}) z)^2]``, ``phi_l`` the
    activation between layers l-1 and l. Assumes wide layers, zero-mean i.i.d. weights and biases, Gaussian
    pre-activations and gradients independent of the forward weights.
    """
    if not layers:
        raise ValueError("propagate_chain needs at least one layer")
    forward: list[float] = []
    q = float(q0)
    for layer in layers:
        q = layer.sigma_w2_in * _moments_or_linear(layer.phi_before, q, nodes)[0] + layer.sigma_b2
        forward.append(q)
    backward = [1.0] * len(layers)
    for i in range(len(layers) - 1, 0, -1):
        slope = _moments_or_linear(layers[i].phi_before, forward[i - 1], nodes)[1]
        backward[i - 1] = backward[i] * layers[i].sigma_w2_out * slope
    inputs = [float(q0), *forward]
    return ChainProfile(float(q0), tuple(forward), tuple(backward),
                        tuple(_ratio(forward[i], inputs[i]) for i in range(len(forward))),
                        tuple(_ratio(backward[i], backward[i + 1]) for i in range(len(backward) - 1)))


def _values(profile: ChainProfile | Sequence[float], direction: Literal["forward", "backward"]) -> list[float]:
    if isinstance(profile, ChainProfile):
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
        return [profile.q0, *profile.forward] if direction == "forward" else list(profile.backward[::-1])
    return [float(v) for v in profile]


def late_gain(profile: ChainProfile | Sequence[float], fraction: float = 0.5, *,
              direction: Literal["forward", "backward"] = "forward") -> float:
    """Geometric-mean per-layer gain over the last ``fraction`` of a profile, ``(v_end / v_start)^(1/k)``
    over its last k = round(fraction (n - 1)) steps (at least one), in propagation order: a ChainProfile's
    ``(q0, *forward)`` or its backward profile from the output to the first layer, or a plain sequence.

    Bounded away from 1: geometric decay (< 1) or growth (> 1), e.g. 1/2 for Xavier + ReLU. Tending to 1 as the
    chain deepens: sub-geometric, e.g. q_l ~ 1 / (2 l) for tanh at sigma_w2 = 1 (Schoenholz et al. 2017, the
    polynomial approach to a fixed point at the edge of chaos), or a constant profile (He + ReLU).
    """
    values = _values(profile, direction)
    if len(values) < 2 or not 0.0 < fraction <= 1.0:
        raise ValueError(f"late_gain needs >= 2 values and 0 < fraction <= 1, got {len(values)} and {fraction}")
    steps = max(1, round(fraction * (len(values) - 1)))
    start, end = values[-1 - steps], values[-1]
    if start <= 0.0 or end <= 0.0:
        return math.nan if start <= 0.0 else 0.0
    return math.exp((math.log(end) - math.log(start)) / steps)


def asymptotic_regime(profile: ChainProfile | Sequence[float], fraction: float = 0.5, *, tol: float = 0.05,
                      direction: Literal["forward", "backward"] = "forward") -> Regime:
    """"geometric-decay" / "geometric-growth" when ``late_gain`` is below 1 - tol / above 1 + tol, else
    "subgeometric" (polynomial or constant). A short profile of a polynomial decay can look geometric (1/l over
    layers 10..20 has a late gain of 0.93): judge on deep profiles, or compare late_gain at two depths."""
    gain = late_gain(profile, fraction, direction=direction)
    if gain < 1.0 - tol:
        return "geometric-decay"
    return "geometric-growth" if gain > 1.0 + tol else "subgeometric"


def residual_step(v_stream: float, v_branch: float) -> float:
    """Second moment after a residual addition ``x + f(x)``: ``Var(x + f(x)) = Var(x) + Var(f(x))``, since at
    init the branch's output (zero-mean last weights independent of x) is uncorrelated with the stream
    (Brock et al. 2021, "Characterizing signal propagation to close the performance gap in unnormalized
    ResNets", sec. 3; De & Smith 2020, "Batch normalization biases residual blocks towards the identity
    function"). A zero-initialised last branch layer (Zhang et al. 2019, Fixup) has ``v_branch = 0``."""
    return v_stream + v_branch


def normalized(v: float = 1.0, *, gamma2: float = 1.0, beta2: float = 0.0, eps: float = 0.0) -> float:
    """Output second moment of a normalization layer (BatchNorm, LayerNorm, GroupNorm ...) whose input has
    variance ``v``: ``gamma2 v / (v + eps) + beta2``, i.e. ``mean(gamma^2) + mean(beta^2)`` whatever ``v`` was
    (1 at the default gamma = 1, beta = 0, eps -> 0); ``beta2`` alone for a constant input (v = 0). Wide
    layers / large batch (Yang et al. 2019, "A mean field theory of batch normalization"; De & Smith 2020)."""
    if v < 0.0 or eps < 0.0:
        raise ValueError(f"v and eps must be >= 0, got {v} and {eps}")
    return beta2 if v + eps == 0.0 else gamma2 * v / (v + eps) + beta2


def batchnorm_relu_gradient_gain() -> float:
    """``pi / (pi - 1)`` (~1.467): the factor by which the gradient's second moment grows per BatchNorm + ReLU
    layer, going backward through a chain without skip connections, at large width and batch (Yang et al.
    2019, "A mean field theory of batch normalization": gradient explosion at initialization)."""
    return math.pi / (math.pi - 1.0)


def propagate_stream(branch_gains: Sequence[float], v0: float, normalized_branch: Sequence[bool],
                     branch_out_var: float | Sequence[float] = 1.0) -> tuple[float, ...]:
    """The residual stream's second moment ``(v_0, ..., v_L)`` over L blocks ``x_{l+1} = x_l + f_l(x_l)``:
    ``v_{l+1} = v_l + b_l`` (``residual_step``) with ``b_l = branch_gains[l] v_l`` for an unnormalized branch
    (exponential growth: He-init ReLU branches of gain 1 double the stream per block) and ``b_l =
    branch_out_var[l]`` for a branch that ends in (or starts with) normalization, whose output variance is
    fixed (linear growth, v_L = v_0 + L b; Brock et al. 2021, De & Smith 2020; NF-ResNets' alpha^2).
    ``branch_gains[l]`` is ignored for normalized branches and ``branch_out_var`` for unnormalized ones.
    """
    n = len(branch_gains)
    if len(normalized_branch) != n:
        raise ValueError(f"{n} branch gains but {len(normalized_branch)} normalized_branch flags")
    outs = [float(branch_out_var)] * n if isinstance(branch_out_var, int | float) else list(branch_out_var)
    if len(outs) != n:
        raise ValueError(f"{n} branch gains but {len(outs)} branch_out_var values")
    v = [float(v0)]
    for gain, norm, out in zip(branch_gains, normalized_branch, outs, strict=True):
        v.append(residual_step(v[-1], out if norm else gain * v[-1]))
    return tuple(v)
