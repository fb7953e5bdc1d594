"""Zeros and constants by design: what a no-signal finding is explained by, so it is not read as a failure.

Two designs leave a layer without signal at initialization on purpose:

* **intentional zeros** that a look-ahead resolves: a parameter that is all zero and whose gradient is not,
  at the first step or within the audit's few steps after it (:mod:`~initdiag.recording.lookahead`: a
  zero-initialized output head, as in torchvision's ViT and timm's MLP-Mixer; the last layer or the scale of
  a residual branch under ``zero_init_residual`` or SkipInit, from step 1; under Fixup, whose classifier is
  zero too, from step 2; De & Smith 2020, Zhang et al. 2019). It leaves zero then, and the signal flows.
  Forward, the zero layer and the layers after it in its chain carry no signal; backward, the layers before
  it in its chain and in its block (all layers, for a zero head) get no gradient.
* **constant inputs**: a layer whose input does not vary over the batch (an embedding of token type ids
  that are all 0, a query projection of a learned class token) has a constant output because its input is,
  not because of its weights. Decided from the values; a constant that a weight layer upstream made of a
  varying input is that layer's finding, and the structure does not mark it.

A zero parameter whose gradient stays zero through the look-ahead (every weight of the network zero) stays
zero: nothing explains it, and the checks fail as before. Not a statistical test: exact zeros and equal
inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..structure.layers import LayerInfo
from .evidence import RunEvidence

__all__ = ["Explained", "explained", "homogeneous"]


@dataclass(frozen=True)
class Explained:
    """Layer call site -> why its missing signal is by design, per direction; and the notes naming each design."""

    forward: dict[str, str] = field(default_factory=dict)
    backward: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    """The parameters that are zero at initialization and learn from step 1."""
    head: str | None = None
    """The output head, when it is zero-initialized and learns: every gradient upstream of it is 0 at init."""


def _owner(param: str) -> str:
    return param.rpartition(".")[0]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".") if prefix else True


def _step(ev: RunEvidence, learners: Sequence[str], scope: str, within: bool = False) -> int:
    """The step from which the zero parameters of module ``scope`` (or, ``within``, of modules under it) learn:
    the latest of their look-ahead steps (1 when the first step's gradient is not zero)."""
    own = [p for p in learners if (_within(_owner(p), scope) if within else _owner(p) == scope)]
    return max((ev.zero_steps.get(p, 1) for p in own), default=1)


def _rest_of_chain(segments: Sequence[tuple[str, ...]], name: str, why: str, forward: dict[str, str]) -> None:
    """``why`` explains the forward signal of ``name`` and of the layers after it in its chain."""
    for seg in segments:
        if name in seg:
            for later in seg[seg.index(name):]:
                forward.setdefault(later, why)


def _shadow(ev: RunEvidence, shadowed: Sequence[LayerInfo], segments: Sequence[tuple[str, ...]],
            forward: dict[str, str]) -> str:
    """Explain the layers that see the data only through near-zero parameters (``ev.zero_shadow``), forward
    from each to the end of its chain; the note naming them."""
    near = list(dict.fromkeys(p for la in shadowed for p in ev.zero_shadow[la.name]))
    names = ", ".join(f"'{p}'" for p in near[:2]) + (" ..." if len(near) > 2 else "")
    late = max((ev.zero_steps.get(p, 1) for p in near), default=1)
    for c in shadowed:
        _rest_of_chain(segments, c.name, f"'{c.name}' sees the data only through near-zero parameters that learn "
                       f"from step {late}", forward)
    return (f"{len(shadowed)} layer(s) ('{shadowed[0].name}' first) see the data only through the near-zero "
            f"parameter(s) {names} (a layer scale of 1e-5 beside a learned token): with them at exactly 0 their "
            f"input is the same for every sample. They learn from step {late}, and the data with them.")


def explained(ev: RunEvidence) -> Explained:
    """What explains each layer's missing signal in ``ev`` (see the module docstring)."""
    layers = list(ev.weight_layers)
    if not layers:
        return Explained()
    learners = tuple(name for name, learns in ev.zero_params.items() if learns)
    segments: Sequence[tuple[str, ...]] = ev.structure.segments() if ev.structure is not None else \
        (tuple(la.name for la in layers),)
    order = {la.name: i for i, la in enumerate(layers)}
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    notes: list[str] = []
    zero_layers = [la for la in layers if any(_owner(p) == la.module_name for p in learners)]
    last = layers[-1]
    for z in zero_layers:
        why = f"'{z.name}' is zero-initialized and learns from step {_step(ev, learners, z.module_name)}"
        for seg in segments:
            if z.name in seg:
                at = seg.index(z.name)
                for name in seg[at:]:
                    forward.setdefault(name, why)
                for name in seg[:at]:
                    backward.setdefault(name, why)
        if z.name == last.name:
            for la in layers[:-1]:
                backward.setdefault(la.name, why)
            notes.append(f"The output head '{z.name}' is zero-initialized on purpose: each output unit gets its own "
                         f"gradient, so it breaks symmetry and learns from step {_step(ev, learners, z.module_name)}, "
                         "and the gradient reaches the trunk from then on.")
        elif z.block is not None:  # the rest of its block's branch sees its zero output (e.g. an SE after it)
            for la in layers:
                if la.block == z.block and order[la.name] < order[z.name]:
                    backward.setdefault(la.name, why)
                elif la.block == z.block and order[la.name] > order[z.name]:
                    forward.setdefault(la.name, why)
    outside = {_owner(p) for p in learners} - {la.module_name for la in layers}  # zero scales and gains
    for scope in outside:  # a zero scale or gain outside any weight layer
        if ev.structure is None or not any(_within(b.module_name, scope) for b in ev.structure.blocks):
            why = f"the zero parameter(s) of '{scope or 'the model'}' learn from step {_step(ev, learners, scope)}"
            for la in layers:
                if _within(la.module_name, scope):
                    backward.setdefault(la.name, why)
    blocks = ev.structure.blocks if ev.structure is not None else ()
    zero_blocks = [b for b in blocks if any(_within(_owner(p), b.module_name) for p in learners)]
    for b in zero_blocks:
        why = (f"block '{b.name}' starts as the identity: a zero scale or last layer of its branch learns from "
               f"step {_step(ev, learners, b.module_name, within=True)}")
        for la in layers:
            if la.block == b.name:
                backward.setdefault(la.name, why)
    for scale in outside:  # a zero normalization scale: what follows it in its block (a squeeze-excite) sees 0
        normed = next((la for la in layers if la.norm_after == scale and la.block is not None), None)
        if normed is None:
            continue
        why = f"the normalization '{scale}' after '{normed.name}' has a zero scale that learns from step " \
              f"{_step(ev, learners, scale)}"
        for la in layers:
            if la.block == normed.block and order[la.name] > order[normed.name]:
                forward.setdefault(la.name, why)
    if zero_blocks:
        late = max(_step(ev, learners, b.module_name, within=True) for b in zero_blocks)
        notes.append(f"{len(zero_blocks)} of {len(blocks)} residual blocks start as the identity: the last layer or "
                     "the scale of each branch is zero and learns from step " + ("1" if late == 1 else f"{late} (the "
                     "look-ahead: a zero after it gets its gradient first)") + " (zero_init_residual, SkipInit, "
                     "Fixup), so the stream passes unchanged at initialization.")
    shadowed = [la for la in layers if la.name in ev.zero_shadow]
    if shadowed:
        notes.append(_shadow(ev, shadowed, segments, forward))
    constant = [la for la in layers if la.constant_input]
    for c in constant:
        _rest_of_chain(segments, c.name, f"'{c.name}' gets the same input for every sample", forward)
    if constant:
        names = ", ".join(f"'{c.name}'" for c in constant[:3]) + (" ..." if len(constant) > 3 else "")
        notes.append(f"{names} get the same input for every sample (one token type id for every token, a learned "
                     "class token, a LayerNorm over one feature): their output is constant because their input is, "
                     "not because of their initialization.")
    head = last.name if any(z.name == last.name for z in zero_layers) else None
    return Explained(forward, backward, tuple(notes), learners, head)


_HOMOGENEOUS = frozenset({"relu", "leaky_relu", "prelu", "linear"})
"""Activations with ``f(a x) = a f(x)`` for ``a > 0`` (positively homogeneous of degree 1)."""


def homogeneous(ev: RunEvidence, layers: Sequence[str]) -> bool:
    """Whether the map from the first layer's output to the last's is positively homogeneous up to a constant:
    every layer strictly between them has no bias or a zero one, and every activation between them is ReLU,
    leaky ReLU, PReLU or none. Then ``y_L(a y_1) - b_L = a (y_L(y_1) - b_L)``: a change of the forward
    variance along the chain is a constant factor on its output, the same for every input, not a loss of the
    signal's shape."""
    info = {la.name: la for la in ev.weight_layers}
    if any(n not in info for n in layers):
        return False
    for n in layers[:-1]:
        if (info[n].activation or "linear") not in _HOMOGENEOUS:
            return False
    for n in layers[1:-1]:  # the last layer's bias shifts the output by a constant: no change of variance
        weights = ev.weights_init.get(info[n].module_name)
        if weights is None or (weights[1] is not None and bool(np.any(weights[1] != 0))):
            return False  # a bias unknown (not snapshotted) or not zero
    return True
