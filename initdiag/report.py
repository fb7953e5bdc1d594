"""The report: a context of frozen dataclasses -> ``templates/report.html.j2`` -> one self-contained HTML
file -> PDF (WeasyPrint), plus the sidecars ``summary.json`` and ``series.csv``.

The only module that imports jinja2 and weasyprint. Rendering is reproducible: the same result gives
byte-identical HTML except the single line that carries the rendering time (``class="generated"``).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from . import __version__, plots
from .errors import OutputError, UsageError

if TYPE_CHECKING:
    from .checks import Comparison, TheoryRow, Verdict
    from .experiment import ExperimentResult, RunResult

__all__ = [
    "MAX_HEATMAP_STEPS",
    "SCHEMA_VERSION",
    "AccuracySection",
    "Badge",
    "ComparisonRow",
    "DataFile",
    "FetchRefused",
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
    "build_context",
    "check_title",
    "family",
    "layer_table",
    "pdf_bytes",
    "render_html",
    "summary_json",
    "write_pdf",
    "write_report",
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
_PAPER_SIZES = {"a4": "A4", "letter": "letter"}
_TICKS = re.compile(r"`([^`<>]+)`")


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


@dataclass(frozen=True)
class LayerTable:
    """Per-layer statistics at initialization for one run (the audit variant's main table)."""

    run: str
    rows: tuple[LayerRow, ...]


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
def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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
    value = _finite(x)
    return "—" if value is None else f"{value:.{decimals}f}"


def fmt_p(p: Any) -> str:
    """A p-value: 3 significant digits, scientific below 0.001, "< 1e-300" at underflow."""
    value = _finite(p)
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


def _provenance(result: ExperimentResult) -> Provenance:
    env = result.environment
    prov = result.provenance
    versions = ", ".join(f"{k} {env[k]}" for k in ("initdiag", "torch", "python") if k in env)
    machine = ", ".join(env[k] for k in ("platform", "device", "gpu") if k in env) or "—"
    seeds = result.config.run_seeds
    config = tuple(KeyValue(k, v if isinstance(v, str) else json.dumps(_clean(v), sort_keys=True))
                   for k, v in result.config.to_json().items())
    return Provenance(
        command=result.command,
        date=result.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        versions=versions or "—",
        seeds=", ".join(map(str, seeds)),
        dataset=prov.name,
        source=f"{prov.source} ({prov.kind})",
        sizes=f"{prov.train_size:,} training, {prov.test_size:,} test images",
        duration=fmt_seconds(result.seconds),
        machine=machine,
        files=tuple(DataFile(k, v) for k, v in sorted(prov.files.items())),
        environment=tuple(KeyValue(k, str(v)) for k, v in env.items()),
        config=config,
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
               f"loss not finite at step {r.diverged_step}" if r.diverged_step is not None else "",
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
                    + (" (mean over seeds; the band spans min to max)." if multi else ".")) if curves else None
    return AccuracySection(rows, means, comparisons, figure)


def _comparison(c: Comparison) -> ComparisonRow:
    return ComparisonRow(c.a, c.b, c.test, fmt(c.statistic), fmt_p(c.p_value), fmt_p(c.p_adjusted),
                         bool(c.significant), c.detail)


def _init_values(frame: pd.DataFrame, kind: str) -> dict[str, float]:
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
            multi: bool) -> SignalSection | None:
    if not runs:
        return None
    layers = _layer_order(runs)
    figures: list[Figure | None] = []
    for kind, what, fid in (("forward", "Activation variance", "fig-forward"),
                            ("backward", "Gradient variance (dL/d output)", "fig-backward")):
        values: dict[str, list[float | None]] = {}
        for label in labels:
            per_seed = [_init_values(r.frame, kind) for r in runs if r.label == label]
            values[label] = [_mean_or_none([p.get(name) for p in per_seed]) for name in layers]
        svg = plots.layer_profile(values, layers, title=f"{what} per layer at initialization (step 0)",
                                  ylabel="variance (log scale)", salt=fid, styles=styles,
                                  xlabel="Conv/Linear layer (execution order)")
        figures.append(Figure(fid, svg, f"{what} of each Conv/Linear layer's output at the first training step"
                              + (", mean over seeds" if multi else "") + "; log scale."))
    firsts = [next(r for r in runs if r.label == label) for label in labels]
    steps = [_heat_steps(r.frame) for r in firsts]
    mats = {kind: [_matrix(r.frame, kind, layers, st) for r, st in zip(firsts, steps, strict=True)]
            for kind in ("forward", "backward")}
    heatmaps = []
    for i, run in enumerate(firsts):
        if len(steps[i]) == 0:
            continue
        fid = f"fig-heat-{i}"
        svg = plots.heatmap_pair([("activation variance", mats["forward"][i], None),
                                  ("gradient variance", mats["backward"][i], None)],
                                 layers, [int(s) for s in steps[i]], title=run.name, salt=fid)
        heatmaps.append(Figure(fid, svg, f"{run.name}: variance per layer over training."))
    theory = tuple(_theory(t, _run_label(r, multi)) for r in runs for t in r.theory)
    note = (f"Each heatmap shows at most {MAX_HEATMAP_STEPS} training steps (every k-th recorded step); "
            "each panel has its own log colour scale; grey cells are zero or not finite.")
    return SignalSection(figures[0], figures[1], theory, tuple(heatmaps), note)


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _theory(t: TheoryRow, run: str) -> TheoryLine:
    lo, hi = _finite(t.gain_low), _finite(t.gain_high)
    interval = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None or hi is not None else "—"
    return TheoryLine(run, t.activation, t.signal, fmt(t.expected_gain), fmt(t.measured_gain), interval, t.note)


def _finding(v: Verdict, run: str) -> Finding:
    effect = ", ".join(f"{k} = {fmt(x)}" for k, x in v.effect.items() if _finite(x) is not None or
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
    fwd, bwd, wgt = (_init_values(run.frame, k) for k in ("forward", "backward", "weight"))
    return LayerTable(run.name, tuple(
        LayerRow(layer.name, layer.module, layer.depth, layer.activation or "—", fmt(fwd.get(layer.name)),
                 fmt(bwd.get(layer.name)), fmt(wgt.get(layer.name))) for layer in run.layers))


# -- rendering -------------------------------------------------------------------------------------------
@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("initdiag.templates", "."), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["ticks"] = ticks
    return env


def ticks(text: str) -> Markup:
    """Escape ``text``, then show its `backtick` spans (CLI names in messages) as ``<code>``."""
    return Markup(_TICKS.sub(r"<code>\1</code>", str(escape(text))))


def _css() -> str:
    return resources.files("initdiag.templates").joinpath("report.css").read_text(encoding="utf-8")


def render_html(ctx: ReportContext) -> str:
    """The self-contained HTML page (inline CSS and SVG, no external URL)."""
    return _environment().get_template("report.html.j2").render(ctx=ctx, css=_css())


class FetchRefused(ValueError):
    """Raised by the report's URL fetcher for every URL that is not a ``data:`` URL."""


def _fetcher(refused: list[str] | None = None) -> Any:
    """A WeasyPrint URL fetcher that serves ``data:`` URLs and refuses everything else (recorded in
    ``refused``), so a report never reads a local file or the network."""
    import weasyprint.urls as wurls

    if hasattr(wurls, "URLFetcher"):  # WeasyPrint >= 68: a class

        class Refusing(wurls.URLFetcher):
            def fetch(self, url: str, headers: Any = None) -> Any:
                if url.startswith("data:"):
                    return super().fetch(url, headers)
                if refused is not None:
                    refused.append(url)
                raise FetchRefused(f"initdiag reports fetch no URL: {url}")

        return Refusing()

    def fetch(url: str) -> Any:  # older WeasyPrint: a function returning a dict
        if url.startswith("data:"):
            return wurls.default_url_fetcher(url)
        if refused is not None:
            refused.append(url)
        raise FetchRefused(f"initdiag reports fetch no URL: {url}")

    return fetch


def pdf_bytes(html: str, paper: str = "a4", refused: list[str] | None = None) -> bytes:
    """Render ``html`` to PDF bytes on ``paper`` ("a4" or "letter"); refused URLs go to ``refused``."""
    import weasyprint

    if paper not in _PAPER_SIZES:
        raise UsageError(f"unknown paper size {paper!r}; choose from {', '.join(_PAPER_SIZES)}")
    # a user stylesheet: only !important lets it override the report's own (author) @page size
    page = weasyprint.CSS(string=f"@page {{ size: {_PAPER_SIZES[paper]} !important; }}",
                          url_fetcher=_fetcher(refused))
    document = weasyprint.HTML(string=html, base_url=None, url_fetcher=_fetcher(refused))
    data: bytes = document.write_pdf(stylesheets=[page])
    return data


def write_pdf(html: str, path: Path, paper: str = "a4") -> None:
    """Render ``html`` to a PDF at ``path`` (atomically) on A4 or letter paper, fetching no URL."""
    _atomic_write(Path(path), pdf_bytes(html, paper))


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same directory, then ``os.replace`` it onto ``path``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:  # created like any new file (mode 0o666 less the umask), unlike mkstemp's 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- sidecars --------------------------------------------------------------------------------------------
def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf -> None, numpy scalars/arrays -> Python, tuples -> lists, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return _clean(asdict(obj))
    return str(obj)


def _run_json(run: RunResult) -> dict[str, Any]:
    fwd, bwd, wgt = (_init_values(run.frame, k) for k in ("forward", "backward", "weight"))
    return {
        "name": run.name, "initializer": run.label, "seed": run.seed, "status": run.status,
        "diverged_step": run.diverged_step, "test_accuracy": run.test_accuracy, "test_loss": run.test_loss,
        "seconds": run.seconds,
        "history": [{"epoch": e.epoch, "train_loss": e.train_loss, "test_loss": e.test_loss,
                     "test_accuracy": e.test_accuracy} for e in run.history],
        "layers": [{"name": layer.name, "module": layer.module, "depth": layer.depth,
                    "activation": layer.activation, "activation_variance_init": fwd.get(layer.name),
                    "gradient_variance_init": bwd.get(layer.name), "weight_variance_init": wgt.get(layer.name)}
                   for layer in run.layers],
        "verdicts": [v.to_json() for v in run.verdicts],
        "theory": [t.to_json() if hasattr(t, "to_json") else asdict(t) for t in run.theory],
    }


def summary_json(result: ExperimentResult) -> dict[str, Any]:
    """The machine-readable summary (``summary.json``), strictly valid JSON (NaN/Inf become null).

    Schema version 1::

        {"schema_version": 1, "tool": "initdiag", "version": str, "kind": "experiment",
         "created": ISO-8601 UTC, "command": str, "model": str (config.model.label),
         "dataset": {"name", "source", "kind", "train_size", "test_size", "files": {file: md5}},
         "config": ExperimentConfig.to_json(), "environment": {str: str}, "duration_seconds": float,
         "missing": [run name, ...],
         "runs": [{"name", "initializer", "seed", "status": "ok"|"diverged", "diverged_step": int|null,
                   "test_accuracy", "test_loss", "seconds",
                   "history": [{"epoch", "train_loss", "test_loss", "test_accuracy"}],
                   "layers": [{"name", "module", "depth", "activation", "activation_variance_init",
                               "gradient_variance_init", "weight_variance_init"}],
                   "verdicts": [Verdict.to_json()], "theory": [TheoryRow fields]}],
         "comparisons": [Comparison.to_json()],
         "accuracy": {initializer: {"mean", "ci_low", "ci_high", "n"}}}

    The ``*_init`` values are the ``var`` statistic (forward, backward, weight) at step 0, phase "train";
    null where not recorded.
    """
    prov = result.provenance
    data = {
        "schema_version": SCHEMA_VERSION,
        "tool": "initdiag",
        "version": __version__,
        "kind": "experiment",
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": result.command,
        "model": result.config.model.label,
        "dataset": {"name": prov.name, "source": prov.source, "kind": prov.kind, "train_size": prov.train_size,
                    "test_size": prov.test_size, "files": dict(prov.files)},
        "config": result.config.to_json(),
        "environment": dict(result.environment),
        "duration_seconds": result.seconds,
        "missing": list(result.missing),
        "runs": [_run_json(r) for r in result.runs],
        "comparisons": [c.to_json() for c in result.comparisons],
        "accuracy": result.accuracy,
    }
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def write_report(result: ExperimentResult, out_dir: Path, formats: Sequence[str] = ("html", "pdf", "json", "csv"),
                 paper: str = "a4") -> dict[str, Path]:
    """Write the requested files into ``out_dir`` (created if needed), each atomically; return their paths.

    ``html`` -> report.html, ``pdf`` -> report.pdf, ``json`` -> summary.json, ``csv`` -> series.csv.
    Raises OutputError with one line when ``out_dir`` cannot be created or written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"the output directory {out_dir} is not writable")
    writers: dict[str, tuple[str, Callable[[], bytes | str]]] = {}
    html: list[str] = []

    def get_html() -> str:
        if not html:
            html.append(render_html(build_context(result)))
        return html[0]

    writers["html"] = ("report.html", get_html)
    writers["pdf"] = ("report.pdf", lambda: pdf_bytes(get_html(), paper))
    writers["json"] = ("summary.json", lambda: json.dumps(summary_json(result), indent=2, allow_nan=False) + "\n")
    writers["csv"] = ("series.csv", lambda: result.frame().to_csv(index=False, float_format="%.9g"))
    paths: dict[str, Path] = {}
    for fmt_name in formats:
        if fmt_name not in writers:
            raise UsageError(f"unknown report format '{fmt_name}'; choose from {', '.join(writers)}")
        name, make = writers[fmt_name]
        paths[fmt_name] = out_dir / name
        _atomic_write(paths[fmt_name], make())
    return paths
