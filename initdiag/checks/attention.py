"""Attention entropy at initialization: softmax attention near one-hot passes no gradient to its queries and keys.

Every softmax attention structure discovery saw (:class:`~initdiag.structure.measure.AttentionSite`), per
head: the entropy ``H`` of the attention weights against ``log n``, the uniform attention's over the unmasked
keys, and the logits' spread within a row against theory's ``sqrt(scale^2 d E[q^2] Var(k))``. The softmax's
Jacobian is ``diag(p) - p p^T``: for one-hot ``p`` it is zero, and so is the gradient into ``q`` and ``k``
(entropy collapse, Zhai et al. 2023, "Stabilizing transformer training by preventing attention entropy
collapse"). For i.i.d. logits of std ``s`` over ``n`` keys the expected entropy is
:func:`~initdiag.theory.cmap.softmax_entropy_gaussian` (about ``log n - s^2/2`` for small ``s``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..structure.measure import AttentionSite
from ..theory.cmap import softmax_entropy_gaussian
from ..vocab import CheckName, Family, Need, Phase, Signal, Status
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["AttentionEntropyCheck", "AttentionRow", "attention_rows", "attention_verdict"]


@dataclass(frozen=True)
class AttentionRow:
    """One attention site as judged: its heads' mean normalized entropy ``H / log n`` (``ratio``), the lowest
    head's, the logit spread measured and predicted, and the ratio theory expects for the predicted spread."""

    site: str
    op: str
    heads: int
    keys: int
    ratio: float
    min_head_ratio: float
    logit_std: float | None
    predicted_logit_std: float | None
    expected_ratio: float | None
    joint: bool = False
    queries: int = 0

    def describe(self) -> str:
        theory = f", theory {self.predicted_logit_std:.3g}" if self.predicted_logit_std is not None else ""
        spread = f"; logit std {self.logit_std:.3g}{theory}" if self.logit_std is not None else ""
        over = f"a joint map of {self.queries} queries x {self.keys // max(self.queries, 1)} keys" if self.joint \
            else f"{self.keys} keys"
        return f"'{self.site}' {self.ratio:.2f} of log n ({over}{spread})"


def attention_rows(sites: tuple[AttentionSite, ...]) -> list[AttentionRow]:
    """:class:`AttentionRow` of every site with at least one head measured."""
    rows = []
    for a in sites:
        ratios = [e / m for e, m in zip(a.entropy, a.max_entropy, strict=True)
                  if math.isfinite(e) and math.isfinite(m) and m > 0]
        if not ratios:
            continue
        stds = [s for s in a.logit_std if math.isfinite(s)]
        pred = a.predicted_logit_std if a.predicted_logit_std is not None and math.isfinite(
            a.predicted_logit_std) else None
        expected = softmax_entropy_gaussian(pred, a.keys) / math.log(a.keys) if pred is not None else None
        rows.append(AttentionRow(a.name, a.op, a.heads, a.keys, sum(ratios) / len(ratios), min(ratios),
                                 sum(stds) / len(stds) if stds else None, pred, expected, a.joint, a.queries))
    return rows


def attention_verdict(ctx: AnalysisContext) -> Verdict | None:
    """Fail when an attention layer's mean normalized entropy is below ``attention_fail``, warn below
    ``attention_warn``; None without attention. A joint softmax (over a flattened query x key map) warns at
    most: its rows sum to ``1 / queries`` on average, so its output is at most that share of its values' and
    its collapse freezes its own queries and keys without carrying the model's signal."""
    ev, th = ctx.evidence, ctx.thresholds
    if ev.structure is None:
        return None
    rows = attention_rows(ev.structure.attention)
    if not rows:
        return None
    worst = min(rows, key=lambda r: r.ratio)
    low = sorted((r for r in rows if r.ratio < th.attention_warn), key=lambda r: r.ratio)
    failing = [r for r in low if r.ratio < th.attention_fail and not r.joint]
    status = Status.FAIL if failing else Status.WARN if low else Status.PASS
    head = f"{len(rows)} attention layer{'s' if len(rows) > 1 else ''}"
    if status == Status.PASS:
        message = f"{head}: entropy at least {worst.ratio:.2f} of uniform ({worst.describe()})."
        advice = None
    else:
        listed = "; ".join(r.describe() for r in low[:4])
        joint = sum(r.joint for r in low)
        aside = (f" {joint} of them normalize a whole query x key map at once: each query's row holds 1/queries "
                 "of the weight on average, so they carry little of the signal and are warned, not failed."
                 if joint else "")
        message = (f"{head}: {len(low)} attend near one-hot at initialization ({listed}); the softmax passes "
                   f"almost no gradient to their queries and keys.{aside}")
        advice = ("Scale the query and key projections down so the attention logits have unit variance "
                  "(std ~0.02 or 1/sqrt(d_model) per weight, with the 1/sqrt(head_dim) scale), or add qk-norm.")
    effect = {"min_entropy_ratio": worst.ratio, "layers": float(len(rows)), "low_layers": float(len(low))}
    return Verdict(CheckName.ATTENTION_ENTROPY, Signal.FORWARD, status.value, tuple(r.site for r in low),
                   None, effect, message, advice, Phase.INIT, {"sites": [asdict(r) for r in rows]},
                   family=Family.ATTENTION)


class AttentionEntropyCheck(Check):
    """Entropy of every softmax attention at initialization (:func:`attention_verdict`)."""

    name = CheckName.ATTENTION_ENTROPY
    family = Family.ATTENTION
    needs = frozenset({Need.STRUCTURE})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [attention_verdict(ctx)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "attention_entropy", "Attention entropy",
            "Every softmax attention of the forward (a softmax of a product of two data tensors, "
            "F.scaled_dot_product_attention, nn.MultiheadAttention), per head, on the structure discovery's batch: "
            "H = -sum_j p_j log p_j averaged over the queries with two or more unmasked keys, against log n "
            "(uniform over the n unmasked keys); the logits' standard deviation within a row against theory's "
            "sqrt(scale^2 d E[q^2] Var(k)), and the entropy i.i.d. Gaussian logits of that spread give. Source: "
            "Zhai et al. (2023), attention entropy collapse. A softmax over a flattened query x key map (the whole "
            "map sums to one) is measured over the map; its rows hold 1/queries of the weight on average, so its "
            "output is that small a share of its values' and it warns at most.",
            "not a statistical test (entropies averaged over many rows).",
            f"warn when a layer's mean H / log n < {th.attention_warn:g}, fail when < {th.attention_fail:g} "
            "(a joint map: warn).",
        ),)
