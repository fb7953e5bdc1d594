"""Unit-level checks from the evaluation-batch probes: dead ReLU units, saturated tanh/sigmoid outputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..vocab import CheckName, Family, Phase, Role, Signal, Status
from .chains import why_of
from .evidence import RunEvidence, init_advice
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["DeadCheck", "SaturationCheck", "dead_verdict", "saturation_verdict", "unit_fractions"]

_DEFAULT = Thresholds()


def unit_fractions(frame: pd.DataFrame, stat: str, phase: str) -> tuple[pd.DataFrame, str]:
    """Per-layer values of ``stat`` (``dead_frac``/``sat_frac``) for ``phase`` ("init" or "final").

    Taken from the probe phase of that name (the evaluation batch) when recorded, else from the first
    ("init") or last ("final", if later than the first) training step. Returns (layer, depth, module,
    value) rows in depth order and a description of the source.
    """
    rows = frame.loc[(frame["kind"] == "forward") & (frame["stat"] == stat)]
    probe = rows[rows["phase"] == phase]
    source = "evaluation batch"
    if not len(probe):
        probe = rows[rows["phase"] == "train"]
        source = "first training batch (no probe recorded)" if phase == "init" else \
            "last training batch (no probe recorded)"
        if len(probe) and phase != "init" and probe["step"].max() == probe["step"].min():
            probe = probe.iloc[0:0]
    if len(probe):
        step = probe["step"].min() if phase == "init" else probe["step"].max()
        probe = probe[probe["step"] == step]
    out = pd.DataFrame({"layer": probe["layer"].astype(str), "depth": probe["depth"],
                        "module": probe["module"].astype(str), "value": probe["value"].astype(np.float64)})
    return out.drop_duplicates("layer").sort_values("depth", kind="stable").reset_index(drop=True), source


def _unit_verdict(ev: RunEvidence, phase: str, check: str, stat: str, warn: float, fail: float,
                  what: str, advice: str, excused: Mapping[str, str] | None = None) -> Verdict | None:
    table, source = unit_fractions(ev.frame, stat, phase)
    note = ""
    if excused:
        gone = table["layer"].isin(list(excused))
        if gone.any():
            first = str(table["layer"][gone].iloc[0])
            note = (f" Not counted: {int(gone.sum())} layer(s) whose input is zero by design ({excused[first]}; "
                    f"'{first}' first).")
            table = table[~gone].reset_index(drop=True)
    if not len(table):
        return None
    values = table["value"].to_numpy(np.float64)
    worst_i = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
    worst = float(values[worst_i])
    over = table[values >= warn]
    status = Status.FAIL if worst >= fail else Status.WARN if worst >= warn else Status.PASS
    when = "At initialization" if phase == "init" else "After training"
    effect = {f"max_{stat}": worst, f"mean_{stat}": float(np.nanmean(values)), "layers_over_warn": float(len(over)),
              "layers": float(len(table))}
    if status == Status.PASS:
        message = (f"{when} ({source}): at most {worst:.0%} {what} in a layer ('{table['layer'][worst_i]}', "
                   f"{table['module'][worst_i]}); mean {np.nanmean(values):.0%} over {len(table)} layers "
                   f"(warn at {warn:.0%}, fail at {fail:.0%}).")
    else:
        weight_at = {la.depth: la.name for la in ev.layers if la.role == Role.WEIGHT}
        owner = {la.name: weight_at.get(la.depth) for la in ev.layers if la.role == Role.ACTIVATION}
        listed = ", ".join(f"'{la}'{f' (after {owner[la]!r})' if owner.get(la) else ''} {v:.0%}"
                           for la, v in zip(over["layer"][:5], over["value"][:5], strict=True))
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        limit = fail if status == Status.FAIL else warn
        message = (f"{when} ({source}): {len(over)} of {len(table)} layers have {warn:.0%} or more {what}: "
                   f"{listed}{more}; worst {worst:.0%} in layer '{table['layer'][worst_i]}' "
                   f"({status.value} threshold {limit:.0%}).")
    details = {"source": source, "per_layer": dict(zip(table["layer"], map(float, values), strict=True))}
    return Verdict(check, Signal.FORWARD, status.value, tuple(over["layer"]), None, effect, message + note,
                   None if status == Status.PASS else advice, phase, details)


def dead_verdict(ev: RunEvidence, phase: str, th: Thresholds = _DEFAULT,
                 zero_by_design: Mapping[str, str] | None = None) -> Verdict | None:
    """Dead ReLU-family units: per layer, the fraction of channels that output 0 for every input of the batch.

    Descriptive (no test): fail when any layer reaches ``th.dead_fail``, warn at ``th.dead_warn``.
    None when the model has no ReLU-family activation. ``zero_by_design``: weight layers whose output is
    zero by design at this phase (after a zero-initialized layer that learns from step 1,
    :func:`~initdiag.checks.intentional.explained`), with the reason; the activations after them are not
    counted (an all-zero input is not a dead unit that never recovers).
    """
    excused: dict[str, str] = {}
    if zero_by_design:
        weight_at = {la.depth: la.name for la in ev.layers if la.role == Role.WEIGHT}
        for la in ev.layers:
            owner = weight_at.get(la.depth)
            if la.role == Role.ACTIVATION and owner is not None and owner in zero_by_design:
                excused[la.name] = zero_by_design[owner]
    advice = ("Dead ReLU units get no gradient and never recover: look for large negative biases or a too large "
              f"learning rate; use `he` with zero biases, or LeakyReLU. ({init_advice(ev)})")
    return _unit_verdict(ev, phase, CheckName.DEAD, "dead_frac", th.dead_warn, th.dead_fail,
                         "dead units (0 for every input)", advice, excused)


def saturation_verdict(ev: RunEvidence, phase: str, th: Thresholds = _DEFAULT) -> Verdict | None:
    """Saturated tanh/sigmoid outputs: per layer, the fraction within ``saturation_tol`` of a bound.

    Descriptive (no test): fail when any layer reaches ``th.saturation_fail``, warn at
    ``th.saturation_warn``. None without a bounded activation (bounds: ``recorder.SATURATING``).
    """
    advice = ("Saturated units pass almost no gradient: tanh/sigmoid layers: use `xavier` (Var(W) = "
              "2/(fan_in + fan_out)) so pre-activations stay in the near-linear range, and normalize the inputs.")
    return _unit_verdict(ev, phase, CheckName.SATURATION, "sat_frac", th.saturation_warn, th.saturation_fail,
                         f"saturated outputs (within {th.saturation_tol:g} of a bound)", advice)


class DeadCheck(Check):
    """ReLU-family units that output 0 for every input, at initialization and after training."""

    name = CheckName.DEAD
    family = Family.DEAD
    columns = ((Family.DEAD, "dead units"),)
    always_shown = True

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        ev, th = ctx.evidence, ctx.thresholds
        return [dead_verdict(ev, Phase.INIT, th, ctx.derive(why_of).forward), dead_verdict(ev, Phase.FINAL, th)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "dead", "Dead ReLU units",
            "Fraction of the channels of each ReLU-family layer that output exactly 0 for every input of the "
            "evaluation batch (probes before and after training; the training batch when no probe was recorded).",
            "not a statistical test (a fraction of units).",
            f"warn when a layer has >= {th.dead_warn:.0%} dead units, fail at >= {th.dead_fail:.0%}.",
        ),)


class SaturationCheck(Check):
    """tanh/sigmoid outputs pinned at their bounds, at initialization and after training."""

    name = CheckName.SATURATION
    family = Family.SATURATION
    always_shown = True

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [saturation_verdict(ctx.evidence, phase, ctx.thresholds) for phase in (Phase.INIT, Phase.FINAL)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "saturation", "Saturated tanh/sigmoid units",
            f"Fraction of the outputs of each tanh/sigmoid layer within {th.saturation_tol:g} of a bound "
            "(tanh: -1, 1; sigmoid: 0, 1) on the evaluation batch, before and after training.",
            "not a statistical test (a fraction of outputs).",
            f"warn when a layer has >= {th.saturation_warn:.0%} saturated outputs, fail at "
            f">= {th.saturation_fail:.0%}.",
        ),)
