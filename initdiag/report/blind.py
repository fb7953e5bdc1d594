"""The report's section on what variance cannot see: one part per check (output scale, branch scale, attention
entropy, correlation, precision), each with its verdicts and the plot that shows its measurement beside
theory's prediction, read from the verdicts' details (what ``summary.json`` holds too)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..checks import Verdict
from ..vocab import CheckName
from .context import Figure, Finding
from .plots import layer_profile

__all__ = ["BlindSection", "blind_sections"]


@dataclass(frozen=True)
class BlindSection:
    """One check's part: its anchor, title, what it measures, its verdicts and its plot (None without data)."""

    id: str
    title: str
    note: str
    rows: tuple[Finding, ...]
    figure: Figure | None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(float(x)) else None


Series = dict[str, list[float | None]]


def _profile(verdicts: Sequence[tuple[str, Verdict]], points: Callable[[Verdict], list[tuple[str, Any, Any]]]
             ) -> tuple[list[str], Series, Series]:
    """Sites in first-seen order and, per run, the measured and predicted value at each."""
    per_run = {label: points(v) for label, v in verdicts}
    sites = list(dict.fromkeys(site for rows in per_run.values() for site, _, _ in rows))
    measured: Series = {}
    theory: Series = {}
    for label, rows in per_run.items():
        m = {site: _num(a) for site, a, _ in rows}
        t = {site: _num(b) for site, _, b in rows}
        measured[label] = [m.get(s) for s in sites]
        if any(x is not None for x in t.values()):
            theory[label] = [t.get(s) for s in sites]
    return sites, measured, theory


def _attention(v: Verdict) -> list[tuple[str, Any, Any]]:
    return [(r["site"], r["ratio"], r.get("expected_ratio")) for r in v.details.get("sites", ())]


def _branch(v: Verdict) -> list[tuple[str, Any, Any]]:
    return [(f"{b['block']}+{b['add'] + 1}", b["ratio"], None) for b in v.details.get("blocks", ())]


def _correlation(v: Verdict) -> list[tuple[str, Any, Any]]:
    kind = v.details.get("kind", "samples")
    rows = []
    for p in v.details.get("points", ()):
        c, pred = _num(p.get(kind)), _num(p.get("predicted")) if kind == "samples" else None
        rows.append((p["site"], None if c is None else 1.0 - c, None if pred is None else 1.0 - pred))
    return rows


def _precision(v: Verdict) -> list[tuple[str, Any, Any]]:
    return [(site, s.get("max_abs"), None) for site, s in v.details.get("sites", {}).items()]


_PARTS: tuple[tuple[str, str, str, str, Callable[[Verdict], list[tuple[str, Any, Any]]] | None, str], ...] = (
    (CheckName.OUTPUT_SCALE, "Output scale at initialization",
     "The logits' spread over the classes and the first loss against chance (log C), beside the spread theory "
     "predicts from the head's fan-in, weights and input. Large logits start the model confident and wrong.",
     "", None, ""),
    (CheckName.BRANCH_SCALE, "Residual branch scale",
     "Per residual add, the variance the branch adds over the variance of the stream it joins. Far above 1 the "
     "skip path is overwritten; 0 (layer scale, zero-init) and small values (scaled projections) are designs.",
     "Var(branch) / Var(stream) per residual add", _branch, "branch / stream"),
    (CheckName.ATTENTION_ENTROPY, "Attention entropy",
     "Per attention layer, the entropy of the attention weights as a fraction of uniform attention's log n; "
     "dashed: what i.i.d. logits of theory's predicted spread give. Near 0 is one-hot attention: no gradient "
     "reaches the queries and keys.",
     "attention entropy / log n per layer", _attention, "H / log n"),
    (CheckName.CORRELATION, "Correlation between inputs",
     "1 - mean cosine between different inputs (or tokens) per representation: a fall toward 0 means depth maps "
     "them to one point. Dashed: the correlation map's prediction along a chain of layers.",
     "1 - cosine between inputs per representation", _correlation, "1 - cosine"),
    (CheckName.PRECISION, "Precision headroom",
     "The largest |activation| per layer against float16's maximum 65504, and the gradients that would round to "
     "zero in float16.",
     "largest |activation| per layer", _precision, "max |activation|"),
)


def blind_sections(runs: Sequence[tuple[str, Sequence[Verdict], Callable[[Verdict], Finding]]],
                   salt: str, legend: str = "initializer") -> tuple[BlindSection, ...]:
    """One :class:`BlindSection` per check that has a verdict in some run (``runs``: label, verdicts, and how a
    verdict becomes a table row; ``legend``: what a label stands for, the figures' legend title)."""
    out = []
    for check, title, note, plot_title, points, ylabel in _PARTS:
        found = [(label, v, finding) for label, verdicts, finding in runs for v in verdicts if v.check == check]
        if not found:
            continue
        figure = None
        if points is not None:
            sites, measured, theory = _profile([(label, v) for label, v, _ in found], points)
            if sites and any(x is not None for xs in measured.values() for x in xs):
                svg = layer_profile(measured, sites, title=plot_title, ylabel=ylabel, salt=f"{salt}-{check}",
                                    xlabel="site (execution order)", theory=theory or None, legend_title=legend)
                figure = Figure(f"fig-{check}", svg, plot_title[0].upper() + plot_title[1:] + ".")
        out.append(BlindSection(str(check), title, note, tuple(finding(v) for _, v, finding in found), figure))
    return tuple(out)
