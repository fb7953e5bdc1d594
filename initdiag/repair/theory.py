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
from ..theory.gauss import gaussian_moments
from ..vocab import CheckName, Status
from .params import LOOKUPS, rescale, weight_of, weight_std

__all__ = ["Round", "critical_sigma2", "theory_round"]

_SMALL_Q, _UNIT_Q = 1e-4, 1.0


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
    return sigma2, f"{name}: forward x backward gain 1 at q = 1"


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


def _chain_layers(structure: Structure, verdicts: Iterable[Verdict]) -> list[str]:
    """Every weight layer of the failing chains of signal verdicts (a chain named by its first and last layer
    in ``details["chains"]``), and the weight layers before the units a saturation verdict names."""
    segments = {(s[0], s[-1]): s for s in structure.segments()}
    by_site = {la.activation.site: la.name for la in structure.weight_layers if la.activation.site}
    out: list[str] = []
    for v in verdicts:
        chains = [c for c in v.details.get("chains", ()) if c.get("status") == Status.FAIL]
        for c in chains:
            out += segments.get((c["layers"][0], c["layers"][-1]), tuple(c["layers"]))
        if not chains:
            names = {la.name for la in structure.weight_layers}
            out += [n for n in v.layers if n in names] + [by_site[n] for n in v.layers if n in by_site]
    return list(dict.fromkeys(out))


def theory_round(model: nn.Module, run: AuditRun, seed: int = 0) -> Round:
    """Repair in place what ``run`` (an audit of ``model`` as it is) fails, by the rules of this module."""
    out, structure = Round(), run.structure
    if structure is None:
        out.unrepaired["model"] = "the audit has no structure (discovery failed): theory cannot place a rule"
        return out
    gen = torch.Generator().manual_seed(seed)
    by_name = {la.name: la for la in structure.weight_layers}
    signal = _failing(run, CheckName.SIGNAL) + _failing(run, CheckName.SATURATION)
    answers = tuple(dict.fromkeys(v.check for v in signal))
    for name in _chain_layers(structure, signal):
        layer = by_name.get(name)
        if layer is None:
            continue
        critical = critical_sigma2(layer.activation)
        if critical is None:
            out.unrepaired[name] = f"activation '{layer.activation.name}' unknown to the theory engine"
            continue
        sigma2, rule = critical
        out.apply(model, layer, answers, f"Var(W) = {sigma2:.3g} / fan_in {layer.fan_in:g} ({rule})",
                  target_std=math.sqrt(sigma2 / layer.fan_in), generator=gen)
    _stream(model, run, structure, by_name, out)
    _branches(model, run, structure, by_name, out)
    _head(model, run, by_name, out)
    _attention(model, run, structure, by_name, out)
    return out


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
