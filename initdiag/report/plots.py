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
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

__all__ = ["THEORY_SPAN", "Curve", "SeriesStyle", "accuracy_plot", "heatmap_pair", "layer_profile", "series_style",
           "shared_log_norm", "to_svg"]

_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999933")
"""Okabe-Ito palette (colour-blind safe), black and olive appended."""
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_WIDTH_IN = 6.6
"""Figure width in inches: fits an A4 or letter page between margins."""
_THEORY_DASHES = (0, (4.0, 2.0))
THEORY_SPAN = 3.0
"""Decades beyond the measured range within which a theory line keeps the axis open (the rest is clipped)."""
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
    with _style({"svg.hashsalt": salt, "svg.id": f"{salt}-svg"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight",
                    pad_inches=0.04)
    return _clean_svg(buf.getvalue(), salt)


def _clean_svg(svg: str, salt: str) -> str:
    """Inline-ready SVG: no prolog, metadata or namespace URIs (HTML parsers supply them), SVG 2
    ``href`` instead of ``xlink:href``, and only the ids something refers to (plus the root's), so
    several figures can share one HTML page without duplicate ids."""
    svg = _METADATA.sub("", _PROLOG.sub("", svg))
    svg = _XMLNS.sub("", svg).replace("xlink:href=", "href=")
    svg = _RECT_RUN.sub(_merge_rects, _QUAD.sub(_rect, svg))
    keep = {f"{salt}-svg", *_REF.findall(svg)}
    svg = _ID.sub(lambda m: m.group(0) if m.group(1) in keep else "", svg)
    return svg.strip() + "\n"


def _rect(m: re.Match[str]) -> str:
    """An axis-aligned cell path of a vector heatmap as a ``<rect>`` (a third of the bytes)."""
    x0, y0, x1, y1 = (float(m.group(i)) for i in (1, 2, 3, 4))
    clip = m.group(5) or ""
    return (f'<rect x="{min(x0, x1):.2f}" y="{min(y0, y1):.2f}" width="{abs(x1 - x0):.2f}" '
            f'height="{abs(y1 - y0):.2f}" {clip}style="fill:{m.group(6)};stroke:{m.group(6)};'
            f'stroke-width:{m.group(7)}"/>')


_CELL = re.compile(r'<rect x="([\d.-]+)" y="([\d.-]+)" width="([\d.]+)" height="([\d.]+)" (.*?)/>')
_RECT_RUN = re.compile(r'(?:<rect x="[\d.-]+" y="[\d.-]+" width="[\d.]+" height="[\d.]+" '
                       r'(?:clip-path="[^"]*" )?style="fill:#[0-9a-f]{6};[^"]*"/>\s*){2,}')


def _merge_rects(m: re.Match[str]) -> str:
    """Consecutive heatmap cells of one row with the same colour as one wider ``<rect>``: the same
    picture with several times fewer elements (PDF rendering time goes with their number)."""
    out: list[list[str | float]] = []
    for x, y, w, h, rest in _CELL.findall(m.group(0)):
        last = out[-1] if out else None
        if (last is not None and last[1] == y and last[3] == h and last[4] == rest
                and abs(float(last[0]) + float(last[2]) - float(x)) < 0.02):
            last[2] = float(x) + float(w) - float(last[0])
        else:
            out.append([float(x), y, float(w), h, rest])
    return "".join(f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{h}" {rest}/>\n' for x, y, w, h, rest in out)


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


def _positive(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The positive finite values of ``arrays``, concatenated."""
    return np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays] or [np.zeros(0)])


def _as_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def layer_profile(values: Mapping[str, Sequence[float | None]], layers: Sequence[str], *, title: str,
                  ylabel: str, salt: str, styles: Mapping[str, int] | None = None,
                  xlabel: str = "layer (execution order)",
                  theory: Mapping[str, Sequence[float | None]] | None = None,
                  theory_label: str = "theory", legend_title: str = "initializer") -> str:
    """Line plot of a positive quantity per layer (log y), one line per series, legend (``legend_title``)
    outside the axes.

    ``values[label][i]`` belongs to ``layers[i]``; None/NaN/Inf leave a gap. Exact zeros cannot sit on
    a log axis: they are drawn with hollow markers on a dotted floor line labelled "= 0".
    ``theory[label]`` (optional) is the profile a theory expects for series ``label``: a thin dashed line
    in the series' colour with small hollow markers (its shape tells the series apart in grey print).
    Theory values more than :data:`THEORY_SPAN` decades beyond the measured range are clipped by the
    axis, so a far-off prediction cannot squash the measurements into a line.
    """
    with _style():
        fig = _figure(3.1 + 0.03 * max((len(n) for n in layers), default=0))
        ax = fig.add_subplot()
        arrays = {k: _as_array(vs) for k, vs in values.items()}
        expected = {k: _as_array(vs) for k, vs in (theory or {}).items()}
        measured = _positive(list(arrays.values()))
        if measured.size:
            span = 10.0 ** THEORY_SPAN
            lo_ok, hi_ok = float(measured.min()) / span, float(measured.max()) * span
            near = _positive([np.where((e >= lo_ok) & (e <= hi_ok), e, np.nan) for e in expected.values()])
            shown_range = np.concatenate([measured, near])
        else:
            shown_range = _positive(list(expected.values()))
        lowest = float(shown_range.min()) if shown_range.size else 1.0
        highest = float(shown_range.max()) if shown_range.size else 1.0
        floor = 10.0 ** (math.floor(math.log10(lowest)) - 1)
        any_zero = False
        x = np.arange(len(layers))
        for i, (label, arr) in enumerate(arrays.items()):
            st = series_style(styles.get(label, i) if styles else i)
            shown = np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)
            ax.plot(x, shown, color=st.color, linestyle=st.linestyle, marker=st.marker, markersize=4.5,
                    linewidth=1.4, label=_text(label), zorder=3)
            zeros = np.isfinite(arr) & (arr == 0)
            if zeros.any():
                any_zero = True
                ax.plot(x[zeros], np.full(int(zeros.sum()), floor), linestyle="none", marker=st.marker,
                        markersize=5, markerfacecolor="none", markeredgecolor=st.color, zorder=3)
        for i, (label, arr) in enumerate(expected.items()):
            st = series_style(styles.get(label, i) if styles else i)
            shown = np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)
            if np.isfinite(shown).any():
                ax.plot(x, shown, color=st.color, linestyle=_THEORY_DASHES, linewidth=0.8, marker=st.marker,
                        markersize=3, markerfacecolor="white", markeredgewidth=0.7, zorder=2)
        ax.set_yscale("log")
        top = 10.0 ** (math.log10(highest) + 0.25)
        bottom = floor / 10.0 ** 0.25 if any_zero else 10.0 ** (math.log10(lowest) - 0.25)
        ax.set_ylim(bottom, top)
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
            handles, names = ax.get_legend_handles_labels()
            if any(np.isfinite(np.where(e > 0, e, np.nan)).any() for e in expected.values()):
                handles.append(Line2D([], [], color="#555555", linestyle=_THEORY_DASHES, linewidth=0.8, marker="o",
                                      markersize=3, markerfacecolor="white", markeredgewidth=0.7))
                names.append(_text(theory_label))
            ax.legend(handles, names, title=legend_title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      frameon=False, borderaxespad=0.0)
        return to_svg(fig, salt)


def accuracy_plot(curves: Sequence[Curve], *, salt: str, styles: Mapping[str, int] | None = None) -> str:
    """Test accuracy per epoch, one line per initializer; a band spans the seeds' min..max.

    Two panels: accuracy as a fraction on 0..1 (the whole picture: a run stuck at chance shows), and the
    test error ``1 - accuracy`` on a log axis, which pulls apart runs that all end near 1.
    """
    with _style():
        fig = _figure(3.0)
        left, right = fig.subplots(1, 2)
        max_epoch = 1
        for i, c in enumerate(curves):
            st = series_style(styles.get(c.label, i) if styles else i)
            error = [max(1.0 - a, MIN_ERROR) for a in c.mean]
            for ax, ys in ((left, c.mean), (right, error)):
                ax.plot(c.epochs, ys, color=st.color, linestyle=st.linestyle, marker=st.marker, markersize=4.5,
                        linewidth=1.4, label=_text(c.label))
            if any(lo != hi for lo, hi in zip(c.low, c.high, strict=True)):
                left.fill_between(c.epochs, c.low, c.high, color=st.color, alpha=0.15, linewidth=0)
                right.fill_between(c.epochs, [max(1.0 - h, MIN_ERROR) for h in c.high],
                                   [max(1.0 - lo, MIN_ERROR) for lo in c.low], color=st.color, alpha=0.15,
                                   linewidth=0)
            max_epoch = max(max_epoch, *c.epochs) if c.epochs else max_epoch
        for ax in (left, right):
            ax.set_xlim(0.8, max_epoch + 0.2)
            ax.set_xticks(list(range(1, max_epoch + 1, max(1, math.ceil(max_epoch / 10)))))
            ax.set_xlabel("epoch")
            ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        left.set_ylim(0.0, 1.0)
        left.set_ylabel("test accuracy (fraction)")
        left.set_title("Test accuracy after each epoch", loc="left")
        right.set_yscale("log")
        right.set_ylabel("test error, 1 − accuracy (log scale)")
        right.set_title("Test error (log scale)", loc="left")
        if curves:
            right.legend(title="initializer", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                         borderaxespad=0.0)
        return to_svg(fig, salt)


MIN_ERROR = 1e-4
"""Test errors below this (a perfect epoch) are drawn at it: zero has no place on a log axis."""


MIN_NORM_SPAN = 4.0
"""A heatmap's colour scale spans at least this factor (centred on its values), so a nearly constant
panel reads as one colour instead of noise stretched over the whole colour map."""
_MISSING = "#e4e4e4"
_LEVELS = 64
"""Colours of a heatmap's colour map: enough for a smooth scale, few enough for a small vector colour bar."""
_SEAM = 0.3
"""Width (points) of each cell's outline in its own colour: hides the hairline seams viewers draw between
abutting vector cells."""
_QUAD = re.compile(r'<path d="M (\S+) (\S+) \nL (\S+) \2 \nL \3 (\S+) \nL \1 \4 \nL \1 \2 \n" '
                   r'(clip-path="[^"]*" )?style="fill: (#[0-9a-f]{6}); stroke: \6; stroke-width: ([\d.]+)"/>')


def _norm(matrices: Sequence[np.ndarray]) -> mcolors.LogNorm:
    values = _positive(list(matrices))
    if values.size == 0:
        return mcolors.LogNorm(1e-3, 1.0)
    lo, hi = float(values.min()), float(values.max())
    if hi < lo * MIN_NORM_SPAN:
        centre, half = math.sqrt(lo * hi), math.sqrt(MIN_NORM_SPAN)
        lo, hi = centre / half, centre * half
    return mcolors.LogNorm(lo, hi)


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted ``centres``: midpoints inside, half a gap beyond each end."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def heatmap_pair(panels: Sequence[tuple[str, np.ndarray, mcolors.Normalize | None]], layers: Sequence[str],
                 steps: Sequence[int], *, title: str, salt: str) -> str:
    """Side-by-side layer x step heatmaps with a log colour scale and a labelled colourbar each.

    ``panels``: ``(panel title, matrix of shape (len(layers), len(steps)), norm or None)``; None derives
    a LogNorm from the panel (:func:`shared_log_norm` makes one for several). Zero, negative or
    non-finite cells are drawn light grey. Cells are vector quads (``pcolormesh``), colour bars too, so
    the figure stays sharp at any zoom and in print.
    """
    with _style():
        height = 1.5 + 0.2 * len(layers)
        fig = _figure(height)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        s = np.asarray(steps, dtype=float) if len(steps) else np.zeros(1)
        x_edges = _edges(s)
        y_edges = np.arange(len(layers) + 1, dtype=float) - 0.5
        for k, (ax, (name, matrix, norm)) in enumerate(zip(axes, panels, strict=True)):
            cmap = matplotlib.colormaps["viridis"].resampled(_LEVELS).with_extremes(bad=_MISSING, under=_MISSING)
            data = np.ma.masked_where(~(np.isfinite(matrix) & (matrix > 0)), matrix)
            if data.shape != (len(layers), len(x_edges) - 1):
                data = np.ma.masked_all((len(layers), len(x_edges) - 1))
            ax.set_facecolor(_MISSING)
            mesh = ax.pcolormesh(x_edges, y_edges, data, cmap=cmap, norm=norm or _norm([matrix]),
                                 shading="flat", edgecolors="face", linewidth=_SEAM, antialiased=False)
            ax.set_ylim(y_edges[-1], y_edges[0])  # first layer on top
            bar = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.06, aspect=max(12.0, (height - 1.0) / 0.1))
            if bar.solids is not None:  # vector, seams covered like the cells'
                bar.solids.set_rasterized(False)
                bar.solids.set_edgecolor("face")
                bar.solids.set_linewidth(_SEAM)
            bar.set_label("variance (log scale)")
            lo, hi = mesh.norm.vmin, mesh.norm.vmax
            if lo and hi and math.log10(hi / lo) >= 1:  # decades labelled: minor labels would crowd
                bar.ax.yaxis.set_minor_formatter(NullFormatter())
            if data.count() == 0:  # no scale to show
                bar.ax.set_visible(False)
                ax.text(0.5, 0.5, "every cell zero or not finite", transform=ax.transAxes, ha="center",
                        va="center", fontsize=7.5, color="#333333")
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
