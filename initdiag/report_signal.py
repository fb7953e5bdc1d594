"""What the report's signal-propagation figures show besides the measurements: readable layer labels
and the theory overlay (the per-layer variance an initializer's variance theory predicts).

Structure, not presentation: plain lists of strings and floats for :mod:`initdiag.plots`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .initializers import INITIALIZERS, expected_gain

if TYPE_CHECKING:
    from .experiment import RunResult
    from .recorder import LayerInfo

__all__ = ["layer_label", "layer_labels", "theory_profile"]

_UNINFORMATIVE = re.compile(r"(?:^|[.@])\d+$")
"""A name whose last part is a number (``0``, ``features.3``, ``0@2``) says nothing about the layer."""


def layer_label(info: LayerInfo) -> str:
    """How a layer is named on a plot axis: ``0 Conv2d`` for a ``Sequential`` index, else its name."""
    return f"{info.name} {info.module}" if _UNINFORMATIVE.search(info.name) else info.name


def layer_labels(runs: Sequence[RunResult], names: Sequence[str]) -> list[str]:
    """:func:`layer_label` for each of ``names`` (the name itself where no run recorded the layer)."""
    infos = {la.name: la for r in runs for la in r.layers}
    return [layer_label(infos[n]) if n in infos else n for n in names]


def theory_profile(run: RunResult, names: Sequence[str], kind: str,
                   measured: Sequence[float | None]) -> list[float | None]:
    """The variance per layer that theory expects for ``run``'s initializer, aligned with ``names``.

    Per transition from Conv/Linear layer ``l-1`` to ``l`` the theory's gain is
    ``g_l = fan x Var(W_l) x c(activation between them)`` (:func:`initializers.expected_gain`; ``fan_in``
    forward, ``fan_out`` backward; c = 1/2 ReLU, 1 linear, 1 tanh as an upper bound). Forward the profile
    starts from the measured variance of the first layer and goes ``var_l = g_l var_{l-1}``; backward
    (dL/dy flows from the loss) it starts from the last layer and goes ``var_{l-1} = g_l var_l`` (per
    element; the per-sample-energy form of the checks gives the same per-element prediction). None where
    theory says nothing: an unknown activation factor or weight shape, an initializer without a variance
    formula, a layer missing from the run, or a non-positive anchor (e.g. zeros, whose profile is 0).
    """
    none: list[float | None] = [None] * len(names)
    spec = run.spec
    if getattr(spec, "name", None) not in INITIALIZERS or len(names) < 2 or len(measured) != len(names):
        return none
    infos = {la.name: la for la in run.layers if la.role == "weight"}
    if any(n not in infos for n in names):
        return none
    layers = [infos[n] for n in names]
    gains: list[float] = []
    for prev, cur in itertools.pairwise(layers):
        if cur.weight_shape is None:
            return none
        gain = expected_gain(spec, prev.activation or "linear", tuple(cur.weight_shape), kind)
        if gain is None:
            return none
        gains.append(gain)
    forward = kind == "forward"
    anchor = measured[0] if forward else measured[-1]
    if anchor is None or not anchor > 0:
        return none
    profile = [float(anchor)]
    for gain in gains if forward else gains[::-1]:
        profile.append(profile[-1] * gain)
    return [v if v > 0 else None for v in (profile if forward else profile[::-1])]
