"""Divergence: the first step at which the loss, the gradient norm or a recorded statistic is not finite."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..vocab import CheckName, Family, Phase, Status
from .evidence import RunEvidence, init_advice
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["DivergedCheck", "diverged_verdict"]


def _first_bad_layer(bad: pd.DataFrame) -> tuple[str, str] | None:
    for kind, ascending in (("forward", True), ("backward", False), ("weight", True), ("weight_grad", True)):
        rows = bad[bad["kind"] == kind]
        if len(rows):
            row = rows.sort_values("depth", ascending=ascending, kind="stable").iloc[0]
            return str(row["layer"]), kind
    return None


def diverged_verdict(ev: RunEvidence) -> Verdict:
    """NaN/Inf anywhere: the first step where the loss, the gradient norm or a recorded statistic is
    non-finite.

    ``losses[i]`` is the loss of step ``i`` and ``grad_norms[i]`` its gradient norm. The layer named is, at
    that step, the lowest-depth forward output that is non-finite, else the first non-finite dL/dy in
    backward order (highest depth), else a weight or weight gradient. Not a statistical test: any
    non-finite value fails.
    """
    losses = np.asarray(ev.losses, dtype=np.float64).ravel()
    bad_loss = np.flatnonzero(~np.isfinite(losses))
    frame = ev.frame
    bad = frame.loc[~np.isfinite(frame["value"].to_numpy(np.float64))]
    norms = np.asarray(ev.grad_norms if ev.grad_norms is not None else (), dtype=np.float64).ravel()
    bad_norm = np.flatnonzero(~np.isfinite(norms))
    candidates = [int(bad_loss[0])] if len(bad_loss) else []
    if len(bad_norm):
        candidates.append(int(bad_norm[0]))
    if len(bad):
        candidates.append(int(bad["step"].min()))
    if not candidates:
        return Verdict(CheckName.DIVERGED, None, Status.PASS.value, (), None, {"step": None},
                       f"The loss ({len(losses)} steps){', the gradient norm' if len(norms) else ''} and every "
                       "recorded statistic stayed finite.", None,
                       phase=Phase.TRAINING)
    step = min(candidates)
    at = bad[bad["step"] == step]
    found = _first_bad_layer(at)
    epochs = frame.loc[frame["step"] == step, "epoch"]
    epoch = int(epochs.iloc[0]) if len(epochs) else None
    when = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "") if step >= 0 else \
        "initialization (the probe before the first training step)"
    parts = [f"Diverged at {when}:"]
    if len(bad_loss) and bad_loss[0] == step:
        parts.append(f"the loss is {losses[step]}")
    elif len(bad_norm) and bad_norm[0] == step:
        parts.append(f"the gradient norm is {norms[step]} (the loss is {losses[step]})" if step < len(losses)
                     else f"the gradient norm is {norms[step]}")
    if found is not None:
        kind_text = {"forward": "output variance", "backward": "gradient (dL/dy) variance",
                     "weight": "weight variance", "weight_grad": "weight-gradient variance"}[found[1]]
        parts.append(("and " if len(parts) > 1 else "") + f"the {kind_text} of layer '{found[0]}' is not finite")
    return Verdict(CheckName.DIVERGED, None, Status.FAIL.value, (found[0],) if found else (), None,
                   {"step": float(step), "epoch": None if epoch is None else float(epoch)},
                   " ".join(parts) + ".",
                   "Lower the learning rate, or start from weights of unit scale (" + init_advice(ev) + ").",
                   phase=Phase.TRAINING)


class DivergedCheck(Check):
    """NaN/Inf in the loss, the gradient norm or any recorded statistic."""

    name = CheckName.DIVERGED
    family = Family.DIVERGED
    needs = frozenset()
    always_shown = True
    during_training = True

    def run(self, ctx: AnalysisContext) -> list[Verdict]:
        return [diverged_verdict(ctx.evidence)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "diverged", "Divergence",
            "The first step at which the training loss, the gradient norm (L2 over all parameters, in float32, so "
            "infinite beyond ~1.8e19) or any recorded statistic is NaN or infinite, with the first layer affected "
            "(lowest forward depth, else the first layer of the backward pass). Training stops at the first step "
            "whose loss or gradient norm is not finite; the run's status is then 'diverged', as it is whenever "
            "this check fails.",
            "not a statistical test.",
            "any non-finite value fails.",
        ),)
