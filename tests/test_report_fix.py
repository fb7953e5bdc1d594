"""A fix's report on a hand-built :class:`FixResult` of two real audits: a 6-layer ReLU MLP at N(0, 1) (``before``,
exploding) and the same rescaled to He (``after``), its changes, and a made-up verification training."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import initdiag
from initdiag import report
from initdiag.config import FixConfig
from initdiag.report.format import fmt
from initdiag.report.repair import loss_plot, repair_section
from initdiag.results import FixResult, ParamChange, Verification

WIDTH, DEPTH, STEPS = 32, 6, 20
EVIL_RULE = "He: std = sqrt(2 / fan_in) <script>alert(1)</script>"


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.0)
    return model


def _std(w: torch.Tensor) -> float:
    return float(w.detach().double().square().mean().sqrt())


def _verification(original: np.ndarray, repaired: np.ndarray) -> Verification:
    return Verification(len(original), original, repaired, "standard normal inputs, random targets", "Adam, lr 0.001")


def _fix(model: nn.Module, before: initdiag.AuditResult, after: initdiag.AuditResult,
         changes: tuple[ParamChange, ...], verification: Verification | None, **kw: Any) -> FixResult:
    return FixResult(config=FixConfig(audit=before.config), target="mlp6", method="theory", model=model,
                     before=before, after=after, changes=changes, rounds=1, started=datetime.now(UTC), seconds=2.5,
                     command="initdiag fix mlp6", verification=verification, **kw)


@pytest.fixture(scope="module")
def fixed() -> FixResult:
    """Repaired: every Linear rescaled from N(0, 1) to He; it passes and trains better."""
    model = _mlp()
    before = initdiag.audit(model, input_shape=(WIDTH,))
    changes = []
    with torch.no_grad():
        for name, m in model.named_children():
            if isinstance(m, nn.Linear):
                old = _std(m.weight)
                m.weight.mul_(math.sqrt(2.0 / WIDTH) / old)
                changes.append(ParamChange(name, f"{name}.weight", old, _std(m.weight), ("signal",),
                                           EVIL_RULE if name == "0" else "He: std = sqrt(2 / fan_in)"))
    after = initdiag.audit(model, input_shape=(WIDTH,))
    steps = np.arange(STEPS)
    verification = _verification(5e3 * np.exp(-steps / 8) + 2.0, 2.3 * np.exp(-steps / 10) + 0.3)
    return _fix(model, before, after, tuple(changes), verification, unrepaired=("`head`: <kept> on purpose",))


@pytest.fixture(scope="module")
def unchanged(fixed: FixResult) -> FixResult:
    """Nothing to repair: the He model as given, audited twice, no change, no verification."""
    return _fix(fixed.model, fixed.after, fixed.after, (), None)


@pytest.fixture(scope="module")
def written(fixed: FixResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fixed.write(tmp_path_factory.mktemp("fix"), ("html", "json"))


@pytest.fixture(scope="module")
def html(written: dict[str, Path]) -> str:
    return written["html"].read_text(encoding="utf-8")


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_summary_json_has_the_fix_fields_and_both_runs(fixed: FixResult, written: dict[str, Path]) -> None:
    data = _strict_json(written["json"].read_text(encoding="utf-8"))
    assert data["kind"] == "fix" and data["model"] == "mlp6"
    assert data["passed"] is True and data["passed_before"] is False and data["changed"] is True
    assert data["method"] == "theory" and data["rounds"] == 1
    assert data["dataset"]["name"] == "normal" and data["dataset"]["batch_shape"] == [16, WIDTH]
    assert [c["param"] for c in data["changes"]] == [c.param for c in fixed.changes]
    assert data["changes"][0]["gain"] == pytest.approx(fixed.changes[0].gain)
    assert data["unconverged"] == [] and data["unrepaired"] == ["`head`: <kept> on purpose"]
    v = data["verification"]
    assert v["steps"] == STEPS and v["improved"] is True and len(v["original"]) == len(v["repaired"]) == STEPS
    assert [r["name"] for r in data["runs"]] == ["before", "after"]
    assert data["config"]["method"] == "theory" and data["config"]["audit"]["inits"] == ["keep"]


def test_summary_json_stays_strict_with_diverged_losses_and_no_verification(fixed: FixResult,
                                                                            unchanged: FixResult) -> None:
    diverged = np.array([2.0, 50.0, math.inf, math.nan] + [math.nan] * (STEPS - 4))
    broken = replace(fixed, verification=_verification(diverged, fixed.verification.repaired))  # type: ignore[union-attr]
    data = _strict_json(json.dumps(report.summary_json(broken), allow_nan=False))
    assert data["verification"]["original"][2] is None and data["verification"]["original_tail"] is None
    assert data["verification"]["improved"] is True
    plain = _strict_json(json.dumps(report.summary_json(unchanged), allow_nan=False))
    assert plain["verification"] is None and plain["changed"] is False and plain["changes"] == []


def test_repair_section_answers_first_then_lists_the_changes(fixed: FixResult, html: str) -> None:
    section = _section(html, "repair")
    assert '<a href="#repair">Repair</a>' in html
    assert html.index('<section id="summary">') < html.index('<section id="repair">') < html.index('id="structure"')
    answer = re.search(r'<div class="banner answer[^"]*"[^>]*>(.*?)</div>', section, re.S)
    assert answer is not None and "The repaired model passes the audit" in answer.group(1)
    assert "It trains better: loss " in answer.group(1) and f"after {STEPS} steps" in answer.group(1)
    assert "1 round of audit and repair" in section and f"{DEPTH} parameters changed" in section
    rows = re.findall(r"<tr><td class=\"layers\">([^<]*)</td><td class=\"layers\">([^<]*)</td>", section)
    assert rows == [(c.layer, c.param) for c in fixed.changes]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script>" not in html
    assert "<code>head</code>: &lt;kept&gt; on purpose" in section
    assert '<figure id="fig-verify">' in section and "<svg" in section and "log scale" in section


def test_both_runs_in_the_grid_the_tables_and_one_variance_plot(fixed: FixResult, html: str) -> None:
    ctx = report.build_context(fixed)
    assert ctx.kind == "fix" and ctx.title == "initdiag fix: mlp6"
    assert [r.label for r in ctx.grid.rows] == ["before", "after"] and ctx.grid.row_heading == "model"
    grid = _section(html, "summary")
    assert '<th scope="row">before</th>' in grid and '<th scope="row">after</th>' in grid
    assert "Use the repaired model" in ctx.recommendation
    assert [t.run for t in ctx.layer_tables] == ["before", "after"]
    inits = {r.name: r.init for r in ctx.layer_tables[1].rows if r.init}
    assert inits["0"] == f"repaired: std x{fmt(fixed.changes[0].gain)}"
    assert {r.init for r in ctx.layer_tables[0].rows} <= {"as given", "PyTorch default", ""}
    assert ctx.signal is not None and ctx.signal.forward is not None
    svg = ctx.signal.forward.svg
    assert ">before<" in svg and ">after<" in svg and ">model<" in svg
    assert ctx.provenance.dataset == "standard normal inputs"


def test_unchanged_model_says_so_in_one_line(unchanged: FixResult) -> None:
    section = _section(report.render_html(report.build_context(unchanged)), "repair")
    assert ("The audit found nothing to repair: the model is unchanged (state_dict bitwise equal)." in section)
    assert "<table" not in section and "<figure" not in section and "Method:" not in section
    assert "Keep the model as it is" in report.build_context(unchanged).recommendation


def test_a_repair_that_still_fails_and_trains_worse_says_so(fixed: FixResult) -> None:
    steps = np.arange(STEPS, dtype=float)
    worse = replace(fixed, after=fixed.before, verification=_verification(2.3 - 0.01 * steps, 2.4 - 0.001 * steps))
    section = repair_section(worse)
    assert section.audit.startswith("The repaired model still fails: exploding (forward)")
    assert section.training.startswith("It does NOT train better: loss ")
    assert section.badge.status == "fail" and section.figure is not None
    assert "linear scale" in section.figure.caption
    html = _section(report.render_html(report.build_context(worse)), "repair")
    assert "banner answer missing" in html and "does NOT train better" in html


def test_loss_plot_is_deterministic_and_marks_a_diverged_run() -> None:
    series = {"original": np.array([1.0, 3.0, math.inf, math.nan]), "repaired": np.array([1.0, 0.8, 0.7, 0.6])}
    one = loss_plot(series, title="t", salt="fig-verify", log=False)
    assert one == loss_plot(series, title="t", salt="fig-verify", log=False)
    assert one.startswith("<svg") and "http" not in one


def test_pdf_renders(fixed: FixResult, tmp_path: Path) -> None:
    pdf = fixed.write(tmp_path, ("pdf",))["pdf"].read_bytes()
    assert len(pdf) > 10_000 and pdf.startswith(b"%PDF")
