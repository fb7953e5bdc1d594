"""Presentation of a :class:`~initdiag.compare.Comparison`: one list of tables (:func:`sections`), rendered as
Markdown for a pull-request comment (:func:`markdown`) and as a self-contained HTML page (:func:`html`: a small
autoescaped Jinja2 template, inline CSS, no external URL)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TextIO

import jinja2

from .compare import Comparison, VerdictChange, compare, load_summary, to_json
from .errors import OutputError, UsageError

__all__ = ["MAX_ROWS", "Section", "cmd_compare", "html", "markdown", "sections", "to_markdown"]

MAX_ROWS = 40
"""Rows per table at most in Markdown and HTML (``compare.json`` holds them all)."""
_MAX_LAYERS = 6
_MAX_MESSAGE = 140


@dataclass(frozen=True)
class Section:
    """One table: a title, a sentence on the rule it shows, column headers, rows of plain text."""

    title: str
    note: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    more: int = 0


def _layers(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:_MAX_LAYERS])
    return shown + (f" (+{len(names) - _MAX_LAYERS})" if len(names) > _MAX_LAYERS else "")


def _short(text: str) -> str:
    first = text.split(". ")[0].strip()
    return first if len(first) <= _MAX_MESSAGE else first[:_MAX_MESSAGE - 3] + "..."


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _ratio(x: float | None) -> str:
    return "from 0" if x is None else f"{x:.3g}x"


def _verdict_rows(changes: tuple[VerdictChange, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple((v.run, v.check, v.outcome, v.signal or "-", f"{v.base} -> {v.new}", _layers(v.layers),
                  _short(v.message)) for v in changes)


def _section(title: str, note: str, headers: tuple[str, ...], rows: tuple[tuple[str, ...], ...]) -> Section:
    return Section(title, note, headers, rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS))


def sections(c: Comparison) -> list[Section]:
    """The tables of ``c`` that have rows, in reading order: regressions first."""
    vh = ("run", "check", "outcome", "signal", "status", "layers", "message")
    out = [
        _section("Newly failing or warning in NEW", "Verdicts keyed by (run, check, outcome, signal); a verdict "
                 "absent from a summary counts as pass.", vh, _verdict_rows(c.worse)),
        _section("Resolved in NEW", "Warned or failed in BASE, better in NEW (message: BASE's).", vh,
                 _verdict_rows(c.resolved)),
        _section("Accuracy", f"Test accuracy where both trained. Pooled two-proportion z-test, H0: equal accuracy, "
                 f"two-sided, significant when p < {c.alpha:g} (conservative for a shared test set).",
                 ("run", "BASE", "NEW", "difference", "z", "p-value", "significant"),
                 tuple((a.run, f"{a.base:.2%}", f"{a.new:.2%}", f"{a.difference:+.2%}", _g(a.z),
                        "-" if a.p_value is None else f"{a.p_value:.3g}",
                        "-" if a.significant is None else ("yes" if a.significant else "no")) for a in c.accuracy)),
        _section("Layer variances at initialization", f"Changed when NEW/BASE >= {c.factor:g} or <= 1/{c.factor:g}: "
                 "a ratio threshold, not a test (summary.json has no per-layer intervals).",
                 ("run", "layer", "statistic", "BASE", "NEW", "NEW/BASE"),
                 tuple((x.run, x.layer, x.stat.removesuffix("_init"), _g(x.base), _g(x.new), _ratio(x.ratio))
                       for x in c.layers)),
        _section("Weight layers", f"Added or removed (by name), or re-initialized: weight variance ratio beyond "
                 f"{c.factor:g}x.", ("run", "layer", "change", "BASE variance", "NEW variance", "NEW/BASE"),
                 tuple((w.run, w.layer, w.change, _g(w.base), _g(w.new), "-" if w.change != "reinitialized"
                        else _ratio(w.ratio)) for w in c.weights)),
    ]
    if c.runs_added or c.runs_removed:
        out.append(_section("Runs", "Runs only one side has (not compared).", ("run", "only in"),
                            tuple((r, "NEW") for r in c.runs_added) + tuple((r, "BASE") for r in c.runs_removed)))
    return [s for s in out if s.rows]


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(c: Comparison) -> str:
    """The verdict line, what was compared, then one Markdown table per section."""
    lines = [c.verdict_line(), "", f"Compared `{_cell(c.base)}` (BASE) with `{_cell(c.new)}` (NEW): "
             f"{c.kind}, runs {', '.join(f'`{r}`' for r in c.runs) or 'none in common'}.", ""]
    for s in sections(c):
        lines += [f"### {s.title}", "", s.note, "", "| " + " | ".join(s.headers) + " |",
                  "|" + "---|" * len(s.headers)]
        lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in s.rows]
        lines += [f"\n... and {s.more} more rows (compare.json has all).", ""] if s.more else [""]
    return "\n".join(lines).rstrip() + "\n"


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>initdiag compare</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;
font-size:.9em}th{background:#f3f3f3}.note{color:#555}.verdict{font-size:1.2em}</style></head>
<body><h1>initdiag compare</h1>
<p class="verdict"><strong>{{ head }}</strong>{{ rest }}</p>
<p>Compared <code>{{ c.base }}</code> (BASE) with <code>{{ c.new }}</code> (NEW): {{ c.kind }},
runs {{ c.runs | join(", ") or "none in common" }}.</p>
{% for s in sections %}<h2>{{ s.title }}</h2><p class="note">{{ s.note }}</p>
<table><tr>{% for h in s.headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in s.rows %}<tr>{% for x in row %}<td>{{ x }}</td>{% endfor %}</tr>
{% endfor %}</table>{% if s.more %}<p>... and {{ s.more }} more rows (compare.json has all).</p>{% endif %}
{% endfor %}</body></html>
"""


@cache
def _template() -> jinja2.Template:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_TEMPLATE)


def html(c: Comparison) -> str:
    """A self-contained page: the verdict line and the tables of :func:`sections`, autoescaped."""
    line = c.verdict_line()
    head, _, rest = line.removeprefix("**").partition("**")
    return _template().render(c=c, head=head, rest=rest, sections=sections(c))


def to_markdown(c: Comparison) -> str:
    """The comparison as Markdown for a pull-request comment: the verdict line, then tables."""
    return markdown(c)


def _formats(text: str | None, out: Path | None) -> tuple[str, ...]:
    known = ("md", "json", "html")
    items = tuple(dict.fromkeys(t.strip().lower() for t in (text or "md,json,html").split(",") if t.strip()))
    for item in items:
        if item not in known:
            raise UsageError(f"unknown format '{item}' for compare; choose from {', '.join(known)}")
    if not items:
        raise UsageError("--format needs at least one of md, json, html")
    if out is None and len(items) > 1:
        return ("md",)
    return items


def cmd_compare(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``initdiag compare BASE NEW``: print the Markdown (or the one ``--format``) or, with ``--out``, write
    ``compare.{md,json,html}``; exit 3 when NEW fails a ``--fail-on`` check BASE did not fail, else 0."""
    from .commands import EXIT_CHECK_FAILED, EXIT_OK
    from .config import parse_fail_on
    from .step_summary import append_step_summary

    fail_on = parse_fail_on(args.fail_on) if args.fail_on else ()
    dest: Path | None = args.out
    formats = _formats(args.format, dest)
    result = compare(load_summary(args.base), load_summary(args.new), float(args.factor),
                     (str(args.base), str(args.new)))
    render = {"md": lambda: to_markdown(result),
              "json": lambda: json.dumps(to_json(result), indent=2, allow_nan=False) + "\n",
              "html": lambda: html(result)}
    if "md" in formats:
        append_step_summary(to_markdown(result))
    if dest is None:
        out.write(render[formats[0]]())
    else:
        written = []
        for fmt in formats:
            path = dest / f"compare.{fmt}"
            try:
                dest.mkdir(parents=True, exist_ok=True)
                path.write_text(render[fmt](), encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
            written.append(str(path))
        out.write(result.verdict_line() + "\n" + "".join(f"wrote {p}\n" for p in written))
    regressions = result.regressions(fail_on)
    if regressions:
        err.write(f"initdiag: NEW fails {', '.join(sorted({v.check for v in regressions}))}, which BASE did not\n")
    return EXIT_CHECK_FAILED if regressions else EXIT_OK
