"""The sweep report's figures as inline SVG: quantities against depth and against width.

Made like :mod:`.plots` (object-oriented ``Figure`` API, the report's matplotlib settings, deterministic
SVG through :func:`.plots.to_svg`, each initializer in its report-wide :func:`.plots.series_style`); they
take plain arrays and labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from .plots import _THEORY_DASHES, _figure, _style, _text, series_style, to_svg

__all__ = ["DepthSeries", "depth_plot", "width_plot"]

_MAX_LEGEND_LAYERS = 8
"""A width figure names at most this many layer indices in its legend (evenly spaced, first and last kept)."""


@dataclass(frozen=True)
class DepthSeries:
    """One initializer's values at each depth of a group (NaN where a cell has no value).

    ``gain``: the measured per-layer forward variance gain, ``gain_low``..``gain_high`` its interval;
    ``expected``: the gain theory predicts; ``train_loss``: the last epoch's training loss; ``test_accuracy``:
    the test accuracy (each a mean over seeds)."""

    label: str
    gain: tuple[float, ...]
    gain_low: tuple[float, ...]
    gain_high: tuple[float, ...]
    expected: tuple[float, ...]
    train_loss: tuple[float, ...]
    test_accuracy: tuple[float, ...]


def _positive(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _integer_axis(ax: object, values: Sequence[int], log: bool = False) -> None:
    """Ticks at exactly ``values`` (the depths or widths of the grid), written as integers."""
    if log:
        ax.set_xscale("log", base=2)  # type: ignore[attr-defined]
    axis = ax.xaxis  # type: ignore[attr-defined]
    axis.set_major_locator(FixedLocator([float(v) for v in values]))
    axis.set_minor_locator(NullLocator())
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def depth_plot(depths: Sequence[int], series: Sequence[DepthSeries], *, title: str, salt: str,
               styles: Mapping[str, int] | None = None) -> str:
    """Three panels against depth, one line per initializer: the per-layer forward gain (log scale; error
    bars: its interval; thin dashed with hollow markers: the predicted gain; dotted grey: gain 1, a signal
    that neither grows nor shrinks), the final training loss and the test accuracy (0..1)."""
    with _style():
        fig = _figure(2.9)
        gain_ax, loss_ax, acc_ax = fig.subplots(1, 3)
        x = np.asarray(depths, dtype=float)
        shown: list[np.ndarray] = []
        for i, s in enumerate(series):
            st = series_style(styles.get(s.label, i) if styles else i)
            gain = _positive(s.gain)
            low = np.where(np.isfinite(_positive(s.gain_low)), gain - _positive(s.gain_low), 0.0)
            high = np.where(np.isfinite(_positive(s.gain_high)), _positive(s.gain_high) - gain, 0.0)
            err = np.nan_to_num(np.clip(np.vstack([low, high]), 0.0, None))
            gain_ax.errorbar(x, gain, yerr=err, color=st.color, linestyle=st.linestyle, marker=st.marker,
                             markersize=4.5, linewidth=1.4, capsize=2.5, elinewidth=0.8, label=_text(s.label),
                             zorder=3)
            expected = _positive(s.expected)
            if np.isfinite(expected).any():
                gain_ax.plot(x, expected, color=st.color, linestyle=_THEORY_DASHES, linewidth=0.8,
                             marker=st.marker, markersize=3, markerfacecolor="white", markeredgewidth=0.7, zorder=2)
            shown += [gain, expected, gain + err[1], _positive(gain - err[0])]
            loss_ax.plot(x, np.asarray(s.train_loss, dtype=float), color=st.color, linestyle=st.linestyle,
                         marker=st.marker, markersize=4.5, linewidth=1.4)
            acc_ax.plot(x, np.asarray(s.test_accuracy, dtype=float), color=st.color, linestyle=st.linestyle,
                        marker=st.marker, markersize=4.5, linewidth=1.4)
        gain_ax.axhline(1.0, color="#777777", linestyle=":", linewidth=0.8, zorder=1)
        values = np.concatenate([v[np.isfinite(v)] for v in shown] + [np.ones(1)])
        gain_ax.set_yscale("log")
        gain_ax.set_ylim(10.0 ** (math.log10(float(values.min())) - 0.15),
                         10.0 ** (math.log10(float(values.max())) + 0.15))
        gain_ax.set_title("Forward gain per layer", loc="left")
        gain_ax.set_ylabel("variance gain per layer (log)")
        loss_ax.set_title("Final training loss", loc="left")
        loss_ax.set_ylabel("training loss, last epoch")
        acc_ax.set_title("Test accuracy", loc="left")
        acc_ax.set_ylabel("test accuracy (fraction)")
        acc_ax.set_ylim(0.0, 1.0)
        for ax in (gain_ax, loss_ax, acc_ax):
            _integer_axis(ax, depths)
            ax.set_xlabel("depth (Linear layers)")
            ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        handles, names = gain_ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="#555555", linestyle=_THEORY_DASHES, linewidth=0.8, marker="o",
                              markersize=3, markerfacecolor="white", markeredgewidth=0.7))
        names.append("predicted gain (thin dashed)")
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
        fig.suptitle(_text(title), x=0.0, ha="left", fontsize=9, fontweight="bold")
        return to_svg(fig, salt)


def width_plot(widths: Sequence[int], panels: Sequence[tuple[str, np.ndarray]], *, title: str, salt: str) -> str:
    """One panel per initializer (shared log-log axes): the activation variance of each weight layer at
    initialization against width, one line per layer index (colour from dark, first layer, to light, last).

    ``panels``: ``(initializer, matrix of shape (layers, len(widths)))``; NaN/zero/negative leave a gap."""
    with _style():
        cols = min(3, max(1, len(panels)))
        rows = math.ceil(len(panels) / cols)
        fig = _figure(0.5 + 2.3 * rows)
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        x = np.asarray(widths, dtype=float)
        layers = max((m.shape[0] for _, m in panels), default=0)
        cmap = matplotlib.colormaps["viridis"]
        spaced = np.linspace(0, layers - 1, min(layers, _MAX_LEGEND_LAYERS)).round() if layers else ()
        named = {int(k) for k in spaced}
        values = np.concatenate([_positive(m.ravel()) for _, m in panels] + [np.zeros(0)])
        values = values[np.isfinite(values)]
        for ax, (label, matrix) in zip(axes, panels, strict=False):
            for k in range(matrix.shape[0]):
                ax.plot(x, _positive(matrix[k]), color=cmap(0.9 * k / max(1, layers - 1)), marker="o",
                        markersize=3.5, linewidth=1.2, label=f"layer {k}" if k in named else None)
            ax.set_yscale("log")
            ax.set_title(_text(label), loc="left")
            ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for ax in axes:
            _integer_axis(ax, widths, log=True)
            ax.set_xlabel("width (units per layer)")
        for ax in axes[::cols]:
            ax.set_ylabel("activation variance at init (log)")
        if values.size:
            axes[0].set_ylim(10.0 ** (math.log10(float(values.min())) - 0.2),
                             10.0 ** (math.log10(float(values.max())) + 0.2))
        handles, names = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, names, title="weight layer (0 = first)", loc="outside right upper", frameon=False)
        fig.suptitle(_text(title), x=0.0, ha="left", fontsize=9, fontweight="bold")
        return to_svg(fig, salt)
