"""Inputs (and tokens) made alike with depth: the mean cosine between samples per layer, against the
correlation map.

For a layer ``h' = W phi(h) + b`` the non-centered cosine ``c`` between two inputs' pre-activations follows
the C-map (Poole et al. 2016; Schoenholz et al. 2017): ``c' = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) /
q'`` for ``(u1, u2)`` Gaussian with correlation ``c`` (:func:`~initdiag.theory.cmap.correlation_map`). Its
fixed point ``c* = 1`` attracts when ``chi_c(1) <= 1``: every input then drifts toward one representation,
exponentially when ``chi_c(1) < 1`` (the ordered phase) and polynomially at criticality (ReLU at He:
``1 - c ~ 9 pi^2 / (2 l^2)``, about 0.996 at 100 layers). Attention without skip connections collapses the
tokens of a sequence to one, doubly exponentially (Dong et al. 2021, "Attention is not all you need"; Noci et
al. 2022); skip connections prevent it. A representation whose inputs agree to 3 decimals gives every input
nearly the same output and gradient: the network cannot start telling them apart, whatever its variances.

Measured (:mod:`~initdiag.recording.extras`) at each weight layer's output and each residual block's output;
judged at the deepest representation with 16 or more features (the blocks' stream when there are blocks, else
the last weight layer, constant-input layers left out) against the first.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..recording.extras import SiteExtras
from ..structure.model import Structure
from ..theory.cmap import correlation_map, relu_arccos
from ..vocab import CheckName, Family, Need, Phase, Signal, Status
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["CorrelationCheck", "correlation_path", "correlation_verdict", "predicted_correlations"]

MIN_FEATURES = 16
"""A representation judged has at least this many values per sample (per token): the cosine of a few
logits between two inputs is noise."""

_PREDICTABLE = {"relu", "leaky_relu", "tanh", "gelu", "silu", "elu", "selu", "softplus", "sigmoid", "linear",
                "mish", "hardtanh", "relu6", "celu"}


@dataclass(frozen=True)
class CorrelationPoint:
    """One site along the path: measured cosines between samples and between tokens, and theory's."""

    site: str
    depth: int
    samples: float
    tokens: float
    predicted: float | None = None


def correlation_path(structure: Structure, extras: dict[str, SiteExtras], by_design: frozenset[str] = frozenset()
                     ) -> list[str]:
    """The sites judged, in order: the first weight layer with a varying input, then the blocks (when the model
    has any) or the weight layers, each with ``MIN_FEATURES`` or more values per sample. Layers in
    ``by_design`` (weights zero or near zero by design, or inputs that vary only through such: a gate open at
    its bias, an adapter's zero conv) give every sample the same output on purpose and are left out."""
    layers = [w for w in structure.weight_layers if not w.constant_input and w.name in extras
              and w.name not in by_design
              and math.prod(w.out_shape or (0,)) >= MIN_FEATURES and (w.out_shape or (0,))[-1] > 1]
    blocks = [b.name for b in structure.blocks if b.name in extras and math.prod(b.out_shape or (0,)) >= MIN_FEATURES]
    if blocks:
        return ([layers[0].name] if layers else []) + blocks
    return [w.name for w in layers]


def _cmap(name: str, params: tuple[tuple[str, object], ...], q: float, c: float, sw2: float, sb2: float) -> float:
    if name == "relu":  # closed form (Cho & Saul 2009): the arc-cosine kernel of degree 1
        k, length = sw2 * q / 2.0 * relu_arccos(c), sw2 * q / 2.0 + sb2
        return (k + sb2) / length if length > 0 else math.nan
    return correlation_map(name if name != "linear" else "linear", q, q, c, sw2, sb2)


def predicted_correlations(ctx: AnalysisContext, path: list[str]) -> dict[str, float]:
    """Theory's cosine at each weight layer of ``path`` that continues an unbroken chain (a direct link, no
    normalization, a known activation) from the first, iterating the C-map from the first layer's measured
    cosine with each layer's ``sigma_w^2 = fan_in Var(W)``, ``sigma_b^2 = E[b^2]`` and measured ``q``."""
    ev = ctx.evidence
    s = ev.structure
    if s is None or not path:
        return {}
    links, by_name = set(s.links), {w.name: w for w in s.weight_layers}
    first = ev.extras.get(path[0])
    if first is None or not math.isfinite(first.cos_samples) or path[0] not in by_name:
        return {}
    out, c = {path[0]: first.cos_samples}, first.cos_samples
    for a, b in itertools.pairwise(path):
        la, lb = by_name.get(a), by_name.get(b)
        if la is None or lb is None or (a, b) not in links or la.norm_after is not None \
                or la.activation.name not in _PREDICTABLE or a not in ev.extras:
            break
        q = ev.extras[a].rms ** 2
        var_w = ev.weight_vars.get(lb.module_name)
        weights = ev.weights_init.get(lb.module_name)
        if var_w is None or not math.isfinite(q) or q <= 0:
            break
        bias = weights[1] if weights is not None else None
        sb2 = float(np.mean(np.square(np.asarray(bias, dtype=np.float64)))) if bias is not None else 0.0
        c = _cmap(la.activation.name, la.activation.params, q, c, lb.fan_in * var_w, sb2)
        if not math.isfinite(c):  # a zero layer: no second input left to correlate with
            break
        out[b] = c
    return out


def _points(ctx: AnalysisContext) -> list[CorrelationPoint]:
    ev = ctx.evidence
    if ev.structure is None:
        return []
    zeros = {name for name, learns in ev.zero_params.items() if learns}
    by_design = frozenset(w.name for w in ev.structure.weight_layers
                          if f"{w.module_name}.{w.param}" in zeros or w.name in ev.zero_shadow)
    path = correlation_path(ev.structure, dict(ev.extras), by_design)
    pred = predicted_correlations(ctx, path) if not ev.structure.blocks else {}
    return [CorrelationPoint(site, k, ev.extras[site].cos_samples, ev.extras[site].cos_tokens, pred.get(site))
            for k, site in enumerate(path)]


def _judge(points: list[CorrelationPoint], attr: str, th: Thresholds) -> tuple[str, float, float] | None:
    """``(status, gap at the deepest point, gap at the first)`` for the cosine ``attr``; gap = 1 - c."""
    values = [(p, getattr(p, attr)) for p in points if math.isfinite(getattr(p, attr))]
    if len(values) < 2:
        return None
    gap0, gap = 1.0 - values[0][1], 1.0 - values[-1][1]
    shrunk = gap * th.correlation_shrink <= gap0
    status = (Status.FAIL if shrunk and gap < th.correlation_fail else
              Status.WARN if shrunk and gap < th.correlation_warn else Status.PASS)
    return status.value, gap, gap0


ROUNDING = 1e-6
"""Gaps ``1 - cos`` below this are float32 rounding (a few ulps of 1), not a measured difference."""


def correlation_verdict(ctx: AnalysisContext) -> Verdict | None:
    """Fail when the deepest representation's inputs (or tokens) agree within ``correlation_fail`` (and depth
    shrank their distance ``correlation_shrink`` times), warn within ``correlation_warn``."""
    points = _points(ctx)
    th = ctx.thresholds
    judged = {kind: j for kind in ("samples", "tokens") if (j := _judge(points, kind, th)) is not None}
    if not judged:
        return None
    rank = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}

    def first_alike(kind: str) -> int:  # where the kind's cosines first come within correlation_fail of 1
        return next((i for i, p in enumerate(points) if 1.0 - getattr(p, kind) < th.correlation_fail), len(points))

    # the worse verdict, then the smaller gap; gaps within float32 rounding of 0 are equal, and of two kinds
    # that collapsed, the one that collapsed first is the cause (attention's tokens take the samples with them)
    kind, (status, gap, gap0) = max(judged.items(), key=lambda kv: (
        rank[Status(kv[1][0])], -max(kv[1][1], ROUNDING), -first_alike(kv[0])))
    last = points[-1]
    what = "different inputs" if kind == "samples" else "the tokens of a sequence"
    pred = f" (the correlation map predicts {last.predicted:.4f})" if last.predicted is not None and \
        kind == "samples" else ""
    message = (f"Mean cosine between {what}: {1 - gap0:.3f} at '{points[0].site}', {1 - gap:.4f} at "
               f"'{last.site}'{pred}, {len(points)} representations measured.")
    advice = None
    if status != Status.PASS:
        message += (f" Depth made them alike: they differ by ~{math.sqrt(max(2 * gap, 0.0)):.0%} of their "
                    "amplitude, so every input gets nearly the same output and gradient.")
        advice = ("Add skip connections (attention without them collapses the tokens, Dong et al. 2021) or "
                  "normalization, or initialize closer to the edge of chaos (chi_c(1) = 1: He for ReLU, "
                  "orthogonal weights for tanh).")
    effect = {"gap": gap, "gap_first": gap0, "points": float(len(points))}
    details = {"kind": kind, "points": [asdict(p) for p in points]}
    return Verdict(CheckName.CORRELATION, Signal.FORWARD, status, (last.site,) if status != Status.PASS else (),
                   None, effect, message, advice, Phase.INIT, details, family=Family.CORRELATION)


class CorrelationCheck(Check):
    """Samples and tokens made alike with depth (:func:`correlation_verdict`)."""

    name = CheckName.CORRELATION
    family = Family.CORRELATION
    needs = frozenset({Need.STRUCTURE})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [correlation_verdict(ctx)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "correlation", "Correlation between inputs and tokens",
            "On the audit's first batch, at each weight layer's and residual block's output: the mean cosine between "
            "two different samples' flattened outputs, (|sum_i u_i|^2 - n) / (n (n - 1)) with u_i = y_i / |y_i|, "
            "and for (batch, tokens, channels) outputs the same between the tokens of a sample. Along a chain of "
            "weight layers theory iterates the correlation map c' = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q' "
            "from the first layer's measured cosine (two-dimensional Gaussian quadrature; ReLU's arc-cosine kernel, "
            "Cho & Saul 2009). Sources: Poole et al. (2016), Schoenholz et al. (2017), Dong et al. (2021).",
            "not a statistical test (cosines averaged over the batch's pairs).",
            f"at the deepest representation, with 1 - c shrunk {th.correlation_shrink:g}x or more since the first: "
            f"warn when 1 - c < {th.correlation_warn:g}, fail when 1 - c < {th.correlation_fail:g}.",
        ),)
