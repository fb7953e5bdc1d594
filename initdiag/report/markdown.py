"""``summary.md``: a report's answer in Markdown, short enough for a pull-request comment or a chat message.

The answer first (what was run and whether anything fails), then the verdict grid as a table, the failing and
warning findings one line each (check, run, where, the measurement, the advice), and the recommendation. The
numbers are the report's; the HTML and PDF hold the figures and the per-layer detail.
"""

from __future__ import annotations

import re
from typing import Any

from ..results import FixResult, Result, SweepResult
from ..vocab import ResultKind, Status
from .answer import first_sentence
from .build import KINDS, _findings, _grid
from .format import RANK
from .repair import repair_recommendation, training_answer
from .sweep_summary import sweep_summary_json

__all__ = ["MAX_FINDINGS", "summary_markdown", "sweep_markdown"]

MAX_FINDINGS = 12
"""Findings listed at most (the worst first); the rest are counted."""

_SYMBOL: dict[str, str] = {Status.PASS: "✓ pass", Status.WARN: "▲ warn", Status.FAIL: "✗ fail"}


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: pipes escaped, newlines folded."""
    return re.sub(r"\s+", " ", str(text)).replace("|", "\\|").strip()


def _answer(result: Result, failing: int, warning: int) -> str:
    if result.kind == ResultKind.FIX:
        fix = result if isinstance(result, FixResult) else None
        if fix is not None:
            return repair_recommendation(fix)
    warned = f"{warning} warning{'s' if warning != 1 else ''}"
    if failing:
        return f"**Fails**: {failing} failing verdict{'s' if failing != 1 else ''}, {warned}."
    return f"**Passes**: no failing verdict{f', {warned}' if warning else ''}."


def summary_markdown(result: Result) -> str:
    """The Markdown summary of an experiment, audit, training or fix result (see the module docstring)."""
    kind = KINDS[result.kind]
    runs: Any = result.runs
    multi = kind.multi(result)
    verdicts = [v for r in runs for v in r.verdicts]
    failing = sum(v.status == Status.FAIL for v in verdicts)
    warning = sum(v.status == Status.WARN for v in verdicts)
    lines = [f"## initdiag {kind.title}: {kind.model(result)}", "", _answer(result, failing, warning), "",
             f"`{result.command}` · {result.started.strftime('%Y-%m-%d %H:%M UTC')}", ""]
    if isinstance(result, FixResult) and result.verification is not None:
        lines += [training_answer(result.verification), ""]
    grid = _grid(runs, multi)
    lines += [f"| {kind.series} | " + " | ".join(_cell(c) for c in grid.columns) + " |",
              "|" + " --- |" * (len(grid.columns) + 1)]
    for row in grid.rows:
        lines.append(f"| {_cell(row.label)} | " + " | ".join(_SYMBOL.get(b.status, "– n/a") for b in row.cells)
                     + " |")
    found = sorted((f for g in _findings(runs, multi) for f in g.findings), key=lambda f: -RANK[f.badge.status])
    if found:
        lines += ["", "### Findings", ""]
        for f in found[:MAX_FINDINGS]:
            where = f" at {f.layers}" if f.layers and f.layers != "—" else ""
            advice = f" *Advice*: {first_sentence(f.advice)}" if f.advice else ""
            lines.append(f"- {_SYMBOL.get(f.badge.status, f.badge.status)} **{f.check}** ({f.run}){where}: "
                         f"{first_sentence(f.message)}{advice}")
        if len(found) > MAX_FINDINGS:
            lines.append(f"- … and {len(found) - MAX_FINDINGS} more in report.html")
    recommendation = kind.recommendation(result)
    if recommendation and result.kind != ResultKind.FIX:
        lines += ["", f"**Recommendation**: {first_sentence(recommendation, 400)}"]
    return "\n".join(lines).rstrip() + "\n"


def sweep_markdown(result: SweepResult) -> str:
    """The Markdown summary of a sweep: per cell and initializer, the mean test accuracy with its interval and
    the runs that fail a check."""
    data = sweep_summary_json(result)
    failing: dict[tuple[str, str], int] = {}
    for run in data["runs"]:
        if any(v["status"] == Status.FAIL for v in run["verdicts"]):
            key = (run["cell"], run["initializer"])
            failing[key] = failing.get(key, 0) + 1
    lines = [f"## initdiag sweep: {len(data['cells'])} cells, {len(data['runs'])} runs", "",
             f"`{data['command']}`", "",
             "| cell | initializer | mean test accuracy | 95% CI | n | runs failing a check |",
             "| --- | --- | --- | --- | --- | --- |"]
    for cell in data["cells"]:
        for init, acc in cell["accuracy"].items():
            mean, low, high = acc.get("mean"), acc.get("ci_low"), acc.get("ci_high")
            ci = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "—"
            lines.append(f"| {_cell(cell['cell'])} | {_cell(init)} | {'—' if mean is None else f'{mean:.4f}'} | "
                         f"{ci} | {acc.get('n', 0)} | {failing.get((cell['cell'], init), 0)} |")
    if data.get("missing"):
        lines += ["", f"Missing runs: {', '.join(data['missing'])}"]
    return "\n".join(lines).rstrip() + "\n"
