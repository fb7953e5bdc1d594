"""The zoo (``tests/zoo.py``) through ``initdiag.audit``: does each model get its known answer?

One row per case: name, expected answer, the checks its audit failed and warned (warnings of the signal
checks with their direction), whether that matches, and the seconds to build the model and to audit it.
Then a tally: known-good cases audited clean, broken cases caught, the mismatches. Cases whose optional
package (timm, transformers) is missing are listed as skipped. Usage::

    PYTHONPATH=. python benchmarks/zoo.py [--only NAME,...] [--family F] [--threads N] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

import initdiag

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _zoo() -> Any:
    """``tests/zoo.py`` (this script is also called zoo, so tests/ goes first on the path)."""
    sys.path.insert(0, str(TESTS))
    sys.modules.pop("zoo", None)
    return importlib.import_module("zoo")


@dataclass(frozen=True)
class Row:
    """One case's outcome: ``status`` is "ok", "MISMATCH", "ERROR" or "skipped"."""

    name: str
    family: str
    expect: str
    healthy: bool
    failed: tuple[str, ...]
    warned: tuple[str, ...]
    status: str
    build_s: float
    audit_s: float
    note: str = ""


def run_case(case: Any) -> Row:
    """Build and audit one case; an exception becomes an "ERROR" row."""
    if not case.available():
        return Row(case.name, case.family, case.expect_text(), case.healthy, (), (), "skipped", 0.0, 0.0,
                   f"needs {', '.join(case.missing())}")
    start = time.perf_counter()
    built = start
    try:
        model = case.build()
        built = time.perf_counter()
        result = initdiag.audit(model, **case.audit_kwargs())
    except Exception as exc:
        text = next((line for line in str(exc).splitlines() if line.strip()), "")
        now = time.perf_counter()
        return Row(case.name, case.family, case.expect_text(), case.healthy, (), (), "ERROR", built - start,
                   now - built, f"{type(exc).__name__}: {text[:150]}")
    audited = time.perf_counter()
    failed = sorted({c for run in result.runs for c in run.failed})
    warned = sorted({f"{v.outcome}({v.signal})" if v.signal in ("forward", "backward") else v.outcome
                     for v in result.verdicts if v.status == "warn"})
    status = "ok" if case.matches_failed(failed) else "MISMATCH"
    return Row(case.name, case.family, case.expect_text(), case.healthy, tuple(failed), tuple(warned), status,
               built - start, audited - built)


def _signals(names: tuple[str, ...]) -> str:
    return ",".join(names) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--family", default=None, help="only the cases of this family (resnet, bert, mlp, ...)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--list", action="store_true", help="list the cases (name, family, expect, why) and exit")
    args = parser.parse_args()
    zoo = _zoo()
    try:
        cases = zoo.select([n.strip() for n in args.only.split(",") if n.strip()], args.family)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.list:
        for c in cases:
            print(f"{c.name:32} {c.family:13} {c.expect_text():28} {c.why}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"initdiag zoo: {len(cases)} cases, torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'case':32} {'expect':26} {'failed':26} {'warned':34} {'match':9} {'build s':>7} {'audit s':>7}"
    print(header)
    print("-" * len(header))
    rows: list[Row] = []
    total = time.perf_counter()
    for case in cases:
        row = run_case(case)
        rows.append(row)
        note = f"  {row.note}" if row.note else ""
        print(f"{row.name:32} {row.expect:26} {_signals(row.failed):26} {_signals(row.warned):34} "
              f"{row.status:9} {row.build_s:7.1f} {row.audit_s:7.1f}{note}", flush=True)
    ran = [r for r in rows if r.status != "skipped"]
    good = [r for r in ran if r.healthy]
    bad = [r for r in ran if not r.healthy]
    print()
    print(f"known-good clean: {sum(r.status == 'ok' for r in good)}/{len(good)}")
    print(f"broken caught:    {sum(r.status == 'ok' for r in bad)}/{len(bad)}")
    skipped = [r for r in rows if r.status == "skipped"]
    if skipped:
        print(f"skipped:          {', '.join(f'{r.name} ({r.note})' for r in skipped)}")
    wrong = [r for r in ran if r.status != "ok"]
    print(f"mismatches:       {len(wrong)}")
    for r in wrong:
        got = r.note if r.status == "ERROR" else f"failed {_signals(r.failed)}; warned {_signals(r.warned)}"
        print(f"  {r.name:30} expect {r.expect:24} got {got}")
    print(f"total: {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
