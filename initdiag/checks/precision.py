"""Headroom for the dtypes people train in: the largest activation and the smallest gradients per layer
against float16's range and bfloat16's.

float16 holds magnitudes up to 65504 and down to its smallest subnormal ``2^-24`` (~6e-8); bfloat16 has
float32's range (to ~3.4e38) with 8 bits of precision (relative spacing ``2^-8``). An activation above the
maximum overflows to inf in the forward, which no loss scaling repairs; gradients below ``2^-24`` flush to 0
unless the loss is scaled up first (Micikevicius et al. 2018, "Mixed precision training": without scaling, 67%
of SSD's activation gradients were zero in float16); ``torch.amp.GradScaler`` starts at a scale of ``2^16``.
Measured on the audit's first batch (:mod:`~initdiag.recording.extras`); theory's largest activation for a
Gaussian layer of second moment ``q`` over ``n`` values is about ``sqrt(2 q ln n)``. With ``dtype`` float16 or
bfloat16 (``--dtype``, or the model's own) the check decides; otherwise it reports the headroom as
information.
"""

from __future__ import annotations

import math

from ..vocab import CheckName, Family, Need, Phase, Signal, Status
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["DTYPE_LIMITS", "PrecisionCheck", "precision_verdict"]

DTYPE_LIMITS: dict[str, tuple[float, float]] = {"float16": (65504.0, 2.0 ** -24),
                                                "bfloat16": (3.3895313892515355e38, 2.0 ** -133)}
"""dtype -> (largest finite magnitude, smallest subnormal)."""


def precision_verdict(ctx: AnalysisContext) -> Verdict | None:
    """For ``dtype`` float16: fail when an activation exceeds 65504, warn within ``fp16_warn_headroom`` of it
    or when ``underflow_warn`` of a layer's nonzero gradients lie below ``2^-24`` even after ``GradScaler``'s
    initial loss scale ``2^16`` (unscaled, most gradients of a language model do: scaling is the practice);
    bfloat16: fail above its maximum; other dtypes: information (pass)."""
    ev, th = ctx.evidence, ctx.thresholds
    sites = {k: v for k, v in ev.extras.items() if not math.isnan(v.max_abs)}
    if not sites:
        return None
    dtype = ev.dtype or "float32"
    top_site, top = max(((k, v.max_abs) for k, v in sites.items()), key=lambda kv: kv[1])
    under = {k: v.grad_underflow for k, v in sites.items() if math.isfinite(v.grad_underflow)}
    worst_under = max(under.items(), key=lambda kv: kv[1], default=(None, 0.0))
    scaled = {k: v.grad_underflow_scaled for k, v in sites.items() if math.isfinite(v.grad_underflow_scaled)}
    mins = [v.grad_min for v in sites.values() if math.isfinite(v.grad_min)]
    fp16_max, fp16_tiny = DTYPE_LIMITS["float16"]
    headroom = fp16_max / top if top > 0 else math.inf
    status, flagged = Status.PASS, []
    if dtype in DTYPE_LIMITS:
        limit = DTYPE_LIMITS[dtype][0]
        overflow = [k for k, v in sites.items() if not v.max_abs <= limit]
        if overflow:
            status, flagged = Status.FAIL, overflow
        elif dtype == "float16":
            close = [k for k, v in sites.items() if v.max_abs * th.fp16_warn_headroom > limit]
            flushed = [k for k, f in scaled.items() if f >= th.underflow_warn]
            if close or flushed:
                status, flagged = Status.WARN, close + flushed
    message = (f"Largest activation {top:.3g} at '{top_site}' ({headroom:.3g}x below float16's 65504); smallest "
               f"nonzero gradient {min(mins) if mins else math.nan:.3g}; at most {worst_under[1]:.0%} of a layer's "
               f"nonzero gradients below float16's 2^-24"
               + (f" ('{worst_under[0]}')" if worst_under[0] and worst_under[1] > 0 else "")
               + f", {max(scaled.values(), default=0.0):.0%} with GradScaler's initial loss scale 2^16.")
    message += (f" Judged for {dtype}." if dtype in DTYPE_LIMITS else
                " Information only: pass --dtype float16 or bfloat16 to judge the dtype you train in.")
    advice = None
    if status != Status.PASS:
        advice = ("Scale down the layers whose outputs overflow (their weights, or a normalization before them), "
                  "train in bfloat16 or keep them in float32; for gradients that underflow use loss scaling "
                  "(torch.amp.GradScaler).")
    effect = {"max_abs": top, "fp16_headroom": headroom, "max_grad_underflow": worst_under[1],
              "max_grad_underflow_scaled": max(scaled.values(), default=0.0),
              "min_grad": min(mins) if mins else None, "fp16_tiny": fp16_tiny}
    details = {"dtype": dtype, "sites": {k: {"max_abs": v.max_abs, "rms": v.rms, "grad_min": v.grad_min,
                                             "grad_rms": v.grad_rms, "grad_underflow": v.grad_underflow,
                                             "grad_underflow_scaled": v.grad_underflow_scaled}
                                         for k, v in sites.items()}}
    return Verdict(CheckName.PRECISION, Signal.FORWARD, status.value, tuple(dict.fromkeys(flagged)), None, effect,
                   message, advice, Phase.INIT, details, family=Family.PRECISION)


class PrecisionCheck(Check):
    """Activation and gradient magnitudes against float16 / bfloat16 (:func:`precision_verdict`)."""

    name = CheckName.PRECISION
    family = Family.PRECISION
    needs = frozenset({Need.FRAME})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [precision_verdict(ctx)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "precision", "Precision headroom",
            "On the audit's first batch, per weight layer and residual block: the largest |activation| and the "
            "smallest nonzero |dL/dy|, and the fraction of nonzero |dL/dy| below float16's smallest subnormal "
            "2^-24 (unscaled, and with GradScaler's initial loss scale 2^16), against float16's maximum 65504 and "
            "bfloat16's ~3.4e38. Source: Micikevicius et al. (2018), 'Mixed precision training'.",
            "not a statistical test (extremes of one batch).",
            f"with --dtype float16: fail when an activation exceeds 65504, warn within {th.fp16_warn_headroom:g}x of "
            f"it or when >= {th.underflow_warn:.0%} of a layer's nonzero gradients underflow under GradScaler's "
            "initial loss scale 2^16; bfloat16: fail above its maximum; otherwise information.",
        ),)
