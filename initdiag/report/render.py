"""Presentation: the report's context -> ``templates/report.html.j2`` -> one self-contained HTML page -> PDF.

The only module that imports jinja2 and weasyprint. Rendering is reproducible: the same context gives
byte-identical HTML except the single line that carries the rendering time (``class="generated"``).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from ..errors import OutputError, UsageError
from ..store import atomic_write
from .context import ReportContext

__all__ = ["FetchRefused", "pdf_bytes", "render_html", "template_dir", "ticks", "write_pdf"]

_PAPER_SIZES = {"a4": "A4", "letter": "letter"}
_TICKS = re.compile(r"`([^`<>]+)`")


@cache
def template_dir() -> Path:
    """Where the templates are: the package ``initdiag.templates`` of a wheel or an editable install, else the
    source tree's ``templates/`` beside the ``initdiag`` package (a checkout imported from its root)."""
    try:
        found = resources.files("initdiag.templates")
    except ModuleNotFoundError:
        found = None
    if found is not None and found.joinpath("report.html.j2").is_file():
        return Path(str(found))
    source = Path(__file__).resolve().parents[2] / "templates"
    if (source / "report.html.j2").is_file():
        return source
    raise OutputError("the report templates are missing: neither the package initdiag.templates nor "
                      f"{source} holds report.html.j2 (reinstall initdiag)")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["ticks"] = ticks
    return env


def ticks(text: str) -> Markup:
    """Escape ``text``, then show its `backtick` spans (CLI names in messages) as ``<code>``."""
    return Markup(_TICKS.sub(r"<code>\1</code>", str(escape(text))))


def _css() -> str:
    return (template_dir() / "report.css").read_text(encoding="utf-8")


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
