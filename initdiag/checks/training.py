"""The checks about training itself, as registered objects: ``unstable``, ``stalled``, ``update_ratio`` and
``dead_growth`` (their statistics in :mod:`.dynamics`)."""

from __future__ import annotations

from ..vocab import CheckName, Family, Need, Status
from .dynamics import dead_growth_verdict, stalled_verdict, unstable_verdict, update_ratio_verdict
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["DeadGrowthCheck", "StalledCheck", "UnstableCheck", "UpdateRatioCheck", "unstable_of"]


class _TrainingCheck(Check):
    """A check about training itself: needs the loss of every step and a run that trained."""

    family = Family.TRAINING
    needs = frozenset({Need.LOSSES, Need.TRAINING})
    during_training = True


def unstable_of(ctx: AnalysisContext) -> Verdict | None:
    """The ``unstable`` verdict of the run, computed once (``stalled`` reads it too)."""
    return unstable_verdict(ctx.evidence, ctx.thresholds)


class UnstableCheck(_TrainingCheck):
    """The training loss rose well above its start."""

    name = CheckName.UNSTABLE

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [ctx.derive(unstable_of)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "unstable", "Unstable training loss",
            f"On the finite steps of the training loss (what follows a NaN/Inf is the divergence check's): the "
            f"start L0 is the smaller of the first step's loss (at initialization, before any update) and the median "
            f"of the first {th.loss_window} steps; the loss is smoothed by a running median over windows of "
            f"{th.loss_window} steps (at most half the run; at least 10 finite steps needed). The verdict reports "
            "the first step of the rise, the peak of the running median and whether the loss came back down.",
            "not a statistical test (a ratio of robust levels).",
            f"fail when the running median exceeds {th.unstable_factor:g} x L0.",
        ),)


class StalledCheck(_TrainingCheck):
    """The training loss did not fall over the first epoch (not judged when it rose: ``unstable`` failed)."""

    name = CheckName.STALLED

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        unstable = ctx.derive(unstable_of)
        if unstable is not None and unstable.status == Status.FAIL:  # then "did not fall" says nothing more
            return []
        return [stalled_verdict(ctx.evidence, ctx.thresholds, ctx.evidence.steps_per_epoch)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "stalled", "Stalled first epoch",
            f"The losses of the first {th.loss_window} steps are compared with those of the first epoch's last "
            f"{th.loss_window} (every step when the epoch length is unknown): relative drop of the medians, "
            "(median first - median last) / |median first|, and a one-sided Mann-Whitney U test "
            "(scipy.stats.mannwhitneyu). He et al. 2015 (Fig. 3): a 30-layer ReLU network under Xavier init "
            "does not learn.",
            "the late losses are not smaller than the early ones.",
            f"fail when the drop is below {th.stalled_min_drop:.0%}; warn when it is larger but p >= {th.alpha:g}.",
        ),)


class UpdateRatioCheck(_TrainingCheck):
    """Each step's weight update against the weight, per layer."""

    name = CheckName.UPDATE_RATIO
    needs = frozenset({Need.FRAME, Need.TRAINING})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [update_ratio_verdict(ctx.evidence, ctx.thresholds)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "update_ratio", "Update-to-weight ratio",
            "For every weight layer and optimizer step t, r_t = ||W_t+1 - W_t|| / ||W_t|| = sqrt(E[dW^2] / "
            "E[W^2]) with E[X^2] = var + mean_sq of the recorded tensor; per layer the median over steps. Steps "
            "where no layer moved (no optimizer step, e.g. gradient accumulation) are ignored, steps where the "
            "weight is all zero (zero-initialized) skipped. The usual size is ~1e-3 (Karpathy's rule of thumb; "
            "LARS, You et al. 2017, scales each layer's step by the trust ratio ||W|| / ||grad||).",
            "not a statistical test (a measured ratio against a rule of thumb).",
            f"warn when a layer's median is outside [{th.update_warn_low:g}, {th.update_warn_high:g}] or it never "
            f"moved; fail below {th.update_fail_low:g} (float32 rounding, 2^-24 ~ 6e-8) or above "
            f"{th.update_fail_high:g}.",
        ),)


class DeadGrowthCheck(_TrainingCheck):
    """Dead ReLU units that appear during training."""

    name = CheckName.DEAD_GROWTH
    needs = frozenset({Need.FRAME, Need.TRAINING})

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        return [dead_growth_verdict(ctx.evidence, ctx.thresholds)]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(
            "dead_growth", "Dead units appearing during training",
            "Per ReLU-family layer, the fraction of dead units (0 for every input of the batch) after training "
            "minus the fraction at initialization, both on the evaluation batch (or both on the first and the "
            "last training batch when the probes were not both recorded).",
            "not a statistical test (a change of a fraction of units).",
            f"warn when a layer's dead fraction grows by >= {th.dead_growth_warn:.0%} of its units, fail at "
            f">= {th.dead_growth_fail:.0%}.",
        ),)
