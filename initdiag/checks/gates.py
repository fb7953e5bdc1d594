"""The gates of recurrent layers at initialization: saturated gates, against the theory for their activation.

An LSTM's or GRU's gates are sigmoids and tanhs inside one fused call, where the saturation check's hooks
cannot reach; :mod:`~initdiag.recording.gates` replays them. A gate's pre-activation has variance ``q =
fan_in Var(W_ih) E[x^2] + hidden Var(W_hh) E[h^2] + Var(b)`` (the length map, Poole et al. 2016, with the
measured input and state), and a Gaussian pre-activation of variance q puts ``2 (1 - Phi(z* / sqrt(q)))`` of the
gate's outputs within ``tol`` of a bound (``z* = logit(1 - tol)`` for sigmoid, ``atanh(1 - tol)`` for tanh): at
torch's default init (``Var(W) = 1/(3 hidden)``) about none; with N(0, 1) weights most, and a saturated gate
passes no gradient (Hochreiter & Schmidhuber 1997; Jozefowicz et al. 2015 on the forget gate's bias).
"""

from __future__ import annotations

import math

from ..recording.gates import GateStats
from ..vocab import CheckName, Family, Phase, Signal, Status
from .distributions import norm_cdf, norm_sf
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["GateCheck", "expected_saturation", "gate_verdict"]


def expected_saturation(activation: str, var: float, mean: float = 0.0, tol: float = 0.01) -> float:
    """The fraction of ``activation``'s outputs within ``tol`` of a bound for a pre-activation ``N(mean, var)``."""
    edge = math.log((1 - tol) / tol) if activation == "sigmoid" else math.atanh(1 - tol)
    if var <= 0:
        return float(abs(mean) >= edge)
    sd = math.sqrt(var)
    return norm_sf((edge - mean) / sd) + norm_cdf((-edge - mean) / sd)


def _describe(g: GateStats, tol: float) -> str:
    theory = expected_saturation(g.activation, g.expected_var, math.sqrt(g.mean_sq), tol)
    return (f"'{g.name}' ({g.activation}) {g.saturated:.0%}: pre-activation variance {g.var:.3g}, theory "
            f"{g.expected_var:.3g} from Var(W) and the measured input and state, which saturates {theory:.0%}")


def gate_verdict(gates: tuple[GateStats, ...], th: Thresholds) -> Verdict | None:
    """Fail when a gate of a recurrent layer has ``th.saturation_fail`` or more of its outputs within
    ``th.saturation_tol`` of a bound at initialization, warn from ``th.saturation_warn``; None without gates."""
    judged = [g for g in gates if g.activation in ("sigmoid", "tanh") and math.isfinite(g.saturated)]
    if not judged:
        return None
    worst = max(judged, key=lambda g: g.saturated)
    over = [g for g in judged if g.saturated >= th.saturation_warn]
    status = Status.FAIL if worst.saturated >= th.saturation_fail else Status.WARN if over else Status.PASS
    modules = len({g.module for g in judged})
    head = (f"At initialization, the gates of {modules} recurrent layer{'s' if modules > 1 else ''} "
            f"({len(judged)} gates)")
    if status == Status.PASS:
        message = f"{head}: at most {worst.saturated:.0%} saturated outputs, {_describe(worst, th.saturation_tol)}."
    else:
        listed = "; ".join(_describe(g, th.saturation_tol) for g in sorted(over, key=lambda g: -g.saturated)[:4])
        more = f" and {len(over) - 4} more" if len(over) > 4 else ""
        message = (f"{head}: {len(over)} have {th.saturation_warn:.0%} or more of their outputs within "
                   f"{th.saturation_tol:g} of a bound: {listed}{more}. A saturated gate passes almost no gradient.")
    effect = {"max_sat_frac": worst.saturated, "gates": float(len(judged)), "gates_over_warn": float(len(over))}
    details = {"per_gate": {g.name: {"saturated": g.saturated, "var": g.var, "expected_var": g.expected_var}
                            for g in judged}}
    advice = None if status == Status.PASS else (
        "Initialize the recurrent weights with variance ~1/hidden (torch's default, Xavier, or orthogonal for "
        "W_hh) so the gates' pre-activations stay near the sigmoid's and tanh's linear range.")
    return Verdict(CheckName.GATES, Signal.FORWARD, status.value, tuple(g.name for g in over), None, effect, message,
                   advice, Phase.INIT, details, family=Family.SATURATION)


class GateCheck(Check):
    """Saturated gates of LSTM/GRU/RNN layers at initialization (replayed, :mod:`~initdiag.recording.gates`)."""

    name = CheckName.GATES
    family = Family.SATURATION

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [gate_verdict(ctx.evidence.gates, ctx.thresholds)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "gates", "Gates of recurrent layers",
            "Each nn.LSTM/nn.GRU/nn.RNN is replayed from its documented equations on the audit's first batch "
            "(the replay reproduces the module's output): per layer, direction and gate, the fraction of the "
            f"gate's outputs within {th.saturation_tol:g} of a bound, next to theory's pre-activation variance "
            "fan_in Var(W_ih) E[x^2] + hidden Var(W_hh) E[h^2] + Var(b) and the fraction a Gaussian of that "
            "variance saturates.",
            "not a statistical test (a fraction of outputs).",
            f"warn when a gate has >= {th.saturation_warn:.0%} saturated outputs, fail at "
            f">= {th.saturation_fail:.0%}.",
        ),)
