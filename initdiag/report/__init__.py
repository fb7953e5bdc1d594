"""The report: results -> a context of frozen dataclasses -> one self-contained HTML file -> PDF, plus the
sidecars ``summary.json`` and ``series.csv``. One writer for an experiment and for an audit."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import OutputError, UsageError
from ..results import AuditRecord
from ..store import atomic_write
from ..vocab import FORMATS
from .build import Result, build_context, layer_table
from .context import ReportContext
from .render import FetchRefused, pdf_bytes, render_html, template_dir, write_pdf
from .summary import SCHEMA_VERSION, summary_json

__all__ = ["SCHEMA_VERSION", "FetchRefused", "ReportContext", "Result", "build_context", "layer_table", "pdf_bytes",
           "render_html", "summary_json", "template_dir", "write_pdf", "write_report"]


def write_report(result: Result, out_dir: Path, formats: Sequence[str] = FORMATS, paper: str = "a4") -> dict[str, Path]:
    """Write the requested files into ``out_dir`` (created if needed), each atomically; return their paths.

    ``html`` -> report.html, ``pdf`` -> report.pdf, ``json`` -> summary.json, ``csv`` -> series.csv (every
    recorded statistic; for an audit every batch, ``step`` = batch). OutputError (one line) when ``out_dir``
    cannot be created or written."""
    html: list[str] = []

    def get_html() -> str:
        if not html:
            html.append(render_html(build_context(result)))
        return html[0]

    frame = result.frame if isinstance(result, AuditRecord) else result.frame()
    writers: dict[str, tuple[str, Callable[[], bytes | str]]] = {
        "html": ("report.html", get_html),
        "pdf": ("report.pdf", lambda: pdf_bytes(get_html(), paper)),
        "json": ("summary.json", lambda: json.dumps(summary_json(result), indent=2, allow_nan=False) + "\n"),
        "csv": ("series.csv", lambda: frame.to_csv(index=False, float_format="%.9g")),
    }
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"the output directory {out_dir} is not writable")
    paths: dict[str, Path] = {}
    for name in formats:
        if name not in writers:
            raise UsageError(f"unknown report format '{name}'; choose from {', '.join(writers)}")
        file_name, make = writers[name]
        paths[name] = out_dir / file_name
        atomic_write(paths[name], make())
    return paths
