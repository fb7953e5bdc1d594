"""Training-phase checks: the loss rising above its start (``unstable``) or not falling in the first epoch
(``stalled``), each step's weight update against the weight (``update_ratio``), and dead ReLU units that
appear during training (``dead_growth``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from ..vocab import CheckName, Family, Kind, Phase, Signal, Stat, Status
from .evidence import RunEvidence, init_advice
from .units import unit_fractions
from .verdict import DEFAULT_THRESHOLDS, Thresholds, Verdict

__all__ = ["dead_growth_verdict", "stalled_verdict", "unstable_verdict", "update_ratio_verdict", "update_ratios"]

_MIN_WINDOW = 5
"""The smallest loss window: 5 against 5 is the least a one-sided Mann-Whitney U can reject at 5% (p >= 1/252)."""
_TRAINING = Phase.TRAINING.value
UNSTABLE, STALLED, UPDATE_RATIO, DEAD_GROWTH = (CheckName.UNSTABLE, CheckName.STALLED, CheckName.UPDATE_RATIO,
                                              CheckName.DEAD_GROWTH)


def _finite_prefix(losses: np.ndarray) -> np.ndarray:
    """The losses before the first non-finite one (what follows is the ``diverged`` check's business)."""
    losses = np.asarray(losses, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(losses))
    return losses[:bad[0]] if len(bad) else losses


def _window(n: int, th: Thresholds) -> int | None:
    """Steps per window for ``n`` finite losses: ``loss_window``, at most half the run; None under 5."""
    w = min(th.loss_window, n // 2)
    return w if w >= _MIN_WINDOW else None


def unstable_verdict(ev: RunEvidence, th: Thresholds = DEFAULT_THRESHOLDS) -> Verdict | None:
    """The training loss rises well above its starting value while it stays finite.

    On the finite prefix of ``ev.losses`` (``losses[i]`` is step ``i``), with ``w`` = ``th.loss_window``
    (at most half the steps): the start ``L0 = min(losses[0], median(losses[:w]))`` (the first step's loss
    is the loss at initialization, before any update; the median of the first window guards against a
    first batch that happens to be high, and the minimum keeps a blow-up inside the first window from
    raising its own reference); the smoothed loss ``s_i = median(losses[i:i + w])``, a running median.
    Not a statistical test: fail when ``max_i s_i > th.unstable_factor * L0``, i.e. when for a whole
    window most steps' losses are above that limit; ``step`` is the first step of that window above the
    limit. Pass otherwise. None without 10 finite steps, or when ``L0 <= 0`` (a ratio of losses needs a
    positive start). The effect gives ``start`` (L0), ``peak`` (max s_i), ``ratio`` (peak / L0) and
    ``end_ratio`` (the last window's median / L0: whether the run came back down).
    """
    losses = _finite_prefix(ev.losses)
    n = len(losses)
    w = _window(n, th)
    if w is None:
        return None
    start = min(float(losses[0]), float(np.median(losses[:w])))
    if not start > 0:
        return None
    smooth = np.median(sliding_window_view(losses, w), axis=1)
    limit = th.unstable_factor * start
    peak_i = int(np.argmax(smooth))
    peak, end = float(smooth[peak_i]), float(smooth[-1])
    effect: dict[str, float | None] = {"step": None, "start": start, "peak": peak, "ratio": peak / start,
                                       "end_ratio": end / start, "peak_step": float(peak_i + w - 1),
                                       "window": float(w)}
    finite = "" if n == len(np.ravel(ev.losses)) else f" (the steps before step {n}, where the loss stops being finite)"
    over = np.flatnonzero(smooth > limit)
    if not len(over):
        message = (f"The running median of the training loss over {w} steps stayed below {th.unstable_factor:g}x "
                   f"the starting loss {start:.4g} over {n} finite steps{finite}: at most {peak:.4g} "
                   f"({peak / start:.3g}x, the window ending at step {peak_i + w - 1}); the last window's median is "
                   f"{end:.4g} ({end / start:.3g}x).")
        return Verdict(UNSTABLE, None, Status.PASS.value, (), None, effect, message, None, _TRAINING,
                       family=Family.TRAINING)
    first = int(over[0])
    step = first + int(np.flatnonzero(losses[first:first + w] > limit)[0])
    effect["step"] = float(step)
    came_back = " and came back below the limit" if end <= limit else ", and stayed above it to the end"
    message = (f"The training loss rose above {th.unstable_factor:g}x its starting value {start:.4g} from step "
               f"{step} on, while finite{finite}: its running median over {w} steps peaked at {peak:.4g} "
               f"({peak / start:.3g}x, the window ending at step {peak_i + w - 1}){came_back} (last window "
               f"{end:.4g}, {end / start:.3g}x).")
    advice = ("Lower the learning rate (or warm it up): the updates of many layers compound. Start from weights "
              f"that keep unit gain through the layers ({init_advice(ev)}).")
    return Verdict(UNSTABLE, None, Status.FAIL.value, (), None, effect, message, advice, _TRAINING,
                   family=Family.TRAINING)


def _falls(early: np.ndarray, late: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value for ``early`` being larger than ``late`` (1 when all values tie)."""
    if np.ptp(np.concatenate([early, late])) == 0:
        return 1.0
    from scipy import stats  # training only: an audit's checks need no scipy.stats (.distributions)

    return float(stats.mannwhitneyu(early, late, alternative="greater").pvalue)


def stalled_verdict(ev: RunEvidence, th: Thresholds = DEFAULT_THRESHOLDS,
                    steps_per_epoch: int | None = None) -> Verdict | None:
    """The training loss does not fall over the first epoch (He et al. 2015, "Delving deep into
    rectifiers", Fig. 3: a 30-layer ReLU network under Xavier init does not learn).

    The first epoch is ``losses[:steps_per_epoch]`` (every step when None), its finite prefix of ``n``
    steps; ``w`` = ``th.loss_window`` (at most ``n // 2``). The first window ``a = losses[:w]`` is compared
    with the epoch's last ``b = losses[n - w:n]``: the relative drop ``(median a - median b) / |median a|``
    and a one-sided Mann-Whitney U test (scipy.stats.mannwhitneyu, alternative "greater"; H0: the late
    losses are not smaller than the early ones). Fail (stalled) when the drop is below
    ``th.stalled_min_drop``, significant or not; warn when the drop is large enough but H0 is not rejected
    at ``th.alpha`` (a fall within the noise); pass when both show a fall. None without 10 finite steps.
    """
    losses = np.asarray(ev.losses, dtype=np.float64).ravel()
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1 (got {steps_per_epoch})")
    epoch = _finite_prefix(losses if steps_per_epoch is None else losses[:steps_per_epoch])
    n = len(epoch)
    w = _window(n, th)
    if w is None:
        return None
    early, late = epoch[:w], epoch[n - w:]
    a, b = float(np.median(early)), float(np.median(late))
    drop = (a - b) / abs(a) if a != 0 else 0.0
    p = _falls(early, late)
    effect = {"start": a, "end": b, "drop": drop, "window": float(w), "steps": float(n)}
    if steps_per_epoch is None:
        what = f"all {n} steps, no epoch length given"
    elif n < steps_per_epoch:
        what = f"its first {n} of {steps_per_epoch} steps" + (" (the loss stops being finite)"
                                                              if len(losses) > n else "")
    else:
        what = f"{n} steps"
    compared = (f"the median loss of the last {w} steps, {b:.4g}, is {abs(drop):.1%} "
                f"{'below' if drop >= 0 else 'above'} that of the first {w}, {a:.4g} (one-sided Mann-Whitney U "
                f"p = {p:.2g})")
    if drop < th.stalled_min_drop:
        status = Status.FAIL
        message = (f"The loss did not fall over the first epoch ({what}): {compared}; a fall of "
                   f"{th.stalled_min_drop:.0%} or more is expected.")
    elif p >= th.alpha:
        status = Status.WARN
        message = (f"Over the first epoch ({what}) {compared}: a fall of {th.stalled_min_drop:.0%} or more, but "
                   f"within the noise of the losses (p >= {th.alpha:g}).")
    else:
        status = Status.PASS
        message = f"The loss fell over the first epoch ({what}): {compared}."
    zeros = bool(ev.weight_vars) and all(v == 0 for v in ev.weight_vars.values())
    advice = None if status == Status.PASS else (
        "Every weight starts at zero: units of a layer stay identical and no learning rate separates them; draw "
        f"the weights at random. ({init_advice(ev)})" if zeros else
        "A network that does not learn in its first epoch usually passes no signal through its layers: see the "
        "vanishing/exploding verdicts. Deep ReLU networks need He init (He et al. 2015: 30 layers under Xavier "
        f"do not learn), normalization layers or residual connections; else raise the learning rate. "
        f"({init_advice(ev)})")
    return Verdict(STALLED, None, status.value, (), p, effect, message, advice, _TRAINING, family=Family.TRAINING)


def _stat_rows(rows: pd.DataFrame, stat: str) -> pd.DataFrame:
    rows = rows.loc[rows["stat"] == stat]
    return pd.DataFrame({"layer": rows["layer"].astype(str), "depth": rows["depth"].astype(np.int64),
                         "step": rows["step"].astype(np.int64),
                         stat: rows["value"].astype(np.float64)}).drop_duplicates(["layer", "step"])


def _energy(rows: pd.DataFrame, name: str, with_mean: bool) -> pd.DataFrame:
    """(layer, depth, step, ``name``): the mean square of a one-channel tensor, ``var + mean_sq`` (``mean_sq``
    is the squared mean, :func:`~initdiag.recording.rows.moment_chunk`), or ``var`` alone."""
    table = _stat_rows(rows, Stat.VAR.value)
    if with_mean:
        table = table.merge(_stat_rows(rows, Stat.MEAN_SQ.value).drop(columns="depth"), on=["layer", "step"])
        table[Stat.VAR.value] += table.pop(Stat.MEAN_SQ.value)
    return table.rename(columns={Stat.VAR.value: name})


def update_ratios(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None, int]:
    """Per weight layer and optimizer step ``t``: ``r_t = ||W_{t+1} - W_t|| / ||W_t||``, from the ``update``
    rows of step ``t`` (the tensor W_{t+1} - W_t) and the ``weight`` rows of the same step (W_t, as many
    elements), phase "train": ``r_t = sqrt(E[dW^2] / E[W^2])`` with ``E[X^2] = var + mean_sq`` of each.

    Returns the rows (layer, depth, step, ratio) in depth and step order, what the mean squares came from
    (``var + mean_sq``, or ``var`` alone, the mean taken as 0, when ``mean_sq`` is not recorded for both
    kinds; None without update or weight rows) and the number of steps dropped because every layer's update
    is exactly 0 (no optimizer step, e.g. between the steps of gradient accumulation). ``ratio`` is NaN where
    the weight is all zero (a zero-initialized layer: the ratio is undefined); rows with a non-finite value
    are left out (the ``diverged`` check's business).
    """
    empty = pd.DataFrame({"layer": pd.Series(dtype=object), "depth": pd.Series(dtype=np.int64),
                          "step": pd.Series(dtype=np.int64), "ratio": pd.Series(dtype=np.float64)})
    train = frame.loc[frame["phase"] == Phase.TRAIN]
    kinds = [train.loc[train["kind"] == kind] for kind in (Kind.UPDATE.value, Kind.WEIGHT.value)]
    if not all((rows["stat"] == Stat.VAR).any() for rows in kinds):
        return empty, None, 0
    with_mean = all((rows["stat"] == Stat.MEAN_SQ).any() for rows in kinds)
    source = "var + mean_sq" if with_mean else "var (mean_sq not recorded: the mean taken as 0)"
    update = _energy(kinds[0], "update", with_mean)
    weight = _energy(kinds[1], "weight", with_mean).drop(columns="depth")
    table = update.merge(weight, on=["layer", "step"], how="inner")
    upd, wgt = table["update"].to_numpy(np.float64), table["weight"].to_numpy(np.float64)
    table = table.loc[np.isfinite(upd) & np.isfinite(wgt)]
    if not len(table):
        return empty, None, 0
    moved = table.groupby("step")["update"].transform("max") > 0
    idle = int(table.loc[~moved, "step"].nunique())
    table = table.loc[moved]
    upd, wgt = table["update"].to_numpy(np.float64), table["weight"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(wgt > 0, np.sqrt(np.maximum(upd, 0.0) / wgt), np.nan)
    out = pd.DataFrame({"layer": table["layer"].astype(str), "depth": table["depth"].astype(np.int64),
                        "step": table["step"].astype(np.int64), "ratio": ratio})
    return out.sort_values(["depth", "step"], kind="stable").reset_index(drop=True), source, idle


def update_ratio_verdict(ev: RunEvidence, th: Thresholds = DEFAULT_THRESHOLDS) -> Verdict | None:
    """The size of each training step's update against the weight, per weight layer.

    ``r_t = ||W_{t+1} - W_t|| / ||W_t||`` (:func:`update_ratios`); per layer the median over its optimizer
    steps. Steps where the weight is all zero (a zero-initialized layer) are skipped and counted; steps where
    no layer moved are not optimizer steps and are ignored. The usual size is ~1e-3 per step (Karpathy's
    rule of thumb; LARS, You et al. 2017, sets each layer's step from the trust ratio ||W|| / ||grad|| for
    the same reason: a step's size should be relative to the weight's). Not a statistical test: fail when a
    layer's median is below ``th.update_fail_low`` or above ``th.update_fail_high``, warn when outside
    [``th.update_warn_low``, ``th.update_warn_high``] or when the layer never moved (frozen, or every
    update rounded away). ``details``: ``per_layer`` (layer -> median r), ``steps`` (layer -> steps
    counted), ``zero_weight_steps`` (layer -> steps skipped), ``source`` (what the mean squares came from).
    None without update and weight rows.
    """
    table, source, idle = update_ratios(ev.frame)
    valid = table.dropna(subset=["ratio"])
    if not len(valid):
        return None
    per = valid.groupby("layer", sort=False).agg(depth=("depth", "first"), median=("ratio", "median"),
                                                 largest=("ratio", "max"), steps=("ratio", "size"))
    per = per.sort_values("depth", kind="stable")
    zero_steps = table.loc[table["ratio"].isna()].groupby("layer", sort=False).size()
    med = per["median"].to_numpy(np.float64)
    frozen = per["largest"].to_numpy(np.float64) == 0
    failing = ~frozen & ((med < th.update_fail_low) | (med > th.update_fail_high))
    warning = frozen | failing | (med < th.update_warn_low) | (med > th.update_warn_high)
    status = Status.FAIL if failing.any() else Status.WARN if warning.any() else Status.PASS
    names = [str(la) for la in per.index]
    lo_i, hi_i = int(np.argmin(med)), int(np.argmax(med))
    notes = []
    if len(zero_steps):
        notes.append("skipped, weight all zero (zero-initialized): " + ", ".join(
            f"'{la}' {k} step{'s' if k > 1 else ''}" for la, k in zero_steps.items()))
    if idle:
        notes.append(f"{idle} step{'s' if idle > 1 else ''} without any update ignored (no optimizer step)")
    if source is not None and source != "var + mean_sq":
        notes.append(f"from {source}")
    note = f" ({'; '.join(notes)})" if notes else ""
    what = (f"median step update ||W_t+1 - W_t|| / ||W_t|| per layer over {int(per['steps'].max())} optimizer "
            f"steps")
    if status == Status.PASS:
        message = (f"The {what} lies between {med[lo_i]:.2g} ('{names[lo_i]}') and {med[hi_i]:.2g} "
                   f"('{names[hi_i]}'), inside [{th.update_warn_low:g}, {th.update_warn_high:g}]{note}.")
    else:
        listed = [f"'{la}' " + ("never moved" if fz else f"{m:.2g}")
                  for la, m, fz, bad in zip(names, med, frozen, warning, strict=True) if bad]
        more = f" and {len(listed) - 6} more" if len(listed) > 6 else ""
        message = (f"The {what} is outside [{th.update_warn_low:g}, {th.update_warn_high:g}] in {len(listed)} of "
                   f"{len(names)} layers: {', '.join(listed[:6])}{more} (fail below {th.update_fail_low:g}, "
                   f"float32 rounding, or above {th.update_fail_high:g}){note}.")
    advice_parts = []
    if (frozen | (med < th.update_warn_low)).any():
        advice_parts.append("Layers whose updates are this small barely learn: the gradient reaching them vanishes "
                            "(see the backward signal verdict) or the learning rate is too low for their scale; "
                            f"start from weights that keep unit gain ({init_advice(ev)}). A layer frozen on "
                            "purpose never moves: ignore it.")
    if (med > th.update_warn_high).any():
        advice_parts.append("Updates this large against the weight rewrite the layer every few steps: lower the "
                            "learning rate or scale it per layer (LARS, You et al. 2017); a weight initialized "
                            "too small makes every update large against it.")
    effect = {"min_ratio": float(med[lo_i]), "max_ratio": float(med[hi_i]), "median_ratio": float(np.median(med)),
              "layers_outside": float(warning.sum()), "layers": float(len(names)),
              "idle_steps": float(idle)}
    details = {"per_layer": dict(zip(names, map(float, med), strict=True)),
               "steps": dict(zip(names, map(int, per["steps"]), strict=True)),
               "zero_weight_steps": {str(k): int(v) for k, v in zero_steps.items()}, "source": source}
    return Verdict(UPDATE_RATIO, Signal.WEIGHTS, status.value,
                   tuple(la for la, bad in zip(names, warning, strict=True) if bad), None, effect, message,
                   " ".join(advice_parts) or None, _TRAINING, details, family=Family.TRAINING)


def _dead_tables(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Per-layer ``dead_frac`` at init and at the end, from the same kind of batch: both probes when both
    were recorded, else the first and the last training step (a smaller batch shows more units dead)."""
    init, init_source = unit_fractions(frame, Stat.DEAD_FRAC, Phase.INIT)
    final, final_source = unit_fractions(frame, Stat.DEAD_FRAC, Phase.FINAL)
    if init_source == final_source == "evaluation batch" and len(init) and len(final):
        return init, final, "evaluation batch, before and after training"
    train = frame.loc[frame["phase"] == Phase.TRAIN]
    init, _ = unit_fractions(train, Stat.DEAD_FRAC, Phase.INIT)
    final, _ = unit_fractions(train, Stat.DEAD_FRAC, Phase.FINAL)
    return init, final, "first and last training batch: the probes before and after training were not both recorded"


def dead_growth_verdict(ev: RunEvidence, th: Thresholds = DEFAULT_THRESHOLDS) -> Verdict | None:
    """Dead ReLU units that appear during training.

    Per ReLU-family layer, ``growth = dead_frac(final) - dead_frac(init)``, the fraction of its units (channels)
    that output 0 for every input of the batch (:func:`~initdiag.checks.units.unit_fractions`), after
    training minus at initialization, both from the evaluation-batch probes (or both from the first and the
    last training batch when the probes were not both recorded). Descriptive, not a test (a unit is dead
    on the batch or not): fail when a layer's growth reaches ``th.dead_growth_fail``, warn at
    ``th.dead_growth_warn``. Units dead from the start are the ``dead`` check's business. None without a
    ReLU-family layer or without a state after training.
    """
    init, final, source = _dead_tables(ev.frame)
    table = init.merge(final[["layer", "value"]], on="layer", suffixes=("_init", "_final"))
    table = table.loc[np.isfinite(table["value_init"]) & np.isfinite(table["value_final"])].reset_index(drop=True)
    if not len(table):
        return None
    growth = (table["value_final"] - table["value_init"]).to_numpy(np.float64)
    worst = int(np.argmax(growth))
    layer, g = str(table["layer"][worst]), float(growth[worst])
    before, after = float(table["value_init"][worst]), float(table["value_final"][worst])
    over = growth >= th.dead_growth_warn
    status = Status.FAIL if g >= th.dead_growth_fail else Status.WARN if g >= th.dead_growth_warn else Status.PASS
    limits = f"warn at +{th.dead_growth_warn:.0%}, fail at +{th.dead_growth_fail:.0%}"
    if status == Status.PASS:
        message = (f"During training ({source}) the fraction of dead units grew by at most {g:+.0%} in a layer "
                   f"('{layer}': {before:.0%} -> {after:.0%}) over {len(table)} ReLU layers ({limits}).")
    else:
        listed = ", ".join(f"'{la}' {i:.0%} -> {f:.0%}" for la, i, f in zip(
            table["layer"][over][:5], table["value_init"][over][:5], table["value_final"][over][:5], strict=True))
        more = f" and {int(over.sum()) - 5} more" if over.sum() > 5 else ""
        message = (f"During training ({source}) {int(over.sum())} of {len(table)} ReLU layers lost "
                   f"{th.dead_growth_warn:.0%} or more of their units to death: {listed}{more}; worst '{layer}' "
                   f"{g:+.0%} ({limits}).")
    advice = None if status == Status.PASS else (
        "Units die in training when large updates push their pre-activations negative for every input: lower the "
        "learning rate (or warm it up; see the update_ratio verdict), keep biases at zero at init, or use "
        f"LeakyReLU/GELU. ({init_advice(ev)})")
    effect = {"max_growth": g, "init_dead_frac": before, "final_dead_frac": after,
              "layers_over_warn": float(over.sum()), "layers": float(len(table))}
    details = {"source": source, "per_layer": dict(zip(table["layer"], map(float, growth), strict=True)),
               "init": dict(zip(table["layer"], map(float, table["value_init"]), strict=True)),
               "final": dict(zip(table["layer"], map(float, table["value_final"]), strict=True))}
    return Verdict(DEAD_GROWTH, Signal.FORWARD, status.value, tuple(table["layer"][over]), None, effect,
                   message, advice, _TRAINING, details, family=Family.TRAINING)

