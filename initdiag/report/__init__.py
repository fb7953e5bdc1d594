"""The report: results -> a context of frozen dataclasses -> one self-contained HTML file -> PDF, plus the
sidecars ``summary.json`` and ``series.csv``. One writer for every kind of result, registered with
:mod:`initdiag.results` on import so that ``result.write(...)`` reaches it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from ..results import Result, SweepResult, set_report_writer
from ..vocab import FORMATS, ResultKind
from .build import build_context, layer_table
from .context import ReportContext
from .files import write_files
from .markdown import summary_markdown
from .render import FetchRefused, pdf_bytes, render_html, template_dir, write_pdf
from .summary import SCHEMA_VERSION, summary_json
from .sweep import write_sweep_report

__all__ = ["SCHEMA_VERSION", "FetchRefused", "ReportContext", "Result", "build_context", "layer_table", "pdf_bytes",
           "render_html", "summary_json", "template_dir", "write_pdf", "write_report", "write_sweep_report"]


def write_report(result: Result, out_dir: Path, formats: Sequence[str] = FORMATS,
                 paper: str = "a4") -> dict[str, Path]:
    """Write the requested files into ``out_dir`` (created if needed), each atomically; return their paths.

    ``html`` -> report.html, ``pdf`` -> report.pdf, ``json`` -> summary.json, ``csv`` -> series.csv (every
    recorded statistic; for an audit every batch, ``step`` = batch), ``md`` -> summary.md (the answer, the
    verdict grid and the findings in Markdown, :mod:`.markdown`). A sweep gets the sweep report
    (:func:`write_sweep_report`). OutputError (one line) when ``out_dir`` cannot be created or written."""
    if result.kind == ResultKind.SWEEP:
        return write_sweep_report(cast(SweepResult, result), out_dir, formats, paper)
    html: list[str] = []

    def get_html() -> str:
        if not html:
            html.append(render_html(build_context(result)))
        return html[0]

    frame = result.frame
    writers: dict[str, tuple[str, Callable[[], bytes | str]]] = {
        "html": ("report.html", get_html),
        "pdf": ("report.pdf", lambda: pdf_bytes(get_html(), paper)),
        "json": ("summary.json", lambda: json.dumps(summary_json(result), indent=2, allow_nan=False) + "\n"),
        "csv": ("series.csv", lambda: frame.to_csv(index=False, float_format="%.9g")),
        "md": ("summary.md", lambda: summary_markdown(result)),
    }
    return write_files(out_dir, formats, writers)


set_report_writer(write_report)
