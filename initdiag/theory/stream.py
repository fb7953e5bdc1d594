"""The residual stream at initialization: what each block adds, and whether the stream grows without bound.

A block computes ``x_{l+1} = s(x_l) + f(x_l)`` (``s`` the shortcut: the identity, or a projection) and,
with the branch's last weights zero-mean and independent of ``x``, ``Var(x + f(x)) = Var(x) + Var(f(x))``
(Brock et al. 2021; De & Smith 2020). What ``Var(f(x))`` is decides the stream's fate:

* an unnormalized branch multiplies its input: ``Var(f(x)) = G Var(x)`` with ``G`` the product of its layers'
  gains, so the stream grows geometrically, by ``1 + G`` per block (He-initialized ReLU branches: about
  doubling per block, Brock et al. 2021, fig. 1);
* a branch that passes a normalization outputs a fixed variance whatever ``Var(x)`` is (``gamma^2`` times the
  gains after the norm), so the stream grows linearly in the block index, or not at all when that variance is
  0 (``zero_init_residual``, SkipInit, Fixup; De & Smith 2020, Zhang et al. 2019);
* a normalization after the add (post-LN, BERT) resets the stream to ``gamma^2`` at every block;
* a projection shortcut, or a normalization on it, restarts the sum from its own output.

An activation applied to the sum inside the block (ResNet's ``relu(x + f(x))``) is taken with the stream's
mean: the sum is ``N(mu, Var(x) + Var(f))`` (the branch is zero-mean, the stream after a ReLU is not), its
output's mean and second moment are Gaussian expectations of ``phi(mu + sigma z)``, and the values are
variances, as the stream is measured. With He-initialized ReLU branches the stream's second moment then grows
by ~2.37 per block at the fixed point, where a zero-mean sum would say 1.5 and no activation 3 (measured
2.4 on a plain post-activation stack).

Assumptions: wide layers, zero-mean i.i.d. weights, Gaussian pre-activations; the averaging of attention over
positions is not modelled (it makes the prediction an upper bound for attention branches).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..structure import Block, Structure
from .gains import Transition, chain_profile, phi_spec
from .gauss import gaussian_moments

__all__ = ["StreamTheory", "stream_theory"]


def _activated(name: str, mean: float, var: float) -> tuple[float, float] | None:
    """``(E[phi(s)], E[phi(s)^2])`` for ``s ~ N(mean, var)``; None when the activation cannot be evaluated."""
    spec = phi_spec(name)
    if spec is None or not (var >= 0 and math.isfinite(var) and math.isfinite(mean)):
        return None
    moments = gaussian_moments(lambda t: spec(t + mean), var, breakpoints=[b - mean for b in spec.breakpoints])
    return moments.mean, moments.second


@dataclass(frozen=True)
class StreamTheory:
    """The stream's predicted second moment entering the first block and after each (``values[0]`` is the
    measured anchor; None from a block on whose branch theory cannot evaluate), and ``bounded``: every block
    adds a variance that does not scale with the stream (normalized or zero branches, post-norms), so the
    stream grows at most linearly; else geometrically."""

    values: tuple[float | None, ...]
    bounded: bool
    rules: tuple[str, ...]
    """Per block: "post-norm", "normalized shortcut", "normalized branch", "zero branch", "multiplicative branch"
    or "unknown"."""


def _branch(structure: Structure, block: Block, tail: str, v: float, weight_var: Mapping[str, float],
            bias_var: Mapping[str, float], norm_gain: Mapping[str, float]) -> float | None:
    """``Var(f(x))`` of the branch whose output ``tail`` (a norm or a weight layer) is added to the stream."""
    if tail in norm_gain or any(n.name == tail for n in structure.norms):
        return norm_gain.get(tail, 1.0)
    chain = next((seg for seg in structure.segments() if tail in seg), None)
    if chain is None:
        return None
    chain = chain[:chain.index(tail) + 1]
    layers = [structure.layer(name) for name in chain]
    if any(la.module_name not in weight_var for la in layers):
        return None
    first = layers[0]
    q_in = 1.0 if block.branch_normalized else v
    anchor = first.fan_in * weight_var[first.module_name] * q_in + bias_var.get(first.module_name, 0.0)
    transitions = [Transition(prev.activation.name, weight_var[cur.module_name], cur.fan_in, cur.fan_out,
                              bias_var.get(cur.module_name, 0.0), prev.activation.params)
                   for prev, cur in itertools.pairwise(layers)]
    profile = chain_profile(anchor, transitions, "forward")
    return None if profile is None else profile[-1]


def _shortcut(structure: Structure, block: Block, v: float, weight_var: Mapping[str, float],
              norm_gain: Mapping[str, float]) -> float | None:
    if isinstance(block.shortcut, str):
        return v
    out = v
    for name in block.shortcut:
        layer = structure.layer(name)
        if layer.norm_after is not None:
            out = norm_gain.get(layer.norm_after, 1.0)
        elif layer.module_name in weight_var:
            out = layer.fan_in * weight_var[layer.module_name] * out
        else:
            return None
    return out


def stream_theory(structure: Structure, v0: float, weight_var: Mapping[str, float], bias_var: Mapping[str, float],
                  norm_gain: Mapping[str, float], mean_sq0: float = 0.0) -> StreamTheory:
    """The stream's predicted variance from the measured variance ``v0`` (and squared mean ``mean_sq0``) entering
    the first block (see the module docstring); None from a block that restarts the stream (its input is not
    the previous block's output) on. ``weight_var``/``bias_var``: Var(W), Var(b) by module name;
    ``norm_gain``: normalization call site -> ``mean(gamma^2) + mean(beta^2)``."""
    values: list[float | None] = [float(v0)]
    rules: list[str] = []
    bounded = True
    unread: list[bool] = []  # per block whose branch end no walk reached: whether its branch is normalized
    mean = math.sqrt(max(mean_sq0, 0.0))
    for block in structure.blocks:
        # the second moment entering the block; unknown after a block theory could not follow, or at a restart
        v = None if values[-1] is None or block.restarts else values[-1] + mean * mean
        if block.post_norm:
            last = block.norms[-1] if block.norms else ""
            values.append(norm_gain.get(last, 1.0))
            rules.append("post-norm")
            mean = 0.0
            continue
        if block.shortcut_normalized or not block.last_branch_layers:
            # a norm inside the block resets the stream (bounded, at the norm's scale, which this rule does not
            # follow); or no walk reached the branch's end (a product, a concatenation): what it adds is unknown
            if not block.shortcut_normalized:
                unread.append(block.branch_normalized)
            values.append(None)
            rules.append("normalized shortcut" if block.shortcut_normalized else "unknown")
            mean = 0.0
            continue
        anchor = 1.0 if v is None else v  # whether a branch is zero or normalized does not depend on the scale
        total = _shortcut(structure, block, anchor, weight_var, norm_gain)
        mean = mean if isinstance(block.shortcut, str) and v is not None else 0.0  # projections: zero-mean
        added = 0.0
        for tail in block.last_branch_layers:
            b = None if total is None else _branch(structure, block, tail, total + added, weight_var, bias_var,
                                                   norm_gain)
            if b is None:
                total = None
                break
            added += b
        zero = total is not None and added == 0.0
        rules.append("zero branch" if zero else "normalized branch" if block.branch_normalized
                     else "multiplicative branch")
        bounded = bounded and (zero or block.branch_normalized)
        out = None if total is None or v is None else total + added
        if out is not None and block.activation_after:
            moments = _activated(block.activation_after, mean, max(out - mean * mean, 0.0))
            mean, out = (moments[0], moments[1]) if moments is not None else (0.0, None)
        values.append(None if out is None else max(out - mean * mean, 0.0))
    # a block theory cannot read leaves the design bounded when the blocks it can read are, unless nothing in the
    # model's blocks normalizes (then nothing rescales that branch either: it adds a multiple of the stream)
    normalized_somewhere = any(b.branch_normalized or b.post_norm or b.shortcut_normalized for b in structure.blocks)
    bounded = bounded and (all(unread) or normalized_somewhere)
    return StreamTheory(tuple(values), bounded, tuple(rules))
