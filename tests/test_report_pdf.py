"""The PDF report as a reader gets it, read back with poppler-utils (pdfinfo, pdftotext, pdftoppm,
pdfimages): A4 pages within a page-count range, running title and page numbers on every page, the
accuracy table's numbers in the text, no blank page, no table or figure cut across a page boundary,
vector plots only (no raster image), and a small file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from report_fixtures import EVIL_LAYER, real_audit_report, real_report

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(any(shutil.which(t) is None for t in ("pdfinfo", "pdftotext", "pdftoppm",
                                                                             "pdfimages")),
                                 reason="poppler-utils is not installed (.ci/run installs it)")]

MAX_PDF_BYTES = 5 * 1024 * 1024
A4_POINTS = "595.276 x 841.89"
BLANK_DPI = 24
MARGIN = 0.08
"""Fraction of the page height cut off at the top and at the bottom (running title, page number)
before a page is tested for being blank."""
INK_FRACTION = 0.003
"""A page body with less than this fraction of non-white pixels counts as blank."""


@dataclass(frozen=True)
class Pdf:
    path: Path
    info: str
    pages: tuple[str, ...]
    """The text of each page (pdftotext, reading order), whitespace collapsed to single spaces."""

    @property
    def page_count(self) -> int:
        return len(self.pages)

    def page_of(self, text: str) -> list[int]:
        """The 1-based pages whose text contains ``text`` (whitespace-insensitive)."""
        wanted = _flat(text)
        return [i + 1 for i, page in enumerate(self.pages) if wanted in _flat(page)]


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def read_pdf(path: Path) -> Pdf:
    info = _run("pdfinfo", str(path))
    text = _run("pdftotext", "-enc", "UTF-8", str(path), "-")
    pages = tuple(re.sub(r"\s+", " ", p) for p in text.split("\f")[:-1])  # a form feed ends each page
    assert int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1)) == len(pages)  # type: ignore[union-attr]
    return Pdf(path, info, pages)


def assert_well_formed(pdf: Pdf, title: str, min_pages: int, max_pages: int, tmp: Path) -> None:
    """The checks every report PDF must pass."""
    assert pdf.path.stat().st_size < MAX_PDF_BYTES
    assert min_pages <= pdf.page_count <= max_pages, f"{pdf.page_count} pages"
    assert A4_POINTS in pdf.info
    for n, page in enumerate(pdf.pages, start=1):
        assert f"page {n} of {pdf.page_count}" in page, f"page {n} has no page number"
        assert _flat(title) in _flat(page), f"page {n} has no running title"
    images = _run("pdfimages", "-list", str(pdf.path)).splitlines()[2:]
    assert images == [], "raster images in the PDF: every plot should be vector"
    assert_no_blank_page(pdf, tmp)


def assert_no_blank_page(pdf: Pdf, tmp: Path) -> None:
    from PIL import Image

    _run("pdftoppm", "-r", str(BLANK_DPI), "-gray", str(pdf.path), str(tmp / "page"))
    files = sorted(tmp.glob("page-*.pgm"))
    assert len(files) == pdf.page_count
    for n, file in enumerate(files, start=1):
        with Image.open(file) as image:
            w, h = image.size
            body = image.crop((0, int(h * MARGIN), w, int(h * (1 - MARGIN))))
            ink = sum(body.histogram()[:200])
        assert ink > INK_FRACTION * body.width * body.height, f"page {n} is blank"


def assert_same_page(pdf: Pdf, first: str, last: str) -> int:
    """``first`` and ``last`` (the start and the end of a table or figure) are found on one page."""
    a, b = pdf.page_of(first), pdf.page_of(last)
    assert a and b, f"not found: {first!r} {a}, {last!r} {b}"
    assert set(a) & set(b), f"{first!r} on pages {a} but {last!r} on pages {b}: cut across a page boundary"
    return min(set(a) & set(b))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pdf, dict[str, object]]:
    out = real_report(tmp_path_factory)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return read_pdf(out / "report.pdf"), summary


def test_cnn_pdf_pages(cnn: tuple[Pdf, dict[str, object]], tmp_path: Path) -> None:
    pdf, _ = cnn
    assert_well_formed(pdf, "initdiag report: cnn", 4, 8, tmp_path)
    first = pdf.pages[0]  # the answer first: the verdict, what was run, the failing findings one line each
    assert "Verdict summary" in first and "What was run" in first and "Fails:" in first and "no_signal" in first
    for section in ("Accuracy comparison", "Signal propagation", "Findings and advice", "Methods", "Provenance"):
        assert pdf.page_of(section), section


def test_cnn_pdf_accuracy_numbers(cnn: tuple[Pdf, dict[str, object]]) -> None:
    pdf, summary = cnn
    runs = summary["runs"]
    assert isinstance(runs, list) and [r["initializer"] for r in runs] == ["zeros", "he"]
    page = assert_same_page(pdf, "test accuracy test loss status seconds", f"{runs[-1]['test_loss']:.4f}")
    for run in runs:
        row = f"{run['initializer']} {run['seed']} {run['test_accuracy']:.4f} {run['test_loss']:.4f}"
        assert page in pdf.page_of(row), f"accuracy row {row!r} not on page {page}"


def test_cnn_pdf_tables_and_figures_whole(cnn: tuple[Pdf, dict[str, object]]) -> None:
    pdf, _ = cnn
    assert_same_page(pdf, "signal forward signal backward symmetry dead units", "he ✓ pass")  # verdict grid
    assert_same_page(pdf, "Test accuracy after each epoch", "Test accuracy after each epoch, one line")
    for what in ("Activation variance", "Gradient variance (dL/d output)"):  # figure title .. its caption
        assert_same_page(pdf, f"{what} per layer at initialization", f"{what} of each Conv/Linear layer")
        assert_same_page(pdf, f"{what} per layer at initialization", "theory (thin dashed)")
    for run in ("zeros/seed0", "he/seed0"):  # heatmap pairs: the SVG's text order is arbitrary
        page = assert_same_page(pdf, "training step", f"{run}: variance per layer over training")
        text = pdf.pages[page - 1]
        assert text.count(run) >= 2, f"the {run} heatmaps are not on the page of their caption"
        assert "activation variance" in text and "gradient variance" in text


def test_audit_pdf(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    out = real_audit_report(tmp_path_factory)
    pdf = read_pdf(out / "report.pdf")
    title = re.search(r"^Title:\s+(.*)$", pdf.info, re.M).group(1)  # type: ignore[union-attr]
    assert title.startswith("initdiag audit: ") and title.endswith("hostile_model.py:build")
    assert_well_formed(pdf, title, 2, 16, tmp_path)
    assert "What was run" in pdf.pages[0] and pdf.page_of("Layers at initialization")
    assert not pdf.page_of("Accuracy comparison")
    assert pdf.page_of(EVIL_LAYER), "a hostile layer name shows as text in the PDF"


def test_readme_screenshot_tool(cnn: tuple[Pdf, dict[str, object]], tmp_path: Path) -> None:
    """``benchmarks/screenshot.py`` (which made docs/report-page1.png) turns page 1 into a small PNG."""
    from PIL import Image

    png = tmp_path / "page1.png"
    script = Path(__file__).parent.parent / "benchmarks" / "screenshot.py"
    done = subprocess.run([sys.executable, str(script), str(cnn[0].path), str(png)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert png.stat().st_size < 200 * 1024 and "KB" in done.stdout
    with Image.open(png) as image:
        assert image.width > 800 and image.height / image.width == pytest.approx(297 / 210, rel=0.01)
