"""Checks as registered objects: a check registered at runtime from here reaches the analysis, the report's grid
and methods, summary.json and --fail-on without any other file knowing it; and one analysis per run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import initdiag
from initdiag.checks import CHECKS, AnalysisContext, Check, MethodNote, RunAnalysis, Thresholds, Verdict, analyze
from initdiag.cli import main
from initdiag.errors import UsageError
from initdiag.vocab import Need, Status

MODEL_FILE = """
from torch import nn


class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(8, 33), nn.ReLU(), nn.Linear(33, 4))
"""


class OddWidthCheck(Check):
    """A toy check: weight layers whose output width is odd fail (a rule nobody needs; it only has to be new)."""

    name = "odd_width"
    family = "toy"
    title = "Odd layer widths"
    needs = frozenset({Need.FRAME})
    outcomes = ("odd",)
    columns = (("toy", "odd widths"),)

    def run(self, ctx: AnalysisContext) -> list[Verdict]:
        odd = tuple(la.name for la in ctx.evidence.weight_layers
                    if la.weight_shape is not None and la.weight_shape[0] % 2)
        status = Status.FAIL if odd else Status.PASS
        return [Verdict(self.name, None, status.value, odd, None, {"odd_layers": float(len(odd))},
                        f"{len(odd)} weight layer(s) with an odd width.", "Use even widths." if odd else None,
                        outcome="odd" if odd else "")]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (MethodNote(self.name, "Odd widths (a toy check)", "Counts weight layers of odd output width.",
                           "not a statistical test.", "any odd width fails."),)


@pytest.fixture
def toy() -> Iterator[Check]:
    check = CHECKS.register(OddWidthCheck())
    try:
        yield check
    finally:
        CHECKS.unregister(check.name)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 33), nn.ReLU(), nn.Linear(33, 4))


def test_a_check_registered_at_runtime_reaches_analysis_report_summary(toy: Check, tmp_path: Path) -> None:
    result = initdiag.audit(_net(), input_shape=(8,))
    (run,) = result.runs
    (mine,) = [v for v in run.verdicts if v.check == "odd_width"]
    assert (mine.status, mine.outcome, mine.family, mine.layers) == ("fail", "odd", "toy", ("0",))
    assert result.failed(["odd_width"]) == {"odd_width"} and result.failed(["odd"]) == {"odd"}
    result.write(tmp_path, formats=("html", "json"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert any(v["check"] == "odd_width" and v["outcome"] == "odd" for v in summary["runs"][0]["verdicts"])
    assert "odd_width" in summary["runs"][0]["failed"]
    html = (tmp_path / "report.html").read_text()
    assert "odd widths" in html  # the grid's column
    assert "Odd widths (a toy check)" in html  # the methods section
    assert "1 weight layer(s) with an odd width." in html  # the findings


def test_a_check_registered_at_runtime_gates_the_cli(toy: Check, tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(MODEL_FILE)
    args = ["audit", f"{tmp_path / 'net.py'}:Net", "--input-shape", "8", "--format", "json",
            "--out", str(tmp_path / "out")]
    assert main([*args, "--fail-on", "odd_width"]) == 3
    assert main([*args, "--fail-on", "odd"]) == 3
    assert main([*args, "--fail-on", "exploding"]) == 0


def test_fail_on_names_come_from_the_registry(toy: Check) -> None:
    assert {"odd_width", "odd", "vanishing", "signal", "symmetry"} <= set(CHECKS.fail_on_names())
    CHECKS.unregister("odd_width")
    try:
        with pytest.raises(UsageError, match="unknown check 'odd_width'"):
            CHECKS.parse_fail_on(["odd_width"])
    finally:
        CHECKS.register(toy)


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        CHECKS.register(next(iter(CHECKS)))


def test_analysis_is_computed_once_and_read_back() -> None:
    """The theory rows come from the same fits as the verdicts, so custom thresholds agree with them; and a
    stored run's analysis is read back whole (summary.json and the store read it, never recompute)."""
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.ReLU())], nn.Linear(16, 4))
    analysis = initdiag.audit(deep, input_shape=(16,)).runs[0].analysis
    assert analysis.fits is not None and set(analysis.fits) == {"forward", "backward"}
    for row in analysis.theory:
        fit = analysis.fits[row.signal]
        assert (row.measured_gain, row.gain_low) == pytest.approx((fit.gain, fit.gain_low), nan_ok=True)
    back = RunAnalysis.from_json(json.loads(json.dumps(analysis.to_json())))
    assert [(v.check, v.outcome, v.status) for v in back.verdicts] == \
        [(v.check, v.outcome, v.status) for v in analysis.verdicts]
    assert back.theory == analysis.theory and back.profiles == analysis.profiles


def test_custom_thresholds_reach_the_theory_rows() -> None:
    """A narrower confidence level gives narrower intervals in the verdicts and the theory rows alike."""
    from initdiag.checks import RunEvidence
    from initdiag.recording import Recorder

    torch.manual_seed(1)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.Tanh())], nn.Linear(32, 4))
    with Recorder(model, run="r", initializer="keep", seed=0) as rec:
        model(torch.randn(64, 32)).square().mean().backward()
    weight_vars = {n: float(m.weight.detach().var(unbiased=False)) for n, m in model.named_modules()
                   if isinstance(m, nn.Linear)}
    ev = RunEvidence("r", "keep", rec.frame(), tuple(rec.layers()), {}, {}, torch.zeros(1).numpy(),
                     weight_vars=weight_vars)
    wide, narrow = analyze(ev, Thresholds(alpha=0.01)), analyze(ev, Thresholds(alpha=0.5))
    for a in (wide, narrow):
        (fwd,) = [t for t in a.theory if t.signal == "forward"]
        assert a.fits is not None and fwd.gain_low == pytest.approx(a.fits["forward"].gain_low)
    w = next(t for t in wide.theory if t.signal == "forward")
    n = next(t for t in narrow.theory if t.signal == "forward")
    assert w.gain_low is not None and n.gain_low is not None and w.gain_low < n.gain_low
