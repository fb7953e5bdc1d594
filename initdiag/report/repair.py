"""A fix report's repair section: whether the repaired model passes the audit and trains better, what was
changed and why, and the verification training as a figure (made like :mod:`.plots`: object-oriented
``Figure`` API, the report's matplotlib settings, deterministic SVG through :func:`.plots.to_svg`, the
original in the ``before`` run's style and the repaired model in the ``after`` run's)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..results import AuditRun, FixResult, Verification, first_nonfinite
from ..vocab import Status
from . import plots
from .context import Figure, RepairRow, RepairSection
from .format import badge, check_title, fmt

__all__ = ["LOG_SPAN", "MAX_POINTS", "log_scale", "loss_plot", "repair_recommendation", "repair_section",
           "training_answer"]

LOG_SPAN = 1.5
"""The verification figure's loss axis is logarithmic when the finite losses span at least this many decades
(all of them positive); linear otherwise, where the last steps' differences read better."""


def _failing(run: AuditRun) -> list[str]:
    """The failing verdicts of ``run``, named as the report's tables name them, each once."""
    return list(dict.fromkeys(check_title(v) for v in run.verdicts if v.status == Status.FAIL))


def _method(result: FixResult) -> str:
    cfg = result.config
    if result.method == "lsuv":
        how = (f"LSUV (data-driven): each weight layer rescaled, in execution order, until its output variance is "
               f"within {cfg.tol:g} (relative) of {cfg.target_var:g}, at most {cfg.max_iter} iterations per layer"
               + (", after an orthogonal pre-initialization" if cfg.orthogonal else ""))
    elif result.method == "theory":
        how = "theory: each flagged weight set to the scale the model's structure and the variance theory call for"
    else:
        how = result.method
    rounds = (f"{result.rounds} round{'s' if result.rounds != 1 else ''} of audit and repair"
              + (f" (at most {cfg.rounds})" if result.method == "theory" else ""))
    n = len(result.changes)
    return f"Method: {how}; {rounds}; {n} parameter{'s' if n != 1 else ''} changed."


def _tail_text(x: float) -> str:
    return fmt(x) if math.isfinite(x) else "not finite"


def training_answer(v: Verification) -> str:
    """One line: does the repaired model train better than the original, with the two final losses."""
    k = max(1, len(v.original) // 4)
    verdict = "It trains better" if v.improved else "It does NOT train better"
    return (f"{verdict}: loss {_tail_text(v.tail(v.original))} → {_tail_text(v.tail(v.repaired))} after {v.steps} "
            f"steps (original → repaired, mean of the last {k} step{'s' if k != 1 else ''}).")


def _audit_answer(result: FixResult) -> str:
    before, after = result.runs
    still = ", ".join(_failing(after))
    if not result.changed:
        equal = " (state_dict bitwise equal)" if before.digest == after.digest else ""
        if not still:
            return f"The audit found nothing to repair: the model is unchanged{equal}."
        return f"The repair changed nothing: the model is unchanged{equal} and still fails: {still}."
    if still:
        return f"The repaired model still fails: {still}."
    was = ", ".join(_failing(before))
    return "The repaired model passes the audit" + (f" (the model as given failed: {was})." if was else ".")


def repair_section(result: FixResult) -> RepairSection:
    """The repair section of a fix report."""
    after = result.runs[1]
    v = result.verification if result.changed else None
    status = Status.FAIL if _failing(after) else Status.WARN if v is not None and not v.improved else Status.PASS
    word = ("nothing to repair" if not result.changed and status == Status.PASS
            else {Status.PASS: "repaired", Status.WARN: "passes, trains no better", Status.FAIL: "still fails"}[status])
    rows = tuple(RepairRow(c.layer, c.param, fmt(c.old_std), fmt(c.new_std), fmt(c.gain), ", ".join(c.answers) or "—",
                           c.rule) for c in result.changes)
    training = ("" if not result.changed else training_answer(v) if v is not None
                else "No verification training was run (`--verify-steps 0`).")
    return RepairSection(result.changed, badge(status, word), _audit_answer(result), training,
                         _method(result) if result.changed else "", rows, result.unconverged, result.unrepaired,
                         _verification_figure(v) if v is not None else None)


def repair_recommendation(result: FixResult) -> str:
    """The verdict summary's recommendation for a fix: use the repaired model or not, and why."""
    still = ", ".join(_failing(result.runs[1]))
    n = len(result.changes)
    if not result.changed:
        return ("Keep the model as it is: the audit found nothing to repair." if not still else
                f"The repair changed nothing and the model still fails: {still}; see the findings for `after`.")
    what = f"{n} parameter{'s' if n != 1 else ''} changed by the {result.method} repair"
    if still:
        return f"Do not rely on the repair alone: {what}, but the model still fails: {still}; see the findings."
    v = result.verification
    if v is not None and not v.improved:
        return (f"Use the repaired model with care: {what}; it passes the audit but does NOT train better in "
                f"{v.steps} verification steps.")
    return (f"Use the repaired model: {what}; it passes the audit"
            + (f" and trains better in {v.steps} verification steps." if v is not None else "."))


def _verification_figure(v: Verification) -> Figure:
    series = {"original (before)": v.original, "repaired (after)": v.repaired}
    log = log_scale([np.asarray(s, dtype=float) for s in series.values()])
    svg = loss_plot(series, title=f"Verification: training loss per step ({v.steps} steps)", salt="fig-verify",
                    log=log)
    k = max(1, len(v.original) // 4)
    broken = any(first_nonfinite(np.asarray(s, dtype=float)) is not None for s in series.values())
    caption = (f"Training loss at each step of the original model (before) and the repaired one (after), trained "
               f"from the same seed on the same batches ({v.data}; {v.optimizer}); {'log' if log else 'linear'} "
               f"scale. The repaired model trains better when its mean loss over the last {k} step"
               f"{'s' if k != 1 else ''} is lower" + ("; a cross at the top marks the first step whose loss is not "
                                                      "finite (the line stops there)." if broken else "."))
    return Figure("fig-verify", svg, caption)


def log_scale(arrays: Sequence[np.ndarray]) -> bool:
    """True when every finite loss is positive and they span at least :data:`LOG_SPAN` decades."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.zeros(0)])
    if finite.size == 0 or bool((finite <= 0).any()):
        return False
    return math.log10(float(finite.max()) / float(finite.min())) >= LOG_SPAN


MAX_POINTS = 400
"""A loss curve longer than this is drawn as the mean of that many equal bins of steps (the file stays small)."""


def _binned(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: every step, or bin centres and bin means (non-finite values left out of a mean)."""
    if len(arr) <= MAX_POINTS:
        return np.arange(len(arr), dtype=float), arr
    edges = np.linspace(0, len(arr), MAX_POINTS + 1).astype(int)
    means = np.array([float(arr[a:b][np.isfinite(arr[a:b])].mean()) if bool(np.isfinite(arr[a:b]).any())
                      else np.nan for a, b in itertools.pairwise(edges)])
    return (edges[:-1] + edges[1:] - 1) / 2.0, means


def loss_plot(series: Mapping[str, Sequence[float] | np.ndarray], *, title: str, salt: str, log: bool,
              legend_title: str = "model", styles: Mapping[str, int] | None = None) -> str:
    """Loss per step, one line per series (series ``i`` in :func:`.plots.series_style` ``i``, or ``styles``'
    index) on one axis, legend outside; non-finite losses leave a gap, and a cross at the top of the axis marks
    each series' first one. Longer than :data:`MAX_POINTS` steps: bin means."""
    with plots._style():
        fig = plots._figure(2.8)
        ax = fig.add_subplot()
        for i, (label, values) in enumerate(series.items()):
            st = plots.series_style((styles or {}).get(label, i))
            arr = np.asarray(values, dtype=float)
            steps, arr_shown = _binned(arr)
            shown = np.where(np.isfinite(arr_shown) & ((arr_shown > 0) if log else True), arr_shown, np.nan)
            ax.plot(steps, shown, color=st.color, linestyle=st.linestyle, marker=st.marker,
                    markersize=3.5 if len(arr) <= 60 else 0, linewidth=1.4, label=plots._text(label), zorder=3)
            bad = first_nonfinite(arr)
            if bad is not None:
                ax.plot([bad], [1.0], transform=ax.get_xaxis_transform(), linestyle="none", marker="X",
                        markersize=7, color=st.color, clip_on=False, zorder=4)
        if log:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel("loss" + (" (log scale)" if log else ""))
        ax.set_title(plots._text(title), loc="left")
        ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        if series:
            ax.legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                      borderaxespad=0.0)
        return plots.to_svg(fig, salt)
