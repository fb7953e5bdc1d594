"""The report's two figure sections: accuracy (runs, comparisons, accuracy per epoch), and the signal per
layer (measured beside theory) and over training."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from ..checks import TheoryRow
from ..results import AuditRun, ExperimentResult, RunResult, TrainingRun
from ..series import first_step_values
from ..vocab import Kind, Phase, Role, RunStatus, Stat, Status
from . import plots
from .context import AccuracySection, Badge, ComparisonRow, Figure, MeanRow, RunRow, SignalSection, TheoryLine
from .format import badge, fixed, fmt, fmt_p, layer_labels
from .structure import stream_figures

__all__ = ["MAX_HEATMAP_STEPS", "accuracy_section", "loss_figure", "run_label", "signal_section"]

MAX_HEATMAP_STEPS = 200
"""Heatmaps show at most this many training steps (every k-th recorded step) to keep files small."""

Run = RunResult | AuditRun | TrainingRun


def run_label(run: Run, multi: bool) -> str:
    """A run's name in tables: its initializer, or ``initializer/seedN`` when there are several seeds."""
    return run.name if multi else run.label


CLASSES = 10
"""The classes of the experiment's data set (MNIST's digits)."""


def _run_status(run: RunResult) -> tuple[Badge, str]:
    """A trained run's badge and detail: diverged; no learning, when its test accuracy stays below twice chance
    (2 / classes: a run that predicts about one class, MNIST's most frequent being 11% of its test set); else
    ok."""
    if run.status == RunStatus.DIVERGED:
        return badge(Status.FAIL, "diverged"), f"diverged at step {run.diverged_step}"
    if math.isfinite(run.test_accuracy) and run.test_accuracy < 2.0 / CLASSES:
        return badge(Status.FAIL, "no learning"), f"at chance: below 2 / {CLASSES} classes"
    return badge(Status.PASS, "ok"), ""


def loss_figure(runs: Sequence[Run], styles: dict[str, int], multi: bool) -> Figure | None:
    """The training loss per step of every run that trained (an experiment's runs, a callback's training), one
    line each on one axis; None when no run trained."""
    from .repair import MAX_POINTS, log_scale, loss_plot

    series: dict[str, np.ndarray] = {}
    order: dict[str, int] = {}
    epochs = ""
    for run in runs:
        losses = run.step_losses if isinstance(run, RunResult) else run.losses if isinstance(run, TrainingRun) \
            else None
        if losses is None or len(losses) < 2:
            continue
        name = run_label(run, multi)
        series[name] = np.asarray(losses, dtype=float)
        order[name] = styles.get(run.label, len(order))
        if isinstance(run, TrainingRun) and run.steps_per_epoch and len(run.epoch_losses) > 1:
            epochs = (f"; {run.steps_per_epoch} steps per epoch, the stepped line each epoch's mean loss "
                      f"({len(run.epoch_losses)} epochs)")
            series[f"{name}, epoch mean"] = np.repeat(run.epoch_losses, run.steps_per_epoch)[:len(losses)]
            order[f"{name}, epoch mean"] = order[name] + 4
    if not series:
        return None
    log = log_scale(list(series.values()))
    longest = max(len(v) for v in series.values())
    svg = loss_plot(series, title="Training loss per step", salt="fig-loss", log=log, legend_title="run",
                    styles=order)
    binned = f"; {longest} steps drawn as the means of {MAX_POINTS} equal bins" if longest > MAX_POINTS else ""
    return Figure("fig-loss", svg, f"The loss of each training step on its batch, one line per run{binned}{epochs}"
                  f"; {'log' if log else 'linear'} scale. A cross on the top edge marks a run's first non-finite loss.")


def accuracy_section(result: ExperimentResult, labels: list[str], styles: dict[str, int],
                     multi: bool) -> AccuracySection:
    """Test accuracy and loss per run, means with intervals over seeds, the comparisons, accuracy per epoch."""
    rows = tuple(RunRow(r.label, r.seed, fixed(r.test_accuracy), fixed(r.test_loss), *_run_status(r),
                        f"{r.seconds:.1f}") for r in result.runs)
    means = tuple(
        MeanRow(label, fixed(s.get("mean")), f"[{fixed(s.get('ci_low'))}, {fixed(s.get('ci_high'))}]",
                int(s.get("n", 0)))
        for label, s in result.accuracy.items()) if multi else ()
    comparisons = tuple(ComparisonRow(c.a, c.b, c.test, fmt(c.statistic), fmt_p(c.p_value), fmt_p(c.p_adjusted),
                                      bool(c.significant), c.detail) for c in result.comparisons)
    curves = []
    for label in labels:
        hist = [r.history for r in result.runs if r.label == label]
        epochs = sorted({e.epoch for h in hist for e in h})
        per = [[e.test_accuracy for h in hist for e in h if e.epoch == ep] for ep in epochs]
        curves.append(plots.Curve(label, tuple(epochs), tuple(float(np.mean(p)) for p in per),
                                  tuple(min(p) for p in per), tuple(max(p) for p in per)))
    figure = Figure("fig-accuracy", plots.accuracy_plot(curves, salt="fig-accuracy", styles=styles),
                    "Test accuracy after each epoch, one line per initializer"
                    + (" (mean over seeds; the band spans min to max)" if multi else "")
                    + "; right: the test error (1 − accuracy) on a log scale, which separates runs that all "
                    "end near 1.") if curves else None
    seeds = len({r.seed for r in result.runs})
    note = ("The statistic is the exact McNemar test's: of the test examples exactly one of the two models got "
            "right, those the less often right one got (binomial with p = 1/2 under the null hypothesis that both "
            "err alike).") if any(c.test.startswith("mcnemar") for c in result.comparisons) else ""
    if seeds == 1 and comparisons:
        note += (" With one seed per initializer these compare two trained models on one test set, not the "
                 "initializers: seed-to-seed variation is not measured (--seeds 5 measures it).")
    return AccuracySection(rows, means, comparisons, figure, note.strip())


def _layer_order(runs: Sequence[Run]) -> list[str]:
    """Conv/Linear call sites in execution order (all recorded layers when there are none)."""
    weights = list(dict.fromkeys(la.name for r in runs for la in r.layers if la.role == Role.WEIGHT))
    return weights or list(dict.fromkeys(la.name for r in runs for la in r.layers))


def _heat_steps(frame: pd.DataFrame) -> np.ndarray:
    """The training steps a heatmap shows: every k-th recorded step, at most ``MAX_HEATMAP_STEPS``."""
    if frame.empty:
        return np.zeros(0, dtype=np.int64)
    steps = np.unique(frame.loc[frame["phase"] == Phase.TRAIN, "step"].to_numpy())
    return steps[:: max(1, math.ceil(len(steps) / MAX_HEATMAP_STEPS))]


def _matrix(frame: pd.DataFrame, kind: str, layers: list[str], steps: np.ndarray) -> np.ndarray:
    """Layer x step matrix of the ``var`` of ``kind`` during training (NaN where not recorded)."""
    if frame.empty or len(steps) == 0:
        return np.full((len(layers), len(steps)), np.nan)
    sub = frame[(frame["phase"] == Phase.TRAIN) & (frame["kind"] == kind) & (frame["stat"] == Stat.VAR)
                & frame["step"].isin(steps)]
    table = sub.pivot_table(index="layer", columns="step", values="value", aggfunc="first", observed=True)
    table.index = table.index.astype(str)
    return table.reindex(index=layers, columns=steps).to_numpy(dtype=float)


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _expected(run: Run, kind: str, layers: list[str]) -> list[float | None]:
    """The run's predicted variance at each of ``layers`` (None where theory says nothing)."""
    for prediction in run.profiles:
        if prediction.signal == kind:
            by_layer = dict(zip(prediction.layers, prediction.values, strict=True))
            return [by_layer.get(name) for name in layers]
    return [None] * len(layers)


def _theory(t: TheoryRow, run: str) -> TheoryLine:
    lo, hi = t.gain_low, t.gain_high
    interval = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None or hi is not None else "—"
    expected = fmt(t.expected_gain)
    if t.expected_low is not None and t.expected_high is not None and t.expected_low < t.expected_high:
        expected += f" ({fmt(t.expected_low)}–{fmt(t.expected_high)})"
    return TheoryLine(run, t.activation, t.signal, expected, fmt(t.measured_gain), interval, t.note)


def signal_section(runs: Sequence[Run], labels: list[str], styles: dict[str, int], multi: bool,
                   over_training: bool, legend: str = "initializer") -> SignalSection | None:
    """Per-layer variance at initialization with the theory line, forward and backward, one line per label on
    one axis (``legend``: what a label stands for); the theory table; and, for training runs, layer x step
    heatmaps per initializer."""
    if not runs:
        return None
    layers = _layer_order(runs)
    names = layer_labels([la for r in runs for la in r.layers], layers)
    figures: list[Figure] = []
    for kind, what, fid, fan, anchor, route in (
            (Kind.FORWARD, "Activation variance", "fig-forward", "fan_in", "first", ""),
            (Kind.BACKWARD, "Gradient variance (dL/d output)", "fig-backward", "fan_out", "last",
             "; through a max-pool, c at each window's maximum and the gradient spread over the window")):
        values: dict[str, list[float | None]] = {}
        expected: dict[str, list[float | None]] = {}
        for label in labels:
            per_seed = [first_step_values(r.frame, kind) for r in runs if r.label == label]
            values[label] = [_mean_or_none([p.get(name) for p in per_seed]) for name in layers]
            expected[label] = _expected(next(r for r in runs if r.label == label), kind, layers)
        svg = plots.layer_profile(values, names, title=f"{what} per layer at initialization (step 0)",
                                  ylabel="variance (log scale)", salt=fid, styles=styles,
                                  xlabel="Conv/Linear layer (execution order)", theory=expected,
                                  theory_label="theory (thin dashed)", legend_title=legend)
        figures.append(Figure(fid, svg, f"{what} of each Conv/Linear layer's output at the first training step"
                              + (", mean over seeds" if multi else "") + "; log scale. Thin dashed lines with "
                              "hollow markers: the variance theory expects from each initializer (gain per layer "
                              f"{fan} x Var(W) x c, c = 1/2 after ReLU, 1 linear{route}), started from the "
                              f"measured value at the {anchor} layer."))
    heatmaps = []
    if over_training:
        for i, label in enumerate(labels):
            run = next(r for r in runs if r.label == label)
            steps = _heat_steps(run.frame)
            if len(steps) < 2 and isinstance(run, AuditRun):  # an audit's batches share one step: nothing over time
                continue
            fid = f"fig-heat-{i}"
            svg = plots.heatmap_pair([("activation variance", _matrix(run.frame, Kind.FORWARD, layers, steps), None),
                                      ("gradient variance", _matrix(run.frame, Kind.BACKWARD, layers, steps), None)],
                                     names, [int(s) for s in steps], title=run.name, salt=fid)
            heatmaps.append(Figure(fid, svg, f"{run.name}: variance per layer over training."))
        note = (f"Each heatmap shows at most {MAX_HEATMAP_STEPS} training steps (every k-th recorded step); "
                "each panel has its own log colour scale; grey cells are zero or not finite.")
    else:
        note = ("An audit takes no training step: its batches share one set of weights, so there is no variance "
                "over training.")
    theory = tuple(_theory(t, run_label(r, multi)) for r in runs for t in r.theory)
    return SignalSection(figures[0], figures[1], theory, tuple(heatmaps), note,
                         stream_figures(runs, labels, styles, legend))

