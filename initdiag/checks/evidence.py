"""The evidence the checks read for one run, and the advice they give from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..recording.extras import OutputStats, SiteExtras
from ..recording.gates import GateStats
from ..recording.snapshots import Weights
from ..structure import Structure
from ..structure.activations import ADVICE, lookup
from ..structure.layers import LayerInfo
from ..vocab import ActivationFamily, Role

__all__ = ["RunEvidence", "dominant_activation", "hidden_activations", "init_advice", "pretty_activation",
           "recommended_initializer"]


@dataclass(frozen=True)
class RunEvidence:
    """Everything the checks look at for one run (one initializer x seed).

    ``initializer``: the run's initializer label (``he``, ``random:std=0.05``, ``keep`` for a model audited
    as given); ``weight_vars``: weight-layer module name -> the Var(W) the theory uses (the initializer's
    formula, or the measured variance of the weights as given); ``default_init``: the weights look like
    PyTorch's default initialization (theory then notes the biases it ignores).
    ``frame``: this run's recorded series; ``layers``: ``Recorder.layers()``; ``weights_init`` /
    ``weights_final``: Conv/Linear module name -> (weight, bias) at init / after training (final may be
    empty, e.g. for an audit); ``losses``: the training loss of each step (``losses[i]`` is step ``i``);
    ``output_numel`` (optional): Conv/Linear call-site name -> elements per sample of its output
    (C x H x W), used to measure the backward signal as per-sample energy (see :meth:`output_sizes`);
    ``grad_norms`` (optional): the L2 norm of all parameter gradients of each step, as ``losses``.

    With the model's structure known (``structure``), the checks judge each chain of layers and the residual
    stream on their own; ``grads_init`` (weight-layer module name -> (weight gradient, bias gradient) of the
    first step; for a module whose weight starts learning later, its gradient at that step) lets the symmetry
    check look ahead; ``zero_params`` (the parameters that are all zero at initialization, by qualified name
    -> whether they get a non-zero gradient within the look-ahead) tells intentional zeros from failures, and
    ``zero_steps`` says from which step each learns (absent: step 1; the audit looks ahead several steps,
    :mod:`~initdiag.recording.lookahead`); ``norm_gains`` (normalization call site -> ``mean(gamma^2) +
    mean(beta^2)``, the second moment it sets) serves the theory of the stream.
    """

    run: str
    initializer: str
    frame: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    weights_init: Weights
    weights_final: Weights
    losses: np.ndarray
    output_numel: Mapping[str, int] = field(default_factory=dict)
    grad_norms: np.ndarray | None = None
    weight_vars: Mapping[str, float] = field(default_factory=dict)
    default_init: bool = False
    structure: Structure | None = None
    grads_init: Weights = field(default_factory=dict)
    zero_params: Mapping[str, bool] = field(default_factory=dict)
    zero_steps: Mapping[str, int] = field(default_factory=dict)
    norm_gains: Mapping[str, float] = field(default_factory=dict)
    steps_per_epoch: int | None = None
    """Training steps per epoch (the ``stalled`` check judges the first epoch); None: unknown or no training."""
    input_groups: Mapping[str, int] = field(default_factory=dict)
    """Weight-layer module name -> groups of output units reading disjoint inputs (grouped convolutions;
    absent: 1): only units of one group can be symmetric."""
    gates: tuple[GateStats, ...] = ()
    """The gates of the recurrent layers at initialization (:mod:`~initdiag.recording.gates`)."""
    zero_shadow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Weight-layer call site -> the near-zero parameters (that learn) through which alone its input varies
    over the batch (:func:`~initdiag.recording.lookahead.zero_shadow`)."""
    extras: Mapping[str, SiteExtras] = field(default_factory=dict)
    """Call site -> what one batch showed beyond the variances (:mod:`~initdiag.recording.extras`)."""
    output: OutputStats | None = None
    """The model's logits at initialization (:func:`~initdiag.recording.extras.output_stats`)."""
    dtype: str | None = None
    """The dtype the user trains in (``float16``, ``bfloat16``): the precision check decides for it."""

    @property
    def blocks(self) -> tuple[LayerInfo, ...]:
        """The residual stream's recorded sites (the stream entering the first block, then each block), in
        stream order; with the structure, only its stream's (a block module called again, on another input,
        is not the stream's continuation)."""
        known = None if self.structure is None or not self.structure.blocks else \
            {b.name for b in self.structure.blocks} | {f"{self.structure.blocks[0].name}:in"}
        return tuple(sorted((la for la in self.layers if la.role == Role.BLOCK and (known is None or la.name in known)),
                            key=lambda la: la.depth))

    @property
    def weight_layers(self) -> tuple[LayerInfo, ...]:
        """Conv/Linear call sites in execution order."""
        return tuple(sorted((la for la in self.layers if la.role == Role.WEIGHT), key=lambda la: la.depth))

    def output_sizes(self) -> dict[str, float] | None:
        """Elements per sample of each Conv/Linear output, or None when any is unknown.

        From ``output_numel``, else a ``numel`` attribute of the LayerInfo (if the recorder provides
        one), else ``out_features`` for a Linear layer (exact for (batch, features) outputs).
        """
        sizes: dict[str, float] = {}
        for la in self.weight_layers:
            size = self.output_numel.get(la.name) or getattr(la, "numel", None)
            if not size and la.module == "Linear" and la.weight_shape:
                size = la.weight_shape[0]
            if not size:
                return None
            sizes[la.name] = float(size)
        return sizes or None


def pretty_activation(activation: str) -> str:
    """Display name of an activation (the registry's): ``relu`` -> ``ReLU``; an unknown name as it is."""
    info = lookup(activation)
    return info.display if info is not None else activation


def recommended_initializer(activation: str) -> str:
    """CLI name of the initializer whose variance theory fits ``activation`` (the registry's advice).

    ``he`` (Var(W) = 2/fan_in) for the ReLU family, ``lecun`` (1/fan_in) for SELU, ``xavier``
    (2/(fan_in + fan_out)) for tanh, sigmoid, linear layers and unknown activations.
    """
    info = lookup(activation)
    return info.initializer if info is not None else ADVICE[ActivationFamily.UNKNOWN].initializer


def hidden_activations(ev: RunEvidence) -> tuple[str, ...]:
    """Activations after each Conv/Linear layer but the last (the output layer), in order."""
    acts = [la.activation or "linear" for la in ev.weight_layers]
    return tuple(acts[:-1]) if len(acts) > 1 else tuple(acts)


def dominant_activation(ev: RunEvidence) -> str:
    """The most common activation among the hidden layers (``linear`` if none)."""
    acts = hidden_activations(ev)
    return max(dict.fromkeys(acts), key=acts.count) if acts else "linear"


def init_advice(ev: RunEvidence) -> str:
    """Which initializer to use, by CLI name, for the run's hidden activation(s)."""
    acts = dict.fromkeys(hidden_activations(ev)) or {"linear": None}
    parts = []
    for act in acts:
        rec = recommended_initializer(act)
        parts.append(f"{pretty_activation(act)} layers: use `{rec}`")
    text = "; ".join(parts)
    if ev.initializer.partition(":")[0].removesuffix("-uniform") in {recommended_initializer(a) for a in acts}:
        text += (" (already in use: at this depth consider normalization layers (BatchNorm/LayerNorm) or "
                 "residual connections)")
    return text
