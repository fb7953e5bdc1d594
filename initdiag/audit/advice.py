"""The recommendation drawn from the audited runs: first no failing check, then conformance (each layer's
Var(W) against what its activation needs), and runs that do not differ called equal, never one the best.

Pure functions of the runs' verdicts and weights; no hooks, no running.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..checks import Verdict, pretty_activation, recommended_initializer
from ..results import AuditRun, LayerWeight, Recommendation
from ..series import first_step_values
from ..vocab import Kind, Signal, Status
from .weights import forward_gain, hidden_activation

__all__ = ["CONFORMANCE_TOL", "EQUAL_RTOL", "conformance", "equal_runs", "recommend"]

CONFORMANCE_TOL = 0.05
"""Two runs conform equally well when their :func:`conformance` differs by less than this (about 5% in Var(W)):
draws of one variance rule (normal, uniform) differ by sampling noise, not by what the layers need."""
EQUAL_RTOL = 1e-9
"""Relative tolerance within which two runs' forward gains and per-layer output variances count as identical
(:func:`equal_runs`)."""

_FORMULA = {"he": "Var(W) = 2/fan_in (gain sqrt(2))", "xavier": "Var(W) = 2/(fan_in + fan_out) (gain 1)",
            "lecun": "Var(W) = 1/fan_in"}
KEEP = "keep"


def _counted(weights: Sequence[LayerWeight]) -> list[LayerWeight]:
    """The layers whose scale matters: an advised Var(W) known, no normalization right after them."""
    return [w for w in weights if w.recommended_variance and not w.normalized]


def conformance(weights: Sequence[LayerWeight]) -> float:
    """Mean over the layers whose scale matters (:func:`_counted`) of ``|ln(Var(W) / advised Var(W))|``: how far
    each layer's weights are from what its activation needs (He for the ReLU family, LeCun for SELU, Xavier
    for tanh, sigmoid and linear: :func:`~initdiag.checks.recommended_initializer`, for the fans the forward
    showed). A layer followed by a normalization is scale-free and does not count; 0 when none counts; a
    layer of zero variance is infinitely far."""
    logs = [abs(math.log(w.variance / w.recommended_variance)) if w.variance > 0 else math.inf  # type: ignore[operator]
            for w in _counted(weights)]
    return float(np.mean(logs)) if logs else 0.0


def _ratio(weights: Sequence[LayerWeight]) -> float:
    """Geometric mean of Var(W) / advised Var(W) over the layers whose scale matters (NaN if none)."""
    ratios = [w.ratio for w in _counted(weights) if w.ratio]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else math.nan


def _outcomes(verdicts: Sequence[Verdict]) -> tuple[tuple[str, str, str | None, str, tuple[str, ...]], ...]:
    return tuple(sorted((v.check, v.outcome, v.signal, v.status, tuple(v.layers)) for v in verdicts))


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= EQUAL_RTOL * max(abs(x), abs(y))


def equal_runs(a: AuditRun, b: AuditRun) -> str:
    """Why ``a`` and ``b`` do not differ ("" when they do): identical weights (equal digests), or identical
    verdict outcomes with the forward gain and every layer's output variance equal within :data:`EQUAL_RTOL`
    (the gain alone can coincide: two layers whose variance change is fitted as exactly 1)."""
    if a.digest and a.digest == b.digest:
        return "identical weights"
    va, vb = first_step_values(a.frame, Kind.FORWARD), first_step_values(b.frame, Kind.FORWARD)
    if (_outcomes(a.verdicts) == _outcomes(b.verdicts) and va and va.keys() == vb.keys()
            and _same(forward_gain(a.verdicts), forward_gain(b.verdicts)) and all(_same(va[k], vb[k]) for k in va)):
        return "identical verdicts and forward signals"
    return ""


def _fails(verdicts: Sequence[Verdict]) -> list[str]:
    return [f"{v.outcome} ({v.signal})" if v.signal in (Signal.FORWARD, Signal.BACKWARD) else v.outcome
            for v in verdicts if v.status == Status.FAIL]


def _warns(run: AuditRun) -> int:
    return sum(v.status == Status.WARN for v in run.verdicts)


def _outcome(run: AuditRun) -> str:
    fails, gain, ratio, warns = _fails(run.verdicts), forward_gain(run.verdicts), _ratio(run.weights), _warns(run)
    text = f"`{run.label}`: " + (f"fails {', '.join(fails)}" if fails else "no failing check")
    text += f", {warns} warning{'s' if warns != 1 else ''}" if warns else ""
    text += f", forward gain {gain:.3g} per layer" if math.isfinite(gain) else ""
    return text + (f", Var(W) {ratio:.3g}x what the activations need" if math.isfinite(ratio) else "")


def _names(labels: Sequence[str]) -> str:
    quoted = [f"`{x}`" for x in labels]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) < CONFORMANCE_TOL


def _why_best(best: AuditRun, runs: Sequence[AuditRun]) -> str:
    """One clause: why ``best`` beats the other runs (fewer failing checks, else closer conformance)."""
    n = {r.label: len(_fails(r.verdicts)) for r in runs}
    conf = {r.label: conformance(r.weights) for r in runs}
    rivals = [r for r in runs if r.label != best.label]
    fewer = [r for r in rivals if n[r.label] > n[best.label]]
    if len(fewer) == len(rivals):
        return ("it is the only one that fails no check" if not n[best.label] else
                f"it fails the fewest checks ({n[best.label]}, against {min(n[r.label] for r in rivals)} or more)")
    tied = [r for r in rivals if n[r.label] == n[best.label]]
    close = [r for r in tied if _close(conf[r.label], conf[best.label])]
    if not close:
        worst = min(conf[r.label] for r in tied)
        return (f"with as few failing checks ({n[best.label]}) as {_names([r.label for r in tied])}, its Var(W) is "
                f"closest to what each layer's activation needs (mean |ln ratio| {conf[best.label]:.2g}, against "
                f"{worst:.2g} or more)")
    tail = "it has fewer warnings" if all(_warns(r) > _warns(best) for r in close) else "it is listed first"
    return (f"it fails as few checks ({n[best.label]}) and conforms as well as {_names([r.label for r in close])}"
            f" (mean |ln ratio| within {CONFORMANCE_TOL:g}), and {tail}")


def _best(runs: Sequence[AuditRun]) -> AuditRun:
    """Fewest failing checks, then the closest conformance (ties within :data:`CONFORMANCE_TOL`), then fewest
    warnings, then the order given."""
    fewest = min(len(_fails(r.verdicts)) for r in runs)
    candidates = [r for r in runs if len(_fails(r.verdicts)) == fewest]
    top = min(conformance(r.weights) for r in candidates)
    close = [r for r in candidates if _close(conformance(r.weights), top)]
    return min(close, key=lambda r: (_warns(r), close.index(r)))


def _compare(runs: Sequence[AuditRun]) -> Recommendation:
    labels = [r.label for r in runs]
    keep = next((r for r in runs if r.label == KEEP), None)
    chosen = keep if keep is not None and not _fails(keep.verdicts) else _best(runs)
    why = {r.label: equal_runs(chosen, r) for r in runs if r.label != chosen.label}
    equal = [chosen.label, *(label for label, reason in why.items() if reason)]
    reasons = sorted({reason for reason in why.values() if reason})
    same = (f"{_names(equal)} are equal ({'; '.join(reasons)}): none is better than the "
            f"other{'s' if len(equal) > 2 else ''}")
    details = " Audited: " + "; ".join(_outcome(r) for r in runs) + "."
    act = hidden_activation(runs[0].layers)
    advised = recommended_initializer(act)
    if chosen is keep:
        lead = ("no change needed: the model's own initialization (`keep`) fails no check, so nothing the audit "
                "measures calls for another")
        text = lead + (f"; {same}." if len(equal) > 1 else ".")
    elif len(equal) == len(runs):
        text = f"the {len(runs)} audited initializations do not differ: {same}."
    else:
        others = [r for r in runs if r.label not in equal[1:]]
        text = (f"use `{chosen.label}`: {_why_best(chosen, others)}"
                + (f"; {same}." if len(equal) > 1 else "."))
    if _fails(chosen.verdicts) and advised not in labels:
        text += f" For {pretty_activation(act)} layers the checks advise `{advised}`: audit it too."
    return Recommendation(chosen.label, text + details, True, tuple(equal) if len(equal) > 1 else ())


def _single(run: AuditRun) -> Recommendation:
    act = hidden_activation(run.layers)
    advised = recommended_initializer(act)
    if not _fails(run.verdicts):
        lead = ("no change needed: the model's own initialization fails no check" if run.label == KEEP
                else f"use `{run.label}`: it fails no check")
        return Recommendation(run.label, f"{lead}. {_outcome(run)}.", False)
    text = f"use `{advised}`. " + _outcome(run) + "."
    text += (f" The hidden layers use {pretty_activation(act)} (from the module order), for which `{advised}` "
             f"keeps the variance: {_FORMULA.get(advised, '')}.")
    counted = [w for w in run.weights if w.ratio is not None]
    ratios = [w.ratio for w in counted if w.activation == act and w.ratio is not None]
    if ratios:
        ratio = float(np.exp(np.mean(np.log(np.maximum(ratios, 1e-300)))))
        text += (f" {sum(w.default_init for w in counted)} of {len(counted)} weight layers are at PyTorch's "
                 f"default init; the Var(W) of the {len(ratios)} layers followed by {pretty_activation(act)} is "
                 f"{ratio:.3g}x (geometric mean) what `{advised}` gives.")
    if run.label == advised:
        text += (" It is already in use: at this depth consider normalization layers (BatchNorm/LayerNorm) or "
                 "residual connections.")
    else:
        text += f" Compare them side by side with --init {run.label},{advised}."
    return Recommendation(advised, text, False)


def recommend(runs: Sequence[AuditRun]) -> Recommendation:
    """Recommend an initialization from the audited runs, each reason in one sentence.

    Several runs: the model's own (``keep``) when it fails no check ("no change needed"); otherwise the run
    with the fewest failing checks, then the best :func:`conformance`, then the fewest warnings. Runs that do
    not differ from the chosen one (:func:`equal_runs`) are named equal with it. One run: itself when nothing
    fails, else the initializer the checks advise for the most common hidden activation (``he`` for ReLU).
    """
    if not runs:
        return Recommendation(KEEP, "nothing was audited.", False)
    return _compare(runs) if len(runs) > 1 else _single(runs[0])
