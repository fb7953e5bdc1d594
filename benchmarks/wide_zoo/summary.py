"""The wide zoo's tally from its JSONL records: per library, then the held-out part alone, then the audit times.

Columns: models (distinct ids), good clean / warned (known-good models with no failing verdict, without and
with warnings), false fails (known-good with a failing verdict), broken caught / total (variants expected to
fail that an audit ran on, and how many failed; ``theory`` variants are counted apart), errors, timeouts,
skipped (all variants). When a (id, variant) was recorded several times, the last record counts.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Tally", "latest", "print_summary", "read", "tally"]

AUDITED = ("clean", "warned", "failed")


def read(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank and unreadable lines left out)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def latest(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (id, variant): the last one."""
    return list({(r["id"], r["variant"]): r for r in records}.values())


@dataclass(frozen=True)
class Tally:
    """One row of the table."""

    name: str
    models: int
    clean: int
    warned: int
    false_fails: int
    good_audited: int
    caught: int
    broken: int
    theory_failed: int
    theory: int
    errors: int
    timeouts: int
    skipped: int


def tally(name: str, records: Sequence[dict[str, Any]]) -> Tally:
    """The counts of ``records`` (already one per (id, variant))."""
    good = [r for r in records if r["expect"] == "passes" and r["status"] in AUDITED]
    broken = [r for r in records if r["expect"] == "fails" and r["status"] in AUDITED]
    theory = [r for r in records if r["expect"] == "theory" and r["status"] in AUDITED]
    return Tally(name, len({r["id"] for r in records}), sum(r["status"] == "clean" for r in good),
                 sum(r["status"] == "warned" for r in good), sum(r["status"] == "failed" for r in good), len(good),
                 sum(r["status"] == "failed" for r in broken), len(broken),
                 sum(r["status"] == "failed" for r in theory), len(theory),
                 sum(r["status"] == "error" for r in records), sum(r["status"] == "timeout" for r in records),
                 sum(r["status"] == "skipped" for r in records))


_HEADER = (f"{'':12} {'models':>6} {'clean':>6} {'warned':>6} {'false fails':>11} {'broken caught':>13} "
           f"{'theory':>7} {'errors':>6} {'timeouts':>8} {'skipped':>7}")


def _row(t: Tally) -> str:
    return (f"{t.name:12} {t.models:6} {t.clean:6} {t.warned:6} {t.false_fails:5}/{t.good_audited:<5} "
            f"{t.caught:6}/{t.broken:<6} {t.theory_failed:3}/{t.theory:<3} {t.errors:6} {t.timeouts:8} "
            f"{t.skipped:7}")


def _table(title: str, records: Sequence[dict[str, Any]]) -> list[str]:
    libs = list(dict.fromkeys(r["library"] for r in records))
    rows = [_row(tally(lib, [r for r in records if r["library"] == lib])) for lib in libs]
    return [title, _HEADER, *rows, _row(tally("all", records))]


def _times(records: Sequence[dict[str, Any]]) -> list[str]:
    timed = [r for r in records if r["status"] in AUDITED]
    if not timed:
        return ["audit seconds: none audited"]
    slowest = max(timed, key=lambda r: r["audit_s"])
    return [f"audit seconds: median {statistics.median(r['audit_s'] for r in timed):.1f} over {len(timed)}; "
            f"slowest {slowest['audit_s']:.1f} ({slowest['id']} {slowest['variant']})"]


def _details(records: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        if r["expect"] == "passes" and r["status"] == "failed":
            checks = ", ".join(f"{f['check']}:{f['outcome']}" for f in r["failing"])
            lines.append(f"  false fail    {r['id']:44} {checks}")
        elif r["expect"] == "fails" and r["status"] in ("clean", "warned"):
            lines.append(f"  missed        {r['id']:44} {r['variant']} ({r['status']})")
        elif r["status"] == "error" and r["phase"] in ("audit", "child"):
            lines.append(f"  {r['phase']} error  {r['id']:44} {r['variant']}: {r['error'][:110]}")
    return lines


def print_summary(path: Path) -> None:
    """Print the tables of ``path``: every library, the held-out part, the audit times, then the false fails,
    the broken variants missed and the errors of the audit itself (build errors are the catalogue's)."""
    records = latest(read(path))
    lines = _table(f"wide zoo: {len(records)} records from {path}", records)
    held = [r for r in records if r["held_out"]]
    lines += ["", *_table("held-out part", held)] if held else []
    lines += ["", *_times(records)]
    details = _details(records)
    lines += ["", "findings:", *details] if details else []
    print("\n".join(lines))
