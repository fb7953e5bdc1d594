"""The residual stream across blocks, forward and backward: geometric growth is exploding, the bounded growth
that normalized or zero branches give is healthy.

Statistic: ``v_0 .. v_n``, the variance of the stream entering the first block and after each of ``n`` blocks
(forward), or of dL/d(stream) from the last block back (backward). Only steps within a stage count: a
block with an identity shortcut and its input's shape (a projection shortcut, a normalization after the
add or a change of shape restarts the stream). The per-block factor ``r`` is the geometric mean of those
steps' ratios (over the later half of them for a design theory says grows linearly, whose early ratios
``1 + b / v_l`` are large while the stream is small; over all of them for one it says grows geometrically,
whose ratios are all alike), and ``r^n`` the change it implies across the stream.
Linear growth ``v_l = a + b l`` gives ``r -> 1`` and ``r^n`` of a few whatever the total growth;
geometric growth ``(1 + G)^l`` gives ``(1 + G)^n``. Null hypothesis: the stream changes at most linearly
across blocks, as theory predicts for normalized or zero branches (Brock et al. 2021; De & Smith 2020).
Thresholds, with ``C = change_factor``: for a design theory says grows geometrically (unnormalized
branches), fail when ``r^n >= C`` (exploding) or ``<= 1/V`` (vanishing, ``V = vanishing_fail_factor``;
warn from ``1/C``), forward and backward. Either kind
of design fails only on what was measured: at least :data:`MIN_STEPS` within-stage steps (or, in a model
none of whose blocks normalizes its branch or its sum, steps whose ratios no linear growth reaches,
:func:`beyond_linear`) and a measured first-to-last change ``v_n / v_0`` beyond the same limit in the
same direction (else it warns). For a
bounded design the forward stream fails only beyond ``C^2`` (the measurement then contradicts theory) and
warns beyond ``C``; its backward stream is reported, not judged: each normalized branch is invariant to the
scale of its input, so its Jacobian shrinks as ``1/sigma`` of a stream that grows and grows as one that is
small, and a large gradient on the stream changes the normalized weights' effective step size, not the
signal (Yang et al. 2019; Arora et al. 2019). Torchvision's ResNet-50 shows this: its stream's gradient
grows ~1,600x toward the input at initialization, and it trains.
The gradient entering the first block is left out backward: the first normalization's Jacobian there scales
with ``1/sigma`` of what the stem or the embeddings give it (a ViT's near-zero class token), not with the
stream. Not a test with a p-value: one network, a few batches.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..theory.stream import StreamTheory, stream_theory
from ..vocab import HEALTHY, CheckName, Family, Kind, Need, Outcome, Phase, Stat, Status
from .chains import why_of
from .evidence import RunEvidence, init_advice
from .registry import AnalysisContext, Check, MethodNote, SignalColumns
from .signal import earliest_step, shallow_fall
from .verdict import Thresholds, Verdict

__all__ = ["StreamCheck", "beyond_linear", "stream_prediction", "stream_theory_of", "stream_values", "stream_verdicts"]


def stream_values(ev: RunEvidence, kind: str, stat: str = Stat.VAR) -> tuple[list[str], np.ndarray]:
    """The stream's sites in stream order and their ``stat`` of ``kind`` at the first training step."""
    sites = [la.name for la in ev.blocks]
    step = earliest_step(ev.frame, kind, Phase.TRAIN)
    if step is None or not sites:
        return [], np.zeros(0)
    frame = ev.frame
    rows = frame[(frame["kind"] == kind) & (frame["stat"] == stat) & (frame["phase"] == Phase.TRAIN)
                 & (frame["step"] == step)]
    by_site = dict(zip(rows["layer"].astype(str), rows["value"].astype(float), strict=True))
    present = [s for s in sites if s in by_site]
    return present, np.array([by_site[s] for s in present], dtype=np.float64)


def stream_prediction(ev: RunEvidence) -> StreamTheory | None:
    """The theory's forward stream for ``ev`` (:func:`~initdiag.theory.stream.stream_theory`), anchored at the
    measured variance of the stream entering the first block; None without blocks or that measurement."""
    if ev.structure is None or not ev.structure.blocks:
        return None
    sites, values = stream_values(ev, Kind.FORWARD)
    if not sites or not sites[0].endswith(":in") or not values[0] > 0:
        return None
    bias_var = {name: float(np.mean(np.square(b))) for name, (_, b) in ev.weights_init.items() if b is not None}
    means = dict(zip(*stream_values(ev, Kind.FORWARD, Stat.MEAN_SQ), strict=True))
    return stream_theory(ev.structure, float(values[0]), ev.weight_vars, bias_var, ev.norm_gains,
                         float(means.get(sites[0], 0.0)))


def _steps(ev: RunEvidence, sites: list[str]) -> list[bool]:
    """For each step ``sites[i] -> sites[i+1]`` (stream order): whether it stays within a stage (the block has
    an identity shortcut, its input's shape, no normalization after the add, and reads the previous block)."""
    blocks = {b.name: b for b in ev.structure.blocks} if ev.structure is not None else {}
    out = []
    for site in sites[1:]:
        b = blocks.get(site)
        out.append(b is not None and b.shortcut == "identity" and b.in_shape == b.out_shape and not b.post_norm
                   and not b.restarts)
    return out


def _late(values: np.ndarray, within: list[bool], n: int, late_only: bool = True) -> tuple[float, float] | None:
    """``(r, r^n)`` from the within-stage step ratios of ``values`` (propagation order) over the later half of
    them (``late_only``) or all; None without any."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logs = [math.log(values[i + 1] / values[i]) for i, ok in enumerate(within) if ok]
    if not logs:
        return None
    late = logs[len(logs) - math.ceil(len(logs) / 2):] if late_only else logs
    r = math.exp(sum(late) / len(late))
    return r, r ** n


MIN_STEPS = 3
"""Within-stage steps a stream needs before its per-block factor can fail it: with one or two ratios, a branch
that adds a fixed variance ``b`` to a small stream (``1 + b / v``, an embedding at std 0.02 before the first
block) cannot be told apart from geometric growth."""


LINEAR_MARGIN = 1.5
"""How far above linear growth's largest ratio a step must be to rule linear growth out (sampling noise of a
variance over one batch is well inside 1.5x)."""


def beyond_linear(values: np.ndarray, within: list[bool], limit: float) -> bool:
    """Whether the steps after a stage's first rule out linear growth and still imply ``limit``: every
    ``k``-th consecutive within-stage step with ``k >= 2`` (at least one) has a ratio above
    ``LINEAR_MARGIN * k / (k - 1)``, and their geometric mean raised to the stream's blocks reaches ``limit``.
    A stream growing linearly within its stage, ``v_s + k b`` with ``v_s, b >= 0``, has ratio
    ``(v_s + k b) / (v_s + (k - 1) b) <= k / (k - 1)`` at its ``k``-th step (2 at the second), however small
    it starts; geometric growth keeps ``1 + G`` at every step. The first step of a stage is left out: a bias or
    an embedding added to a tiny stream makes it anything."""
    k, logs = 0, []
    for i, ok in enumerate(within):
        k = k + 1 if ok else 0
        if k >= 2:
            if not values[i] > 0 or not values[i + 1] / values[i] > LINEAR_MARGIN * k / (k - 1):
                return False
            logs.append(math.log(values[i + 1] / values[i]))
    return bool(logs) and math.exp(sum(logs) / len(logs) * (len(values) - 1)) >= limit


def _unmeasured(within: list[bool], raw: float, change: float, limit: float, bounded: bool,
                values: np.ndarray, ev: RunEvidence) -> str:
    """Why a change beyond ``limit`` extrapolated from the per-block factor is not what was measured ("" when
    it is): fewer than :data:`MIN_STEPS` within-stage steps (unless, in a model none of whose blocks
    normalizes its branch or its sum, the steps of ``values`` rule out linear growth, :func:`beyond_linear`:
    two blocks of a transformer with its norms removed), or a measured first-to-last change ``raw`` within
    ``limit`` or against the
    factor's direction: the factor then describes steps (within stages, or the later half) of a stream whose
    whole change the measurement shows to be small (a U-Net's decoder, stage transitions that rescale)."""
    steps = sum(within)
    # nothing rescales a branch: no block normalizes its branch or its sum (a norm elsewhere, in a stem or inside
    # one expert of a mixture, leaves the other branches adding a multiple of the stream)
    unnormalized = ev.structure is not None and not any(b.branch_normalized or b.post_norm
                                                        for b in ev.structure.blocks)
    if steps < MIN_STEPS and (bounded or not unnormalized or change < 1 or not beyond_linear(values, within, limit)):
        return (f"Only {steps} within-stage step(s): an additive branch on a small stream cannot be told apart "
                "from geometric growth, so this is uncertain.")
    agrees = raw >= limit if change > 1 else raw <= 1 / limit
    if not agrees:
        return (f"The measured first-to-last change ({raw:.3g}) is within the threshold: the per-block factor"
                + (" of the later half" if bounded else "") + " does not hold across the stream (stage "
                "transitions or a decoder undo it), so this is uncertain.")
    return ""


def _verdict(outcome: str, kind: str, status: str, layers: tuple[str, ...], p_value: float | None,
             effect: dict[str, float | None], message: str, advice: str | None,
             details: dict[str, Any] | None = None) -> Verdict:
    """A verdict of the stream check with this outcome."""
    return Verdict(CheckName.STREAM, kind, status, layers, p_value, effect, message, advice, details=details or {},
                   outcome=outcome, family=Family.SIGNAL)


def stream_verdicts(ev: RunEvidence, th: Thresholds, predicted: tuple[float | None, ...] = (),
                    bounded: bool | None = None, notes: str = "", silent_backward: str = "") -> list[Verdict]:
    """Forward and backward verdicts on the residual stream (none with fewer than two blocks recorded).

    ``predicted``: the theory's forward stream (:func:`~initdiag.theory.stream.stream_theory`) and ``bounded``
    whether it grows at most linearly by design (None: unknown, judged as geometric); ``silent_backward``: why a
    gradient of 0 on the stream is by design (a zero-initialized head), see the module docstring."""
    out: list[Verdict] = []
    for kind in (Kind.FORWARD, Kind.BACKWARD):
        sites, values = stream_values(ev, kind)
        if kind == Kind.BACKWARD and sites and sites[0].endswith(":in"):
            sites, values = sites[1:], values[1:]
        if len(values) < 3:
            continue
        within = _steps(ev, sites)
        if kind == Kind.BACKWARD:
            sites, values, within = sites[::-1], values[::-1], within[::-1]
        n = len(values) - 1
        label = "Forward" if kind == Kind.FORWARD else "Backward"
        what = "variance of the residual stream" if kind == Kind.FORWARD else \
            "variance of the gradient on the residual stream, from the last block toward the first,"
        details = {"sites": sites, "values": [float(x) for x in values], "within_stage": within}
        effect: dict[str, float | None] = {"n_blocks": float(n)}
        if kind == Kind.FORWARD and len(predicted) == len(values) and all(p is not None for p in predicted):
            expected = _late(np.array(predicted, dtype=np.float64), within, n, late_only=bool(bounded))
            effect["expected_change"] = None if expected is None else expected[1]
        if kind == Kind.BACKWARD and silent_backward and (values <= th.no_signal_floor).all():
            out.append(_verdict(HEALTHY, str(kind), Status.PASS.value, (), None, effect, f"{label}: the gradient on "
                               f"the residual stream is 0 at initialization: {silent_backward}.{notes}", None,
                               details=details))
            continue
        if (~np.isfinite(values) | (values <= th.no_signal_floor)).any():
            bad = int(np.argmax(~np.isfinite(values) | (values <= th.no_signal_floor)))
            finite = bool(np.isfinite(values).all())
            out.append(_verdict(Outcome.NO_SIGNAL if finite else Outcome.EXPLODING, str(kind), Status.FAIL.value,
                               (sites[bad],), None, effect, f"{label}: the {what} is {'0' if finite else 'not finite'}"
                               f" at '{sites[bad]}' (of {n} blocks).{notes}", init_advice(ev), details=details))
            continue
        late = _late(values, within, n, late_only=bool(bounded))
        raw = float(values[-1] / values[0])
        if late is None:
            continue
        r, change = late
        effect.update({"late_gain": r, "change": change, "change_raw": raw})
        design = ("" if bounded is None else " Theory predicts bounded (at most linear) growth for this design: its "
                  "branches are normalized or zero, or normalized after the add." if bounded else
                  " Theory predicts geometric growth for this design: its residual branches are not normalized, "
                  "so each adds a multiple of the stream.")
        expected_text = (f" Theory's stream changes by {effect['expected_change']:.3g} at its rate."
                         if effect.get("expected_change") is not None else "")
        text = (f"{label}: the {what} changes by a factor of {r:.3g} per block within stages"
                + (" over the later half" if bounded else "") + f" of the {n} blocks ('{sites[0]}' to '{sites[-1]}'): "
                f"at that rate a change of {change:.3g} across the stream (raw first-to-last {raw:.3g}; linear growth "
                "keeps this near 1-7 whatever the total)." + expected_text + design)
        limit = th.change_factor ** 2 if bounded else th.change_factor
        big = max(change, 1 / change) if change > 0 else math.inf
        check = Outcome.EXPLODING if change > 1 else Outcome.VANISHING
        if bounded and kind == Kind.BACKWARD:
            out.append(_verdict(HEALTHY, str(kind), Status.PASS.value, (), None, effect,
                               text + " Reported, not judged: the normalized branches are invariant to the scale of "
                               "their input, so the gradient on the stream scales with 1/sigma of the stream and "
                               "changes the normalized weights' effective step size, not the signal (Yang et al. "
                               "2019; Arora et al. 2019)." + notes, None, details=details))
        elif (big >= limit and not (unmeasured := _unmeasured(within, raw, change, limit, bool(bounded), values, ev))
              and (check == Outcome.EXPLODING or big >= th.vanishing_fail_factor)):
            out.append(_verdict(check, str(kind), Status.FAIL.value, (sites[0], sites[-1]), None, effect,
                               text + " The growth is geometric, not the bounded growth of normalized branches."
                               + notes, "Normalize the residual branches (BatchNorm/LayerNorm), scale them down "
                               "(SkipInit, Fixup: zero the last layer of each branch) or lower the branch gains; "
                               + init_advice(ev), details=details))
        elif big >= limit or (bounded and big >= th.change_factor):
            why = (unmeasured or shallow_fall(th).strip() if big >= limit else
                   "Beyond the threshold, but the design's normalizations bound the stream and rescale its "
                   "gradient: uncertain.")
            out.append(_verdict(check, str(kind), Status.WARN.value, (sites[0], sites[-1]), None, effect,
                               text + " " + why + notes, init_advice(ev), details=details))
        else:
            out.append(_verdict(HEALTHY, str(kind), Status.PASS.value, (), None, effect,
                               text + f" Within the {th.change_factor:g}x threshold.{notes}", None, details=details))
    return out


def stream_theory_of(ctx: AnalysisContext) -> StreamTheory | None:
    """The run's predicted forward stream (:func:`stream_prediction`), computed once per analysis."""
    return stream_prediction(ctx.evidence)


class StreamCheck(SignalColumns, Check):
    """The residual stream across blocks, forward and backward: geometric growth where theory says bounded."""

    name = CheckName.STREAM
    family = Family.SIGNAL
    needs = frozenset({Need.FRAME, Need.STRUCTURE})
    always_shown = True

    def run(self, ctx: AnalysisContext) -> list[Verdict]:
        ev = ctx.evidence
        if ev.structure is None or not ev.structure.blocks:
            return []
        theory = ctx.derive(stream_theory_of)
        bounded = theory.bounded if theory is not None else \
            all(b.post_norm or b.branch_normalized for b in ev.structure.blocks)
        head = ctx.derive(why_of).head
        silent = (f"the output head '{head}' is zero-initialized and learns from step 1, and the gradient flows from "
                  "then on") if head else ""
        return stream_verdicts(ev, ctx.thresholds, theory.values if theory else (), bounded, silent_backward=silent)

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "vanishing/exploding", "The residual stream",
            "With residual blocks, the stream (the blocks' outputs) is judged across blocks: the geometric mean of "
            "the per-block variance ratios within stages (identity shortcuts; over the later half of them where "
            "theory predicts linear growth) is raised to the number of blocks. Theory: Var(x + f(x)) = Var(x) + "
            "Var(f(x)) at init, so unnormalized branches grow the stream geometrically and normalized or zero ones "
            "at most linearly (Brock et al. 2021; De & Smith 2020).",
            "the stream's variance changes at most linearly across blocks.",
            f"fail when the change reaches {th.change_factor:g}x for a design theory says grows geometrically, "
            f"{th.change_factor ** 2:g}x (warn at {th.change_factor:g}x) for a bounded one, whose gradient on the "
            "stream is reported, not judged (normalized branches are scale-invariant). A fail needs what was "
            f"measured to agree: at least {MIN_STEPS} within-stage steps (with fewer, a branch adding a fixed "
            "variance to a small stream, 1 + b/v, looks geometric, unless, where no block normalizes its branch or "
            f"sum, the k-th steps of a stage, k >= 2, grow more than {LINEAR_MARGIN:g} k/(k-1), which linear "
            "growth never "
            "does) and a measured first-to-last change beyond the same threshold in the same direction; else it "
            "warns. A fall fails only from "
            f"{th.vanishing_fail_factor:g}x on (He et al. 2015: ReLU nets still learn through ~5e-7).",
        ),)
