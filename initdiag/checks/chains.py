"""Signal propagation judged chain by chain: each run of weight layers between normalizations, residual adds
and block boundaries on its own, and one verdict per direction for the worst.

A normalization resets the forward variance and a residual add mixes two paths, so a straight line of
log-variance through every Conv/Linear layer of a ResNet or a transformer measures nothing a theory
predicts (Yang et al. 2019; Brock et al. 2021). Within a chain (``Structure.segments()``: layers joined
output to input through activations, pooling and shape ops only) the variance theory of He et al. 2015
holds layer by layer, so each chain gets the fit and rules of :func:`~initdiag.checks.signal.signal_verdict`
(a plain network is one chain). Layers whose missing signal is by design (:mod:`.intentional`) are left out;
chains through a recurrence: :mod:`.recurrence`. A network without normalization layers whose residual adds
are written in a ``forward``, not in block modules (no stream recorded), is judged as one chain of all layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..theory import late_gain
from ..vocab import HEALTHY, CheckName, Family, Need, Outcome, Phase, Signal, Status
from .evidence import RunEvidence
from .intentional import Explained, explained, homogeneous
from .overlay import chain_predictions, expected_chain_gain
from .recurrence import parallel_calls, recurrent_verdict
from .registry import AnalysisContext, Check, MethodNote, SignalColumns
from .signal import SignalFit, SignalRows, earliest_step, signal_fit, signal_verdict
from .verdict import Thresholds, Verdict
from .zeros import zero_init_note

__all__ = ["SignalCheck", "chain_fits", "chain_verdicts", "design_notes_of", "fits_of", "main_fit", "main_fits_of",
           "why_of"]

_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}
_OUTCOME_RANK = {HEALTHY: 0, Outcome.EXPLODING: 1, Outcome.VANISHING: 1, Outcome.NO_SIGNAL: 2}


def _chains(ev: RunEvidence) -> list[tuple[str, ...]]:
    names = [la.name for la in ev.weight_layers]
    if ev.structure is None:
        return [tuple(names)] if names else []
    recorded = set(names)
    chains = [tuple(n for n in seg if n in recorded) for seg in ev.structure.segments()]
    seen = {n for c in chains for n in c}
    chains += [(n,) for n in names if n not in seen]  # recorded layers the structure did not see (RNNs)
    chains = [c for c in chains if c]
    if len(chains) > 1 and not ev.structure.norms and all(b.shortcut != "identity" for b in ev.structure.blocks):
        # nothing normalized and no identity shortcut for the stream check to judge (adds written in a forward,
        # sums of parallel branches): nothing bounds the growth between adds, so the longest path of layers
        # through them is one chain too; layers side by side (two heads of one input) are never on one path
        path = tuple(n for n in ev.structure.longest_path() if n in recorded)
        if len(path) > max(len(c) for c in chains):
            chains.append(path)
    return chains


def _split_at_fanout(chains: list[tuple[str, ...]], ev: RunEvidence) -> list[tuple[str, ...]]:
    """Backward, a layer whose output also flows to layers outside its chain (a feature pyramid's lateral conv
    feeds its level's output conv and, upsampled, the level below) gets the sum of its consumers' gradients,
    so the chain's backward ratio across it is not a per-layer gain: the chain is cut after such a layer."""
    if ev.structure is None:
        return chains
    successors: dict[str, set[str]] = {}
    for a, b in ev.structure.flow_links:
        successors.setdefault(a, set()).add(b)
    out: list[tuple[str, ...]] = []
    for chain in chains:
        start = 0
        for i, name in enumerate(chain[:-1]):
            if len(successors.get(name, ())) > 1:
                out.append(chain[start:i + 1])
                start = i + 1
        out.append(chain[start:])
    return out


def chain_fits(ev: RunEvidence, th: Thresholds, skip: Explained | None = None) -> dict[str, list[SignalFit]]:
    """Per direction, the fit (:func:`~initdiag.checks.signal.signal_fit`) of each chain at the first training
    step (forward falls back to the ``init`` probe), leaving out the layers ``skip`` explains."""
    fits: dict[str, list[SignalFit]] = {}
    chains = _chains(ev)
    for kind in (Signal.FORWARD, Signal.BACKWARD):
        phase, step = Phase.TRAIN, earliest_step(ev.frame, kind, Phase.TRAIN)
        if step is None and kind == Signal.FORWARD:
            phase, step = Phase.INIT, earliest_step(ev.frame, kind, Phase.INIT)
        if step is None:
            continue
        left_out: Mapping[str, str] = {} if skip is None else skip.forward if kind == Signal.FORWARD else skip.backward
        sizes = ev.output_sizes() if kind == Signal.BACKWARD else None
        rows = SignalRows.of(ev.frame, str(kind), str(phase))
        for chain in chains if kind == Signal.FORWARD else _split_at_fanout(chains, ev):
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


def _passes(v: Verdict, reason: str, **effect: float) -> Verdict:
    """``v`` turned healthy because ``reason`` (appended to its message) explains its finding."""
    return replace(v, status=Status.PASS.value, layers=(), message=v.message + reason, advice=None,
                   outcome=HEALTHY, effect={**v.effect, **effect} if effect else v.effect)


def _silenced_after(layers: Sequence[str], silent: Sequence[int], order: Mapping[str, int]) -> bool:
    """Whether a layer without forward signal (``silent``: execution positions, -1 unknown) ran after the first
    of ``layers``: only such a layer can lie between them and the loss; one that ran before cannot."""
    first = min((order[n] for n in layers if n in order), default=-1)
    return any(p < 0 or first < 0 or p > first for p in silent)


def _structural_zero(v: Verdict, ev: RunEvidence, forward_silent: bool) -> Verdict:
    """A backward ``no_signal`` verdict judged against the forward pass: when no layer that ran after the chain's
    first lacks forward signal (:func:`_silenced_after`), no weight, dead unit or saturated gate of the
    initialization zeroed the gradient (each silences the forward output after it too): the loss does not depend
    on these outputs by the model's structure (top-k, NMS, a softmax over one element, a discarded output). It
    passes when each silent layer's weight gets a gradient through another call of its module, else warns (the
    weight does not learn from this loss). Any other verdict is returned as it is."""
    if v.signal != Signal.BACKWARD or v.outcome != Outcome.NO_SIGNAL or forward_silent:
        return v
    module_of = {la.name: la.module_name for la in ev.weight_layers}
    learning = [n for n in v.layers if _has_gradient(ev, module_of.get(n, n.split("@")[0]))]
    status = Status.PASS if len(learning) == len(v.layers) else Status.WARN
    learners = sum(ev.zero_params.values())
    zeros = f", or one of the {learners} zero-initialized parameters that learn from step 1" if learners else ""
    ends = (", and each of these weights gets a gradient through another call of its module." if status == Status.PASS
            else "; the weights that get no gradient at all do not learn from this loss.")
    reason = (" Every layer carries signal forward, so no weight, dead unit or saturated gate of the "
              "initialization zeroed this gradient: the loss does not depend on these outputs at initialization by "
              "the model's structure (a selection such as top-k or NMS, a softmax over a single element, a masked "
              f"or discarded output{zeros}){ends}")
    if status == Status.PASS:
        return replace(_passes(v, reason), layers=v.layers)
    return replace(v, status=status.value, message=v.message + reason)


def _dual_directions(ev: RunEvidence, by_kind: dict[str, list[tuple[SignalFit, Verdict]]]) -> None:
    """A chain whose forward variance vanishes passes when the chain is :func:`homogeneous` and its backward
    signal (the gradient that trains it) is healthy: the forward change is then a constant factor on the
    chain's output (a scale that a normalization after it absorbs; a small output is what a zero-initialized
    head takes to the limit), not a signal lost with depth. Exploding stays judged: a large output saturates
    what reads it (a softmax). He et al. 2015 (sec. 2.2) make the same point for fan-out initializations
    (torchvision's and timm's VGG): preserving the backward signal suffices. Replaces those verdicts in place."""
    healthy = {f.layers for f, v in by_kind.get(str(Signal.BACKWARD), ())
               if v.status == Status.PASS and v.outcome == HEALTHY}
    judged = by_kind.get(str(Signal.FORWARD), [])
    for i, (f, v) in enumerate(judged):
        if v.outcome != Outcome.VANISHING or f.layers not in healthy or not homogeneous(ev, f.layers):
            continue
        judged[i] = (f, _passes(v, " But the chain is positively homogeneous (ReLU-family activations, no biases "
                                "after its first layer), so this is a constant factor on its output for every input, "
                                "and the gradient that trains these layers is preserved (backward healthy): the scale "
                                "shows in the output, not as a signal lost with depth (He et al. 2015, sec. 2.2: "
                                "preserving the backward signal suffices)."))


def branch_of(ev: RunEvidence, layers: Sequence[str]) -> str | None:
    """The residual block whose branch holds every layer of a chain, or None."""
    blocks = {la.name: la.block for la in ev.weight_layers}
    found = {blocks.get(n) for n in layers}
    return found.pop() if len(found) == 1 and None not in found else None


def _in_branch(v: Verdict, f: SignalFit, ev: RunEvidence, th: Thresholds) -> Verdict:
    """A chain inside one residual block's branch is judged by what it does to the stream. Vanishing (either
    direction) passes: the branch starts small, so the block starts near the identity, which is what SkipInit
    and Fixup set up on purpose (De & Smith 2020; Zhang et al. 2019; Hugging Face's std 0.02 on narrow layers
    does it too) and what the stream check sees; the gradient toward the branch's first layers is small while
    its last layers are, as behind a zero-initialized last layer, and the stream carries the gradient past the
    block. Exploding is the branch swamping the stream: with 2 layers it fails from ``change_factor`` on (not
    only from ``few_layers_factor``), whatever the chain's length."""
    block = branch_of(ev, f.layers)
    if block is None or v.outcome not in (Outcome.VANISHING, Outcome.EXPLODING):
        return v
    if v.outcome == Outcome.VANISHING and v.status != Status.PASS:
        return _passes(v, f" But these layers are a branch of block '{block}': a branch that starts small starts "
                       "the block near the identity (SkipInit, Fixup), and its effect on the residual stream is the "
                       "stream check's to judge.")
    raw = f.change_raw
    if v.outcome == Outcome.EXPLODING and v.status == Status.WARN and len(f.fitted) == 2 and raw >= th.change_factor:
        return replace(v, status=Status.FAIL.value, message=v.message + f" These layers are a branch of block "
                       f"'{block}': a branch that grows {raw:.3g}x swamps the residual stream it adds to, whatever "
                       "the branch's length.")
    return v


def _has_gradient(ev: RunEvidence, module: str) -> bool:
    return (grads := ev.grads_init.get(module)) is not None and bool(np.any(grads[0] != 0))


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
    order = {la.name: i for i, la in enumerate(ev.weight_layers)}
    silent = [order.get(n, -1) for f in fits.get(Signal.FORWARD, ()) for n in f.no_signal]
    by_kind: dict[str, list[tuple[SignalFit, Verdict]]] = {}
    for kind, kind_fits in fits.items():
        judged = by_kind.setdefault(kind, [])
        for f in kind_fits:
            v = signal_verdict(f, ev, th, expected.get(kind, {}).get(f.layers))
            v = None if v is None else recurrent_verdict(
                _in_branch(_structural_zero(v, ev, _silenced_after(f.layers, silent, order)), f, ev, th), f, ev, th)
            follows = _follows_theory(f, (predicted or {}).get(kind, {}).get(f.layers)) if v is not None and \
                v.outcome in (Outcome.VANISHING, Outcome.EXPLODING) else None
            if v is not None and follows is not None:
                v = _passes(v, f" But the change is sub-geometric, as theory predicts for this activation: the "
                            f"per-layer factor over the last half of the chain is {follows[0]:.3g} (theory "
                            f"{follows[1]:.3g}), tending to 1 (a polynomial approach to a fixed point at the edge of "
                            "chaos, Schoenholz et al. 2017), so it is judged against theory's curve, not a straight "
                            "line.", late_gain=follows[0], expected_late_gain=follows[1])
            if v is not None:
                judged.append((f, v))
    _dual_directions(ev, by_kind)
    parallel_calls(ev, by_kind)
    for kind, judged in by_kind.items():
        if not judged:
            continue
        fit, worst = max(judged, key=lambda fv: (_RANK[Status(fv[1].status)], _OUTCOME_RANK.get(fv[1].outcome, 0),
                                                 fv[0].n_layers))
        message = worst.message
        if len(judged) > 1:
            bad = sum(v.status != Status.PASS for _, v in judged)
            message = (f"{len(judged)} chains of weight layers judged on their own (a chain: layers joined without a "
                       f"normalization, a residual add or a block boundary), {bad} not healthy; "
                       + ("the worst, " if bad else "the longest, ") + f"'{fit.layers[0]}' to '{fit.layers[-1]}' "
                       f"({fit.n_layers} layers): " + message)
        details = {**dict(worst.details), "chains": [
            {"layers": [f.layers[0], f.layers[-1]], "n_layers": f.n_layers, "outcome": v.outcome, "status": v.status,
             "gain": f.gain, "change": f.change_fitted} for f, v in judged]}
        out.append(Verdict(worst.check, worst.signal, worst.status, worst.layers, worst.p_value, worst.effect,
                           message + (notes or {}).get(kind, ""), worst.advice, worst.phase, details,
                           worst.outcome, worst.family))
    return out


def why_of(ctx: AnalysisContext) -> Explained:
    """What explains each layer's missing signal in the run (:func:`~initdiag.checks.intentional.explained`)."""
    return explained(ctx.evidence)


def fits_of(ctx: AnalysisContext) -> dict[str, list[SignalFit]]:
    """Per direction, the fit of each chain (:func:`chain_fits`) under the analysis' thresholds."""
    return chain_fits(ctx.evidence, ctx.thresholds, ctx.derive(why_of))


def main_fits_of(ctx: AnalysisContext) -> dict[str, SignalFit]:
    """Per direction, the fit that stands for it (:func:`main_fit`)."""
    return {kind: main_fit(fits) for kind, fits in ctx.derive(fits_of).items() if fits}


def design_notes_of(ctx: AnalysisContext) -> dict[str, str]:
    """Per direction, the sentences added to its verdicts: why all-zero weights cannot train (forward, said once
    in the report: other checks get ``"others"``, a pointer to it), and the designs that explain missing signal
    (all)."""
    main = ctx.derive(main_fits_of)
    note = zero_init_note(ctx.evidence, main.get(Signal.FORWARD), main.get(Signal.BACKWARD))
    design = "".join(f" {n}" for n in ctx.derive(why_of).notes)
    pointer = " Every weight is 0: why that cannot train is under the forward signal verdict." if note else ""
    return {Signal.FORWARD: note + design, Signal.BACKWARD: design, "others": pointer + design}


class SignalCheck(SignalColumns, Check):
    """Vanishing, exploding or no signal along each chain of weight layers, forward and backward."""

    name = CheckName.SIGNAL
    family = Family.SIGNAL
    needs = frozenset({Need.FRAME})
    always_shown = True

    def run(self, ctx: AnalysisContext) -> list[Verdict]:
        ev, fits = ctx.evidence, ctx.derive(fits_of)
        expected = {kind: {f.layers: expected_chain_gain(ev, f) for f in kind_fits} for kind, kind_fits in fits.items()}
        return chain_verdicts(ev, ctx.thresholds, fits, expected, ctx.derive(design_notes_of),
                              chain_predictions(ev, fits))

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        level = f"{1 - th.alpha:.0%}"
        return (
            MethodNote(
                "vanishing/exploding", "Signal propagation (forward and backward)",
                "At the first training batch, the variance over the batch of each Conv/Linear output (forward, per "
                "element, averaged over channels) and the per-sample energy of the gradient dL/dy of that output "
                "(backward: its variance times the elements per sample, which He fan-in init preserves across width "
                "changes and strides; per element, and then only a warning, when the layer sizes are unknown) "
                "are log-transformed and regressed on the layer's position in execution order (least squares, "
                "scipy.stats.linregress). The per-layer gain is exp(slope) forward and exp(-slope) backward (the "
                f"gradient flows from the loss), with a t-based {level} interval; the change across the L layers is "
                "gain^(L-1), so one odd layer (e.g. a 10-way classifier head) does not decide the verdict. The raw "
                "first-to-last change is reported too.",
                "the variance is preserved from layer to layer (slope 0, gain 1).",
                f"fail when gain^(L-1) >= {th.change_factor:g} (exploding) or <= 1/{th.vanishing_fail_factor:g} "
                f"(vanishing; He et al. 2015: ReLU nets learn through 5e-7, not 2e-9; warn at 1/{th.change_factor:g}) "
                f"and the {level} interval of the gain excludes 1, else warn. With 2 layers (no interval) the raw "
                f"change decides: a rise >= {th.few_layers_factor:g}x fails, >= {th.change_factor:g}x warns.",
            ),
            MethodNote(
                "no_signal", "No signal",
                "A layer carries no signal when its output (or dL/dy) does not vary over the batch. Variances are "
                "float64 sums of float32 values; a constant that float32 arithmetic computed along different "
                "paths varies by its rounding, ~1e-11 mean_sq at most for sums of 4096 terms. When the signal "
                "is lost after layers that already fit a vanishing trend, the verdict is 'vanishing' instead.",
                "not a statistical test (a measurement at float precision).",
                f"var <= {th.no_signal_rel:g} x max(mean_sq, {th.no_signal_floor:g}) in any layer.",
            ),
            MethodNote(
                "vanishing/exploding", "Chains of weight layers",
                "The model's structure is seen at its first forward (weight layers of any type with the fans seen, "
                "the activation each output reaches, whether a module or a function, normalizations, residual "
                "blocks). The fit above is made for each chain of weight layers on its own (layers joined without a "
                "normalization, a residual add or a block boundary), and the run's verdict is the worst chain's. A "
                "chain whose variance changes sub-geometrically, as the length map predicts for a non-homogeneous "
                "activation (tanh at sigma_w^2 = 1: q_l ~ 1/(2l), Schoenholz et al. 2017), is judged against that "
                "curve: healthy.",
                "the variance is preserved from layer to layer within a chain.",
                "as above, per chain; the worst chain decides.",
            ),
            MethodNote(
                "no_signal", "Intentional zeros and constant inputs",
                "A parameter that is all zero at initialization but gets a non-zero gradient (a zero-initialized "
                "output head; the last layer or scale of a residual branch under zero_init_residual, SkipInit, "
                "Fixup) leaves zero at the first step: the missing signal it causes (forward at and after it in its "
                "chain, backward before it) is by design and passes with a note, and so do identical neurons whose "
                "gradients differ. A layer whose input is the same for every sample (an embedding of one token type "
                "id, a learned class token; decided from the values: equal rows over the batch) has a constant "
                "output because its input is, unless a weight layer upstream made a varying input constant (that "
                "layer fails). A zero normalization scale (zero_init_last) explains the layers after it in its "
                "block. A gradient of 0 while no layer lacks forward signal without such an explanation comes from "
                "the model's structure (a top-k or NMS selection, a softmax over one element): it passes when the "
                "weight gets a gradient through another call of its module, else warns. Every weight zero, with "
                "zero gradients, still fails.",
                "not a statistical test (exact zeros and equal inputs).",
                "a look-ahead: the gradient of the first batch; an audit adds up to 4 plain SGD steps on a copy for "
                "zeros that wait on another zero (Fixup's branches).",
            ),
            MethodNote(
                "vanishing/exploding", "What a chain's own gain does not decide",
                "A chain inside one residual block's branch that vanishes passes: the block starts near the "
                "identity (SkipInit, Fixup; De & Smith 2020), and the stream check judges the branch's effect; one "
                "that explodes fails from the change factor on even with 2 layers (the branch swamps the stream). "
                "A positively homogeneous chain (ReLU family, zero biases inside it) whose forward vanishes while "
                "its backward is healthy passes: the change is a constant factor on its output (He et al. 2015, "
                "sec. 2.2: preserving the backward signal suffices, as fan-out initializations do). Backward, a "
                "chain ends after a layer whose output flows to more than one consumer (its gradient is their sum).",
                "a branch's or a homogeneous chain's scale is a factor on the output, not a signal lost with depth.",
                f"as above; exploding branches of 2 layers fail from {th.change_factor:g}x.",
            ),
        )
