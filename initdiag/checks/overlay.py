"""The theory overlay: the per-layer variance gain theory expects next to the one measured."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..jsonable import json_safe
from ..series import first_step_values
from ..structure.layers import LayerInfo, shape_fans
from ..theory import (
    Transition,
    activation_factors,
    backward_gain,
    chain_profile,
    expected_gain,
    phi_spec,
    slope_bound,
)
from ..vocab import Signal
from .evidence import RunEvidence, hidden_activations, pretty_activation
from .registry import MethodNote
from .signal import SignalFit

__all__ = ["THEORY_METHOD", "TheoryProfile", "TheoryRow", "chain_predictions", "expected_chain_gain", "theory_profiles",
           "theory_rows"]


@dataclass(frozen=True)
class TheoryRow:
    """Expected vs measured per-layer variance gain for one run and one signal.

    ``expected_gain``: the theory's per-transition gains ``g_l = fan x Var(W_l) x c(activation before
    layer l)`` (``fan = fan_in`` forward, ``fan_out`` backward; c = 1/2 for ReLU, 1 linear, 1 tanh as an
    upper bound; ``initializers.expected_gain``; backward per-sample energy also x ``n_{l-1} / n_l``,
    the ratio of output sizes), turned into a log-variance profile and fitted over
    the same layers as the measurement, so one odd layer (a 10-way head) weighs the same in both; equal
    to the geometric mean of the ``g_l`` when they are all equal. ``measured_gain`` with its interval
    ``gain_low``..``gain_high`` comes from :func:`signal_fit`. ``expected_low``..``expected_high``: backward, the
    range correlations the theory assumes away can give (max-pool windows, the loss's gradient at the head;
    ``_gains``); forward, the expected gain itself.
    """

    initializer: str
    activation: str
    signal: str
    expected_gain: float | None
    measured_gain: float | None
    gain_low: float | None
    gain_high: float | None
    note: str
    expected_low: float | None = None
    expected_high: float | None = None

    def to_json(self) -> dict[str, object]:
        """JSON-safe dict (NaN/Inf -> None)."""
        return json_safe(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TheoryRow:
        """The row :meth:`to_json` wrote."""
        def num(x: object) -> float | None:
            return None if x is None else float(x)  # type: ignore[arg-type]
        return cls(str(data["initializer"]), str(data["activation"]), str(data["signal"]), num(data["expected_gain"]),
                   num(data["measured_gain"]), num(data["gain_low"]), num(data["gain_high"]), str(data["note"]),
                   num(data.get("expected_low")), num(data.get("expected_high")))


def _activation(ev: RunEvidence, layer: LayerInfo) -> tuple[str, tuple[tuple[str, object], ...]]:
    """The activation after ``layer`` with its parameters (from the structure when known)."""
    if ev.structure is not None:
        try:
            act = ev.structure.layer(layer.name).activation
            return act.name, act.params
        except KeyError:
            pass
    return layer.activation or "linear", ()


def _size(ev: RunEvidence, name: str, which: str) -> float | None:
    """Elements per sample of a layer's output (``which="out"``) or data input (``"in"``), from the structure."""
    if ev.structure is None:
        return None
    try:
        shape = getattr(ev.structure.layer(name), f"{which}_shape")
    except KeyError:
        return None
    return float(math.prod(shape)) if shape else None


def _transition(ev: RunEvidence, prev: LayerInfo, cur: LayerInfo) -> Transition | str:
    """The step from ``prev`` to ``cur`` as theory sees it (biases left out), or why it cannot."""
    weight_var = ev.weight_vars.get(cur.module_name)
    if weight_var is None:
        return f"layer '{cur.name}' has no known weight variance"
    fan_in, fan_out = (cur.fan_in, cur.fan_out) if cur.fan_in is not None and cur.fan_out is not None else \
        shape_fans(cur.weight_shape) if cur.weight_shape is not None else (None, None)
    if fan_in is None or fan_out is None:
        return f"layer '{cur.name}' has no known fan-in"
    act, params = _activation(ev, prev)
    n_out, n_in = _size(ev, prev.name, "out"), _size(ev, cur.name, "in")
    route = ev.structure.layer(cur.name).route_in if ev.structure is not None and n_in else ""
    spread = n_out / n_in if n_out and n_in else 1.0
    return Transition(act, weight_var, float(fan_in), float(fan_out), 0.0, params, route, spread)


def _gains(ev: RunEvidence, direction: str, wl: list[LayerInfo], bound: str = "independent"
           ) -> tuple[list[float] | None, str]:
    """The per-element gain theory predicts for each step from one layer of a chain to the next; ``bound``
    backward: "independent" (the gradient independent of the forward), or the "low" and "high" ends of what
    correlations can make of it (:func:`~initdiag.theory.backward_gain`; "high" also lets the loss's gradient
    at the model's last weight layer fall only where the activation before it passes the most,
    :func:`~initdiag.theory.slope_bound`: a saturated softmax puts it on the class whose weights align with the
    active units)."""
    measured = first_step_values(ev.frame, Signal.FORWARD)
    gains: list[float] = []
    last = ev.weight_layers[-1].name if ev.weight_layers else None
    for prev, cur in itertools.pairwise(wl):
        t = _transition(ev, prev, cur)
        if isinstance(t, str):
            return None, t
        q = max(measured.get(prev.name, 1.0), 0.0)
        g = expected_gain(t.activation, t.weight_var, None, direction, fans=(t.fan_in, t.fan_out), q=q,
                          params=t.params) if direction == "forward" else backward_gain(t, q, bound)
        if g is not None and bound == "high" and cur.name == last and direction == "backward":
            sup, plain = slope_bound(t.activation, t.params), activation_factors(t.activation, q, t.params)
            g = g * sup / plain[1] if sup is not None and plain is not None and plain[1] > 0 else None
        if g is None:
            return None, (f"theory cannot evaluate the activation after '{prev.name}' ({t.activation})"
                          if phi_spec(t.activation, t.params) is None else
                          f"the gradient from '{cur.name}' back to '{prev.name}' takes mixed routes ({t.route})")
        gains.append(g)
    return gains, ""


def _expected_profile_gain(ev: RunEvidence, direction: str, fit: SignalFit | None, bound: str = "independent"
                           ) -> tuple[float | None, str]:
    infos = {la.name: la for la in ev.weight_layers}
    wl = [infos[n] for n in (fit.layers if fit is not None else infos) if n in infos]
    if len(wl) < 2:
        return None, "fewer than 2 layers in the chain"
    gains, why = _gains(ev, direction, wl, bound)
    if gains is None:
        return None, why
    sizes = ev.output_sizes() if direction == "backward" and fit is not None and fit.per_sample else None
    if sizes is not None:  # per-sample energy: var_{l-1} n_{l-1} = g_l (n_{l-1} / n_l) var_l n_l, g_l per element
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


def expected_chain_gain(ev: RunEvidence, fit: SignalFit) -> float | None:
    """The per-layer gain theory predicts for the chain of ``fit`` (None where it cannot say)."""
    return _expected_profile_gain(ev, fit.kind, fit)[0]


def _agreement(fit: SignalFit, low: float | None, high: float | None) -> str:
    """What the measured interval says of the theory's range ``low``..``high`` (empty when it cannot say)."""
    if low is None or high is None or not (math.isfinite(fit.gain_low) and math.isfinite(fit.gain_high)):
        return ""
    lo, hi = min(low, high), max(low, high)
    if fit.gain_high < lo or fit.gain_low > hi:
        return (f"the measured interval excludes the theory's range {lo:.3g}-{hi:.3g}: an assumption of the "
                "theory fails here (or the measurement), worth a look")
    return ""


def theory_rows(ev: RunEvidence, fits: Mapping[str, SignalFit]) -> tuple[TheoryRow, ...]:
    """Expected next to measured per-layer gain, forward and backward, where theory fixes the gain.

    ``fits``: per direction the fit of the longest chain (:func:`~initdiag.checks.chains.main_fit`), as the
    analysis made it. A signal gets a row only when theory can evaluate every activation of the chain.
    """
    rows: list[TheoryRow] = []
    names = [la.name for la in ev.weight_layers]
    acts = dict.fromkeys(pretty_activation(a) for a in hidden_activations(ev))
    act_label = "+".join(acts) if acts else "linear"
    for direction in ("forward", "backward"):
        fit = fits.get(direction)
        if fit is None or fit.n_layers == 0:
            continue
        expected, why = _expected_profile_gain(ev, direction, fit)
        if expected is None:
            continue
        low, high = ((_expected_profile_gain(ev, direction, fit, b)[0] for b in ("low", "high"))
                     if direction == "backward" else (expected, expected))
        notes = [why, f"over the chain '{fit.layers[0]}' to '{fit.layers[-1]}' ({fit.n_layers} layers)"
                 if len(fit.layers) < len(names) else "",
                 "theory ignores the biases, which add variance" if ev.default_init else "",
                 "" if why else _agreement(fit, low, high)]
        note = "; ".join(n for n in notes if n)

        def opt(x: float) -> float | None:
            return x if math.isfinite(x) else None

        rows.append(TheoryRow(ev.initializer, act_label, direction, expected, opt(fit.gain), opt(fit.gain_low),
                              opt(fit.gain_high), note, low, high))
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


def theory_profiles(ev: RunEvidence, chains: Sequence[tuple[str, ...]] | None = None) -> tuple[TheoryProfile, ...]:
    """One :class:`TheoryProfile` per recorded signal over the weight layers in execution order: each chain
    (``chains``, default one chain of all layers) anchored at its own first (forward) or last (backward)
    layer's measured variance and carried through :func:`~initdiag.theory.chain_profile`."""
    layers = list(ev.weight_layers)
    names = tuple(la.name for la in layers)
    infos = dict(zip(names, layers, strict=True))
    chains = chains if chains is not None else (names,)
    out: list[TheoryProfile] = []
    for signal in (Signal.FORWARD, Signal.BACKWARD):
        measured = first_step_values(ev.frame, signal)
        forward = first_step_values(ev.frame, Signal.FORWARD)
        if len(layers) < 2 or not all(n in measured for n in names):
            continue
        values: dict[str, float | None] = {}
        for chain in chains:
            wl = [infos[n] for n in chain if n in infos]
            if len(wl) < 2:
                continue
            steps = [_transition(ev, prev, cur) for prev, cur in itertools.pairwise(wl)]
            transitions = [t for t in steps if not isinstance(t, str)]
            if len(transitions) < len(wl) - 1:
                continue
            anchor = measured[wl[0].name] if signal == Signal.FORWARD else measured[wl[-1].name]
            if not anchor > 0:
                continue
            profile = chain_profile(anchor, transitions, signal, inputs=[forward.get(la.name, 1.0) for la in wl])
            if profile is not None:
                values.update({la.name: v if v > 0 else None for la, v in zip(wl, profile, strict=True)})
        out.append(TheoryProfile(str(signal), names, tuple(values.get(n) for n in names)))
    return tuple(out)


def chain_predictions(ev: RunEvidence, fits: Mapping[str, Sequence[SignalFit]]
                      ) -> dict[str, dict[tuple[str, ...], list[float | None]]]:
    """Per direction and fitted chain, the variance theory predicts at each of the chain's layers."""
    out: dict[str, dict[tuple[str, ...], list[float | None]]] = {}
    for kind, kind_fits in fits.items():
        for fit in kind_fits:
            if fit.n_layers < 3:
                continue
            profile = next((p for p in theory_profiles(ev, [fit.layers]) if p.signal == kind), None)
            if profile is not None:
                values = dict(zip(profile.layers, profile.values, strict=True))
                out.setdefault(kind, {})[fit.layers] = [values.get(n) for n in fit.layers]
    return out


THEORY_METHOD = MethodNote(
    "theory", "Theory overlay",
    "The length map q' = sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2 with sigma_w^2 = fan_in Var(W), and backward "
    "sigma_w^2 = fan_out Var(W) times E_z[phi'(sqrt(q) z)^2] (Poole et al. 2016; Schoenholz et al. 2017), for any "
    "elementwise activation by Gauss-Hermite or composite Gauss-Legendre quadrature with phi' from autograd (closed "
    "forms for the ReLU family and linear: c = 1/2 for ReLU, 1 linear; He et al. 2015, Glorot & Bengio 2010). "
    "Backward, the gradient's route between two layers counts: a max-pool over m elements keeps its energy and "
    "sends it to each window's maximum, where the activation passes E[phi'(max of m)^2] (1 - 2^-m for ReLU, not "
    "1/2), an average pool divides it by m, a concatenation hands each input its slice. That assumes the gradient "
    "independent of the forward; backward rows also give the range correlations allow: low with each pool window "
    "moving as one, high with independent windows (an upper bound by Slepian's inequality for positively "
    "correlated neighbours) and the loss's gradient at the model's last layer falling only on the units that pass "
    "the most (a saturated softmax puts it on the class whose weights align with the active units). Each "
    "chain's profile starts from its measured first (forward) or last (backward) layer; the expected per-layer gain "
    "is fitted over the chain like the measurement.",
    "descriptive.",
    "none (for reading the measured gain).",
)
"""The methods section's entry for the theory overlay."""
