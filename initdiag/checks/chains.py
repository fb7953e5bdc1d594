"""Signal propagation judged chain by chain: each run of weight layers between normalizations, residual adds
and block boundaries on its own, and one verdict per direction for the worst.

A normalization resets the forward variance and a residual add mixes two paths, so a straight line of
log-variance through every Conv/Linear layer of a ResNet or a transformer measures nothing a theory
predicts (Yang et al. 2019; Brock et al. 2021). Within a chain (``Structure.segments()``: layers joined
output to input through activations, pooling and shape ops only) the variance theory of He et al. 2015
holds layer by layer, so each chain gets the fit and rules of :func:`~initdiag.checks.signal.signal_verdict`.
A plain network (an MLP, VGG without BatchNorm, the seed CNN) is one chain, judged exactly as before. Layers
whose missing signal is by design (:mod:`~initdiag.checks.intentional`) are left out. A network without
normalization layers whose residual adds are written in a ``forward`` rather than wrapped in block modules
(so that no stream can be recorded) is also judged as one chain of all its layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..theory import late_gain
from ..vocab import HEALTHY, CheckName, Phase, Signal, Status
from .evidence import RunEvidence
from .intentional import Explained
from .signal import SignalFit, SignalRows, earliest_step, signal_fit, signal_verdict
from .verdict import Thresholds, Verdict

__all__ = ["chain_fits", "chain_verdicts", "main_fit"]

_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}
_CHECK_RANK = {HEALTHY: 0, CheckName.EXPLODING: 1, CheckName.VANISHING: 1, CheckName.NO_SIGNAL: 2}


def _chains(ev: RunEvidence) -> list[tuple[str, ...]]:
    names = [la.name for la in ev.weight_layers]
    if ev.structure is None:
        return [tuple(names)] if names else []
    recorded = set(names)
    chains = [tuple(n for n in seg if n in recorded) for seg in ev.structure.segments()]
    seen = {n for c in chains for n in c}
    chains += [(n,) for n in names if n not in seen]  # recorded layers the structure did not see (RNNs)
    chains = [c for c in chains if c]
    if len(chains) > 1 and not ev.structure.norms and not ev.structure.blocks:
        # residual adds written in a forward, no block modules and nothing normalized: nothing bounds the
        # growth between adds, so the whole network is judged as one chain too (as a plain chain would be)
        chains.append(tuple(names))
    return chains


def chain_fits(ev: RunEvidence, th: Thresholds, skip: Explained | None = None) -> dict[str, list[SignalFit]]:
    """Per direction, the fit (:func:`~initdiag.checks.signal.signal_fit`) of each chain at the first training
    step (forward falls back to the ``init`` probe), leaving out the layers ``skip`` explains."""
    fits: dict[str, list[SignalFit]] = {}
    for kind in (Signal.FORWARD, Signal.BACKWARD):
        phase, step = Phase.TRAIN, earliest_step(ev.frame, kind, Phase.TRAIN)
        if step is None and kind == Signal.FORWARD:
            phase, step = Phase.INIT, earliest_step(ev.frame, kind, Phase.INIT)
        if step is None:
            continue
        left_out: Mapping[str, str] = {} if skip is None else skip.forward if kind == Signal.FORWARD else skip.backward
        sizes = ev.output_sizes() if kind == Signal.BACKWARD else None
        rows = SignalRows.of(ev.frame, str(kind), str(phase))
        for chain in _chains(ev):
            names = [n for n in chain if n not in left_out]
            if not names:
                continue
            fit = signal_fit(rows, str(kind), step, str(phase), layers=names, alpha=th.alpha,
                             no_signal_rel=th.no_signal_rel, no_signal_floor=th.no_signal_floor, sizes=sizes)
            if fit.n_layers:
                fits.setdefault(str(kind), []).append(fit)
    return fits


def main_fit(fits: Sequence[SignalFit]) -> SignalFit:
    """The fit that stands for a direction: the longest chain (the first of equals)."""
    return max(fits, key=lambda f: f.n_layers)


def _follows_theory(fit: SignalFit, predicted: Sequence[float | None] | None) -> tuple[float, float] | None:
    """``(measured, predicted)`` late per-layer factors when the chain's change is sub-geometric as theory
    predicts (a non-homogeneous activation such as tanh at sigma_w^2 = 1: q_l ~ 1 / (2 l), Schoenholz et al.
    2017), else None. Late factor: :func:`~initdiag.theory.late_gain` over the last half of the chain."""
    values = [v for v in fit.variances]
    if predicted is None or len(predicted) != len(values) or len(values) < 3 or any(
            p is None or not p > 0 for p in predicted) or any(not v > 0 for v in values):
        return None
    order = slice(None) if fit.kind == Signal.FORWARD else slice(None, None, -1)
    theory = late_gain([float(p) for p in predicted][order])  # type: ignore[arg-type]
    measured = late_gain(values[order])
    if abs(theory - 1) <= SUBGEOMETRIC_TOL and abs(measured - 1) <= 2 * SUBGEOMETRIC_TOL:
        return measured, theory
    return None


SUBGEOMETRIC_TOL = 0.05
"""A late per-layer factor within this of 1 is sub-geometric: theory's (and twice this, the measurement's)."""


def chain_verdicts(ev: RunEvidence, th: Thresholds, fits: Mapping[str, Sequence[SignalFit]],
                   expected: Mapping[str, Mapping[tuple[str, ...], float | None]],
                   notes: Mapping[str, str] | None = None,
                   predicted: Mapping[str, Mapping[tuple[str, ...], Sequence[float | None]]] | None = None
                   ) -> list[Verdict]:
    """One verdict per direction: the worst chain's, saying how many chains were judged and how each fared
    (``details["chains"]``). ``expected[kind][layers]``: the gain theory predicts for that chain;
    ``predicted[kind][layers]``: its profile, against which a chain whose variance changes sub-geometrically, as
    theory predicts for its activation, is healthy (not judged by a straight line); ``notes[kind]`` is added to
    the direction's message."""
    out: list[Verdict] = []
    for kind, kind_fits in fits.items():
        judged: list[tuple[SignalFit, Verdict]] = []
        for f in kind_fits:
            v = signal_verdict(f, ev, th, expected.get(kind, {}).get(f.layers))
            follows = _follows_theory(f, (predicted or {}).get(kind, {}).get(f.layers)) if v is not None and \
                v.check in (CheckName.VANISHING, CheckName.EXPLODING) else None
            if v is not None and follows is not None:
                v = Verdict(HEALTHY, v.signal, Status.PASS.value, (), v.p_value, {**v.effect, "late_gain": follows[0],
                            "expected_late_gain": follows[1]},
                            v.message + f" But the change is sub-geometric, as theory predicts for this activation: "
                            f"the per-layer factor over the last half of the chain is {follows[0]:.3g} (theory "
                            f"{follows[1]:.3g}), tending to 1 (a polynomial approach to a fixed point at the edge of "
                            "chaos, Schoenholz et al. 2017), so it is judged against theory's curve, not a straight "
                            "line.", None, v.phase, v.details)
            if v is not None:
                judged.append((f, v))
        if not judged:
            continue
        fit, worst = max(judged, key=lambda fv: (_RANK[Status(fv[1].status)], _CHECK_RANK.get(fv[1].check, 0),
                                                 fv[0].n_layers))
        message = worst.message
        if len(judged) > 1:
            bad = sum(v.status != Status.PASS for _, v in judged)
            message = (f"{len(judged)} chains of weight layers judged on their own (a chain: layers joined without a "
                       f"normalization, a residual add or a block boundary), {bad} not healthy; "
                       + ("the worst, " if bad else "the longest, ") + f"'{fit.layers[0]}' to '{fit.layers[-1]}' "
                       f"({fit.n_layers} layers): " + message)
        details = {**dict(worst.details), "chains": [
            {"layers": [f.layers[0], f.layers[-1]], "n_layers": f.n_layers, "check": v.check, "status": v.status,
             "gain": f.gain, "change": f.change_fitted} for f, v in judged]}
        out.append(Verdict(worst.check, worst.signal, worst.status, worst.layers, worst.p_value, worst.effect,
                           message + (notes or {}).get(kind, ""), worst.advice, worst.phase, details))
    return out
