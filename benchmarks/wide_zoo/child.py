"""One model of the wide zoo, in its own process: build each variant, audit it, print one record per variant.

Run by :mod:`.run` as ``python -m benchmarks.wide_zoo.child ID VARIANT...`` (one torch thread). Each line of
the protocol on stdout starts with :data:`MARK` and holds JSON: ``{"event": "start", "variant": ...}`` before a
variant (the parent restarts its time cap there) and ``{"event": "result", "record": {...}}`` after it; the
model's own prints are other lines. :func:`run_variant` is also usable in-process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from .catalog import ModelSpec, by_id
from .variants import EXPECT, prepare

__all__ = ["MARK", "base_record", "first_line", "main", "run_variant"]

MARK = "@@wide_zoo "


def first_line(exc: BaseException) -> str:
    """``Type: first non-empty line of the message``, at most 300 characters."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


def base_record(spec: ModelSpec, variant: str) -> dict[str, Any]:
    """The fields every record of (``spec``, ``variant``) has, with the variant's default expectation."""
    return {"id": spec.id, "library": spec.library, "kind": spec.kind, "variant": variant,
            "held_out": spec.held_out, "expect": EXPECT.get(variant, "fails"), "status": "", "failed": [],
            "failing": [], "warning": [], "error": "", "phase": "", "why": "", "note": "",
            "build_s": 0.0, "audit_s": 0.0}


def _verdicts(result: Any) -> dict[str, Any]:
    """Status and failing/warning verdicts of the audit's first run (the model as it is: ``keep``)."""
    run = result.runs[0]
    failing = [{"check": str(v.check), "outcome": str(v.outcome), "message": v.message[:400]}
               for v in run.verdicts if v.status == "fail"]
    warning = [{"check": str(v.check), "outcome": str(v.outcome), "message": v.message[:400]}
               for v in run.verdicts if v.status == "warn"]
    status = "failed" if failing else "warned" if warning else "clean"
    return {"status": status, "failed": list(run.failed), "failing": failing, "warning": warning}


def run_variant(spec: ModelSpec, variant: str) -> dict[str, Any]:
    """Build ``spec``, make it ``variant``, audit it; one record (see :mod:`.run` for the fields). Never raises
    for the model's sake: a builder that needs a missing package gives ``skipped``, any other exception
    ``error`` with the phase (``build`` or ``audit``) and its first line."""
    import initdiag

    rec = base_record(spec, variant)
    if spec.skip:
        return {**rec, "status": "skipped", "why": spec.skip}
    start = time.perf_counter()
    torch.manual_seed(0)  # the library's init draws from the global generator: the same weights every run
    try:
        prepared = prepare(variant, spec.build())
        kwargs = spec.audit_kwargs(prepared.model)
    except ImportError as exc:
        return {**rec, "status": "skipped", "why": f"needs a package: {first_line(exc)}",
                "build_s": time.perf_counter() - start}
    except Exception as exc:
        return {**rec, "status": "error", "phase": "build", "error": first_line(exc),
                "build_s": time.perf_counter() - start}
    rec.update(expect=prepared.expect, note=prepared.note, build_s=time.perf_counter() - start)
    if prepared.skip:
        return {**rec, "status": "skipped", "why": prepared.skip}
    example = kwargs.pop("example_input", None)
    audited = time.perf_counter()
    try:
        result = initdiag.audit(prepared.model, example, **kwargs)
    except Exception as exc:
        return {**rec, "status": "error", "phase": "audit", "error": first_line(exc),
                "audit_s": time.perf_counter() - audited}
    growth = _stream_growth(result.runs[0]) if variant == "no_norm_he" else None
    if growth is not None and growth < 100:
        rec.update(expect="theory", note=f"{rec['note']}; the stream's variance grows {growth:.3g}x from the first "
                   "block's input to the last block's output, under the 100x the checks need")
    return {**rec, **_verdicts(result), "audit_s": time.perf_counter() - audited}


def _stream_growth(run: Any) -> float:
    """The raw change of the residual stream's variance, entering the first block to leaving the last, at the
    first training step (0 without blocks): what theory's geometric growth must reach for a ``no_norm_he``
    variant to be broken by the checks' 100x."""
    blocks = run.structure.blocks if run.structure is not None else ()
    if not blocks:
        return 0.0
    from initdiag.series import first_step_values

    var = first_step_values(run.series, "forward")
    first, last = var.get(f"{blocks[0].name}:in"), var.get(blocks[-1].name)
    return last / first if first and last is not None and first > 0 else 0.0


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """``ID VARIANT...``: each variant of the spec ``ID``, one record each, on one torch thread."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m benchmarks.wide_zoo.child ID VARIANT...", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    spec = by_id([args[0]])[0]
    for variant in args[1:]:
        _emit({"event": "start", "variant": variant})
        _emit({"event": "result", "record": run_variant(spec, variant)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
