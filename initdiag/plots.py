"""Figures as inline SVG strings (the only module importing matplotlib).

Uses matplotlib's object-oriented ``Figure`` API, never pyplot, so no GUI backend is touched and the
process-wide backend is left as the caller set it.

Every function takes plain arrays and labels and returns an ``<svg>`` element without XML prolog, ready
to inline in HTML. Output is deterministic: the same data gives byte-identical SVG (fixed hash salt per
figure, text kept as text, no date). Styles are chosen per series index so a series keeps its colour,
line style and marker in every figure and stays distinguishable in grey print.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

__all__ = ["Curve", "SeriesStyle", "accuracy_plot", "heatmap_pair", "layer_profile", "series_style", "shared_log_norm",
           "to_svg"]

_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999933")
"""Okabe-Ito palette (colour-blind safe), black and olive appended."""
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_WIDTH_IN = 6.6
"""Figure width in inches: fits an A4 or letter page between margins."""
_RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "svg.fonttype": "none",
    "svg.image_inline": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_ID = re.compile(r'\s+id="([^"]*)"')
_REF = re.compile(r'(?:href="#|url\(#)([^")]+)')


@dataclass(frozen=True)
class SeriesStyle:
    """Colour, line style and marker of one series (by its index in the report's initializer order)."""

    color: str
    linestyle: str
    marker: str


@dataclass(frozen=True)
class Curve:
    """One initializer's test accuracy per epoch: mean over seeds, and min/max over seeds (band)."""

    label: str
    epochs: tuple[int, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


def _style(extra: Mapping[str, Any] | None = None) -> AbstractContextManager[None]:
    """The report's matplotlib settings (plus ``extra``) for the duration of a block."""
    params: Any = {**_RC, **(extra or {})}
    return rc_context(params)


def series_style(index: int) -> SeriesStyle:
    """The style of series ``index``: colours, dashes and markers cycle independently."""
    return SeriesStyle(_COLORS[index % len(_COLORS)], _LINESTYLES[index % len(_LINESTYLES)],
                       _MARKERS[index % len(_MARKERS)])


def _text(s: str) -> str:
    """Make a user string literal for matplotlib: ``$`` would otherwise start mathtext."""
    return s.replace("$", r"\$")


def to_svg(fig: Figure, salt: str) -> str:
    """Serialise ``fig`` to an inline ``<svg>`` string; ``salt`` makes its element ids unique and stable."""
    buf = io.StringIO()
    with _style({"svg.hashsalt": salt, "svg.id": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight",
                    pad_inches=0.04)
    return _clean_svg(buf.getvalue(), salt)


def _clean_svg(svg: str, salt: str) -> str:
    """Inline-ready SVG: no prolog, metadata or namespace URIs (HTML parsers supply them), SVG 2
    ``href`` instead of ``xlink:href``, and only the ids something refers to (plus the root's), so
    several figures can share one HTML page without duplicate ids."""
    svg = _METADATA.sub("", _PROLOG.sub("", svg))
    svg = _XMLNS.sub("", svg).replace("xlink:href=", "href=")
    keep = {salt, *_REF.findall(svg)}
    svg = _ID.sub(lambda m: m.group(0) if m.group(1) in keep else "", svg)
    return svg.strip() + "\n"


def _figure(height_in: float) -> Figure:
    with _style():
        return Figure(figsize=(_WIDTH_IN, height_in), layout="constrained")


def _layer_ticks(ax: object, names: Sequence[str], axis: str) -> None:
    """Label the layer axis with names, thinning to at most ~40 labels."""
    step = max(1, math.ceil(len(names) / 40))
    ticks = list(range(0, len(names), step))
    labels = [_text(names[i]) for i in ticks]
    if axis == "x" and max((len(n) for n in labels), default=0) > 4:
        ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor")  # type: ignore[attr-defined]
    elif axis == "x":
        ax.set_xticks(ticks, labels)  # type: ignore[attr-defined]
    else:
        ax.set_yticks(ticks, labels)  # type: ignore[attr-defined]


class _ZeroFloorFormatter(LogFormatterSciNotation):
    """Log-axis labels, with the floor that stands for exact zeros labelled "0"."""

    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = floor

    def __call__(self, x: float, pos: int | None = None) -> str:
        return "0" if math.isclose(x, self.floor, rel_tol=1e-9) else str(super().__call__(x, pos))


def layer_profile(values: Mapping[str, Sequence[float | None]], layers: Sequence[str], *, title: str,
                  ylabel: str, salt: str, styles: Mapping[str, int] | None = None,
                  xlabel: str = "layer (execution order)") -> str:
    """Line plot of a positive quantity per layer (log y), one line per series.

    ``values[label][i]`` belongs to ``layers[i]``; None/NaN/Inf leave a gap. Exact zeros cannot sit on
    a log axis: they are drawn with hollow markers on a dotted floor line labelled "= 0".
    """
    with _style():
        fig = _figure(3.1 + 0.012 * max((len(n) for n in layers), default=0))
        ax = fig.add_subplot()
        arrays = {k: np.array([np.nan if v is None else float(v) for v in vs], dtype=float)
                  for k, vs in values.items()}
        positive = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays.values()] or [np.zeros(0)])
        lowest = float(positive.min()) if positive.size else 1.0
        floor = 10.0 ** (math.floor(math.log10(lowest)) - 1)
        any_zero = False
        x = np.arange(len(layers))
        for i, (label, arr) in enumerate(arrays.items()):
            st = series_style(styles.get(label, i) if styles else i)
            shown = np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)
            ax.plot(x, shown, color=st.color, linestyle=st.linestyle, marker=st.marker, markersize=4.5,
                    linewidth=1.4, label=_text(label))
            zeros = np.isfinite(arr) & (arr == 0)
            if zeros.any():
                any_zero = True
                ax.plot(x[zeros], np.full(int(zeros.sum()), floor), linestyle="none", marker=st.marker,
                        markersize=5, markerfacecolor="none", markeredgecolor=st.color)
        ax.set_yscale("log")
        if any_zero:
            ax.yaxis.set_major_formatter(_ZeroFloorFormatter(floor))
            ax.axhline(floor, color="#777777", linestyle=":", linewidth=0.8)
            ax.annotate("= 0 (exactly zero; hollow markers)", (0.0, floor), xycoords=("axes fraction", "data"),
                        xytext=(3, 3), textcoords="offset points", fontsize=7, color="#555555")
        ax.set_xlim(-0.5, len(layers) - 0.5)
        _layer_ticks(ax, layers, "x")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(_text(title), loc="left")
        ax.grid(True, which="major", axis="y", color="#dddddd", linewidth=0.6)
        if arrays:
            ax.legend(title="initializer", loc="best", frameon=False, ncols=2 if len(arrays) > 4 else 1)
        return to_svg(fig, salt)


def accuracy_plot(curves: Sequence[Curve], *, salt: str, styles: Mapping[str, int] | None = None) -> str:
    """Test accuracy (fraction) per epoch, one line per initializer; a band spans the seeds' min..max."""
    with _style():
        fig = _figure(3.0)
        ax = fig.add_subplot()
        max_epoch = 1
        for i, c in enumerate(curves):
            st = series_style(styles.get(c.label, i) if styles else i)
            ax.plot(c.epochs, c.mean, color=st.color, linestyle=st.linestyle, marker=st.marker, markersize=4.5,
                    linewidth=1.4, label=_text(c.label))
            if any(lo != hi for lo, hi in zip(c.low, c.high, strict=True)):
                ax.fill_between(c.epochs, c.low, c.high, color=st.color, alpha=0.15, linewidth=0)
            max_epoch = max(max_epoch, *c.epochs) if c.epochs else max_epoch
        ax.set_xlim(0.8, max_epoch + 0.2)
        ax.set_xticks(list(range(1, max_epoch + 1, max(1, math.ceil(max_epoch / 20)))))
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title("Test accuracy after each epoch", loc="left")
        ax.grid(True, color="#dddddd", linewidth=0.6)
        if curves:
            ax.legend(title="initializer", loc="lower right", frameon=False, ncols=2 if len(curves) > 4 else 1)
        return to_svg(fig, salt)


def _norm(matrices: Sequence[np.ndarray]) -> mcolors.LogNorm:
    values = np.concatenate([m[np.isfinite(m) & (m > 0)] for m in matrices] or [np.zeros(0)])
    if values.size == 0:
        return mcolors.LogNorm(1e-3, 1.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo / 10.0, hi * 10.0
    return mcolors.LogNorm(lo, hi)


def heatmap_pair(panels: Sequence[tuple[str, np.ndarray, mcolors.Normalize | None]], layers: Sequence[str],
                 steps: Sequence[int], *, title: str, salt: str) -> str:
    """Side-by-side layer x step heatmaps with a log colour scale and a labelled colourbar each.

    ``panels``: ``(panel title, matrix of shape (len(layers), len(steps)), norm or None)``; None derives
    a LogNorm from the panel (:func:`shared_log_norm` makes one for several). Zero, negative or
    non-finite cells are drawn light grey.
    """
    with _style():
        fig = _figure(1.5 + 0.2 * len(layers))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        s = np.asarray(steps, dtype=float)
        half = (s[1] - s[0]) / 2 if len(s) > 1 else 0.5
        extent = (s[0] - half, s[-1] + half, len(layers) - 0.5, -0.5) if len(s) else (0, 1, 1, 0)
        for k, (ax, (name, matrix, norm)) in enumerate(zip(axes, panels, strict=True)):
            cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e4e4e4", under="#e4e4e4")
            data = np.ma.masked_where(~(np.isfinite(matrix) & (matrix > 0)), matrix)
            image = ax.imshow(data, aspect="auto", interpolation="none", cmap=cmap,
                              norm=norm or _norm([matrix]), extent=extent)
            bar = fig.colorbar(image, ax=ax, pad=0.02, fraction=0.06)
            bar.set_label("variance (log scale)")
            lo, hi = image.norm.vmin, image.norm.vmax
            if lo and hi and math.log10(hi / lo) >= 1:  # decades labelled: minor labels would crowd
                bar.ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(_text(name), loc="left")
            ax.set_xlabel("training step")
            if k == 0:
                _layer_ticks(ax, layers, "y")
                ax.set_ylabel("layer")
            for spine in ax.spines.values():
                spine.set_visible(True)
        fig.suptitle(_text(title), x=0.0, ha="left", fontsize=9, fontweight="bold")
        return to_svg(fig, salt)


def shared_log_norm(matrices: Sequence[np.ndarray]) -> mcolors.LogNorm:
    """One log colour scale spanning the positive finite values of all ``matrices``."""
    return _norm(matrices)
