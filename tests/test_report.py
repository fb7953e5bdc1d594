"""The report layer on a fixed, hand-built result: golden HTML, escaping, URL refusal, sidecars.

Regenerate the golden file with ``INITDIAG_UPDATE_GOLDEN=1 pytest tests/test_report.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from report_fixtures import EVIL_LABEL, EVIL_LAYER, fixed_context, fixed_result

from initdiag import report
from initdiag.errors import OutputError
from initdiag.report import format as report_format
from initdiag.report import plots, render
from initdiag.results import ExperimentResult
from initdiag.structure import LayerInfo
from initdiag.theory import variance_profile

GOLDEN = Path(__file__).parent / "golden" / "report.html"
UPDATE = os.environ.get("INITDIAG_UPDATE_GOLDEN") == "1"
SECTION_IDS = ("summary", "accuracy", "loss", "signal", "units", "findings", "methods", "provenance")
PNG_1PX = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/"
           "iZk9HQAAAABJRU5ErkJggg==")


def scrub_generated(html: str) -> str:
    """Blank the one line that carries the rendering time."""
    out, n = re.subn(r'^.*class="generated".*$', '<p class="generated">[time]</p>', html, flags=re.M)
    assert n == 1, "exactly one timestamp line"
    return out


def scrub(html: str) -> str:
    """Golden form: no timestamp, and figures reduced to placeholders (their SVG depends on the
    matplotlib version; their determinism is tested separately)."""
    return re.sub(r"<svg\b.*?</svg>", "<svg>[figure]</svg>", scrub_generated(html), flags=re.S)


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def result() -> ExperimentResult:
    return fixed_result()


@pytest.fixture(scope="module")
def html() -> str:
    return report.render_html(fixed_context())


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExperimentResult, dict[str, Path]]:
    result = fixed_result(evil=True)
    return result, report.write_report(result, tmp_path_factory.mktemp("evil") / "out")


def test_golden(html: str) -> None:
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(scrub(html), encoding="utf-8")
    assert GOLDEN.exists(), "no golden file: run with INITDIAG_UPDATE_GOLDEN=1"
    assert scrub(html) == GOLDEN.read_text(encoding="utf-8")


def test_reproducible(result: ExperimentResult) -> None:
    first, second = (report.render_html(report.build_context(result)) for _ in range(2))
    assert scrub_generated(first) == scrub_generated(second)  # figures included


def test_sections_in_order_with_toc(html: str) -> None:
    positions = [html.index(f'<section id="{sid}">') for sid in SECTION_IDS]
    assert positions == sorted(positions)
    toc = html[html.index('<nav id="toc"'):html.index("</nav>")]
    assert re.findall(r'href="#([^"]+)"', toc) == list(SECTION_IDS)
    assert "<title>initdiag report: mlp</title>" in html and "<h1>initdiag report: mlp</h1>" in html


def test_self_contained(html: str) -> None:
    assert "<style>" in html and ".badge" in html  # CSS inlined
    # accuracy, training loss, forward, backward, 2 heatmaps, and page 1's copies of the answer's figures
    answer = len(re.findall(r'<figure id="answer-', html))
    assert 1 <= answer <= 2 and html.count("<svg") == 6 + answer
    for bad in ("http://", "https://", "file:", "<script", "<link", "@import", "url(http"):
        assert bad not in html
    assert set(re.findall(r'href="([^#"][^"]*)"', html)) <= {h for h in re.findall(r'href="(data:[^"]*)"', html)}
    for label in ("variance (log scale)", "epoch", "test accuracy (fraction)", "training step"):
        assert label in html


def test_header_notices_and_grid(html: str) -> None:
    assert "bundled MNIST sample" in html and "not the full MNIST" in html
    assert "Partial report" in html and "<li>xavier/seed0</li>" in html
    grid = html[html.index('<table class="data grid">'):]
    grid = grid[:grid.index("</table>")]
    zeros = grid[grid.index(">zeros</th>"):]
    assert re.findall(r'badge (\w+)', zeros.split("</tr>")[0]) == ["fail", "fail", "fail", "fail", "na", "pass"]
    assert "✗" in grid and "✓" in grid and "▲" in grid  # symbols read in grey print


def test_findings_and_methods(html: str) -> None:
    findings = html[html.index('<section id="findings">'):html.index('<section id="methods">')]
    assert "no_signal (forward)" in findings and "<code>he</code>" in findings
    assert "No duplicate neurons." not in findings  # pass verdicts are not findings
    methods = html[html.index('<section id="methods">'):]
    assert "Null hypothesis" in methods and "Dead &lt;ReLU&gt; units" in methods


def test_several_seeds() -> None:
    ctx = report.build_context(fixed_result(seeds=2))
    assert [row.label for row in ctx.grid.rows] == ["he/seed0", "he/seed1", "zeros/seed0", "zeros/seed1"]
    assert ctx.grid.row_heading == "run"
    assert ctx.accuracy is not None and [m.initializer for m in ctx.accuracy.means] == ["he", "zeros"]
    assert ctx.accuracy.means[0].ci == "[0.9400, 0.9800]"
    assert ctx.signal is not None and len(ctx.signal.heatmaps) == 2  # one per initializer
    html = report.render_html(ctx)
    assert "95% CI" in html and "the band spans min to max" in html


def test_escaping_in_html(evil: tuple[ExperimentResult, dict[str, Path]]) -> None:
    html = evil[1]["html"].read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext not installed")
def test_escaping_in_pdf(evil: tuple[ExperimentResult, dict[str, Path]]) -> None:
    text = subprocess.run(["pdftotext", str(evil[1]["pdf"]), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = re.sub(r"\s+", "", text)
    assert re.sub(r"\s+", "", EVIL_LAYER) in flat
    assert re.sub(r"\s+", "", EVIL_LABEL) in flat
    assert "page1of" in flat and "initdiagreport:mlp" in flat


def test_url_fetcher_refuses_all_but_data(tmp_path: Path) -> None:
    html = ('<html><body><p>x</p><img src="http://example.com/x.png"><img src="file:///etc/passwd">'
            f'<img src="{PNG_1PX}"><link rel="stylesheet" href="https://example.com/s.css"></body></html>')
    refused: list[str] = []
    data = report.pdf_bytes(html, refused=refused)
    assert data.startswith(b"%PDF")
    assert sorted(refused) == ["file:///etc/passwd", "http://example.com/x.png", "https://example.com/s.css"]
    fetcher = render._fetcher()
    response = fetcher.fetch("data:text/plain,hi") if hasattr(fetcher, "fetch") else None
    if response is not None:
        assert response.read() == b"hi"
    with pytest.raises(report.FetchRefused):
        fetcher("http://example.com/")


@pytest.mark.skipif(shutil.which("pdfinfo") is None, reason="pdfinfo not installed")
def test_letter_paper(tmp_path: Path) -> None:
    path = tmp_path / "letter.pdf"
    report.write_pdf("<style>@page { size: A4; margin: 1cm }</style><h1>t</h1>", path, paper="letter")
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    assert "612 x 792" in info


def test_write_report_files(evil: tuple[ExperimentResult, dict[str, Path]]) -> None:
    result, paths = evil
    assert {p.name for p in paths.values()} == {"report.html", "report.pdf", "summary.json", "series.csv", "summary.md"}
    out_dir = paths["html"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in paths.values())  # no temp files
    assert paths["pdf"].read_bytes().startswith(b"%PDF")
    summary = _strict_json(paths["json"].read_text(encoding="utf-8"))
    assert set(summary) == {"schema_version", "tool", "version", "kind", "created", "command", "model", "dataset",
                            "config", "environment", "duration_seconds", "missing", "runs", "comparisons",
                            "accuracy"}
    assert summary["schema_version"] == 3 and summary["kind"] == "experiment" and summary["model"] == "mlp"
    assert summary["created"].endswith("Z") and summary["missing"] == ["xavier/seed0"]
    run = summary["runs"][0]
    assert run["initializer"] == EVIL_LABEL and run["status"] == "ok"
    assert [h["epoch"] for h in run["history"]] == [1, 2]
    fc1 = run["layers"][0]
    assert fc1["name"] == "fc1" and math.isclose(fc1["activation_variance_init"], 1.0)
    assert math.isclose(fc1["weight_variance_init"], 0.125) and math.isclose(fc1["gradient_variance_init"], 0.64e-4)
    assert run["layers"][1]["weight_variance_init"] is None
    assert summary["accuracy"][EVIL_LABEL]["ci_low"] is None  # NaN -> null
    assert summary["comparisons"][0]["significant"] is True
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == len(result.frame) and list(csv.columns) == list(result.frame.columns)


def test_unwritable_output_dir(tmp_path: Path, result: ExperimentResult) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as info:
        report.write_report(result, blocker / "out", formats=("json",))
    assert "\n" not in str(info.value) and str(blocker / "out") in str(info.value)


def test_no_finished_run_still_renders() -> None:
    empty = replace(fixed_result(), runs=(), comparisons=(), accuracy={}, missing=("he/seed0", "zeros/seed0"))
    html = report.render_html(report.build_context(empty))
    assert "Partial report" in html and "<li>zeros/seed0</li>" in html and "No findings" in html


def test_audit_variant_reuses_the_context() -> None:
    result = fixed_result()
    ctx = replace(fixed_context(), kind="audit", accuracy=None, loss=None,
                  layer_tables=(report.layer_table(result.runs[0]),))
    html = report.render_html(ctx)
    assert '<section id="accuracy">' not in html and '<section id="layers">' in html
    assert [e.id for e in ctx.toc][:3] == ["summary", "layers", "signal"]
    table = html[html.index('<section id="layers">'):html.index('<section id="signal">')]
    assert "<td>Linear</td>" in table and "0.125" in table  # fc1's weight variance at init


def test_theory_overlay_matches_hand_computation() -> None:
    """He init on fc1 (16x784) -> ReLU -> fc2 (16x16) -> ReLU -> head (10x16), Var(W) = 2/fan_in = 1/8:
    forward gain fan_in x Var(W) x 1/2 = 1 per layer; backward fan_out x Var(W) x 1/2 = 1 (fc2), 0.625 (head)."""
    transitions = [("relu", 1 / 8, (16, 16)), ("relu", 1 / 8, (10, 16))]
    assert variance_profile(2.0, transitions, "forward") == [2.0, 2.0, 2.0]
    assert variance_profile(1e-4, transitions, "backward") == pytest.approx([0.625e-4, 0.625e-4, 1e-4])
    # GELU: fan_in Var(W) E[gelu(z)^2] for z ~ N(0, q=1), integrated here independently of the quadrature
    import numpy as np
    from scipy import integrate, stats

    second_moment = integrate.quad(lambda z: (z * stats.norm.cdf(z)) ** 2 * stats.norm.pdf(z), -np.inf, np.inf)[0]
    assert variance_profile(1.0, [("gelu", 1 / 8, (16, 16))], "forward") == pytest.approx([1.0, 2 * second_moment])


def test_layer_labels_name_the_module() -> None:
    def info(name: str) -> LayerInfo:
        return LayerInfo(name, name, "Conv2d", "weight", 0, "relu", (8, 1, 3, 3))

    assert [report_format.layer_label(info(n)) for n in ("0", "features.3", "0@2", "conv1", "fc")] == \
        ["0 Conv2d", "features.3 Conv2d", "0@2 Conv2d", "conv1", "fc"]


def test_figures_are_vector_with_unique_ids(html: str) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert all("<image" not in s for s in svgs), "raster image inside a figure"
    sections = [s for s in svgs if 'id="answer-' not in s[:s.index(">")]]  # page 1's copies left out
    assert all(s.count("<rect") >= 6 for s in sections[4:]), "heatmap cells are vector rectangles"
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "an id is used twice"
    forward = html[html.index('<figure id="fig-forward">'):html.index('<figure id="fig-backward">')]
    assert "theory (thin dashed)" in forward and "fc1" in forward and "head" in forward


def test_series_stay_distinct_in_grey() -> None:
    styles = [plots.series_style(i) for i in range(4)]
    assert len({(s.linestyle, s.marker) for s in styles}) == 4  # dashes and markers, not colour alone


def test_readme_shows_a_small_screenshot() -> None:
    root = Path(__file__).parent.parent
    assert "](docs/report-page1.png)" in (root / "README.md").read_text(encoding="utf-8")
    png = root / "docs" / "report-page1.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size < 200 * 1024


def test_heatmap_cells_of_one_colour_in_a_row_become_one_rectangle() -> None:
    import numpy as np

    layers, steps = ["a", "b", "c"], list(range(0, 400, 10))
    constant_rows = np.repeat(np.array([[1e-3], [1e-1], [1e1]]), len(steps), axis=1)
    varied = np.tile(np.logspace(-3, 3, len(steps)), (3, 1))  # every cell of a row a different colour

    def cells(matrix: np.ndarray) -> list[tuple[str, str, float, float]]:
        """(y, height, left, right) of each filled rectangle."""
        svg = plots.heatmap_pair([("p", matrix, None)], layers, steps, title="t", salt="h")
        found = re.findall(r'<rect x="([\d.-]+)" y="([\d.-]+)" width="([\d.]+)" height="([\d.]+)" '
                           r'(?:clip-path="[^"]*" )?style="fill:#', svg)
        return [(y, h, float(x), float(x) + float(w)) for x, y, w, h in found]

    grid = cells(varied)
    rows = [key for key in dict.fromkeys((y, h) for y, h, _, _ in grid)
            if sum((y, h) == key for y, h, _, _ in grid) == len(steps)]
    assert len(rows) == len(layers)  # the varied map: one rectangle per cell
    merged = cells(constant_rows)
    for key in rows:  # a constant row: one rectangle, spanning the row of cells
        row = [(left, right) for y, h, left, right in merged if (y, h) == key]
        span = [(left, right) for y, h, left, right in grid if (y, h) == key]
        assert len(row) == 1
        assert row[0][0] == pytest.approx(min(s[0] for s in span), abs=0.02)
        assert row[0][1] == pytest.approx(max(s[1] for s in span), abs=0.02)


def test_a_training_report_shows_the_loss_of_every_step(tmp_path: Path) -> None:
    import json

    import torch
    from torch import nn

    from initdiag.integrations.session import TrainingSession

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    session = TrainingSession(str(tmp_path), every=2, formats=("html", "json"))
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    session.begin(model, x)
    losses = []
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.loss(loss)
        losses.append(float(loss.detach()))
    paths = session.finish(model)
    html = paths["html"].read_text()
    assert '<section id="loss">' in html and 'id="fig-loss"' in html and "one line per run" in html
    summary = json.loads(paths["json"].read_text())
    assert summary["kind"] == "training" and summary["runs"][1]["losses"] == pytest.approx(losses)


def test_summary_md_gives_the_answer_grid_and_findings(tmp_path: Path) -> None:
    result = fixed_result()
    paths = result.write(tmp_path, formats=("md",))
    md = paths["md"].read_text()
    assert md.startswith("## initdiag report: ") and "**Fails**" in md.splitlines()[2]
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| initializer | signal forward |")
    assert any(line.startswith("| zeros | ✗ fail |") for line in table)
    assert "### Findings" in md and "**symmetry** (zeros)" in md


def test_summary_md_of_an_audit_and_of_a_fix(tmp_path: Path) -> None:
    import torch
    from torch import nn

    import initdiag

    torch.manual_seed(0)
    model = nn.Sequential(*(m for _ in range(19) for m in (nn.Linear(32, 32), nn.ReLU())), nn.Linear(32, 10))
    audit = initdiag.audit(model, input_shape=(32,))
    md = audit.write(tmp_path / "audit", formats=("md",))["md"].read_text()
    assert "**Fails**" in md and "vanishing" in md and "**Recommendation**" in md
    fixed = initdiag.fix(model, input_shape=(32,), verify_steps=4)
    md = fixed.write(tmp_path / "fix", formats=("md",))["md"].read_text()
    assert md.startswith("## initdiag fix: ") and "| before |" in md and "| after |" in md
    assert "parameters changed" in md and ("trains better" in md.lower() or "does not train better" in md.lower())


def test_a_long_per_layer_table_prints_only_the_layers_that_matter(tmp_path: Path) -> None:
    """A 40-layer audit: the HTML keeps every layer (the minor ones marked), the PDF's print CSS hides them and
    says how many it left out; the first and last layers and the first and last flagged ones stay."""
    import torch
    from torch import nn

    import initdiag
    from initdiag.report.structure import FLAGGED_ROWS

    torch.manual_seed(0)
    model = nn.Sequential(*(m for _ in range(39) for m in (nn.Linear(16, 16), nn.ReLU())), nn.Linear(16, 4))
    result = initdiag.audit(model, input_shape=(16,))
    html = result.write(tmp_path, formats=("html",))["html"].read_text()
    layers = html[html.index('<section id="layers">'):]
    layers = layers[:layers.index("</section>")]
    rows = re.findall(r"<tr( class=\"minor\")?><td class=\"layers\">([^<]+)</td>", layers)
    assert len(rows) == len(result.runs[0].layers) and rows[0] == ("", "0") and rows[-1][1] == "78"
    minor = sum(1 for m, _ in rows if m)
    order = [la.name for la in result.runs[0].layers]
    flagged = sorted({n for v in result.runs[0].verdicts if v.status != "pass" for n in v.layers}, key=order.index)
    kept = set(flagged[:FLAGGED_ROWS] + flagged[-FLAGGED_ROWS:])  # a flagged vanishing chain is every layer
    assert minor > 0 and all(not m for m, name in rows if name in kept)
    assert f"{minor} of {len(rows)} layers left out here" in layers
    assert "tr.minor { display: none; }" in html and "@media screen { .print-only { display: none; } }" in html
