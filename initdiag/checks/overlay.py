"""The theory overlay: the per-layer variance gain theory expects next to the one measured."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..jsonable import json_safe
from ..series import first_step_values
from ..theory import expected_gain, variance_profile
from ..vocab import Signal
from .evidence import RunEvidence, hidden_activations, pretty_activation
from .signal import SignalFit, earliest_step, signal_fit

__all__ = ["TheoryProfile", "TheoryRow", "theory_profiles", "theory_rows"]


@dataclass(frozen=True)
class TheoryRow:
    """Expected vs measured per-layer variance gain for one run and one signal.

    ``expected_gain``: the theory's per-transition gains ``g_l = fan x Var(W_l) x c(activation before
    layer l)`` (``fan = fan_in`` forward, ``fan_out`` backward; c = 1/2 for ReLU, 1 linear, 1 tanh as an
    upper bound; ``initializers.expected_gain``; backward per-sample energy also x ``n_{l-1} / n_l``,
    the ratio of output sizes), turned into a log-variance profile and fitted over
    the same layers as the measurement, so one odd layer (a 10-way head) weighs the same in both; equal
    to the geometric mean of the ``g_l`` when they are all equal. ``measured_gain`` with its interval
    ``gain_low``..``gain_high`` comes from :func:`signal_fit`.
    """

    initializer: str
    activation: str
    signal: str
    expected_gain: float | None
    measured_gain: float | None
    gain_low: float | None
    gain_high: float | None
    note: str

    def to_json(self) -> dict[str, object]:
        """JSON-safe dict (NaN/Inf -> None)."""
        return json_safe(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TheoryRow:
        """The row :meth:`to_json` wrote."""
        def num(x: object) -> float | None:
            return None if x is None else float(x)  # type: ignore[arg-type]
        return cls(str(data["initializer"]), str(data["activation"]), str(data["signal"]), num(data["expected_gain"]),
                   num(data["measured_gain"]), num(data["gain_low"]), num(data["gain_high"]), str(data["note"]))


def _expected_profile_gain(ev: RunEvidence, direction: str, fit: SignalFit | None) -> tuple[float | None, str]:
    wl = ev.weight_layers
    if len(wl) < 2:
        return None, "fewer than 2 Conv/Linear layers"
    gains: list[float] = []
    for prev, cur in itertools.pairwise(wl):
        if cur.weight_shape is None:
            return None, f"layer '{cur.name}' has no weight shape"
        weight_var = ev.weight_vars.get(cur.module_name)
        if weight_var is None:
            return None, f"layer '{cur.name}' has no known weight variance"
        g = expected_gain(prev.activation or "linear", weight_var, cur.weight_shape, direction)
        if g is None:
            return None, f"theory does not fix the gain of {pretty_activation(prev.activation or 'linear')}"
        gains.append(g)
    sizes = ev.output_sizes() if direction == "backward" and fit is not None and fit.per_sample else None
    if sizes is not None:  # per-sample energy: var_{l-1} n_{l-1} = g_l (n_{l-1} / n_l) var_l n_l
        gains = [g * sizes[prev.name] / sizes[cur.name] for g, (prev, cur) in
                 zip(gains, itertools.pairwise(wl), strict=True)]
    if min(gains) <= 0:
        if all(not np.any(w) for w, _ in ev.weights_init.values()):
            return 0.0, "zero weights: nothing propagates"
        return None, "theory covers zero-mean random weights"
    steps = np.log(np.asarray(gains))
    # log-variance profile by position (execution order); backward accumulates from the output.
    profile = np.concatenate([[0.0], np.cumsum(steps)]) if direction == "forward" else \
        np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
    names = [la.name for la in wl]
    pos = [names.index(n) for n in (fit.fitted if fit is not None and len(fit.fitted) >= 2 else names)
           if n in names]
    if len(pos) < 2:
        pos = list(range(len(names)))
    slope = float(np.polyfit(np.asarray(pos, float), profile[pos], 1)[0])
    return math.exp(slope if direction == "forward" else -slope), ""


def theory_rows(ev: RunEvidence, fit_forward: SignalFit | None = None,
                fit_backward: SignalFit | None = None) -> tuple[TheoryRow, ...]:
    """Expected next to measured per-layer gain, forward and backward, where theory fixes the gain.

    Fits are computed from ``ev.frame`` (earliest training step) when not given. A signal gets a row
    only when every transition's activation has a known factor (ReLU, linear, tanh).
    """
    rows: list[TheoryRow] = []
    names = [la.name for la in ev.weight_layers]
    acts = dict.fromkeys(pretty_activation(a) for a in hidden_activations(ev))
    act_label = "+".join(acts) if acts else "linear"
    for direction, given in (("forward", fit_forward), ("backward", fit_backward)):
        fit = given
        if fit is None:
            step = earliest_step(ev.frame, direction, "train")
            if step is None:
                continue
            fit = signal_fit(ev.frame, direction, step, "train", layers=names,
                             sizes=ev.output_sizes() if direction == "backward" else None)
        if fit.n_layers == 0:
            continue
        expected, why = _expected_profile_gain(ev, direction, fit)
        if expected is None:
            continue
        formula = ("fan_in x Var(W) x c" if direction == "forward" else
                   "fan_out x Var(W) x c x n_in/n_out (per-sample energy)" if fit.per_sample else
                   "fan_out x Var(W) x c")
        note = why or (f"{formula} per layer (c = 1/2 ReLU, 1 linear"
                       + ("; tanh: upper bound, exact in its linear regime" if "tanh" in acts else "") + ")")
        if ev.default_init:
            note += "; theory ignores the biases, which add variance"

        def opt(x: float) -> float | None:
            return x if math.isfinite(x) else None

        rows.append(TheoryRow(ev.initializer, act_label, direction, expected, opt(fit.gain), opt(fit.gain_low),
                              opt(fit.gain_high), note))
    return tuple(rows)


@dataclass(frozen=True)
class TheoryProfile:
    """The variance theory expects at each of ``layers`` for one signal at initialization, next to the measured
    ``var`` at the first training step: ``values[i]`` is None where theory says nothing (an activation whose
    factor is not fixed, a layer without a known weight variance, a non-positive anchor such as all-zero
    weights). Forward the profile starts from the measured variance of the first layer, ``var_l = g_l
    var_{l-1}``; backward (dL/dy flows from the loss) from the last, ``var_{l-1} = g_l var_l``, with ``g_l =
    fan x Var(W_l) x c`` (:func:`~initdiag.theory.expected_gain`)."""

    signal: str
    layers: tuple[str, ...]
    values: tuple[float | None, ...]

    def to_json(self) -> dict[str, object]:
        return json_safe(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TheoryProfile:
        values = data["values"]
        layers = data["layers"]
        assert isinstance(values, list) and isinstance(layers, list)
        return cls(str(data["signal"]), tuple(map(str, layers)),
                   tuple(None if v is None else float(v) for v in values))


def theory_profiles(ev: RunEvidence) -> tuple[TheoryProfile, ...]:
    """One :class:`TheoryProfile` per recorded signal, over the Conv/Linear call sites in execution order."""
    shaped = [(la, la.weight_shape) for la in ev.weight_layers if la.weight_shape is not None]
    layers = [la for la, _ in shaped]
    names = tuple(la.name for la in layers)
    out: list[TheoryProfile] = []
    for signal in (Signal.FORWARD, Signal.BACKWARD):
        measured = first_step_values(ev.frame, signal)
        if len(layers) < 2 or not all(n in measured for n in names):
            continue
        anchor = measured[names[0]] if signal == Signal.FORWARD else measured[names[-1]]
        profile = None
        if anchor > 0 and all(la.module_name in ev.weight_vars for la in layers[1:]):
            transitions = [(prev.activation or "linear", ev.weight_vars[cur.module_name], shape)
                           for (prev, _), (cur, shape) in itertools.pairwise(shaped)]
            profile = variance_profile(anchor, transitions, signal)
        values = tuple(v if v is not None and v > 0 else None for v in profile) if profile else (None,) * len(names)
        out.append(TheoryProfile(str(signal), names, values))
    return tuple(out)
