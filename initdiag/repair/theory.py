"""The theory repair: for each failing verdict of an audit, the weight scale theory says answers it.

One round reads one audit and changes only the weights its failing verdicts name (a layer changed by one rule
is not changed again in that round; the next audit measures the result):

* **signal** (a chain vanishing, exploding or without signal; saturated units): every weight layer of each
  failing chain gets ``Var(W) = sigma*^2 / fan_in`` (``fan_in`` as the forward showed it: grouped
  convolutions, transposed ones, transformers' ``Conv1D``), ``sigma*^2`` the critical scale of the activation
  that follows it (:func:`critical_sigma2`).
* **stream** (a residual stream that grows without normalization): each block's branch ends scaled so the
  branch adds ``1/L`` of the stream's variance at its add (``L`` blocks: the stream grows at most ``(1 +
  1/L)^L < e``), from the branch-to-stream ratio structure discovery measured: a factor ``sqrt(1 / (L r))``.
  Fixup (Zhang et al. 2019) scales branches by ``L^(-1/(2m-2))``; this uses the measured ``r`` instead.
* **branch_scale**: the last layer of every branch adding more than ``branch_fail`` times the stream's
  variance scaled by ``sqrt(1 / r)``: the branch then adds as much as the stream holds (the "unit" design).
* **output_scale**: the head's weight multiplied by ``1 / s``, ``s`` the logits' measured spread: unit logit
  scale, so the first loss is near ``log C + 1/2`` (Karpathy's "verify the loss at init").
* **attention_entropy**: the layers the queries and keys come from multiplied by ``s^(-1/2)`` each, ``s`` the
  measured attention-logit spread: the logits ``q.k`` scale by ``1/s`` to unit spread, whether q and k come
  from one packed projection or two.

Weights that are all zeros (deliberate zeros that learn), normalization parameters, biases and lookups are
never touched (:mod:`.params`); a layer a rule needs but cannot reach is named in ``unrepaired``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checks import Thresholds, Verdict
from ..results import AuditRun, ParamChange
from ..structure import Structure
from ..structure.model import Activation, WeightLayer
from ..theory.gains import phi_spec
from ..theory.gauss import LayerTheory, gaussian_moments, propagate_chain
from ..vocab import CheckName, Status
from .params import LOOKUPS, rescale, weight_of, weight_std

__all__ = ["Round", "critical_sigma2", "theory_round"]

_SMALL_Q, _UNIT_Q = 1e-4, 1.0
_AT_UNIT = "forward x backward gain 1 at q = 1"


@functools.lru_cache(maxsize=64)
def _critical(name: str, params: tuple[tuple[str, object], ...]) -> tuple[float, str] | None:
    spec = phi_spec(name, params)
    if spec is None:
        return None
    small, unit = gaussian_moments(spec, _SMALL_Q), gaussian_moments(spec, _UNIT_Q)
    f_small, f_unit = small.second / _SMALL_Q, unit.second / _UNIT_Q
    centred = abs(small.mean) < 1e-2
    if centred and f_unit < f_small * (1 - 1e-3):  # saturating: the variance map's fixed point is q* = 0
        return 1.0 / small.slope_second, f"{name}: edge of chaos, chi_1 = 1 at q* = 0"
    sigma2 = 1.0 / math.sqrt(f_unit * unit.slope_second)
    return sigma2, f"{name}: {_AT_UNIT}"


def critical_sigma2(activation: Activation) -> tuple[float, str] | None:
    """``(sigma_w^2, rule)``: ``fan_in Var(W)`` for a layer followed by ``activation``, from the theory engine's
    Gaussian moments; None for an activation theory cannot evaluate.

    A saturating zero-centred activation (``E[phi(sqrt(q) z)^2] / q`` falling with ``q``: tanh, erf, ELU) has
    its variance map's fixed point at ``q* = 0``, where the critical scale is ``chi_1 = sigma_w^2 phi'(0)^2 =
    1`` (the edge of chaos at ``sigma_b = 0``, Poole et al. 2016; Schoenholz et al. 2017): tanh 1. Any other
    (ReLU-like: no finite fixed point at ``sigma_b = 0``) gets the scale at which the forward factor ``sigma_w^2
    E[phi^2]`` and the backward factor ``sigma_w^2 E[phi'^2]`` at unit pre-activation have geometric mean 1:
    ReLU 2 (He et al. 2015), GELU 2.27, SiLU 2.72; no activation (a head, a branch end) 1."""
    if activation.name in ("linear", "identity"):
        return 1.0, "no activation after it"
    return _critical(activation.name, tuple(activation.params))


@dataclass
class Round:
    """One round's changes, and the layers a failing verdict named that no rule could repair (with why)."""

    changes: list[ParamChange] = field(default_factory=list)
    unrepaired: dict[str, str] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)

    def apply(self, model: nn.Module, layer: WeightLayer, answers: tuple[str, ...], rule: str, *,
              target_std: float | None = None, factor: float | None = None, generator: torch.Generator | None = None,
              ) -> None:
        """Rescale ``layer``'s weight to ``target_std`` or by ``factor`` (once per round per parameter)."""
        found = weight_of(model, layer)
        if found is None or layer.op in LOOKUPS:
            self.unrepaired[layer.name] = "its weight is not a parameter of the model or is a lookup table"
            return
        name, weight = found
        if id(weight) in self.touched:
            return
        old = weight_std(weight)
        if old == 0.0 and factor is not None:
            return  # a deliberate zero: a factor keeps it zero, and it learns
        target = target_std if target_std is not None else old * float(factor if factor is not None else 1.0)
        change = rescale(layer.name, name, weight, target, tuple(str(a) for a in answers), rule, generator)
        self.touched.add(id(weight))
        if change is not None:
            self.changes.append(change)


def _failing(run: AuditRun, check: str) -> list[Verdict]:
    return [v for v in run.verdicts if v.check == check and v.status == Status.FAIL]


def _chain_layers(structure: Structure, verdicts: Iterable[Verdict]) -> list[tuple[str, ...]]:
    """The failing chains of signal verdicts, each in execution order (a chain named by its first and last layer
    in ``details["chains"]``), and, one at a time, the weight layers before the units a saturation verdict
    names; a layer appears in the first group that holds it."""
    segments = {(s[0], s[-1]): s for s in structure.segments()}
    by_site = {la.activation.site: la.name for la in structure.weight_layers if la.activation.site}
    groups: list[tuple[str, ...]] = []
    for v in verdicts:
        chains = [c for c in v.details.get("chains", ()) if c.get("status") == Status.FAIL]
        for c in chains:
            groups.append(tuple(segments.get((c["layers"][0], c["layers"][-1]), tuple(c["layers"]))))
        if not chains:
            names = {la.name for la in structure.weight_layers}
            groups += [(n,) for n in v.layers if n in names] + [(by_site[n],) for n in v.layers if n in by_site]
    seen: set[str] = set()
    out: list[tuple[str, ...]] = []
    for g in groups:
        kept = tuple(n for n in g if n not in seen)
        seen.update(kept)
        if kept:
            out.append(kept)
    return out


def _input_q(model: nn.Module, run: AuditRun, layer: WeightLayer) -> float:
    """The second moment of ``layer``'s input the audit saw, ``E[x^2] = E[y^2] / (fan_in E[W^2])`` from its
    output's measured ``var + mean_sq`` (step 0, over the audit's batches; the bias neglected); 1 when unknown."""
    found = weight_of(model, layer)
    f = run.frame
    rows = f[(f["layer"] == layer.name) & (f["kind"] == "forward") & (f["step"] == 0)
             & f["stat"].isin(("var", "mean_sq"))]
    if found is None or rows.empty:
        return 1.0
    w2 = float(found[1].detach().double().pow(2).mean())
    y2 = float(rows.groupby("stat")["value"].mean().sum())
    q = y2 / (layer.fan_in * w2) if w2 > 0 else math.nan
    return q if math.isfinite(q) and q > 0 else 1.0


def _depth_factor(layers: list[WeightLayer], sigma2: list[float], scaled: list[bool], q0: float) -> float:
    """The common factor ``c`` on the ``scaled`` layers' ``sigma_w^2`` at which the product of the chain's
    predicted per-layer forward gains ``q_l / q_{l-1}`` and backward gains ``g_{l-1} / g_l`` over its scaled
    layers after the first is 1 (:func:`~initdiag.theory.gauss.propagate_chain` from the measured input
    ``q0``, ``sigma_w^2`` on both maps; bisection on ``log c`` in [-2, 2]). ReLU-like activations are
    homogeneous, so ``c = 1`` exactly; SiLU and GELU are not: their per-layer gain at ``sigma_w^2`` chosen at
    ``q = 1`` drifts with the pre-activation scale the chain reaches, and the drift compounds with depth."""
    linear = ("linear", "identity")
    specs = [None if la.activation.name in linear else phi_spec(la.activation.name, tuple(la.activation.params))
             for la in layers]
    steps = [i for i in range(1, len(layers)) if scaled[i]]
    if not steps or any(s is None and la.activation.name not in linear for s, la in zip(specs, layers, strict=True)):
        return 1.0

    def excess(log_c: float) -> float:
        c = math.exp(log_c)
        w = [s2 * (c if k else 1.0) for s2, k in zip(sigma2, scaled, strict=True)]
        p = propagate_chain([LayerTheory(w[i], w[i], 0.0, specs[i - 1] if i else None) for i in range(len(w))], q0)
        return sum(math.log(p.forward[i] / p.forward[i - 1]) + math.log(p.backward[i - 1] / p.backward[i])
                   for i in steps)

    lo, hi = -2.0, 2.0
    try:
        if not excess(lo) < 0 < excess(hi):
            return 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    except (ValueError, ZeroDivisionError, OverflowError):
        return 1.0
    return math.exp((lo + hi) / 2)


Memo = dict[tuple[str, str], list[tuple[float, float]]]
"""Per chain (first and last layer): the rounds' ``(log k, log(g_f g_b))`` measurements, ``k`` the chain's scale
relative to theory's target and ``g_f``, ``g_b`` its measured per-layer gains."""


def theory_round(model: nn.Module, run: AuditRun, seed: int = 0, memo: Memo | None = None) -> Round:
    """Repair in place what ``run`` (an audit of ``model`` as it is) fails, by the rules of this module;
    ``memo`` carries a chain's measurements from one round to the next (:func:`_measured_factor`)."""
    out, structure = Round(), run.structure
    if structure is None:
        out.unrepaired["model"] = "the audit has no structure (discovery failed): theory cannot place a rule"
        return out
    gen = torch.Generator().manual_seed(seed)
    by_name = {la.name: la for la in structure.weight_layers}
    signal = _failing(run, CheckName.SIGNAL) + _failing(run, CheckName.SATURATION)
    answers = tuple(dict.fromkeys(v.check for v in signal))
    for group in _chain_layers(structure, signal):
        _chain(model, run, [by_name[n] for n in group if n in by_name], answers, gen, out,
               {} if memo is None else memo)
    _stream(model, run, structure, by_name, out)
    _branches(model, run, structure, by_name, out)
    _head(model, run, by_name, out)
    _attention(model, run, structure, by_name, out)
    return out


def _chain(model: nn.Module, run: AuditRun, layers: list[WeightLayer], answers: tuple[str, ...],
           gen: torch.Generator, out: Round, memo: Memo) -> None:
    """Every layer of one chain to its activation's critical scale, the scales set at ``q = 1`` corrected for
    the chain's depth by :func:`_depth_factor`; a chain an earlier round set that still fails is corrected from
    its measured gains (:func:`_measured_factor`)."""
    known: list[tuple[WeightLayer, float, str]] = []
    for layer in layers:
        critical = critical_sigma2(layer.activation)
        if critical is None:
            out.unrepaired[layer.name] = f"activation '{layer.activation.name}' unknown to the theory engine"
            continue
        known.append((layer, *critical))
    if not known:
        return
    scaled = [rule.endswith(_AT_UNIT) for _, _, rule in known]
    c = _depth_factor([k[0] for k in known], [k[1] for k in known], scaled, _input_q(model, run, known[0][0]))
    depth = f"; x {c:.3g} for the chain's {len(known)} layers" if abs(c - 1.0) > 1e-3 else ""
    targets = [sigma2 * (c if k and depth else 1.0) for (_, sigma2, _), k in zip(known, scaled, strict=True)]
    seen = memo.get((known[0][0].name, known[-1][0].name))
    memo.setdefault((known[0][0].name, known[-1][0].name), [])
    measured = None if seen is None else _measured_factor(model, run, known, targets, scaled, seen)
    if measured is not None:  # set by an earlier round, at a common scale and still failing: measure
        k_m, why = measured
        targets = [t * (k_m if k else 1.0) for t, k in zip(targets, scaled, strict=True)]
        depth += why
    for (layer, _, rule), s2, k in zip(known, targets, scaled, strict=True):
        out.apply(model, layer, answers, f"Var(W) = {s2:.3g} / fan_in {layer.fan_in:g} ({rule}"
                  f"{depth if k else ''})", target_std=math.sqrt(s2 / layer.fan_in), generator=gen)


def _measured_factor(model: nn.Module, run: AuditRun, known: list[tuple[WeightLayer, float, str]],
                     targets: list[float], scaled: list[bool], seen: list[tuple[float, float]],
                     ) -> tuple[float, str] | None:
    """``(k, rule)`` for a chain whose weights hold theory's scale times a common ``k0`` (each scaled layer's
    ``Var(W)`` within 1% of ``k0`` times its target, the others at theirs) and still fails: the next ``k``.

    Theory's mean-field scale holds for wide layers; a narrow deep chain (20-40 SiLU layers of 48 units) drifts
    from it by finite-width effects of order depth / width (Hanin & Nica 2019), which only a measurement sees.
    Scaling every ``sigma_w^2`` by ``k`` scales both measured per-layer gains ``g_f``, ``g_b`` (the signal
    check's fitted slopes) by ``k`` for ReLU-like activations, so the first step is ``log k = log k0 - y / 2``,
    ``y = log(g_f g_b)``; a non-homogeneous activation near its unstable fixed point responds more steeply, so
    later rounds take the secant through the last two measurements ``(log k, y)`` (``seen``), kept inside the
    bracket once one measurement lies on each side of ``y = 0``. None when the chain is not at a common scale
    or a gain is missing."""
    ratios = []
    for (layer, _, _), t, k in zip(known, targets, scaled, strict=True):
        found = weight_of(model, layer)
        if found is None:
            return None
        ratios.append((weight_std(found[1]) ** 2 * layer.fan_in / t, k))
    k0 = max((r for r, k in ratios if k), default=1.0)
    if not all(abs(r / (k0 if k else 1.0) - 1.0) < 0.02 for r, k in ratios):
        return None
    ends = (known[0][0].name, known[-1][0].name)
    gains: dict[str, float] = {}
    for v in run.verdicts:
        if v.check != CheckName.SIGNAL or v.signal not in ("forward", "backward"):
            continue
        for ch in v.details.get("chains", ()):
            names, g = tuple(ch.get("layers", ())), ch.get("gain")
            if names and (names[0], names[-1]) == ends and g and math.isfinite(g) and g > 0:
                gains[str(v.signal)] = float(g)
    if len(gains) < 2:
        return None
    x, y = math.log(k0), math.log(gains["forward"] * gains["backward"])
    seen.append((x, y))
    step = x - y / 2.0
    if len(seen) >= 2:
        (x1, y1), (x2, y2) = seen[-2], seen[-1]
        if x2 != x1 and (y2 - y1) / (x2 - x1) > 0:
            step = x2 - y2 * (x2 - x1) / (y2 - y1)
    below = [p for p in seen if p[1] < 0]
    above = [p for p in seen if p[1] > 0]
    if below and above:  # a bracket: stay inside it, bisect when the secant leaves it
        a, b = max(p[0] for p in below), min(p[0] for p in above)
        if not min(a, b) < step < max(a, b):
            step = (a + b) / 2.0
    factor = math.exp(step)
    return factor, (f"; x {factor:.3g} measured: per-layer gains {gains['forward']:.3g} forward, "
                    f"{gains['backward']:.3g} backward at x {k0:.3g} of theory's scale")


def _ends(block_ends: tuple[str, ...], by_name: dict[str, WeightLayer]) -> list[WeightLayer]:
    return [by_name[n] for n in block_ends if n in by_name]


def _stream(model: nn.Module, run: AuditRun, structure: Structure, by_name: dict[str, WeightLayer],
            out: Round) -> None:
    if not _failing(run, CheckName.STREAM):
        return
    blocks = [b for b in structure.blocks if b.branch_ratios]
    depth = max(len(blocks), 1)
    for b in blocks:
        ratios = [r for r in b.branch_ratios if math.isfinite(r) and r > 0]
        r = max(ratios) if ratios else 1.0
        ends = _ends(b.last_branch_layers, by_name)
        if not ends:
            out.unrepaired[b.name] = "its branch ends in no weight layer to scale"
        for layer in ends:
            out.apply(model, layer, (CheckName.STREAM,), f"branch end to 1/L of the stream: x sqrt(1 / (L r)), L = "
                      f"{depth}, r = {r:.3g}",
                      factor=math.sqrt(1.0 / (depth * r)))


def _branches(model: nn.Module, run: AuditRun, structure: Structure, by_name: dict[str, WeightLayer],
              out: Round) -> None:
    for v in _failing(run, CheckName.BRANCH_SCALE):
        judged = {(row["block"], row["add"]): row["ratio"] for row in v.details.get("blocks", ())
                  if row.get("judged") and row.get("ratio") is not None}
        for b in structure.blocks:
            for k, end in enumerate(b.last_branch_layers):
                r = judged.get((b.name, k))
                if r is None or not r > Thresholds().branch_fail or end not in by_name:  # the failing adds only
                    continue
                out.apply(model, by_name[end], (CheckName.BRANCH_SCALE,),
                          f"branch end to the stream's variance: x sqrt(1 / r), r = {r:.3g}",
                          factor=math.sqrt(1.0 / r))


def _head(model: nn.Module, run: AuditRun, by_name: dict[str, WeightLayer], out: Round) -> None:
    for v in _failing(run, CheckName.OUTPUT_SCALE):
        s = v.effect.get("logit_std")
        head = by_name.get(str(v.details.get("head") or ""))
        if head is None or s is None or not (math.isfinite(s) and s > 0):
            out.unrepaired[str(v.details.get("head") or "head")] = "the head is not a weight layer the forward showed"
            continue
        out.apply(model, head, (CheckName.OUTPUT_SCALE,),
                  f"head to unit logit spread: x 1 / s, s = {s:.3g}", factor=1.0 / s)


def _attention(model: nn.Module, run: AuditRun, structure: Structure, by_name: dict[str, WeightLayer],
               out: Round) -> None:
    failing = _failing(run, CheckName.ATTENTION_ENTROPY)
    if not failing:
        return
    sites = {a.name: a for a in structure.attention}
    for v in failing:
        for row in v.details.get("sites", ()):
            site, s = sites.get(row["site"]), row.get("logit_std")
            if site is None or s is None or not (s > 1 and math.isfinite(s)) or row.get("joint"):
                continue
            layers = [by_name[n] for n in site.sources if n in by_name]
            if not layers:
                out.unrepaired[row["site"]] = "its queries and keys come from no weight layer the forward showed"
            for layer in layers:
                out.apply(model, layer, (CheckName.ATTENTION_ENTROPY,),
                          f"queries/keys to unit attention-logit spread: x s^(-1/2), s = {s:.3g}",
                          factor=1.0 / math.sqrt(s))
