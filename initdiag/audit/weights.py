"""The audit's view of each weight: its variance against what its activation calls for, PyTorch's default
init recognized, and the recommendation drawn from the audited runs.

Pure functions of weights, layers and verdicts; no hooks, no running.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..checks import Verdict, pretty_activation, recommended_initializer
from ..initializers import INITIALIZERS
from ..results import LayerWeight, Recommendation
from ..structure.layers import WEIGHT_LAYER_TYPES, LayerInfo, fans, main_weight
from ..vocab import Role, Signal, Status

__all__ = [
    "DEFAULT_INIT_MISS",
    "DEFAULT_INIT_Z",
    "forward_gain",
    "hidden_activation",
    "layer_weights",
    "looks_pytorch_default",
    "recommend",
]

DEFAULT_INIT_Z = 5.0
"""How many standard deviations the second moment of a weight may be from its value under PyTorch's default
init and still count as default (:func:`looks_pytorch_default`)."""
DEFAULT_INIT_MISS = 1e-6
"""Probability, under PyTorch's default (uniform) init, that the largest |w| falls short of the bound that
:func:`looks_pytorch_default` requires, i.e. of missing a default-initialized layer on that criterion."""

_FORMULA = {"he": "Var(W) = 2/fan_in (gain sqrt(2))", "xavier": "Var(W) = 2/(fan_in + fan_out) (gain 1)",
            "lecun": "Var(W) = 1/fan_in"}


def _uniform_like(values: np.ndarray, bound: float) -> bool:
    n = values.size
    if n < 2 or not bound > 0:
        return False
    top = float(np.abs(values).max())
    m2 = float(np.mean(np.square(values, dtype=np.float64)))
    return (top <= bound * (1 + 1e-6) and top >= bound * (1 - math.log(1 / DEFAULT_INIT_MISS) / n)
            and abs(m2 / (bound**2 / 3) - 1) <= DEFAULT_INIT_Z * math.sqrt(0.8 / n))


def _normal_like(values: np.ndarray, std: float) -> bool:
    n = values.size
    if n < 2:
        return False
    m2 = float(np.mean(np.square(values, dtype=np.float64)))
    mean = float(np.mean(values, dtype=np.float64))
    return (abs(m2 / std**2 - 1) <= DEFAULT_INIT_Z * math.sqrt(2 / n)
            and abs(mean) <= DEFAULT_INIT_Z * std / math.sqrt(n))


def _flat(t: torch.Tensor | None) -> np.ndarray:
    return np.zeros(0) if t is None else t.detach().float().cpu().numpy().ravel()


def looks_pytorch_default(module: nn.Module) -> bool:
    """Whether the weights of ``module`` are consistent with PyTorch's own init for its type (doing nothing).

    Conv/Linear: ``W, b ~ U(-a, a)``, ``a = 1/sqrt(fan_in)`` (``kaiming_uniform_(a=sqrt(5))``); LSTM/GRU/RNN:
    every weight and bias ``~ U(-a, a)``, ``a = 1/sqrt(hidden_size)``; MultiheadAttention: ``in_proj_weight``
    ``~ U(-a, a)``, ``a = sqrt(6/(fan_in + fan_out))`` (xavier_uniform); Embedding: ``W ~ N(0, 1)``.
    A uniform ``U(-a, a)`` with ``n`` values is accepted when every ``|w| <= a`` (float tolerance), the largest
    ``|w| >= a (1 - ln(1/DEFAULT_INIT_MISS)/n)`` and the second moment ``m2 = mean(w^2)`` is within
    ``DEFAULT_INIT_Z`` standard deviations of ``a^2/3`` (relative sd ``sqrt(0.8/n)``); a normal ``N(0, s^2)``
    when ``m2/s^2`` is within ``DEFAULT_INIT_Z sqrt(2/n)`` of 1 and the mean within ``DEFAULT_INIT_Z s/sqrt(n)``
    of 0. A consistency check, not a test with a p-value: weights drawn like the default pass it.
    """
    weight = main_weight(module)
    if weight is None:
        return False
    if isinstance(module, WEIGHT_LAYER_TYPES):
        bound = 1 / math.sqrt(fans(weight)[0])
        bias = getattr(module, "bias", None)
        return _uniform_like(_flat(weight), bound) and bool(np.all(np.abs(_flat(bias)) <= bound * (1 + 1e-6)))
    if isinstance(module, nn.RNNBase):
        values = np.concatenate([_flat(p) for p in module.parameters(recurse=False)])
        return _uniform_like(values, 1 / math.sqrt(module.hidden_size))
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        out_f, in_f = module.in_proj_weight.shape
        return _uniform_like(_flat(module.in_proj_weight), math.sqrt(6 / (in_f + out_f)))
    if isinstance(module, nn.Embedding):
        w = weight.detach().float().cpu().numpy()
        if module.padding_idx is not None:
            w = np.delete(w, module.padding_idx, axis=0)
        return _normal_like(w.ravel(), 1.0)
    return False


def layer_weights(model: nn.Module, layers: Sequence[LayerInfo], reinitialized: bool) -> tuple[LayerWeight, ...]:
    """One :class:`LayerWeight` per recorded weight layer (first call site) that has a weight."""
    modules = {name or type(m).__name__: m for name, m in model.named_modules()}
    rows: list[LayerWeight] = []
    seen: set[str] = set()
    for la in sorted((la for la in layers if la.role == Role.WEIGHT), key=lambda la: la.depth):
        module = modules.get(la.module_name)
        weight = main_weight(module) if module is not None else None
        if module is None or weight is None or la.module_name in seen:
            continue
        seen.add(la.module_name)
        act = la.activation or "linear"
        rec = recommended_initializer(act)
        shape = tuple(weight.shape)
        variance = float(np.var(_flat(weight), dtype=np.float64))
        conv_linear = isinstance(module, WEIGHT_LAYER_TYPES)
        rec_var = INITIALIZERS[rec].variance(shape, INITIALIZERS[rec].defaults) if conv_linear else None
        rows.append(LayerWeight(la.module_name, la.module, act, shape, variance, rec, rec_var,
                                variance / rec_var if rec_var else None, looks_pytorch_default(module),
                                reinitialized and conv_linear))
    return tuple(rows)


def hidden_activation(layers: Sequence[LayerInfo]) -> str:
    """The most common activation after the weight layers but the last (the output layer), ``linear`` if none."""
    acts = [la.activation or "linear" for la in sorted((la for la in layers if la.role == Role.WEIGHT),
                                                       key=lambda la: la.depth)]
    hidden = acts[:-1] if len(acts) > 1 else acts
    return max(dict.fromkeys(hidden), key=hidden.count) if hidden else "linear"


def forward_gain(verdicts: Sequence[Verdict]) -> float:
    """The fitted per-layer forward variance gain of a run (NaN when not measured)."""
    for v in verdicts:
        if v.signal == Signal.FORWARD:
            gain = v.effect.get("gain")
            return float(gain) if gain is not None else math.nan
    return math.nan


def _rank(verdicts: Sequence[Verdict]) -> tuple[int, int, float]:
    gain = forward_gain(verdicts)
    closeness = abs(math.log(gain)) if gain > 0 and math.isfinite(gain) else math.inf
    return (sum(v.status == Status.FAIL for v in verdicts), sum(v.status == Status.WARN for v in verdicts),
            closeness)


def _fails(verdicts: Sequence[Verdict]) -> list[str]:
    return [f"{v.outcome} ({v.signal})" if v.signal in (Signal.FORWARD, Signal.BACKWARD) else v.outcome
            for v in verdicts if v.status == Status.FAIL]


def _outcome(label: str, verdicts: Sequence[Verdict]) -> str:
    fails, gain = _fails(verdicts), forward_gain(verdicts)
    warns = sum(v.status == Status.WARN for v in verdicts)
    text = f"`{label}`: " + (f"fails {', '.join(fails)}" if fails else "no failing check")
    text += f", {warns} warning{'s' if warns != 1 else ''}" if warns else ""
    return text + (f", forward gain {gain:.3g} per layer" if math.isfinite(gain) else "")


def recommend(runs: Sequence[tuple[str, Sequence[Verdict], Sequence[LayerInfo], Sequence[LayerWeight]]]
              ) -> Recommendation:
    """Recommend an initializer from the audited runs: ``(label, verdicts, layers, weights)`` each.

    Several runs: the best by (fewest fail verdicts, fewest warnings, ``|log forward gain|``), ties to the
    first given. One run: itself when nothing fails, else the initializer the checks advise for the most
    common hidden activation (``he`` for ReLU), with the run's failures and weights as evidence.
    """
    act = hidden_activation(runs[0][2]) if runs else "linear"
    advised = recommended_initializer(act)
    if len(runs) > 1:
        best = min(runs, key=lambda r: _rank(r[1]))
        n_fail = _rank(best[1])[0]
        lead = (f"`{best[0]}` is the best of the {len(runs)} audited initializations" if not n_fail else
                f"none of the {len(runs)} audited initializations passes every check; `{best[0]}` fails the fewest")
        text = lead + ": " + "; ".join(_outcome(r[0], r[1]) for r in runs) + "."
        if n_fail and advised not in {r[0] for r in runs}:
            text += f" For {pretty_activation(act)} layers the checks advise `{advised}`: audit it too."
        return Recommendation(best[0], text, True)
    if not runs:
        return Recommendation("keep", "nothing was audited.", False)
    label, verdicts, _, weights = runs[0]
    if not _fails(verdicts):
        return Recommendation(label, f"keep `{label}`. " + _outcome(label, verdicts) + ".", False)
    text = f"use `{advised}`. " + _outcome(label, verdicts) + "."
    text += (f" The hidden layers use {pretty_activation(act)} (from the module order), for which `{advised}` "
             f"keeps the variance: {_FORMULA.get(advised, '')}.")
    ratios = [w.ratio for w in weights if w.ratio is not None and w.activation == act]
    default = sum(w.default_init for w in weights if w.ratio is not None)
    if ratios:
        ratio = float(np.exp(np.mean(np.log(np.maximum(ratios, 1e-300)))))
        text += (f" {default} of {sum(w.ratio is not None for w in weights)} Conv/Linear layers are at PyTorch's "
                 f"default init; the Var(W) of the {len(ratios)} layers followed by {pretty_activation(act)} is "
                 f"{ratio:.3g}x (geometric mean) what `{advised}` gives.")
    if label == advised:
        text += (" It is already in use: at this depth consider normalization layers (BatchNorm/LayerNorm) or "
                 "residual connections.")
    else:
        text += f" Compare them side by side with --init {label},{advised}."
    return Recommendation(advised, text, False)
