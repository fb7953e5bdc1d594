"""Page 1 of every report: the answer first.

What was run (the command, the data, the runs), the verdict in one line, the failing and warning findings one
line each (check, run, where, the measurement, the advice) and the one or two figures that show them: the
kind's main figure first (an experiment's accuracy, a fix's verification training, a training's loss), then
the figure of each failing check family (the signal's per-layer profile in the failing direction, the
residual stream, a part of "what variance cannot see"), else an audit's per-layer variance. The same figures
stay in their sections in the HTML; the PDF prints them once, here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..vocab import Status
from .context import AccuracySection, Figure, Finding, FindingGroup, Provenance, RepairSection, SignalSection
from .format import RANK

__all__ = ["ANSWER_FIGURES", "ANSWER_FINDINGS", "Answer", "AnswerLine", "answer_section", "first_sentence"]

ANSWER_FINDINGS = 6
"""Findings page 1 lists at most (the worst first); the rest are counted and are under Findings."""

ANSWER_FIGURES = 2
"""Figures page 1 shows at most."""


def first_sentence(text: str, limit: int = 220) -> str:
    """The first sentence of ``text`` (whitespace folded), or its first ``limit`` characters and an ellipsis."""
    text = re.sub(r"\s+", " ", text).strip()
    cut = text.find(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit] + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class AnswerLine:
    """One failing or warning finding in one line."""

    finding: Finding
    text: str
    advice: str


@dataclass(frozen=True)
class Answer:
    """Page 1: ``what`` was run, the ``verdict`` in a sentence, ``lines`` (at most :data:`ANSWER_FINDINGS`),
    ``more`` findings not listed, ``figures`` (copies with ids prefixed ``answer-``) and ``shown``: the ids of
    the section figures they copy (hidden in print, where page 1 has them)."""

    what: str
    verdict: str
    status: str
    lines: tuple[AnswerLine, ...]
    more: int
    figures: tuple[Figure, ...]
    shown: tuple[str, ...]


def _verdict(found: Sequence[Finding], runs: int) -> tuple[str, str]:
    failing = sum(f.badge.status == Status.FAIL for f in found)
    warning = sum(f.badge.status == Status.WARN for f in found)
    warned = f"{warning} warning{'s' if warning != 1 else ''}"
    over = f" over {runs} runs" if runs > 1 else ""
    if failing:
        also = f" and {warned}" if warning else ""
        return Status.FAIL, f"Fails: {failing} failing finding{'s' if failing != 1 else ''}{also}{over}."
    if warning:
        return Status.WARN, f"Passes with {warned}{over}: no failing finding."
    return Status.PASS, f"Passes: every check passed{over}."


def _figures(found: Sequence[Finding], signal: SignalSection | None, blind: Sequence[object],
             main: Figure | None) -> list[Figure]:
    out: list[Figure | None] = [main]
    if signal is not None:
        chains = [f for f in found if f.family.startswith("signal") and "stream" not in f.check]
        if any("backward" not in f.family for f in chains):
            out.append(signal.forward)
        if any("backward" in f.family for f in chains):
            out.append(signal.backward)
        if any("stream" in f.check for f in found) and signal.stream:
            out.append(signal.stream[0])
    for part in blind:
        figure, rows = getattr(part, "figure", None), getattr(part, "rows", ())
        if figure is not None and any(r.badge.status != Status.PASS for r in rows):
            out.append(figure)
    if signal is not None:
        out.append(signal.forward)
    seen: dict[str, Figure] = {}
    for fig in out:
        if fig is not None and fig.id not in seen:
            seen[fig.id] = fig
    return list(seen.values())[:ANSWER_FIGURES]


def answer_section(provenance: Provenance, runs: Sequence[str], findings: Sequence[FindingGroup],
                   signal: SignalSection | None, blind: Sequence[object], accuracy: AccuracySection | None,
                   repair: RepairSection | None, loss: Figure | None = None, what: str = "") -> Answer:
    """Page 1 of a report from the sections already built (see the module docstring). The kind's main figure:
    a fix's verification, an experiment's accuracy, a training's loss; ``what`` replaces the generic line of
    what was run."""
    last = runs[-1] if repair is not None and runs else None  # a fix: what still fails after the repair first
    found = sorted((f for g in findings for f in g.findings if f.badge.status != Status.PASS),
                   key=lambda f: (f.run != last, -RANK[f.badge.status]))
    status, verdict = _verdict(found, len(runs))
    if repair is not None:
        status, verdict = repair.badge.status, " ".join(t for t in (repair.audit, repair.training) if t)
    data = f"{provenance.dataset} ({provenance.source})" if provenance.dataset not in ("", "—") else ""
    what = what or (f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({', '.join(runs)})"
            + (f" on {data}" if data else "") + f", seed{'s' if ',' in provenance.seeds else ''} "
            f"{provenance.seeds}, in {provenance.duration}.")
    lines = tuple(AnswerLine(f, first_sentence(f.message, 180), first_sentence(f.advice, 120) if f.advice else "")
                  for f in found[:ANSWER_FINDINGS])
    main = repair.figure if repair is not None else accuracy.figure if accuracy is not None else loss
    figures = _figures(found, signal, blind, main)
    return Answer(what, verdict, status, lines, max(len(found) - ANSWER_FINDINGS, 0),
                  tuple(_copy(fig) for fig in figures), tuple(fig.id for fig in figures))


def _copy(fig: Figure) -> Figure:
    """``fig`` under new ids: its own and every id inside its SVG (clip paths, glyphs) and the references to
    them prefixed ``answer-``, so no id of the page is used twice."""
    svg = re.sub(r'(\bid="|url\(#|href="#)', r"\1answer-", fig.svg)
    return replace(fig, id=f"answer-{fig.id}", svg=svg)
