"""Run the wide zoo through ``initdiag.audit``: one subprocess per model, a time cap, one JSON line per variant.

Each model runs in its own ``python -m benchmarks.wide_zoo.child`` (one torch thread), so a crash, a hang or a
segfault costs only that model: a variant still running ``--timeout`` seconds after it started is killed
and recorded as ``timeout``; a child that dies mid-variant gives ``error``; the remaining variants go on in a
fresh child. Records are appended to ``--out`` (JSONL) as models finish; ``--summary FILE`` tallies them.
Record fields: id, library, kind, variant, held_out, expect (passes | fails | theory), status (clean,
warned, failed, error, timeout, skipped), failed (check names), failing / warning ({check, outcome,
message}, the message cut at 400 characters), error and phase (build | audit | child), why (skipped), note,
build_s, audit_s. Usage::

    python benchmarks/wide_zoo/run.py --list
    python benchmarks/wide_zoo/run.py --limit 12 --jobs 1
    python benchmarks/wide_zoo/run.py --only timm/resnet10t,hf/bert --variants good,zeros
    python benchmarks/wide_zoo/run.py --summary benchmarks/wide_zoo/results.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run as a script: import the package this file belongs to, then relative imports work
    sys.path.insert(0, str(ROOT))
    __package__ = "benchmarks.wide_zoo"
    importlib.import_module(__package__)

from .catalog import LIBRARIES, ModelSpec, by_id, catalog  # noqa: E402
from .child import MARK, base_record  # noqa: E402
from .summary import print_summary  # noqa: E402
from .variants import VARIANTS, variants_for  # noqa: E402

__all__ = ["DEFAULT_OUT", "main", "run_model", "select"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results.jsonl"
_SIGNALS = {-signal.SIGSEGV: "SIGSEGV", -signal.SIGKILL: "SIGKILL (out of memory?)", -signal.SIGABRT: "SIGABRT",
            -signal.SIGBUS: "SIGBUS"}


def _child_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _lines(stream: Any, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _kill(proc: subprocess.Popen[str]) -> None:
    """Kill the child and everything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _one_child(spec: ModelSpec, pending: list[str], timeout: float, records: list[dict[str, Any]]) -> None:
    """Run one child over ``pending`` (removing each variant from it as it ends), appending to ``records``; a
    variant that times out or dies is recorded and removed too."""
    with tempfile.NamedTemporaryFile("w+", suffix=".stderr") as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.wide_zoo.child", spec.id, *pending], cwd=ROOT,
                                env=_child_env(), stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        current, started = pending[0], time.perf_counter()
        while True:
            try:
                line = lines.get(timeout=max(0.0, started + timeout - time.perf_counter()))
            except queue.Empty:
                _kill(proc)
                if current in pending:  # else its result came and the child hung on its way out
                    records.append({**base_record(spec, current), "status": "timeout", "audit_s": timeout,
                                    "error": f"killed after {timeout:g} s"})
                    pending.remove(current)
                return
            if line is None:
                code = proc.wait()
                if current in pending:
                    why = _SIGNALS.get(code, f"exit code {code}")
                    records.append({**base_record(spec, current), "status": "error", "phase": "child",
                                    "error": f"child died ({why}): {_tail(Path(err.name))}"[:300]})
                    pending.remove(current)
                return
            if not line.startswith(MARK):
                continue
            event = json.loads(line[len(MARK):])
            if event["event"] == "start":
                current, started = event["variant"], time.perf_counter()
            elif event["event"] == "result":
                records.append(event["record"])
                pending.remove(event["record"]["variant"])


def run_model(spec: ModelSpec, variants: Sequence[str], timeout: float) -> list[dict[str, Any]]:
    """Every applicable variant of ``spec``, each in a child process under ``timeout`` seconds; one record
    each. A skipped spec gives its records without starting a process."""
    wanted = list(variants_for(spec.residual, tuple(variants)))
    if spec.skip:
        return [{**base_record(spec, v), "status": "skipped", "why": spec.skip} for v in wanted]
    records: list[dict[str, Any]] = []
    pending = list(wanted)
    while pending:
        _one_child(spec, pending, timeout, records)
    order = {v: i for i, v in enumerate(wanted)}
    return sorted(records, key=lambda r: order[r["variant"]])


def select(only: Sequence[str] = (), library: str | None = None, held_out: bool | None = None,
           limit: int | None = None) -> list[ModelSpec]:
    """The specs to run: ``only`` (ids, in that order) or the catalogue of ``library`` (all by default), kept
    to the held-out part or the rest when ``held_out`` is given, the first ``limit`` of them."""
    specs = by_id(list(only)) if only else catalog([library] if library else None)
    if held_out is not None:
        specs = [s for s in specs if s.held_out == held_out]
    return specs[:limit] if limit is not None else specs


def run_all(specs: Sequence[ModelSpec], variants: Sequence[str], timeout: float, jobs: int, out: Path,
            report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run ``specs`` on ``jobs`` parallel children, appending each model's records to ``out`` as it ends."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, out.open("a") as sink:
        futures = {pool.submit(run_model, spec, variants, timeout): spec for spec in specs}
        for future in as_completed(futures):
            try:
                records = future.result()
            except Exception as exc:  # a fault of the harness for one model must not lose the others' records
                records = [{**base_record(futures[future], v), "status": "error", "phase": "harness",
                            "error": f"{type(exc).__name__}: {exc}"[:300]} for v in variants]
            for rec in records:
                sink.write(json.dumps(rec) + "\n")
                done.append(rec)
                if report is not None:
                    report(rec)
            sink.flush()
    return done


def _progress(rec: dict[str, Any]) -> None:
    checks = ",".join(f"{f['check']}:{f['outcome']}" for f in rec["failing"]) or "-"
    detail = rec["error"] or rec["why"] or checks
    print(f"{rec['id']:44} {rec['variant']:10} {rec['expect']:7} {rec['status']:8} {rec['build_s']:6.1f} "
          f"{rec['audit_s']:6.1f}  {detail}", flush=True)


def _list(specs: Sequence[ModelSpec], variants: Sequence[str]) -> Iterator[str]:
    for s in specs:
        held = "held-out" if s.held_out else "-"
        what = f"skip: {s.skip}" if s.skip else s.note
        yield (f"{s.id:48} {s.kind:16} {held:8} {','.join(variants_for(s.residual, tuple(variants))):30} {what}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated ids (e.g. timm/resnet10t,hf/bert)")
    parser.add_argument("--library", choices=LIBRARIES, default=None, help="only this library's models")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--held-out", dest="held_out", action="store_true", default=None, help="only the held-out ids")
    held.add_argument("--no-held-out", dest="held_out", action="store_false", help="only the ids not held out")
    parser.add_argument("--limit", type=int, default=None, help="only the first N models")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per (model, variant); killed past it")
    parser.add_argument("--jobs", type=int, default=1, help="parallel child processes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file the records are appended to")
    parser.add_argument("--list", action="store_true", help="print the models (id, kind, held-out, variants)")
    parser.add_argument("--summary", type=Path, default=None, metavar="FILE.jsonl", help="print the tally of FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.summary is not None:
        print_summary(args.summary)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"no variant {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    try:
        specs = select([i.strip() for i in args.only.split(",") if i.strip()], args.library, args.held_out,
                       args.limit)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.list:
        for line in _list(specs, variants):
            print(line)
        return 0
    print(f"wide zoo: {len(specs)} models, variants {','.join(variants)}, timeout {args.timeout:g} s, "
          f"{args.jobs} jobs -> {args.out}", flush=True)
    run_all(specs, variants, args.timeout, args.jobs, args.out, _progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
