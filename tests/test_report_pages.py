"""Page budgets of the PDF: the answer on page 1, the per-layer detail bounded whatever the depth.

The audit of torchvision's ResNet-50 and of a 12-layer GPT-2 fit in 6 A4 pages, the default ``report --model
cnn`` (four initializers) in 8, and a 200-layer model takes no more than a 20-layer one plus one page. Counted
with poppler's ``pdfinfo``, as a reviewer's viewer counts them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import initdiag
from initdiag import cli

pytestmark = [pytest.mark.skipif(shutil.which("pdfinfo") is None, reason="needs poppler-utils (pdfinfo)"),
              pytest.mark.usefixtures("one_torch_thread")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))  # type: ignore[union-attr]


def _first_page(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def _audit_pages(model: nn.Module, out: Path, **kwargs: object) -> tuple[int, str]:
    result = initdiag.audit(model, **kwargs)  # type: ignore[arg-type]
    pdf = result.write(out, formats=("pdf",))["pdf"]
    return _pages(pdf), _first_page(pdf)


def test_resnet50_audit_fits_in_six_pages(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    pages, first = _audit_pages(torchvision.models.resnet50(weights=None), tmp_path, input_shape=(3, 64, 64))
    assert pages <= 6, f"{pages} pages"
    assert "Verdict summary" in first and "What was run" in first


def test_gpt2_audit_fits_in_six_pages(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    pages, first = _audit_pages(model, tmp_path, example_input=torch.randint(0, 500, (4, 32)))
    assert pages <= 6, f"{pages} pages"
    assert "What was run" in first


def _mlp(depth: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(m for _ in range(depth - 1) for m in (nn.Linear(32, 32), nn.ReLU())), nn.Linear(32, 10))


def test_a_200_layer_model_takes_at_most_one_page_more_than_a_20_layer_one(tmp_path: Path) -> None:
    """Both at PyTorch's default init, so both fail vanishing along every layer: the flagged layers printed are
    the first and the last few, not all of them."""
    shallow, first = _audit_pages(_mlp(20), tmp_path / "20", input_shape=(32,))
    deep, _ = _audit_pages(_mlp(200), tmp_path / "200", input_shape=(32,))
    assert deep <= shallow + 1, f"200 layers: {deep} pages, 20 layers: {shallow}"
    assert "Fails:" in first and "vanishing" in first  # the failing finding is on page 1


def assert_github_markdown(md: str, lists: bool = True) -> None:
    """``md`` parses as CommonMark with GitHub's tables, and each table's rows have its header's cell count."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    kinds = [t.type for t in tokens]
    assert "table_open" in kinds and "heading_open" in kinds and (not lists or "bullet_list_open" in kinds)
    row: list[str] = []
    tables: list[list[int]] = []
    for t in tokens:
        if t.type == "table_open":
            tables.append([])
        elif t.type == "tr_open":
            row = []
        elif t.type in ("th_open", "td_open"):
            row.append(t.type)
        elif t.type == "tr_close":
            tables[-1].append(len(row))
    assert tables and all(len(set(w)) == 1 for w in tables), f"rows of different widths: {tables}"


def test_the_default_report_fits_in_eight_pages_and_its_markdown_in_sixty_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default four initializers (zeros, random, xavier, he) on the bundled sample, two short epochs; with
    ``GITHUB_STEP_SUMMARY`` set, the same Markdown is appended there (after what the job already wrote)."""
    step = tmp_path / "step.md"
    step.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    out = tmp_path / "out"
    assert cli.main(["report", "--dataset", "mnist-sample", "--limit-train", "256", "--epochs", "2",
                     "--format", "pdf,md,html", "--out", str(out)]) == 0
    pages = _pages(out / "report.pdf")
    assert pages <= 8, f"{pages} pages"
    first = _first_page(out / "report.pdf")
    assert "What was run" in first and "zeros" in first
    text = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    html = (out / "report.html").read_text(encoding="utf-8")
    for where in (re.sub(r"\s+", " ", text), html):  # why all-zero weights cannot train: said once
        assert where.count("Zero init is not appropriate") == 1
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert len(md.splitlines()) < 60
    assert_github_markdown(md)
    assert step.read_text(encoding="utf-8") == "earlier step\n" + md + "\n"
