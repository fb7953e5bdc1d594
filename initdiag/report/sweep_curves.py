"""The sweep report's curves: quantities of the deep-MLP cells against depth and against width.

Depth (He et al. 2015, "Delving deep into rectifiers", sec. 2.2 and fig. 3: with the wrong variance the
signal of a deep ReLU net shrinks or grows geometrically, and the net fails to train): per (width,
activation) group with two depths or more, per initializer, the measured per-layer forward gain beside
the gain theory predicts, the final training loss and the test accuracy.

Width (Yang et al. 2021, "Tensor Programs V", the coordinate check of muP: under a parametrization that
scales right, activation sizes stay flat as the width grows): per (depth, activation) group with two
widths or more, per initializer, each weight layer's activation variance at initialization against width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..models import ModelName
from ..results import ExperimentResult, RunResult, SweepResult
from ..vocab import Family, Kind, Phase, Role, Signal, Stat
from .context import Figure
from .sweep_plots import DepthSeries, depth_plot, width_plot

__all__ = ["depth_figures", "forward_gain", "init_forward_variances", "width_figures"]


def _studied(result: SweepResult) -> list[ExperimentResult]:
    """The cells whose depth, width and activation mean something (the deep MLP's), with a finished run."""
    return [c for c in result.cells if c.config.model.name == ModelName.DEEP_MLP and c.runs]


def _runs(cell: ExperimentResult, label: str) -> list[RunResult]:
    return [r for r in cell.runs if r.label == label]


def _finite(values: Iterable[float | None]) -> np.ndarray:
    a = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    return a[np.isfinite(a)]


def _mean(values: Iterable[float | None]) -> float:
    a = _finite(values)
    return float(a.mean()) if a.size else math.nan


def _geomean(values: Iterable[float | None]) -> float:
    a = _finite(values)
    a = a[a > 0]
    return float(np.exp(np.log(a).mean())) if a.size else math.nan


def forward_gain(run: RunResult) -> tuple[float, float, float]:
    """The measured per-layer forward variance gain of ``run`` and its interval: ``effect["gain"]``,
    ``gain_low`` and ``gain_high`` of the forward signal verdict at initialization (NaN where absent)."""
    found = [v for v in run.verdicts if v.family == Family.SIGNAL and v.signal == Signal.FORWARD]
    found.sort(key=lambda v: v.phase != Phase.INIT)
    if not found:
        return math.nan, math.nan, math.nan
    effect = found[0].effect

    def get(key: str) -> float:
        x = effect.get(key)
        return math.nan if x is None else float(x)

    return get("gain"), get("gain_low"), get("gain_high")


def _expected_gain(run: RunResult) -> float | None:
    return next((t.expected_gain for t in run.theory if t.signal == Signal.FORWARD), None)


def _final_loss(run: RunResult) -> float:
    return run.history[-1].train_loss if run.history else math.nan


def init_forward_variances(run: RunResult) -> list[float]:
    """The forward ``var`` of each weight layer (execution order) at initialization: the probe before
    training (phase ``init``) where recorded, else the first training step."""
    names = [la.name for la in run.layers if la.role == Role.WEIGHT]
    f = run.frame
    if f.empty:
        return [math.nan] * len(names)
    sub = f[(f["kind"] == Kind.FORWARD) & (f["stat"] == Stat.VAR)]
    init = sub[sub["phase"] == Phase.INIT]
    if init.empty:
        train = sub[sub["phase"] == Phase.TRAIN]
        init = train[train["step"] == train["step"].min()] if not train.empty else train
    by_layer = init.groupby("layer", observed=True, sort=False)["value"].first()
    values = {str(k): float(v) for k, v in by_layer.items()}
    return [values.get(n, math.nan) for n in names]


def _groups(cells: Sequence[ExperimentResult], key: Callable[[ExperimentResult], tuple[int | str, ...]],
            axis: Callable[[ExperimentResult], int]) -> list[tuple[tuple[int | str, ...], list[ExperimentResult]]]:
    """Cells grouped by ``key``, each group sorted by ``axis``; only groups with two values of ``axis`` or more."""
    out: dict[tuple[int | str, ...], list[ExperimentResult]] = {}
    for cell in cells:
        out.setdefault(key(cell), []).append(cell)
    return [(k, sorted(v, key=axis)) for k, v in out.items() if len({axis(c) for c in v}) >= 2]


_DEPTH_CAPTION = (
    "Left: the measured per-layer variance gain of the forward signal at initialization (from a fit of log "
    "variance over the weight layers; error bars: its confidence interval; with several seeds the geometric mean "
    "of the seeds' gains, the bar from the lowest to the highest bound), and as thin dashed lines the gain theory "
    "predicts (fan_in x Var(W) x c); a gain below 1 shrinks the signal geometrically with depth, above 1 grows "
    "it. Middle: the training loss of the last epoch; right: the test accuracy (means over seeds).")


def depth_figures(result: SweepResult, labels: Sequence[str], styles: dict[str, int]) -> tuple[Figure, ...]:
    """One figure per (width, activation) group of deep-MLP cells with two depths or more."""
    figures = []
    groups = _groups(_studied(result), lambda c: (c.config.model.width, c.config.model.activation),
                     lambda c: c.config.model.depth)
    for i, ((width, activation), cells) in enumerate(groups):
        depths = [c.config.model.depth for c in cells]
        series = []
        for label in labels:
            per_cell = [_runs(c, label) for c in cells]
            if not any(per_cell):
                continue
            gains = [[forward_gain(r) for r in runs] for runs in per_cell]
            series.append(DepthSeries(
                label,
                tuple(_geomean(g[0] for g in gs) for gs in gains),
                tuple(float(np.min(lo)) if (lo := _finite(g[1] for g in gs)).size else math.nan for gs in gains),
                tuple(float(np.max(hi)) if (hi := _finite(g[2] for g in gs)).size else math.nan for gs in gains),
                tuple(_mean(_expected_gain(r) for r in runs) for runs in per_cell),
                tuple(_mean(_final_loss(r) for r in runs) for runs in per_cell),
                tuple(_mean(r.test_accuracy for r in runs) for runs in per_cell)))
        fid = f"fig-depth-{i}"
        title = f"deep-mlp, width {width}, {activation}: against depth"
        svg = depth_plot(depths, series, title=title, salt=fid, styles=styles)
        figures.append(Figure(fid, svg, f"Deep MLPs of width {width} with {activation}, at depths "
                              f"{', '.join(map(str, depths))}, one line per initializer. {_DEPTH_CAPTION}"))
    return tuple(figures)


def width_figures(result: SweepResult, labels: Sequence[str]) -> tuple[Figure, ...]:
    """One figure per (depth, activation) group of deep-MLP cells with two widths or more."""
    figures = []
    groups = _groups(_studied(result), lambda c: (c.config.model.depth, c.config.model.activation),
                     lambda c: c.config.model.width)
    for i, ((depth, activation), cells) in enumerate(groups):
        widths = [c.config.model.width for c in cells]
        panels = []
        for label in labels:
            per_cell = [[init_forward_variances(r) for r in _runs(c, label)] for c in cells]
            if not any(per_cell):
                continue
            layers = max((len(v) for seeds in per_cell for v in seeds), default=0)
            matrix = np.array([[_mean(v[k] for v in seeds if k < len(v)) for seeds in per_cell]
                               for k in range(layers)], dtype=float).reshape(layers, len(cells))
            panels.append((label, matrix))
        fid = f"fig-width-{i}"
        svg = width_plot(widths, panels, title=f"deep-mlp, depth {depth}, {activation}: activation size against width",
                         salt=fid)
        figures.append(Figure(fid, svg, f"Deep MLPs of depth {depth} with {activation}, at widths "
                              f"{', '.join(map(str, widths))}: one panel per initializer, one line per weight layer "
                              "(dark: first, light: last). Each point is the variance of the layer's output at "
                              "initialization (before training; mean over seeds), log-log. Flat lines: activation "
                              "sizes that do not depend on the width (the coordinate check of Yang et al.'s muP); "
                              "lines that climb or fall with width: a parametrization that does not scale."))
    return tuple(figures)
