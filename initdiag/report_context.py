"""The report's context: what the template shows, as frozen dataclasses built from an ExperimentResult.

Compute (experiment, checks) -> structure (this module) -> presentation (``report.py`` + templates).
Figures are made here (``plots``) as inline SVG strings; formatting helpers live here too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import plots, report_signal

if TYPE_CHECKING:
    from .audit import AuditResult, AuditRun
    from .checks import Comparison, TheoryRow, Verdict
    from .experiment import ExperimentResult, RunResult

__all__ = [
    "MAX_HEATMAP_STEPS",
    "AccuracySection",
    "Badge",
    "ComparisonRow",
    "DataFile",
    "Figure",
    "Finding",
    "FindingGroup",
    "GridRow",
    "KeyValue",
    "LayerRow",
    "LayerTable",
    "MeanRow",
    "Method",
    "Provenance",
    "ReportContext",
    "RunRow",
    "SignalSection",
    "TheoryLine",
    "TocEntry",
    "UnitSection",
    "VerdictGrid",
    "build_audit_context",
    "build_context",
    "check_title",
    "family",
    "finite",
    "fixed",
    "fmt",
    "fmt_p",
    "fmt_seconds",
    "init_values",
    "json_safe",
    "layer_table",
]

SCHEMA_VERSION = 1
MAX_HEATMAP_STEPS = 200
"""Heatmaps show at most this many training steps (every k-th recorded step) to keep files small."""
FAMILIES: tuple[tuple[str, str], ...] = (
    ("signal-forward", "signal forward"),
    ("signal-backward", "signal backward"),
    ("symmetry", "symmetry"),
    ("dead", "dead units"),
    ("saturation", "saturation"),
    ("diverged", "diverged"),
)
"""Columns of the verdict grid: (family key, heading)."""
_SYMBOLS = {"pass": "✓", "warn": "▲", "fail": "✗", "n/a": "–"}
_RANK = {"n/a": 0, "pass": 1, "warn": 2, "fail": 3}


# -- context ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Badge:
    """A pass/warn/fail mark: a word, a colour (CSS class ``status``) and a symbol for grey print."""

    status: str
    symbol: str
    text: str

    @property
    def css(self) -> str:
        """CSS class for the status ("na" for "n/a")."""
        return "na" if self.status == "n/a" else self.status


@dataclass(frozen=True)
class Figure:
    """An inline SVG figure with its anchor id and caption."""

    id: str
    svg: str
    caption: str


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str


@dataclass(frozen=True)
class TocEntry:
    id: str
    title: str


@dataclass(frozen=True)
class GridRow:
    label: str
    cells: tuple[Badge, ...]


@dataclass(frozen=True)
class VerdictGrid:
    """Rows: initializers (one per run when seeds > 1); columns: check families."""

    row_heading: str
    columns: tuple[str, ...]
    rows: tuple[GridRow, ...]


@dataclass(frozen=True)
class RunRow:
    initializer: str
    seed: int
    test_accuracy: str
    test_loss: str
    status: Badge
    detail: str
    seconds: str


@dataclass(frozen=True)
class MeanRow:
    initializer: str
    mean: str
    ci: str
    n: int


@dataclass(frozen=True)
class ComparisonRow:
    a: str
    b: str
    test: str
    statistic: str
    p_value: str
    p_adjusted: str
    significant: bool
    detail: str


@dataclass(frozen=True)
class AccuracySection:
    runs: tuple[RunRow, ...]
    means: tuple[MeanRow, ...]
    comparisons: tuple[ComparisonRow, ...]
    figure: Figure | None


@dataclass(frozen=True)
class TheoryLine:
    run: str
    activation: str
    signal: str
    expected: str
    measured: str
    interval: str
    note: str


@dataclass(frozen=True)
class SignalSection:
    forward: Figure | None
    backward: Figure | None
    theory: tuple[TheoryLine, ...]
    heatmaps: tuple[Figure, ...]
    heatmap_note: str


@dataclass(frozen=True)
class Finding:
    """One verdict as table row / plain-language finding."""

    run: str
    check: str
    family: str
    badge: Badge
    layers: str
    p_value: str
    effect: str
    message: str
    advice: str
    phase: str


@dataclass(frozen=True)
class FindingGroup:
    run: str
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class UnitSection:
    """Verdicts of the symmetry, dead-unit and saturation checks."""

    symmetry: tuple[Finding, ...]
    dead: tuple[Finding, ...]
    saturation: tuple[Finding, ...]


@dataclass(frozen=True)
class LayerRow:
    name: str
    module: str
    depth: int
    activation: str
    forward_var: str
    backward_var: str
    weight_var: str
    weight_vs_recommended: str = ""
    """Audit: Var(W) over the Var(W) of the initializer advised for the activation, e.g. "0.167x he"."""
    init: str = ""
    """Audit: how the weight was set ("PyTorch default", "re-initialized: he", ...)."""


@dataclass(frozen=True)
class LayerTable:
    """Per-layer statistics at initialization for one run (the audit variant's main table); ``weights``:
    show the rows' ``weight_vs_recommended`` and ``init`` columns."""

    run: str
    rows: tuple[LayerRow, ...]
    weights: bool = False


@dataclass(frozen=True)
class Method:
    check: str
    title: str
    description: str
    null_hypothesis: str
    threshold: str


@dataclass(frozen=True)
class DataFile:
    name: str
    md5: str


@dataclass(frozen=True)
class Provenance:
    command: str
    date: str
    versions: str
    seeds: str
    dataset: str
    source: str
    sizes: str
    duration: str
    machine: str
    files: tuple[DataFile, ...]
    environment: tuple[KeyValue, ...]
    config: tuple[KeyValue, ...]


@dataclass(frozen=True)
class ReportContext:
    """Everything the template shows. ``kind`` is "experiment" or "audit" (no training: ``accuracy`` is
    None and ``layer_tables`` holds the per-layer table); optional sections are None or empty."""

    kind: str
    title: str
    model: str
    generated: str
    provenance: Provenance
    notices: tuple[str, ...]
    missing: tuple[str, ...]
    grid: VerdictGrid
    accuracy: AccuracySection | None
    signal: SignalSection | None
    units: UnitSection
    findings: tuple[FindingGroup, ...]
    methods: tuple[Method, ...]
    layer_tables: tuple[LayerTable, ...] = ()
    recommendation: str = ""
    """Audit: the initializer to use and the evidence (shown under the verdict summary)."""

    @property
    def toc(self) -> tuple[TocEntry, ...]:
        """The sections present, in order, with their anchor ids."""
        entries = [TocEntry("summary", "Verdict summary")]
        if self.accuracy is not None:
            entries.append(TocEntry("accuracy", "Accuracy comparison"))
        if self.layer_tables:
            entries.append(TocEntry("layers", "Layers at initialization"))
        if self.signal is not None:
            entries.append(TocEntry("signal", "Signal propagation"))
        entries += [TocEntry("units", "Symmetry, dead and saturated units"),
                    TocEntry("findings", "Findings and advice"), TocEntry("methods", "Methods"),
                    TocEntry("provenance", "Provenance")]
        return tuple(entries)


# -- formatting (deterministic) ------------------------------------------------------------------------
def finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf -> None, numpy scalars/arrays -> Python, tuples -> lists, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(asdict(obj))
    return str(obj)


def fmt(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits; "—" for None/NaN, "inf"/"-inf" kept as words."""
    if x is None:
        return "—"
    value = float(x)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def fixed(x: Any, decimals: int = 4) -> str:
    """``x`` with a fixed number of decimals (aligned columns of accuracies and losses); "—" for None/NaN."""
    value = finite(x)
    return "—" if value is None else f"{value:.{decimals}f}"


def fmt_p(p: Any) -> str:
    """A p-value: 3 significant digits, scientific below 0.001, "< 1e-300" at underflow."""
    value = finite(p)
    if value is None:
        return "—"
    if value == 0:
        return "< 1e-300"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def fmt_seconds(s: float) -> str:
    total = round(s)
    return f"{s:.1f} s ({total // 3600}:{total // 60 % 60:02d}:{total % 60:02d})"


def _layers_text(layers: Sequence[str], limit: int = 8) -> str:
    if not layers:
        return "—"
    shown = ", ".join(layers[:limit])
    return shown + (f", … (+{len(layers) - limit} more)" if len(layers) > limit else "")


def _badge(status: str) -> Badge:
    status = status if status in _SYMBOLS else "n/a"
    return Badge(status, _SYMBOLS[status], status)


def family(verdict: Verdict) -> str:
    """The verdict-grid column of a verdict: ``signal-forward``/``signal-backward`` for the signal checks
    (by direction), else the verdict's family (``symmetry``, ``dead``, ``saturation``, ``diverged``)."""
    fam = getattr(verdict, "family", None) or _guess_family(verdict.check)
    if fam == "signal":
        return "signal-backward" if (verdict.signal or "").lower().startswith(("back", "grad")) \
            else "signal-forward"
    return str(fam)


def _guess_family(check: str) -> str:
    check = check.lower()
    for key, words in (("signal", ("signal", "vanish", "explod", "healthy", "propagation")),
                       ("symmetry", ("symmetr",)), ("dead", ("dead",)), ("saturation", ("satur",)),
                       ("diverged", ("diverg",))):
        if any(w in check for w in words):
            return key
    return check


def check_title(verdict: Verdict) -> str:
    """How a verdict's check is named in tables: ``vanishing (forward)``, ``dead``, ..."""
    return f"{verdict.check} ({verdict.signal})" if verdict.signal else verdict.check


# -- building ------------------------------------------------------------------------------------------
def build_context(result: ExperimentResult) -> ReportContext:
    """Turn an experiment result into the report's context (figures included)."""
    runs = result.runs
    labels = list(dict.fromkeys(r.label for r in runs))
    styles = {label: i for i, label in enumerate(labels)}
    multi = result.config.seeds > 1 or len(runs) > len(labels)
    model = result.config.model.label
    return ReportContext(
        kind="experiment",
        title=f"initdiag report: {model}",
        model=model,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        provenance=_provenance(result),
        notices=_notices(result),
        missing=tuple(result.missing),
        grid=_grid(runs, multi),
        accuracy=_accuracy(result, labels, styles, multi),
        signal=_signal(runs, labels, styles, multi),
        units=_units(runs, multi),
        findings=_findings(runs, multi),
        methods=_methods(),
    )


def _run_label(run: RunResult, multi: bool) -> str:
    return run.name if multi else run.label


def _notices(result: ExperimentResult) -> tuple[str, ...]:
    prov = result.provenance
    out: list[str] = []
    if prov.kind == "bundled":
        out.append(f"This report used the bundled MNIST sample shipped with initdiag ({prov.train_size:,} "
                   f"training and {prov.test_size:,} test images), not the full MNIST data set: accuracies "
                   "are lower and noisier than on full MNIST.")
    if prov.notice:
        out.append(prov.notice)
    return tuple(out)


def _run_facts(result: ExperimentResult | AuditResult) -> dict[str, Any]:
    """The provenance fields a report and an audit share: command, date, versions, duration, machine,
    environment and configuration."""
    env = result.environment
    versions = ", ".join(f"{k} {env[k]}" for k in ("initdiag", "torch", "python") if k in env)
    return {
        "command": result.command,
        "date": result.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": versions or "—",
        "duration": fmt_seconds(result.seconds),
        "machine": ", ".join(env[k] for k in ("platform", "device", "gpu") if k in env) or "—",
        "environment": tuple(KeyValue(k, str(v)) for k, v in env.items()),
        "config": tuple(KeyValue(k, v if isinstance(v, str) else json.dumps(json_safe(v), sort_keys=True))
                        for k, v in result.config.to_json().items()),
    }


def _provenance(result: ExperimentResult) -> Provenance:
    prov = result.provenance
    return Provenance(
        **_run_facts(result),
        seeds=", ".join(map(str, result.config.run_seeds)),
        dataset=prov.name,
        source=f"{prov.source} ({prov.kind})",
        sizes=f"{prov.train_size:,} training, {prov.test_size:,} test images",
        files=tuple(DataFile(k, v) for k, v in sorted(prov.files.items())),
    )


def _grid(runs: Sequence[RunResult], multi: bool) -> VerdictGrid:
    known = [k for k, _ in FAMILIES]
    extra = list(dict.fromkeys(family(v) for r in runs for v in r.verdicts if family(v) not in known))
    keys = known + extra
    headings = [h for _, h in FAMILIES] + extra
    rows = []
    for run in runs:
        worst = dict.fromkeys(keys, "n/a")
        for v in run.verdicts:
            key = family(v)
            if _RANK.get(v.status, 0) > _RANK[worst[key]]:
                worst[key] = v.status
        if worst["diverged"] == "n/a":
            worst["diverged"] = "fail" if run.diverged_step is not None else "pass"
        rows.append(GridRow(_run_label(run, multi), tuple(_badge(worst[k]) for k in keys)))
    return VerdictGrid("run" if multi else "initializer", tuple(headings), tuple(rows))


def _accuracy(result: ExperimentResult, labels: list[str], styles: dict[str, int],
              multi: bool) -> AccuracySection:
    rows = tuple(
        RunRow(r.label, r.seed, fixed(r.test_accuracy), fixed(r.test_loss),
               Badge("fail", _SYMBOLS["fail"], "diverged") if r.status == "diverged"
               else Badge("pass", _SYMBOLS["pass"], "ok"),
               f"diverged at step {r.diverged_step}" if r.diverged_step is not None else "",
               f"{r.seconds:.1f}")
        for r in result.runs)
    means = tuple(
        MeanRow(label, fixed(s.get("mean")), f"[{fixed(s.get('ci_low'))}, {fixed(s.get('ci_high'))}]",
                int(s.get("n", 0)))
        for label, s in result.accuracy.items()) if multi else ()
    comparisons = tuple(_comparison(c) for c in result.comparisons)
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
    return AccuracySection(rows, means, comparisons, figure)


def _comparison(c: Comparison) -> ComparisonRow:
    return ComparisonRow(c.a, c.b, c.test, fmt(c.statistic), fmt_p(c.p_value), fmt_p(c.p_adjusted),
                         bool(c.significant), c.detail)


def init_values(frame: pd.DataFrame, kind: str) -> dict[str, float]:
    """Per layer: the ``var`` of ``kind`` at the first training step (step 0, phase "train")."""
    if frame.empty:
        return {}
    sub = frame[(frame["phase"] == "train") & (frame["kind"] == kind) & (frame["stat"] == "var")]
    if sub.empty:
        return {}
    sub = sub[sub["step"] == sub["step"].min()]
    return {str(k): float(v) for k, v in sub.groupby("layer", observed=True, sort=False)["value"].first().items()}


def _layer_order(runs: Sequence[RunResult]) -> list[str]:
    """Conv/Linear call sites in execution order (all recorded layers when there are none)."""
    weights = list(dict.fromkeys(la.name for r in runs for la in r.layers if la.role == "weight"))
    return weights or list(dict.fromkeys(la.name for r in runs for la in r.layers))


def _heat_steps(frame: pd.DataFrame) -> np.ndarray:
    """The training steps a heatmap shows: every k-th recorded step, at most ``MAX_HEATMAP_STEPS``."""
    if frame.empty:
        return np.zeros(0, dtype=np.int64)
    steps = np.unique(frame.loc[frame["phase"] == "train", "step"].to_numpy())
    return steps[:: max(1, math.ceil(len(steps) / MAX_HEATMAP_STEPS))]


def _matrix(frame: pd.DataFrame, kind: str, layers: list[str], steps: np.ndarray) -> np.ndarray:
    """Layer x step matrix of the ``var`` of ``kind`` during training (NaN where not recorded)."""
    if frame.empty or len(steps) == 0:
        return np.full((len(layers), len(steps)), np.nan)
    sub = frame[(frame["phase"] == "train") & (frame["kind"] == kind) & (frame["stat"] == "var")
                & frame["step"].isin(steps)]
    table = sub.pivot_table(index="layer", columns="step", values="value", aggfunc="first", observed=True)
    table.index = table.index.astype(str)
    return table.reindex(index=layers, columns=steps).to_numpy(dtype=float)


def _signal(runs: Sequence[RunResult], labels: list[str], styles: dict[str, int],
            multi: bool, over_training: bool = True) -> SignalSection | None:
    if not runs:
        return None
    layers = _layer_order(runs)
    names = report_signal.layer_labels(runs, layers)
    figures: list[Figure | None] = []
    for kind, what, fid, fan, anchor in (
            ("forward", "Activation variance", "fig-forward", "fan_in", "first"),
            ("backward", "Gradient variance (dL/d output)", "fig-backward", "fan_out", "last")):
        values: dict[str, list[float | None]] = {}
        expected: dict[str, list[float | None]] = {}
        for label in labels:
            per_seed = [init_values(r.frame, kind) for r in runs if r.label == label]
            values[label] = [_mean_or_none([p.get(name) for p in per_seed]) for name in layers]
            first = next(r for r in runs if r.label == label)
            expected[label] = report_signal.theory_profile(first, layers, kind, values[label])
        svg = plots.layer_profile(values, names, title=f"{what} per layer at initialization (step 0)",
                                  ylabel="variance (log scale)", salt=fid, styles=styles,
                                  xlabel="Conv/Linear layer (execution order)", theory=expected,
                                  theory_label="theory (thin dashed)")
        figures.append(Figure(fid, svg, f"{what} of each Conv/Linear layer's output at the first training step"
                              + (", mean over seeds" if multi else "") + "; log scale. Thin dashed lines with "
                              "hollow markers: the variance theory expects from each initializer (gain per layer "
                              f"{fan} x Var(W) x c, c = 1/2 after ReLU, 1 linear), started from the measured "
                              f"value at the {anchor} layer."))
    firsts = [next(r for r in runs if r.label == label) for label in labels]
    steps = [_heat_steps(r.frame) if over_training else np.zeros(0, np.int64) for r in firsts]  # audit: none
    mats = {kind: [_matrix(r.frame, kind, layers, st) for r, st in zip(firsts, steps, strict=True)]
            for kind in ("forward", "backward")}
    heatmaps = []
    for i, run in enumerate(firsts):
        if len(steps[i]) == 0:
            continue
        fid = f"fig-heat-{i}"
        svg = plots.heatmap_pair([("activation variance", mats["forward"][i], None),
                                  ("gradient variance", mats["backward"][i], None)],
                                 names, [int(s) for s in steps[i]], title=run.name, salt=fid)
        heatmaps.append(Figure(fid, svg, f"{run.name}: variance per layer over training."))
    theory = tuple(_theory(t, _run_label(r, multi)) for r in runs for t in r.theory)
    note = (f"Each heatmap shows at most {MAX_HEATMAP_STEPS} training steps (every k-th recorded step); "
            "each panel has its own log colour scale; grey cells are zero or not finite.")
    return SignalSection(figures[0], figures[1], theory, tuple(heatmaps), note)


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _theory(t: TheoryRow, run: str) -> TheoryLine:
    lo, hi = finite(t.gain_low), finite(t.gain_high)
    interval = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None or hi is not None else "—"
    return TheoryLine(run, t.activation, t.signal, fmt(t.expected_gain), fmt(t.measured_gain), interval, t.note)


def _finding(v: Verdict, run: str) -> Finding:
    effect = ", ".join(f"{k} = {fmt(x)}" for k, x in v.effect.items() if finite(x) is not None or
                       (isinstance(x, float) and math.isinf(x))) or "—"
    return Finding(run, check_title(v), family(v), _badge(v.status), _layers_text(list(v.layers)), fmt_p(v.p_value),
                   effect, v.message, v.advice or "", v.phase)


def _units(runs: Sequence[RunResult], multi: bool) -> UnitSection:
    found = [_finding(v, _run_label(r, multi)) for r in runs for v in r.verdicts]
    return UnitSection(*(tuple(f for f in found if f.family == k) for k in ("symmetry", "dead", "saturation")))


def _findings(runs: Sequence[RunResult], multi: bool) -> tuple[FindingGroup, ...]:
    groups = []
    for run in runs:
        bad = [_finding(v, _run_label(run, multi)) for v in run.verdicts if v.status != "pass"]
        bad.sort(key=lambda f: -_RANK[f.badge.status])
        if bad:
            groups.append(FindingGroup(_run_label(run, multi), tuple(bad)))
    return tuple(groups)


def _methods() -> tuple[Method, ...]:
    from .checks import METHODS

    return tuple(Method(m.check, m.title, m.description, m.null_hypothesis, str(m.threshold)) for m in METHODS)


def layer_table(run: RunResult) -> LayerTable:
    """Per-layer variances at initialization of one run (for the audit variant)."""
    fwd, bwd, wgt = (init_values(run.frame, k) for k in ("forward", "backward", "weight"))
    return LayerTable(run.name, tuple(
        LayerRow(layer.name, layer.module, layer.depth, layer.activation or "—", fmt(fwd.get(layer.name)),
                 fmt(bwd.get(layer.name)), fmt(wgt.get(layer.name))) for layer in run.layers))


# == audit variant =========================================================================================
# The report of `initdiag audit` (no training): built from an AuditResult, rendered by the same templates.
def build_audit_context(result: AuditResult) -> ReportContext:
    """The audit variant: no accuracy section, a per-layer table per audited initialization, the
    recommendation under the verdict summary, no heatmaps over training (nothing trains)."""
    from dataclasses import replace

    runs = result.runs
    labels = list(dict.fromkeys(r.label for r in runs))
    signal = _signal(runs, labels, {label: i for i, label in enumerate(labels)}, False, over_training=False)
    if signal is not None:
        signal = replace(signal, heatmaps=(), heatmap_note="An audit does not train: no variance over training.")
    rec = result.recommendation
    return ReportContext(
        kind="audit",
        title=f"initdiag audit: {result.model}",
        model=result.model,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        provenance=_audit_provenance(result),
        notices=(result.inputs.notice,) if result.inputs.notice else (),
        missing=(),
        grid=_grid(runs, False),
        accuracy=None,
        signal=signal,
        units=_units(runs, False),
        findings=_findings(runs, False),
        methods=_methods(),
        layer_tables=tuple(_audit_layer_table(run) for run in runs),
        recommendation=rec.evidence,
    )


_INPUT_KINDS = {"normal": "standard normal inputs", "tokens": "random token ids", "mnist": "MNIST images",
                "example": "the caller's example input"}


def _audit_provenance(result: AuditResult) -> Provenance:
    inputs = result.inputs
    return Provenance(
        **_run_facts(result),
        seeds=str(result.config.seed),
        dataset=_INPUT_KINDS.get(inputs.kind, inputs.kind),
        source=inputs.source,
        sizes=inputs.description,
        files=tuple(DataFile(k, v) for k, v in sorted(inputs.files.items())),
    )


def _audit_layer_table(run: AuditRun) -> LayerTable:
    """:func:`layer_table` with each weight against the initializer advised for its activation."""
    from dataclasses import replace

    weights = {w.layer: w for w in run.weights}
    infos = {la.name: la for la in run.layers}
    rows = []
    for row in layer_table(run).rows:
        info = infos.get(row.name)
        w = weights.get(info.module_name) if info is not None and info.role == "weight" else None
        if w is None:
            rows.append(row)
            continue
        versus = f"{fmt(w.ratio)}x {w.recommended}" if w.ratio is not None else "—"
        how = (f"re-initialized: {run.label}" if w.reinitialized else "PyTorch default" if w.default_init
               else "as given")
        if not w.reinitialized and run.label != "keep":
            how += " (kept: only Conv/Linear weights are re-initialized)"
        rows.append(replace(row, weight_vs_recommended=versus, init=how))
    return LayerTable(run.label, tuple(rows), weights=True)
