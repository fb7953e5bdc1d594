"""The sweep report: a :class:`~initdiag.results.SweepResult` -> a :class:`.SweepContext` ->
``templates/sweep.html.j2`` -> one self-contained HTML page -> PDF, plus ``summary.json`` and ``series.csv``.

The pieces are the experiment report's: its verdict grid per run (:func:`.build._grid`), provenance, data
notices, stylesheet, template environment, badges and macros, PDF pass (no URL fetched) and file writer;
what is the sweep's own is how the cells are set side by side and the curves across them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UsageError
from ..jsonable import json_safe
from ..models import ModelName
from ..results import ExperimentResult, RunResult, SweepResult, cell_key
from ..vocab import FORMATS, Backend, ResultKind, RunStatus, Status
from .build import KINDS, _grid, common_facts
from .context import Badge, ComparisonRow, KeyValue, Provenance
from .files import write_files
from .format import RANK, badge, fixed, fmt, fmt_p
from .markdown import sweep_markdown
from .render import _css, _environment, pdf_bytes, template_dir
from .sweep_context import CellAccuracyRow, CellComparisonRow, CellGridRow, SweepContext, SweepGrid
from .sweep_curves import depth_figures, width_figures
from .sweep_summary import sweep_summary_json

__all__ = ["build_sweep_context", "render_sweep_html", "write_sweep_report"]


def _labels(result: SweepResult) -> list[str]:
    """The initializers in the sweep's order (those configured, then any other a cell ran)."""
    return list(dict.fromkeys([*(s.label for s in result.config.base.initializers),
                               *(r.label for c in result.cells for r in c.runs)]))


def _axes(cell: ExperimentResult) -> tuple[str, str, str]:
    """A cell's depth, width and activation as shown ("—" for a model that has none)."""
    m = cell.config.model
    return (str(m.depth), str(m.width), m.activation) if m.name == ModelName.DEEP_MLP else ("—", "—", "—")


def _worst(badges: Sequence[Badge]) -> Badge:
    """The worst of one family's badges over a cell's seeds; with several seeds it says how many reached it."""
    status = max((b.status for b in badges), key=lambda s: RANK.get(s, 0), default="n/a")
    if len(badges) > 1 and status in (Status.WARN, Status.FAIL):
        return badge(status, f"{status} {sum(b.status == status for b in badges)}/{len(badges)}")
    return badge(status)


def _sweep_grid(result: SweepResult, labels: Sequence[str]) -> SweepGrid:
    """Rows: cell x initializer; columns: the check families; each run's worst status per family as the
    experiment report's grid finds it, then the worst over the seeds."""
    pairs = [(i, run) for i, cell in enumerate(result.cells) for run in cell.runs]
    per_run = _grid([run for _, run in pairs], multi=True)
    found: dict[tuple[int, str], list[tuple[Badge, ...]]] = {}
    for (i, run), row in zip(pairs, per_run.rows, strict=True):
        found.setdefault((i, run.label), []).append(row.cells)
    rows = []
    for i, cell in enumerate(result.cells):
        depth, width, activation = _axes(cell)
        for label in labels:
            seeds = found.get((i, label))
            if seeds:
                cells = tuple(_worst([s[k] for s in seeds]) for k in range(len(per_run.columns)))
                rows.append(CellGridRow(cell_key(cell.config.model), str(cell.config.model.name), depth, width,
                                        activation, label, cells))
    return SweepGrid(per_run.columns, tuple(rows), result.config.base.seeds)


def _accuracy(result: SweepResult, labels: Sequence[str]) -> tuple[CellAccuracyRow, ...]:
    rows = []
    for cell in result.cells:
        for label in labels:
            s = cell.accuracy.get(label)
            if s is None:
                continue
            low, high = s.get("ci_low"), s.get("ci_high")
            runs: list[RunResult] = [r for r in cell.runs if r.label == label]
            rows.append(CellAccuracyRow(
                cell_key(cell.config.model), label, fixed(s.get("mean")),
                f"[{fixed(low)}, {fixed(high)}]" if low is not None and high is not None else "—", int(s.get("n", 0)),
                sum(r.status == RunStatus.DIVERGED for r in runs)))
    return tuple(rows)


def _comparisons(result: SweepResult) -> tuple[CellComparisonRow, ...]:
    return tuple(CellComparisonRow(cell_key(cell.config.model), ComparisonRow(
        c.a, c.b, c.test, fmt(c.statistic), fmt_p(c.p_value), fmt_p(c.p_adjusted), bool(c.significant), c.detail))
        for cell in result.cells for c in cell.comparisons)


def _cell_provenance(cell: ExperimentResult) -> Provenance:
    return KINDS[ResultKind.EXPERIMENT].provenance(cell, common_facts(cell))


def _sweep_provenance(result: SweepResult) -> Provenance:
    """The experiment report's provenance of the first cell (data set, files, seeds), with the sweep's own
    command, start, duration, environment and configuration."""
    first = result.cells[0]
    env = result.environment or first.environment
    prov = _cell_provenance(replace(first, command=result.command, started=result.started, seconds=result.seconds,
                               environment=env))
    config = tuple(KeyValue(k, v if isinstance(v, str) else json.dumps(json_safe(v), sort_keys=True))
                   for k, v in result.config.to_json().items())
    return replace(prov, config=config)


def _facts(result: SweepResult, labels: Sequence[str]) -> tuple[KeyValue, ...]:
    cfg = result.config
    finished = sum(len(c.runs) for c in result.cells)
    facts = [KeyValue("backend", "local worker processes" if result.backend == Backend.LOCAL else "Ray tasks")]
    if result.backend == Backend.RAY:
        facts.append(KeyValue("Ray address", cfg.ray_address or "a local Ray instance started for the sweep"))
    facts += [KeyValue("cells", f"{len(result.cells)} of {len(cfg.models)}: "
                                + ", ".join(cell_key(c.config.model) for c in result.cells)),
              KeyValue("initializers", ", ".join(labels)),
              KeyValue("seeds per cell", f"{cfg.base.seeds} ({', '.join(map(str, cfg.base.run_seeds))})"),
              KeyValue("runs", f"{finished} finished of {cfg.runs} planned"),
              KeyValue("missing runs", ", ".join(result.missing) or "none")]
    return tuple(facts)


def build_sweep_context(result: SweepResult) -> SweepContext:
    """The sweep report's context (figures included). UsageError when no cell finished."""
    if not result.cells:
        raise UsageError("a sweep report needs at least one finished cell")
    labels = _labels(result)
    styles = {label: i for i, label in enumerate(labels)}
    depth, width = depth_figures(result, labels, styles), width_figures(result, labels)
    cfg = result.config
    return SweepContext(
        title=f"initdiag sweep: {len(cfg.models)} cells x {len(labels)} initializers x {cfg.base.seeds} "
              f"seed{'s' if cfg.base.seeds != 1 else ''}",
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        provenance=_sweep_provenance(result),
        facts=_facts(result, labels),
        notices=KINDS[ResultKind.EXPERIMENT].notices(result.cells[0]),
        missing=tuple(result.missing),
        grid=_sweep_grid(result, labels),
        accuracy=_accuracy(result, labels),
        comparisons=_comparisons(result),
        depth=depth,
        width=width,
        depth_note="" if depth else "No depth curves: no deep-mlp cells share a width and an activation at two "
                                    "depths or more (give `--depth` several values).",
        width_note="" if width else "No width curves: no deep-mlp cells share a depth and an activation at two "
                                    "widths or more (give `--width` several values).",
    )


def render_sweep_html(ctx: SweepContext) -> str:
    """The self-contained sweep page (inline CSS and SVG, no script, no external URL)."""
    extra = (template_dir() / "sweep.css").read_text(encoding="utf-8")
    return _environment().get_template("sweep.html.j2").render(ctx=ctx, css=_css() + extra)


def write_sweep_report(result: SweepResult, out_dir: Path, formats: Sequence[str] = FORMATS,
                       paper: str = "a4") -> dict[str, Path]:
    """Write the sweep's files into ``out_dir`` (created if needed), each atomically; return their paths.

    ``html`` -> report.html, ``pdf`` -> report.pdf (``paper``: "a4" or "letter"), ``json`` -> summary.json
    (:func:`~.sweep_summary.sweep_summary_json`), ``csv`` -> series.csv (every run's series, ``run`` =
    ``cell/initializer/seedN``), ``md`` -> summary.md (:func:`~.markdown.sweep_markdown`). OutputError (one
    line) when ``out_dir`` cannot be created or written;
    UsageError when no cell finished."""
    if not result.cells:
        raise UsageError("a sweep report needs at least one finished cell")
    html: list[str] = []

    def get_html() -> str:
        if not html:
            html.append(render_sweep_html(build_sweep_context(result)))
        return html[0]

    writers: dict[str, tuple[str, Callable[[], bytes | str]]] = {
        "html": ("report.html", get_html),
        "pdf": ("report.pdf", lambda: pdf_bytes(get_html(), paper)),
        "json": ("summary.json", lambda: json.dumps(sweep_summary_json(result), indent=2, allow_nan=False) + "\n"),
        "csv": ("series.csv", lambda: result.frame.to_csv(index=False, float_format="%.9g")),
        "md": ("summary.md", lambda: sweep_markdown(result)),
    }
    return write_files(out_dir, formats, writers)
