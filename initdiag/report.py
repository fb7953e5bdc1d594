"""The report: a context of frozen dataclasses -> ``templates/report.html.j2`` -> one self-contained HTML
file -> PDF (WeasyPrint), plus the sidecars ``summary.json`` and ``series.csv``.

The only module that imports jinja2 and weasyprint. Rendering is reproducible: the same result gives
byte-identical HTML except the single line that carries the rendering time (``class="generated"``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape

from . import __version__
from .errors import OutputError, UsageError
from .store import atomic_write

if TYPE_CHECKING:
    from .audit import AuditResult
    from .experiment import ExperimentResult, RunResult

from .report_context import ReportContext, build_context, init_values, json_safe, layer_table

__all__ = [
    "SCHEMA_VERSION",
    "FetchRefused",
    "ReportContext",
    "audit_summary_json",
    "build_context",
    "layer_table",
    "pdf_bytes",
    "render_html",
    "summary_json",
    "write_audit_report",
    "write_pdf",
    "write_report",
]

SCHEMA_VERSION = 1
_PAPER_SIZES = {"a4": "A4", "letter": "letter"}
_TICKS = re.compile(r"`([^`<>]+)`")


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
    atomic_write(Path(path), pdf_bytes(html, paper))


# -- sidecars --------------------------------------------------------------------------------------------
def _run_json(run: RunResult) -> dict[str, Any]:
    fwd, bwd, wgt = (init_values(run.frame, k) for k in ("forward", "backward", "weight"))
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
        **_header("experiment", result.command, result.config.model.label),
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
    cleaned: dict[str, Any] = json_safe(data)
    return cleaned


def write_report(result: ExperimentResult, out_dir: Path, formats: Sequence[str] = ("html", "pdf", "json", "csv"),
                 paper: str = "a4") -> dict[str, Path]:
    """Write the requested files into ``out_dir`` (created if needed), each atomically; return their paths.

    ``html`` -> report.html, ``pdf`` -> report.pdf, ``json`` -> summary.json, ``csv`` -> series.csv.
    Raises OutputError with one line when ``out_dir`` cannot be created or written.
    """
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
    return _write_all(out_dir, formats, writers)


def _header(kind: str, command: str, model: str) -> dict[str, Any]:
    """The first keys of every ``summary.json`` (schema version, tool, kind, creation time, command, model)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "initdiag",
        "version": __version__,
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": command,
        "model": model,
    }


def _write_all(out_dir: Path, formats: Sequence[str],
               writers: dict[str, tuple[str, Callable[[], bytes | str]]]) -> dict[str, Path]:
    """Create ``out_dir`` if needed, then write each requested format atomically
    (:func:`initdiag.store.atomic_write`); return the paths. OutputError (one line) when it cannot."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"the output directory {out_dir} is not writable")
    paths: dict[str, Path] = {}
    for fmt_name in formats:
        if fmt_name not in writers:
            raise UsageError(f"unknown report format '{fmt_name}'; choose from {', '.join(writers)}")
        name, make = writers[fmt_name]
        paths[fmt_name] = out_dir / name
        atomic_write(paths[fmt_name], make())
    return paths


# == audit variant =========================================================================================
def audit_summary_json(result: AuditResult) -> dict[str, Any]:
    """``summary.json`` of an audit: the schema of :func:`summary_json` with ``"kind": "audit"``.

    One run per audited initialization (``history`` empty, ``test_accuracy``/``test_loss`` null, ``seed`` the
    audit's seed), each with two more keys: ``"failed"`` (its ``--fail-on`` names) and ``"weights"``
    (``LayerWeight.to_json()`` per weight layer: ``layer``, ``module``, ``activation``, ``shape``, ``variance``,
    ``recommended``, ``recommended_variance``, ``ratio``, ``default_init``, ``reinitialized``). ``model`` is
    the audited target; ``dataset`` describes the inputs (``name`` the input kind, ``train_size`` the samples
    pushed through, ``test_size`` 0); ``config`` is ``AuditConfig.to_json()``; ``comparisons`` and
    ``accuracy`` are empty. Added at the top level: ``"passed"`` (no fail verdict) and ``"recommendation"``
    (``{"initializer", "evidence", "compared"}``). The ``*_init`` layer values are averaged over the batches.
    """
    inputs = result.inputs
    runs = []
    for run in result.runs:
        data = _run_json(run)
        data["failed"] = list(run.failed)
        data["weights"] = [w.to_json() for w in run.weights]
        runs.append(data)
    data = {
        **_header("audit", result.command, result.model),
        "dataset": {"name": inputs.kind, "source": inputs.source, "kind": inputs.kind,
                    "train_size": inputs.batches * inputs.batch_shape[0], "test_size": 0, "files": dict(inputs.files),
                    "description": inputs.description, "batch_shape": list(inputs.batch_shape),
                    "dtype": inputs.dtype},
        "config": result.config.to_json(),
        "environment": dict(result.environment),
        "duration_seconds": result.seconds,
        "missing": [],
        "runs": runs,
        "comparisons": [],
        "accuracy": {},
        "passed": result.passed,
        "recommendation": result.recommendation.to_json(),
    }
    cleaned: dict[str, Any] = json_safe(data)
    return cleaned


def write_audit_report(result: AuditResult, out_dir: Path, formats: Sequence[str] = ("html", "pdf", "json", "csv"),
                       paper: str = "a4") -> dict[str, Path]:
    """Write an audit's report into ``out_dir`` as :func:`write_report` does (same files; ``series.csv``
    holds every batch, ``step`` = batch)."""
    from .report_context import build_audit_context

    html: list[str] = []

    def get_html() -> str:
        if not html:
            html.append(render_html(build_audit_context(result)))
        return html[0]

    writers: dict[str, tuple[str, Callable[[], bytes | str]]] = {
        "html": ("report.html", get_html),
        "pdf": ("report.pdf", lambda: pdf_bytes(get_html(), paper)),
        "json": ("summary.json", lambda: json.dumps(audit_summary_json(result), indent=2, allow_nan=False) + "\n"),
        "csv": ("series.csv", lambda: result.frame.to_csv(index=False, float_format="%.9g")),
    }
    return _write_all(out_dir, formats, writers)
