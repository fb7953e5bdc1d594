"""Sizes a normalized network hides from the variance checks: the logits at initialization, and each residual
branch against the stream it joins.

* ``output_scale``: the model's logits (:func:`~initdiag.recording.extras.output_stats`) against chance. For
  i.i.d. logits of standard deviation ``s`` over ``C`` classes the expected cross-entropy against a random label
  is ``E[logsumexp(l)] - E[l_y]``, about ``log C + s^2/2`` for small ``s`` (computed by
  :func:`~initdiag.theory.cmap.expected_ce_loss`). Theory predicts ``s`` from the head: ``s^2 = fan_in E[W^2]
  E[x^2] + Var_c(b)`` with ``E[x^2]`` the head's measured input second moment.
* ``branch_scale``: per residual add, ``r = Var(branch) / Var(shortcut)`` measured where the two are summed
  (Brock et al. 2021's ``avg_ch_var_residual / avg_ch_var``). Designs: zero (``r < 1e-6``: SkipInit, zero
  residual init, layer scale 1e-6), small (``r < 0.1``: GPT-2's ``0.02/sqrt(2L)``, T-Fixup, DeepNorm), about one
  (normalized branches, unnormalized ones at He), large. In a pre-norm block (the branch normalizes its own
  input) after the first, the stream already holds the earlier branches, so ``r_k ~ 1/k`` whatever the weights'
  scale; where the stream starts (an add whose shortcut derives from no earlier block: the embedding, a class
  token, a decoder's queries) its scale is set apart from the branch's, by libraries far below it (a
  Llama-sized decoder at its own init has ``r ~ 10^3`` there), so such an add is reported, not judged. So is a
  pre-norm add whose stream's variance is below the eps of the normalization that reads it: ``x / sqrt(Var(x) +
  eps)`` is then ``x / sqrt(eps)``, a gain and not a normalization, so the stream grows by ``1 + r`` per add only
  until its variance reaches eps, where the norm starts to normalize and ``r ~ 1/k`` again (HF's MobileViT, whose
  0.02-std convs leave the stream at 1e-11). And so is an add whose branch ends in a normalization (OLMo-2,
  Gemma): its variance is the norm's gain (with its eps), which no weight scale changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..recording.tensor_stats import array_moments
from ..structure.model import Block
from ..theory.cmap import expected_ce_loss, output_var_prediction, softmax_entropy_gaussian
from ..vocab import CheckName, Family, Need, Phase, Signal, Status
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["BranchScaleCheck", "OutputScaleCheck", "branch_design", "predicted_logit_std"]


def predicted_logit_std(ctx: AnalysisContext) -> float | None:
    """``sqrt(fan_in E[W^2] E[x^2] + Var_c(b))`` of the head that made the logits, from the structure, the
    weights and the head's measured input; None where one of them is missing."""
    ev = ctx.evidence
    out = ev.output
    if out is None or out.head is None or ev.structure is None:
        return None
    layer = next((w for w in ev.structure.weight_layers if w.name == out.head), None)
    extras = ev.extras.get(out.head)
    weights = ev.weights_init.get(layer.module_name) if layer is not None else None
    if layer is None or extras is None or weights is None or not math.isfinite(extras.in_sq):
        return None
    w, b = weights
    w2 = array_moments(np.asarray(w)).mean_sq
    bvar = float(np.var(np.asarray(b, dtype=np.float64))) if b is not None and np.size(b) > 1 else 0.0
    return math.sqrt(max(output_var_prediction(layer.fan_in, w2, extras.in_sq, bvar), 0.0))


def output_verdict(ctx: AnalysisContext) -> Verdict | None:
    """Fail when the logits' spread alone makes the predictions near one-hot (i.i.d. logits of that spread have
    an entropy below ``output_entropy_fail`` of ``log C``: the head's scale) and the measured predictions are
    concentrated (below twice that: not a structured preference such as a tied embedding's pull toward the
    input token, which the spread does not explain); warn when the spread ``s`` exceeds ``logit_warn``."""
    ev, th = ctx.evidence, ctx.thresholds
    out = ev.output
    if out is None or out.rows == 0:
        return None
    s, classes = out.logit_std, out.classes
    chance = math.log(classes)
    expected = expected_ce_loss(s, classes) if math.isfinite(s) else math.inf
    predicted = predicted_logit_std(ctx)
    ratio = out.entropy / chance if math.isfinite(out.entropy) else 0.0
    iid = softmax_entropy_gaussian(s, classes) / chance if math.isfinite(s) else 0.0
    one_hot = iid < th.output_entropy_fail and ratio < 2 * th.output_entropy_fail
    status = Status.FAIL if one_hot else Status.WARN if not s <= th.logit_warn else Status.PASS
    where = f"'{out.head}'" if out.head else "the model's output"
    pred = f" (theory from the head's fan-in, weights and input: {predicted:.3g})" if predicted is not None else ""
    message = (f"Logits of {where} over {classes} classes ({out.rows} rows) spread with std {s:.3g}{pred}; the "
               f"expected loss against a random label is {out.loss:.3g} nats against chance log {classes} = "
               f"{chance:.3g} (i.i.d. logits of that spread: {expected:.3g}); the predictions' entropy is "
               f"{ratio:.2f} of log C (i.i.d. logits of that spread: {iid:.2f}).")
    advice = None
    if status != Status.PASS:
        factor = 1.0 / s if s > 0 and math.isfinite(s) else 0.0
        message += (" The model starts confident and wrong." if status == Status.FAIL else
                    " The first steps will be spent shrinking the logits.")
        advice = (f"Scale the head down (multiply its weight by ~{factor:.2g} for unit logit spread) or zero it, "
                  "as timm and ViT do, so the first loss is close to log C.")
    effect = {"logit_std": s, "loss": out.loss, "chance": chance, "expected_loss": expected,
              "predicted_logit_std": predicted, "entropy_ratio": ratio, "iid_entropy_ratio": iid}
    details = {"head": out.head, "classes": classes, "rows": out.rows, "mean": out.mean}
    return Verdict(CheckName.OUTPUT_SCALE, Signal.FORWARD, status.value, (out.head,) if out.head else (), None,
                   effect, message, advice, Phase.INIT, details, family=Family.SCALE)


class OutputScaleCheck(Check):
    """The logits at initialization against chance (:func:`output_verdict`)."""

    name = CheckName.OUTPUT_SCALE
    family = Family.SCALE
    needs = frozenset({Need.FRAME})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [output_verdict(ctx)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "output_scale", "Output scale at initialization",
            "The model's first floating output, when a weight layer made it (classes along that layer's channel "
            "dim; per token for a language model) or it is (batch, classes): s = sqrt(mean over rows of the "
            "variance over classes) and the expected cross-entropy against a uniformly random label, mean over rows "
            "of logsumexp(l) - mean_c(l), and the mean entropy of the predictions. Theory: i.i.d. logits of std s "
            "give about log C + s^2/2 (initdiag.theory.cmap.expected_ce_loss), and the head predicts "
            "s^2 = fan_in E[W^2] E[x^2] + Var(b) from its weights and its measured input. Source: Karpathy, "
            "'A recipe for training neural networks' (2019): verify the loss at init.",
            "not a statistical test (a deterministic function of the batch's logits).",
            f"warn when s > {th.logit_warn:g} (0.5 nats above chance); fail when i.i.d. logits of spread s have "
            f"an entropy below {th.output_entropy_fail:g} of log C (s ~ 10 whatever C) and the predictions' "
            f"measured entropy is below {2 * th.output_entropy_fail:g} of it (near one-hot from the head's "
            "scale: confident wrong answers).",
        ),)


def branch_design(r: float) -> str:
    """The rule a measured branch-to-stream ratio ``r`` satisfies: zero, small, unit or large."""
    if not math.isfinite(r):
        return "large" if r > 0 else "unmeasured"
    return "zero" if r < 1e-6 else "small" if r < 0.1 else "unit" if r <= 10 else "large"


def _judged(blocks: Iterable[Block]) -> list[tuple[Block, int, float, bool]]:
    """``(block, add, r, judged)`` for every measured add. Reported only: a pre-norm add whose shortcut has
    summed nothing yet or whose branch normalization sees the stream below its eps (the stream starts there),
    and an add whose branch ends in a normalization (its variance is the norm's gain, not the weights' scale)."""
    rows = []
    for b in blocks:
        prenorm = b.branch_normalized and not b.post_norm
        fresh = b.fresh_shortcuts or (b.index == 0 or b.restarts,) + (False,) * (len(b.branch_ratios) - 1)
        for k, r in enumerate(b.branch_ratios):
            if r == r:
                starts = (k < len(fresh) and fresh[k]) or (k < len(b.eps_streams) and b.eps_streams[k])
                exempt = (prenorm and starts) or (k < len(b.normalized_ends) and b.normalized_ends[k])
                rows.append((b, k, r, not exempt))
    return rows


def branch_verdict(ctx: AnalysisContext) -> Verdict | None:
    """Fail when a judged residual add's ``r`` exceeds ``branch_fail``, warn above ``branch_warn``."""
    ev, th = ctx.evidence, ctx.thresholds
    if ev.structure is None:
        return None
    rows = _judged(ev.structure.blocks)
    judged = [row for row in rows if row[3]]
    if not rows:
        return None
    worst = max(judged, key=lambda row: row[2], default=None)
    over = [row for row in judged if not row[2] <= th.branch_warn]
    bad = [row for row in judged if not row[2] <= th.branch_fail]
    status = Status.FAIL if bad else Status.WARN if over else Status.PASS
    designs = sorted({branch_design(r) for _, _, r, _ in rows})
    head = f"{len(rows)} residual adds in {len({b.name for b, *_ in rows})} blocks, designs: {', '.join(designs)}"
    if worst is None:
        message = f"{head}; only the first pre-norm block's (the stream is the embedding alone) was measured."
    elif status == Status.PASS:
        message = (f"{head}; the largest judged branch adds {worst[2]:.3g}x the stream's variance "
                   f"('{worst[0].name}', add {worst[1] + 1}).")
    else:
        listed = "; ".join(f"'{b.name}' add {k + 1}: {r:.3g}x" for b, k, r, _ in sorted(over, key=lambda x: -x[2])[:4])
        message = (f"{head}; {len(over)} branch{'es' if len(over) > 1 else ''} add more than {th.branch_warn:g}x "
                   f"the variance of the stream they join ({listed}): the skip path is overwritten.")
    advice = None if status == Status.PASS else (
        "Scale each branch's last layer down (by 1/sqrt(r) to match the stream; GPT-2 uses 0.02/sqrt(2 x blocks)) "
        "or start it at zero (SkipInit, zero_init_residual, layer scale), or normalize the branch.")
    details = {"blocks": [{"block": b.name, "add": k, "ratio": r, "design": branch_design(r), "judged": j}
                          for b, k, r, j in rows]}
    effect = {"max_ratio": worst[2] if worst else None, "adds": float(len(rows)), "over_warn": float(len(over))}
    return Verdict(CheckName.BRANCH_SCALE, Signal.FORWARD, status.value, tuple(dict.fromkeys(b.name for b, *_ in over)),
                   None, effect, message, advice, Phase.INIT, details, family=Family.SCALE)


class BranchScaleCheck(Check):
    """Each residual branch against the stream it joins (:func:`branch_verdict`)."""

    name = CheckName.BRANCH_SCALE
    family = Family.SCALE
    needs = frozenset({Need.STRUCTURE})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [branch_verdict(ctx)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "branch_scale", "Residual branch scale",
            "At every residual add of every block, on the structure discovery's forward: r = Var(branch operand) "
            "/ Var(shortcut operand), the variance the branch adds against the stream it joins (Brock et al. "
            "2021, avg_ch_var_residual / avg_ch_var). Each add is named by the rule it satisfies: zero (r < 1e-6: "
            "SkipInit, zero-init residuals, layer scale 1e-6), small (< 0.1: GPT-2's scaled projections, T-Fixup, "
            "DeepNorm), unit (<= 10: normalized branches), large. A pre-norm add whose shortcut derives from no "
            "earlier block (the stream starts there: an embedding, a class token) is reported, not judged (after "
            "it r ~ 1/k by construction), as is one whose stream's variance is below the eps of the norm reading "
            "it (x / sqrt(eps): a gain until the stream reaches eps), and an add whose branch ends in a "
            "normalization (its gain sets r). "
            "Source: Brock et al. (2021), 'Characterizing signal propagation to close the performance gap in "
            "unnormalized ResNets'; De & Smith (2020), SkipInit.",
            "not a statistical test (a ratio of variances over many values).",
            f"warn when a judged add has r > {th.branch_warn:g}, fail when r > {th.branch_fail:g}.",
        ),)
