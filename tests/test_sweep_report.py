"""The sweep report on a real, tiny sweep: deep MLPs at depths 3 and 6 x widths 16 and 32 (ReLU) x he and
xavier x 1 seed, 256 training images, one epoch; all four files written, read back and checked against
the results they came from."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from initdiag.backends import run_experiment
from initdiag.checks import Verdict
from initdiag.config import ExperimentConfig
from initdiag.data import load_mnist
from initdiag.initializers import InitSpec
from initdiag.report import write_report, write_sweep_report
from initdiag.report.sweep import build_sweep_context, render_sweep_html
from initdiag.results import SweepResult, cell_key
from initdiag.sweep_config import SweepConfig, sweep_models
from initdiag.vocab import Signal, Status

DEPTHS, WIDTHS, INITS = (3, 6), (16, 32), ("he", "xavier")
SECTIONS = ("Verdict grid per cell", "Accuracy per cell", "Depth curves", "Width curves", "Provenance")
COMMAND = "initdiag sweep --model deep-mlp --depth 3,6 --width 16,32 --activation relu --init he,xavier"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def sweep() -> SweepResult:
    data = load_mnist(None, "mnist-sample", 256)
    base = ExperimentConfig(initializers=tuple(InitSpec(n) for n in INITS), epochs=1, limit_train=256,
                            record_every=1, dataset="mnist-sample", jobs=1)
    config = SweepConfig(base=base, models=sweep_models("deep-mlp", "3,6", "16,32", "relu"))
    started = datetime.now(UTC)
    cells = tuple(run_experiment(cell, data) for cell in config.cells())
    return SweepResult(config=config, cells=cells, backend="local", started=started,
                       seconds=sum(c.seconds for c in cells), command=COMMAND,
                       environment=dict(cells[0].environment))


@pytest.fixture(scope="module")
def written(sweep: SweepResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(sweep, tmp_path_factory.mktemp("sweep") / "out")


def test_writes_the_five_files(written: dict[str, Path]) -> None:
    assert {k: p.name for k, p in written.items()} == {"html": "report.html", "pdf": "report.pdf",
                                                      "json": "summary.json", "csv": "series.csv", "md": "summary.md"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written.values())
    md = written["md"].read_text()
    assert md.startswith("## initdiag sweep: ") and "| cell | initializer | mean test accuracy |" in md


def test_write_report_dispatches_to_the_sweep_writer(sweep: SweepResult, written: dict[str, Path],
                                                     tmp_path: Path) -> None:
    paths = write_sweep_report(sweep, tmp_path, formats=("json",))
    assert list(paths) == ["json"] and paths["json"].name == "summary.json"
    direct, dispatched = (_strict_json(p.read_text(encoding="utf-8")) for p in (paths["json"], written["json"]))
    assert direct["kind"] == dispatched["kind"] == "sweep"
    assert {k: v for k, v in direct.items() if k != "created"} == {k: v for k, v in dispatched.items()
                                                                    if k != "created"}


def test_html_is_self_contained(written: dict[str, Path]) -> None:
    html = written["html"].read_text(encoding="utf-8")
    assert "<style>" in html and ".badge" in html and "table.sweepgrid" in html  # both stylesheets inline
    for bad in ("http", 'src="/', "src=", "<script", "<link", "<img", "@import", "file:"):
        assert bad not in html, bad
    figures = re.findall(r"<figure\b.*?</figure>", html, flags=re.S)
    assert figures and all("<svg" in f for f in figures)
    assert html.count("<svg") == len(figures)
    for title in SECTIONS:
        assert title in html


def test_grid_has_one_row_per_cell_and_initializer(written: dict[str, Path]) -> None:
    html = written["html"].read_text(encoding="utf-8")
    table = re.search(r'<table class="data grid sweepgrid">(.*?)</table>', html, flags=re.S)
    assert table is not None
    heads = re.findall(r"<th>(.*?)</th>", table.group(1))
    for column in ("signal forward", "signal backward", "symmetry", "dead units", "saturation", "diverged",
                   "training"):
        assert column in heads
    rows = re.findall(r'<tr><th scope="row">deep-mlp</th><td class="num">(\d+)</td><td class="num">(\d+)</td>'
                      r'<td class="cellaxis">(\w+)</td><td class="cellaxis">(\w+)</td>', table.group(1))
    expected = [(str(d), str(w), "relu", i) for d in DEPTHS for w in WIDTHS for i in INITS]
    assert rows == expected
    assert table.group(1).count("<tr>") == len(expected) + 1  # + the header row
    # the answer first: how many cell and initializer rows fail, and what was run
    failing = sum(1 for row in table.group(1).split("<tr>")[2:] if "badge fail" in row)
    answer = re.search(r'<p class="answer (\w+)"><b>(.*?)</b>', html)
    assert answer is not None and "What was run:" in html
    assert (answer.group(1) == "fail") == (failing > 0)
    if failing:
        assert answer.group(2).startswith(f"Fails: {failing} of {len(expected)} cell and initializer rows")


def test_depth_and_width_figures(written: dict[str, Path]) -> None:
    html = written["html"].read_text(encoding="utf-8")
    ids = re.findall(r'<figure id="(fig-[a-z]+-\d+)">', html)
    assert ids == ["fig-depth-0", "fig-depth-1", "fig-width-0", "fig-width-1"]  # one per width, one per depth
    for width in WIDTHS:
        assert f"deep-mlp, width {width}, relu: against depth" in html
    for depth in DEPTHS:
        assert f"deep-mlp, depth {depth}, relu: activation size against width" in html
    for label in ("Forward gain per layer", "Final training loss", "Test accuracy", "width (units per layer)",
                  "depth (Linear layers)", "predicted gain", "weight layer (0 = first)"):
        assert label in html
    assert "No depth curves" not in html and "No width curves" not in html


def test_summary_json(sweep: SweepResult, written: dict[str, Path]) -> None:
    data = _strict_json(written["json"].read_text(encoding="utf-8"))
    assert data["schema_version"] == 3 and data["tool"] == "initdiag" and data["kind"] == "sweep"
    assert data["backend"] == "local" and data["ray_address"] is None and data["command"] == COMMAND
    assert data["config"] == json.loads(json.dumps(sweep.config.to_json()))
    assert data["dataset"]["name"] == "mnist-sample" and data["dataset"]["train_size"] == 256
    assert data["missing"] == [] and data["environment"]["torch"]
    runs = data["runs"]
    assert len(runs) == 8
    assert [(r["depth"], r["width"], r["activation"], r["initializer"], r["seed"], r["backend"]) for r in runs] == [
        (d, w, "relu", i, 0, "local") for d in DEPTHS for w in WIDTHS for i in INITS]
    assert [r["cell"] for r in runs] == [f"deep-mlp-d{d}-w{w}-relu" for d in DEPTHS for w in WIDTHS for _ in INITS]
    for run_json, run in zip(runs, (r for c in sweep.cells for r in c.runs), strict=True):
        assert run_json["test_accuracy"] == pytest.approx(run.test_accuracy)
        assert run_json["status"] == run.status and run_json["failed"] == list(run.failed)
        assert [Verdict.from_json(v).check for v in run_json["verdicts"]] == [v.check for v in run.verdicts]
        assert [e["train_loss"] for e in run_json["history"]] == pytest.approx([e.train_loss for e in run.history])
    assert [c["cell"] for c in data["cells"]] == [cell_key(c.config.model) for c in sweep.cells]
    for cell_json, cell in zip(data["cells"], sweep.cells, strict=True):
        assert set(cell_json["accuracy"]) == set(INITS)
        for init in INITS:
            accs = [r["test_accuracy"] for r in runs if r["cell"] == cell_json["cell"] and r["initializer"] == init]
            assert cell_json["accuracy"][init]["mean"] == pytest.approx(float(np.mean(accs)))
            assert cell_json["accuracy"][init]["n"] == len(accs) == 1
        assert len(cell_json["comparisons"]) == len(cell.comparisons) >= 1
        assert {c["a"] for c in cell_json["comparisons"]} | {c["b"] for c in cell_json["comparisons"]} == set(INITS)


def test_series_csv_names_every_run_by_cell(sweep: SweepResult, written: dict[str, Path]) -> None:
    frame = pd.read_csv(written["csv"])
    expected = {f"deep-mlp-d{d}-w{w}-relu/{i}/seed0" for d in DEPTHS for w in WIDTHS for i in INITS}
    assert set(frame["run"]) == expected
    assert len(frame) == sum(len(r.frame) for c in sweep.cells for r in c.runs)


def test_pdf(written: dict[str, Path]) -> None:
    assert written["pdf"].read_bytes().startswith(b"%PDF")
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext not installed")
    text = subprocess.run(["pdftotext", str(written["pdf"]), "-"], capture_output=True, text=True,
                          check=True).stdout
    for title in SECTIONS:
        assert title in text
    assert "deep-mlp-d6-w32-relu" in text


def test_grid_counts_the_seeds_that_fail(sweep: SweepResult) -> None:
    """A second seed of one cell whose forward signal fails: that cell x initializer shows "fail 1/2"."""
    cell = sweep.cells[0]
    run = next(r for r in cell.runs if r.label == "he")
    bad = tuple(replace(v, status=Status.FAIL, outcome="vanishing")
                if v.family == "signal" and v.signal == Signal.FORWARD else v for v in run.verdicts)
    twin = replace(run, seed=1, name="he/seed1", analysis=replace(run.analysis, verdicts=bad))
    partial = replace(sweep, cells=(replace(cell, runs=(*cell.runs, twin)), *sweep.cells[1:]),
                      missing=("deep-mlp-d3-w16-relu/xavier/seed1",))
    ctx = build_sweep_context(partial)
    row = next(r for r in ctx.grid.rows if r.cell == cell_key(cell.config.model) and r.initializer == "he")
    forward = row.cells[ctx.grid.columns.index("signal forward")]
    assert (forward.status, forward.text) == ("fail", "fail 1/2")
    assert row.cells[ctx.grid.columns.index("symmetry")].text == "pass"
    html = render_sweep_html(ctx)
    assert "fail 1/2" in html and "Partial sweep" in html and "deep-mlp-d3-w16-relu/xavier/seed1" in html


def test_curves_need_two_depths_or_widths(sweep: SweepResult) -> None:
    """One depth and one width: no curves, and the report says which option gives them."""
    one = replace(sweep, cells=sweep.cells[:1], config=replace(sweep.config, models=sweep.config.models[:1]))
    ctx = build_sweep_context(one)
    assert ctx.depth == () and ctx.width == ()
    html = render_sweep_html(ctx)
    assert "No depth curves" in html and "<code>--depth</code>" in html and "<code>--width</code>" in html
    evil = replace(ctx, provenance=replace(ctx.provenance, command='initdiag sweep "<script>alert(1)</script>"'))
    html = render_sweep_html(evil)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
