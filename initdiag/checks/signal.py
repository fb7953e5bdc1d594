"""Signal propagation: the log-variance of Conv/Linear outputs (or of dL/dy) fitted against depth.

Vanishing / exploding / no signal, from a straight line through the per-layer log-variances at the first
training step (:func:`signal_fit`), judged by :func:`signal_verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..structure.layers import WEIGHT_LAYER_TYPES
from ..vocab import HEALTHY, CheckName, Family, Outcome, Status
from .distributions import line_fit, t_ppf
from .evidence import RunEvidence, init_advice
from .verdict import Thresholds, Verdict

__all__ = ["SignalFit", "SignalRows", "earliest_step", "shallow_fall", "signal_effect", "signal_fit", "signal_verdict"]

WEIGHT_MODULES = frozenset(t.__name__ for t in WEIGHT_LAYER_TYPES)
_DEFAULT = Thresholds()
_NAN = float("nan")


@dataclass(frozen=True)
class SignalFit:
    """Per-layer variances of one signal at one step and the straight line through their logs.

    ``layers``/``depths``/``variances``: every Conv/Linear call site in execution order. Propagation order
    is execution order for ``forward`` and the reverse for ``backward`` (dL/dy flows from the loss). The
    fit is ``log var_d = intercept + slope * d`` (ordinary least squares, ``scipy.stats.linregress``)
    over ``fitted``: the layers before the first one, in propagation order, that is non-finite or
    carries no signal (``var <= no_signal_rel * max(mean_sq, floor)``). ``slope_low``/``slope_high``:
    the t-based ``level`` interval ``slope +- t_{1-alpha/2, k-2} * stderr`` (NaN with fewer than 3
    points); ``p_value``: two-sided test of slope 0. ``gain`` is the per-layer variance factor in the
    direction of propagation, ``exp(slope)`` forward and ``exp(-slope)`` backward, with its interval;
    ``change_fitted = gain ** (n_layers - 1)`` is the change across the whole network that the fit
    implies; ``change_raw`` = last / first variance in propagation order. NaN where undefined.
    ``per_sample``: the fit is on ``var x size`` (elements per sample of the output: the per-sample energy,
    which He init preserves backward across width changes and max-pooling) instead of ``var``.
    """

    kind: str
    step: int
    phase: str
    layers: tuple[str, ...]
    depths: tuple[int, ...]
    variances: tuple[float, ...]
    no_signal: tuple[str, ...]
    nonfinite: tuple[str, ...]
    fitted: tuple[str, ...]
    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    p_value: float
    gain: float
    gain_low: float
    gain_high: float
    change_fitted: float
    change_raw: float
    level: float
    per_sample: bool = False

    @property
    def n_layers(self) -> int:
        """Number of Conv/Linear layers of the signal (not only the fitted ones)."""
        return len(self.layers)

    @property
    def lost_at(self) -> str | None:
        """First layer, in propagation order, that is non-finite or carries no signal."""
        order = self.layers if self.kind != "backward" else self.layers[::-1]
        bad = set(self.no_signal) | set(self.nonfinite)
        return next((name for name in order if name in bad), None)

    @property
    def log10_change(self) -> float:
        """``(n_layers - 1) * log10(gain)``: the fitted change in decades (finite where the change overflows)."""
        if not self.gain > 0:
            return _NAN
        return (self.n_layers - 1) * math.log10(self.gain)


@dataclass(frozen=True)
class SignalRows:
    """The ``var`` and ``mean_sq`` rows of one signal (``kind`` at ``phase``) of a frame, as arrays: filtered
    once, then fitted over any chain or step by :func:`signal_fit` without touching the frame again.

    ``layer`` holds codes into ``names``; ``weight_like[code]`` says whether the layer is a Conv/Linear call
    site by default (its module is one, or it has ``weight`` rows)."""

    kind: str
    phase: str
    names: tuple[str, ...]
    weight_like: np.ndarray
    layer: np.ndarray
    depth: np.ndarray
    step: np.ndarray
    is_var: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, kind: str, phase: str) -> SignalRows:
        layers = frame["layer"].astype("category")
        names = tuple(str(c) for c in layers.cat.categories)
        stat = frame["stat"].astype(str) if frame["stat"].dtype != "category" else frame["stat"]
        mask = ((frame["kind"] == kind) & (frame["phase"] == phase) & stat.isin(["var", "mean_sq"])).to_numpy()
        codes = layers.cat.codes.to_numpy()
        weight_names = set(frame.loc[frame["kind"] == "weight", "layer"].astype(str))
        modules = frame["module"].astype(str).to_numpy()
        weight_like = np.zeros(len(names), bool)
        weight_like[np.unique(codes[mask & np.isin(modules, list(WEIGHT_MODULES))])] = True
        weight_like |= np.array([n.split("@")[0] in weight_names for n in names], bool)
        return cls(kind, phase, names, weight_like, codes[mask].astype(np.int64),
                   frame["depth"].to_numpy()[mask].astype(np.int64), frame["step"].to_numpy()[mask].astype(np.int64),
                   (stat.to_numpy()[mask] == "var"), frame["value"].to_numpy(np.float64)[mask])

    def table(self, step: int, layers: Sequence[str] | None
              ) -> tuple[tuple[str, ...], tuple[int, ...], np.ndarray, np.ndarray]:
        """``(names, depths, var, mean_sq)`` of the layers (default: the Conv/Linear call sites) at ``step``,
        ordered by (depth, name), each statistic's first row where a layer has several; a statistic a layer
        lacks is NaN (``mean_sq`` is 0 when no layer has one)."""
        if layers is None:
            keep = self.weight_like
        else:
            keep = np.zeros(len(self.names), bool)
            wanted = set(layers)
            keep[[i for i, n in enumerate(self.names) if n in wanted]] = True
        sel = np.flatnonzero((self.step == step) & keep[self.layer])
        codes = self.layer[sel]
        present, first = np.unique(codes, return_index=True)
        depth_of = self.depth[sel][first]
        var = np.full(len(present), _NAN)
        msq = np.full(len(present), _NAN)
        if not (~self.is_var[sel]).any():
            msq[:] = 0.0
        for target, want in ((var, True), (msq, False)):
            pick = sel[self.is_var[sel] == want]
            found, where = np.unique(self.layer[pick], return_index=True)
            target[np.searchsorted(present, found)] = self.value[pick][where]
        order = sorted(range(len(present)), key=lambda i: (int(depth_of[i]), self.names[present[i]]))
        names = tuple(self.names[present[i]] for i in order)
        return names, tuple(int(depth_of[i]) for i in order), var[order], msq[order]


def earliest_step(frame: pd.DataFrame, kind: str, phase: str) -> int | None:
    """First step of ``phase`` with ``kind`` rows, or None."""
    steps = frame.loc[(frame["kind"] == kind) & (frame["phase"] == phase), "step"]
    return int(steps.min()) if len(steps) else None


def signal_fit(frame: pd.DataFrame | SignalRows, kind: str = "forward", step: int | None = 0, phase: str = "train", *,
               layers: Sequence[str] | None = None, alpha: float = _DEFAULT.alpha,
               no_signal_rel: float = _DEFAULT.no_signal_rel,
               no_signal_floor: float = _DEFAULT.no_signal_floor,
               sizes: Mapping[str, float] | None = None) -> SignalFit:
    """Fit ``log var`` of the Conv/Linear outputs (``kind="forward"``) or of dL/dy (``"backward"``) vs depth.

    ``step=None`` takes the earliest step of ``phase``. ``layers`` names the Conv/Linear call sites
    (default: rows whose module is Conv/Linear or that have ``weight`` rows). ``sizes`` (layer -> elements
    per sample) switches to per-sample energy ``var x size`` when it covers every layer. See :class:`SignalFit`.
    """
    rows = frame if isinstance(frame, SignalRows) else SignalRows.of(frame, kind, phase)
    if (rows.kind, rows.phase) != (kind, phase):
        raise ValueError(f"rows of {rows.kind!r} at {rows.phase!r} given for a fit of {kind!r} at {phase!r}")
    if step is None:
        step = int(rows.step.min()) if len(rows.step) else 0
    names, depths, var, msq = rows.table(step, layers)
    per_sample = bool(sizes) and all(n in sizes for n in names)  # type: ignore[operator]
    scale = np.array([sizes[n] for n in names], np.float64) if per_sample and sizes else np.ones(len(names))
    finite = np.isfinite(var) & np.isfinite(msq)
    with np.errstate(invalid="ignore"):
        silent = finite & (var <= no_signal_rel * np.maximum(msq, no_signal_floor))
    sign = -1.0 if kind == "backward" else 1.0
    order = np.arange(len(names))[::-1] if kind == "backward" else np.arange(len(names))
    good = finite[order] & ~silent[order]
    k = int(np.argmin(good)) if not good.all() else len(order)
    idx = np.sort(order[:k])
    slope = intercept = low = high = p = _NAN
    if len(idx) >= 2:
        x = idx.astype(np.float64)
        y = np.log(var[idx] * scale[idx])
        if len(idx) >= 3:
            res = line_fit(x, y)
            slope, intercept, p = float(res.slope), float(res.intercept), float(res.pvalue)
            stderr = float(res.stderr)
            if not math.isfinite(stderr):  # scipy's r is 0/0 for an exactly constant y: the fit is exact
                resid = y - (intercept + slope * x)
                stderr = math.sqrt(float(resid @ resid) / (len(idx) - 2) / float(((x - x.mean()) ** 2).sum()))
                p = 1.0 if slope == 0 else p
            half = t_ppf(1 - alpha / 2, len(idx) - 2) * stderr
            low, high = slope - half, slope + half
        else:
            slope = float(y[1] - y[0]) / float(x[1] - x[0])
            intercept = float(y[0] - slope * x[0])
    gain, g1, g2 = (math.exp(sign * s) if math.isfinite(s) else _NAN for s in (slope, low, high))
    gain_low, gain_high = (g1, g2) if sign > 0 else (g2, g1)
    with np.errstate(over="ignore", invalid="ignore"):
        change_fitted = float(np.exp((len(names) - 1) * math.log(gain))) if gain > 0 else _NAN
        value = var * scale
        first, last = (value[order[0]], value[order[-1]]) if len(order) else (_NAN, _NAN)
        change_raw = float(last / first) if finite[order[:1]].all() and first > 0 else _NAN
    return SignalFit(
        kind=kind, step=step, phase=phase, layers=names, depths=depths, variances=tuple(map(float, var)),
        no_signal=tuple(n for n, s in zip(names, silent, strict=True) if s),
        nonfinite=tuple(n for n, f in zip(names, finite, strict=True) if not f),
        fitted=tuple(names[i] for i in idx), slope=slope, intercept=intercept, slope_low=low,
        slope_high=high, p_value=p, gain=gain, gain_low=gain_low, gain_high=gain_high,
        change_fitted=change_fitted, change_raw=change_raw, level=1 - alpha, per_sample=per_sample,
    )


def shallow_fall(th: Thresholds) -> str:
    """Why a fall short of ``th.vanishing_fail_factor`` warns instead of failing."""
    return (f" A fall short of {th.vanishing_fail_factor:g}x warns, not fails: the optimizer recovers a scale this "
            "deep (a normalization or the loss rescales it; in a ReLU net the forward and backward falls cancel "
            "in the weight gradients), and He et al. (2015, Fig. 3) trained a ReLU net through ~5e-7, slower, "
            "while ~2e-9 did not learn.")


def _at_least(x: float, bound: float) -> bool:
    """``x >= bound``, counting an ``x`` equal to ``bound`` up to float rounding (relative 1e-9) as equal, so
    a change exactly at a threshold gets one verdict whatever the variances' scale (rescaling rounds the
    fitted change a few ulps either way)."""
    return x >= bound or math.isclose(x, bound, rel_tol=1e-9)


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


def _change_text(fit: SignalFit) -> str:
    if fit.gain > 0 and not math.isfinite(fit.change_fitted):
        return f"1e{fit.log10_change:.0f}"
    return _g(fit.change_fitted)


def _describe(fit: SignalFit, what: str) -> str:
    verb = "shrinks" if fit.gain < 1 else "grows"
    ci = (f" ({fit.level:.0%} CI {_g(fit.gain_low)}-{_g(fit.gain_high)})"
          if math.isfinite(fit.gain_low) else " (no interval with fewer than 3 layers)")
    span = f"'{fit.fitted[0]}' to '{fit.fitted[-1]}'"
    return (f"{what} {verb} by a factor of {_g(fit.gain)} per layer{ci}, fitted over {len(fit.fitted)} "
            f"Conv/Linear layers ({span}): a change of {_change_text(fit)} across the {fit.n_layers} layers "
            f"(raw first-to-last {_g(fit.change_raw)}).")


def signal_effect(fit: SignalFit) -> dict[str, float | None]:
    """The numbers a signal verdict reports."""
    return {"gain": fit.gain, "gain_low": fit.gain_low, "gain_high": fit.gain_high,
            "change": fit.change_fitted, "log10_change": fit.log10_change, "change_raw": fit.change_raw,
            "slope": fit.slope, "n_layers": float(fit.n_layers), "n_fitted": float(len(fit.fitted))}


def signal_verdict(fit: SignalFit, ev: RunEvidence, th: Thresholds = _DEFAULT,
                   expected: float | None = None, extra: str = "") -> Verdict | None:
    """Vanishing / exploding / no_signal / healthy for one signal (None when it was not recorded).

    Rules, with ``C = th.change_factor``: the first layer (in propagation order) non-finite ->
    ``exploding`` (overflow); a layer without signal -> ``vanishing`` if the layers before it already
    fit a vanishing trend, else ``no_signal``; otherwise ``exploding``/``vanishing`` when
    ``change_fitted >= C`` / ``<= 1/C`` and the slope's interval excludes 0 (``warn`` if it does not);
    with 2 layers (no interval) the raw change decides: fail beyond ``few_layers_factor``, warn beyond
    ``C``. A fall fails only from ``th.vanishing_fail_factor`` on (``V``, 1e8: He et al. 2015) and warns
    between ``C`` and ``V``. Everything else is ``healthy``. A backward trend measured per element (layer sizes unknown,
    ``fit.per_sample`` false) only warns: per-element dL/dy variance changes with the layer sizes.
    """
    if fit.n_layers == 0:
        return None
    label = "Forward" if fit.kind == "forward" else "Backward"
    measure = "per-sample energy (variance x elements)" if fit.per_sample else "variance"
    what = (f"{label}: the {measure} of the Conv/Linear outputs" if fit.kind == "forward"
            else f"{label}: the {measure} of the gradient dL/dy, from the output toward the input,")
    # Per-element dL/dy variance changes with layer size (width, pooling) even under He init: without the
    # sizes, a backward trend in a network with conv layers cannot be told apart from that, so it only warns.
    unsure = fit.kind == "backward" and not fit.per_sample
    effect = {**signal_effect(fit), "expected_gain": expected}
    advice = init_advice(ev)

    def make(check: str, status: Status, layers: tuple[str, ...], message: str,
             p: float | None = None, adv: str | None = advice) -> Verdict:
        return Verdict(CheckName.SIGNAL, fit.kind, status.value, layers, p, effect, message + extra, adv,
                       outcome=check, family=Family.SIGNAL)

    lost = fit.lost_at
    if lost is not None and lost in fit.nonfinite:
        before = _describe(fit, what) + " " if len(fit.fitted) >= 3 else f"{label}: "
        return make(Outcome.EXPLODING, Status.FAIL, (lost,),
                    f"{before}The variance is inf/NaN (overflow) at layer '{lost}' already at initialization "
                    f"(step {fit.step}).")
    p = fit.p_value if math.isfinite(fit.p_value) else None
    ends = (fit.fitted[0], fit.fitted[-1]) if fit.fitted else ()
    shrinking = _at_least(1 / th.change_factor, fit.change_fitted)
    growing = _at_least(fit.change_fitted, th.change_factor)
    sure_down, sure_up = fit.gain_high < 1, fit.gain_low > 1  # False when NaN (fewer than 3 layers)
    if lost is not None:
        where = (f"no signal (variance 0 or at float rounding level) in {len(fit.no_signal)} of "
                 f"{fit.n_layers} layers")
        if len(fit.fitted) >= 3 and shrinking and sure_down:
            return make(Outcome.VANISHING, Status.FAIL, (fit.fitted[0], lost),
                        f"{_describe(fit, what)} The signal is lost from layer '{lost}' on: {where}.", p)
        return make(Outcome.NO_SIGNAL, Status.FAIL, fit.no_signal,
                    f"{label}: {where}, starting at layer '{lost}'; nothing propagates past it.")
    if len(fit.fitted) < 2:
        return make(HEALTHY, Status.PASS, (), f"{label}: a single Conv/Linear layer, nothing to compare.",
                    adv=None)
    text = _describe(fit, what)
    if len(fit.fitted) == 2:
        raw = fit.change_raw
        big = max(raw, 1 / raw) if raw > 0 else math.inf
        check = Outcome.EXPLODING if raw > 1 else Outcome.VANISHING
        text += " With 2 layers there is no interval: the raw change decides."
        fail_at = th.few_layers_factor if raw > 1 else max(th.few_layers_factor, th.vanishing_fail_factor)
        if _at_least(big, fail_at):
            return make(check, Status.FAIL, ends, text)
        if raw < 1 and _at_least(big, th.few_layers_factor):
            return make(check, Status.WARN, ends, text + shallow_fall(th))
        if _at_least(big, th.change_factor):
            return make(check, Status.WARN, ends, text)
        return make(HEALTHY, Status.PASS, (), text, adv=None)
    if growing or shrinking:
        check = Outcome.EXPLODING if growing else Outcome.VANISHING
        if (sure_up if growing else sure_down) and unsure:
            return make(check, Status.WARN, ends, text + " Measured per element: the layer sizes were not "
                        "recorded, so changes of width or spatial size (pooling) are not accounted for.", p)
        if shrinking and sure_down and not _at_least(1 / th.vanishing_fail_factor, fit.change_fitted):
            return make(check, Status.WARN, ends, text + shallow_fall(th), p)
        if sure_up if growing else sure_down:
            return make(check, Status.FAIL, ends, text, p)
        return make(check, Status.WARN, ends, text + " The gain's interval includes 1, so this is uncertain.", p)
    return make(HEALTHY, Status.PASS, (), text + f" Within the {th.change_factor:g}x threshold.", p, adv=None)
