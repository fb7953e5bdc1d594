"""Types shared by the checks: verdict names and records, thresholds, the evidence of one run.

Private part of :mod:`initdiag.checks` (import the public names from there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from .initializers import InitSpec
from .recorder import LayerInfo

Weights = Mapping[str, tuple[np.ndarray, np.ndarray | None]]


class CheckName(StrEnum):
    """What a failing verdict found; each is also a ``--fail-on`` name."""

    VANISHING = "vanishing"
    """The per-layer variance gain, fitted across depth, shrinks the signal by >= ``change_factor``."""
    EXPLODING = "exploding"
    """The same, growing by >= ``change_factor`` (or overflowing to inf)."""
    NO_SIGNAL = "no_signal"
    """The variance of a layer's output is 0 (or at float rounding level): nothing propagates."""
    SYMMETRY = "symmetry"
    """Neurons of a layer are identical (or nearer to duplicates than independent random rows)."""
    DEAD = "dead"
    """ReLU-family units that output 0 for every input of the evaluation batch."""
    SATURATION = "saturation"
    """tanh/sigmoid outputs pinned at their bounds."""
    DIVERGED = "diverged"
    """NaN/Inf in the loss or in a recorded statistic."""


HEALTHY = "healthy"
"""``check`` of a signal verdict (forward/backward) that found neither vanishing, exploding nor no signal."""

SIGNAL_CHECKS = frozenset({CheckName.VANISHING, CheckName.EXPLODING, CheckName.NO_SIGNAL, HEALTHY})
FAMILIES: tuple[str, ...] = ("signal", "symmetry", "dead", "saturation", "diverged")
"""Columns of the report's summary grid; :attr:`Verdict.family` maps every verdict to one."""


class Status(StrEnum):
    """Badge of a verdict: only ``fail`` counts for ``--fail-on``."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


_STATUS_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


def _json_number(x: Any) -> Any:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones and NaN/Inf into None, recursively."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    return _json_number(value)


@dataclass(frozen=True)
class Verdict:
    """One finding about one run, one row of ``summary.json``'s ``verdicts``.

    ``check``: for the signal rows (``signal`` forward/backward) the outcome, one of ``vanishing``,
    ``exploding``, ``no_signal`` or ``healthy``; for the other rows the family name ``symmetry``,
    ``dead``, ``saturation`` or ``diverged``, whatever the status. A ``--fail-on`` name matches a
    verdict whose ``check`` is that name and whose ``status`` is ``fail``. ``family`` groups them for the
    grid. ``effect`` holds the estimated effect sizes (NaN/None when undefined), ``details`` per-layer
    evidence (e.g. the neuron groups), ``phase`` when the evidence was taken.
    """

    check: str
    signal: str | None
    status: str
    layers: tuple[str, ...]
    p_value: float | None
    effect: Mapping[str, float | None]
    message: str
    advice: str | None
    phase: str = "init"
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """Grid column: ``signal`` for vanishing/exploding/no_signal/healthy, else ``check`` itself."""
        return "signal" if self.check in SIGNAL_CHECKS else self.check

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/Inf -> None) with the ``summary.json`` keys, plus family/phase/details."""
        return json_safe({
            "check": self.check, "family": self.family, "signal": self.signal, "status": self.status,
            "phase": self.phase, "layers": list(self.layers), "p_value": self.p_value,
            "effect": dict(self.effect), "message": self.message, "advice": self.advice,
            "details": dict(self.details),
        })


def worst_status(verdicts: Any, family: str | None = None) -> str | None:
    """The worst status among ``verdicts`` (of ``family`` if given), or None when there are none."""
    ranks = [_STATUS_RANK[Status(v.status)] for v in verdicts if family is None or v.family == family]
    if not ranks:
        return None
    return next(s for s, r in _STATUS_RANK.items() if r == max(ranks)).value


@dataclass(frozen=True)
class Thresholds:
    """Every decision threshold of the checks, with its default.

    Signal (vanishing/exploding):
        change_factor: the fitted change across the network, ``gain ** (layers - 1)``, must reach this
            factor (or its inverse) for ``exploding`` (``vanishing``); the slope's confidence interval
            must also exclude 0. 100 tolerates the slow fall of deep He/ReLU nets (~10x over 30 layers,
            from inputs growing correlated with depth).
        few_layers_factor: with fewer than 3 layers there is no confidence interval: a raw
            first-to-last change beyond this factor fails, beyond ``change_factor`` warns.
        alpha: 1 - confidence level of the slope's interval (t-based), and the level of the accuracy
            comparisons.
        no_signal_rel, no_signal_floor: a layer carries no signal when ``var <= no_signal_rel *
            max(mean_sq, no_signal_floor)`` (``var`` comes from float32 sums: a constant output shows
            ``var ~ 1e-7 mean_sq``, not 0).
    Symmetry:
        symmetry_atol, symmetry_rtol: two neurons (weight row + bias) are identical when every entry
            differs by at most ``atol + rtol * max|entry of the layer|``.
        near_duplicate_alpha: family-wise level (Holm across the run's layers) of the near-duplicate test
            (largest |cosine| between neurons vs independent random rows). 1% keeps the false-alarm rate
            of the symmetry check below 5% per run even with both the init and final phases tested.
        cosine_max_rows: layers with more neurons are subsampled to this many for the cosine test.
        mc_samples: 0: analytic p-value (union bound over pairs); > 0: Monte Carlo with this many draws.
    Dead units (ReLU family, fraction of a layer's units that are 0 for every evaluation input):
        dead_warn, dead_fail: warn / fail when any layer reaches this fraction.
    Saturation (tanh/sigmoid, fraction of a layer's outputs within ``saturation_tol`` of a bound):
        saturation_tol: the tolerance the recorder used (``Recorder(saturation_tol=...)``), for the text.
        saturation_warn, saturation_fail: warn / fail when any layer reaches this fraction.
    """

    change_factor: float = 100.0
    few_layers_factor: float = 1e4
    alpha: float = 0.05
    no_signal_rel: float = 1e-6
    no_signal_floor: float = 1e-30
    symmetry_atol: float = 1e-7
    symmetry_rtol: float = 1e-5
    near_duplicate_alpha: float = 0.01
    cosine_max_rows: int = 512
    mc_samples: int = 0
    dead_warn: float = 0.5
    dead_fail: float = 0.9
    saturation_tol: float = 0.01
    saturation_warn: float = 0.1
    saturation_fail: float = 0.5

    def __post_init__(self) -> None:
        if self.change_factor <= 1 or self.few_layers_factor < self.change_factor:
            raise ValueError("need 1 < change_factor <= few_layers_factor")
        for name in ("alpha", "near_duplicate_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1)")
        if not (0 <= self.dead_warn <= self.dead_fail <= 1 and 0 <= self.saturation_warn
                <= self.saturation_fail <= 1):
            raise ValueError("need 0 <= warn <= fail <= 1 for dead and saturation fractions")


DEFAULT_THRESHOLDS: Thresholds = Thresholds()
"""The defaults, as one shared instance (for function defaults)."""


@dataclass(frozen=True)
class RunEvidence:
    """Everything the checks look at for one run (one initializer x seed).

    ``frame``: this run's recorded series; ``layers``: ``Recorder.layers()``; ``weights_init`` /
    ``weights_final``: Conv/Linear module name -> (weight, bias) at init / after training (final may be
    empty, e.g. for an audit); ``losses``: the training loss of each step (``losses[i]`` is step ``i``);
    ``output_numel`` (optional): Conv/Linear call-site name -> elements per sample of its output
    (C x H x W), used to measure the backward signal as per-sample energy (see :meth:`output_sizes`);
    ``grad_norms`` (optional): the L2 norm of all parameter gradients of each step, as ``losses``.
    """

    run: str
    spec: InitSpec
    frame: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    weights_init: Weights
    weights_final: Weights
    losses: np.ndarray
    output_numel: Mapping[str, int] = field(default_factory=dict)
    grad_norms: np.ndarray | None = None

    @property
    def weight_layers(self) -> tuple[LayerInfo, ...]:
        """Conv/Linear call sites in execution order."""
        return tuple(sorted((la for la in self.layers if la.role == "weight"), key=lambda la: la.depth))

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


_PRETTY = {"relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "elu": "ELU",
           "selu": "SELU", "gelu": "GELU", "silu": "SiLU", "linear": "linear"}
_USE_HE = frozenset({"relu", "relu6", "leaky_relu", "prelu", "elu", "celu", "gelu", "silu", "mish",
                     "softplus", "hardswish"})


def pretty_activation(activation: str) -> str:
    """Display name of an activation family: ``relu`` -> ``ReLU``."""
    return _PRETTY.get(activation, activation)


def recommended_initializer(activation: str) -> str:
    """CLI name of the initializer whose variance theory fits ``activation``.

    ``he`` (Var(W) = 2/fan_in) for the ReLU family, ``lecun`` (1/fan_in) for SELU, ``xavier``
    (2/(fan_in + fan_out)) for tanh, sigmoid and linear layers.
    """
    if activation in _USE_HE:
        return "he"
    if activation == "selu":
        return "lecun"
    return "xavier"


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
    if ev.spec.name.removesuffix("-uniform") in {recommended_initializer(a) for a in acts}:
        text += (" (already in use: at this depth consider normalization layers (BatchNorm/LayerNorm) or "
                 "residual connections)")
    return text


def holm(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN).

    With the ``m`` finite p-values sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``;
    rejecting ``p_adj < alpha`` keeps the family-wise error rate at most ``alpha`` under any dependence.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
