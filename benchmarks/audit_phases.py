"""Where the time of ``initdiag.audit`` goes on a big model: its phases, timed from inside, against the plain
forward+backward passes it cannot avoid.

The same audit and plain passes as ``benchmarks/audit.py`` (ResNet-50, 4 batches of 8 at 3 x 128 x 128 by
default), alternated ``--rounds`` times after one warm-up of each, in one process with torch's defaults. The
audit's own functions are wrapped with a timer and nothing else is changed: structure discovery (its forward
of 2 samples), the recorded passes (the 4 forward+backward passes under the recorder, with the first batch's
extra statistics, the first-batch bookkeeping and the series' frame), the checks, the working copy (kept in
place: its SHA-256 and the write marks on entry, the restore on exit) and the pooling of the batches. Inside
the recorded passes, the callbacks' own time: the recorder's forward hooks, its gradient hooks and its reads
after each backward pass (of these, the compiled kernel's calls), and the extra statistics' forward and
backward. What the recorded passes cost beyond the callbacks (torch's slower module calls with hooks, the
caches the reads evict) shows as the passes' time over plain minus the callbacks'.

Prints each phase's median over the rounds and the audit's median time over plain split into them.

    python benchmarks/audit_phases.py                    # torchvision resnet50
    python benchmarks/audit_phases.py --model vgg11_bn --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _measure import Timers
from audit import add_workload_arguments, make_workload, plain_passes
from recorder_phases import instrument_recorder

import initdiag
from initdiag.audit import run as audit_run
from initdiag.recording import extras

_TIMERS = Timers()
_TIMES = _TIMERS.seconds
_timed = _TIMERS.wrap

_PHASES = (
    ("discovery", "structure discovery (a forward of 2 samples)"),
    ("passes", "recorded passes (4 forward+backward, bookkeeping, frame)"),
    ("checks", "checks"),
    ("copy", "working copy (digest and marks on entry, restore on exit)"),
    ("pool", "pooling the batches"),
)
_CALLBACKS = (
    ("forward_hooks", "recorder: forward hooks"),
    ("grad_hooks", "recorder: gradient hooks"),
    ("backward_end", "recorder: weights and gradients after each backward"),
    ("kernel", "  of these three, the compiled kernel's calls"),
    ("extras", "extra statistics of the first batch (forward and backward)"),
)


def _timed_context(label: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        start = time.perf_counter()
        manager = f(*args, **kwargs)
        value = manager.__enter__()
        _TIMES[label] += time.perf_counter() - start
        try:
            yield value
        finally:
            start = time.perf_counter()
            manager.__exit__(None, None, None)
            _TIMES[label] += time.perf_counter() - start
    return wrapper


def _instrument() -> None:
    """Wrap the audit's phases and the recording callbacks with timers (behaviour unchanged)."""
    audit_run._structure = _timed("discovery", audit_run._structure)
    audit_run._record = _timed("passes", audit_run._record)
    audit_run.analyze = _timed("checks", audit_run.analyze)
    audit_run.pool_batches = _timed("pool", audit_run.pool_batches)
    audit_run.working_copy = _timed_context("copy", audit_run.working_copy)
    instrument_recorder(_timed)  # the kernel's calls: the recorder's rows (not the marks' reads)
    setattr(extras.Extras, "forward", _timed("extras", extras.Extras.forward))  # noqa: B010
    setattr(extras.Extras, "backward", _timed("extras", extras.Extras.backward))  # noqa: B010


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser, rounds=7)
    args = parser.parse_args()
    work = make_workload(args, torch.device("cpu"))
    model, shape = work.model, work.shape
    _instrument()

    def audited() -> dict[str, float]:
        _TIMES.clear()
        start = time.perf_counter()
        initdiag.audit(model, input_shape=shape, batches=args.batches, batch_size=args.batch_size)
        return {**_TIMES, "audit": time.perf_counter() - start}

    plain_passes(work)
    audited()
    runs: defaultdict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        for side in (("audit", "plain") if r % 2 == 0 else ("plain", "audit")):
            if side == "plain":
                runs["plain"].append(plain_passes(work))
            else:
                for key, seconds in audited().items():
                    runs[key].append(seconds)
    med = {key: statistics.median(values) for key, values in runs.items()}
    over = med["audit"] - med["plain"]
    print(f"{args.model} {args.batches}x{args.batch_size}x{'x'.join(map(str, shape))} on cpu, "
          f"{torch.get_num_threads()} threads, medians of {args.rounds} rounds")
    print(f"audit {med['audit']:.3f} s, plain passes {med['plain']:.3f} s: {med['audit'] / med['plain']:.2f} x, "
          f"{over:+.3f} s")
    print("phase                                                          seconds   over plain")
    passes_over = med.get("passes", 0.0) - med["plain"]
    for key, text in _PHASES:
        seconds = med.get(key, 0.0)
        extra = passes_over if key == "passes" else seconds
        print(f"  {text:<60} {seconds:7.3f}   {extra:+.3f}")
    rest = med["audit"] - sum(med.get(key, 0.0) for key, _ in _PHASES)
    print(f"  {'the rest (inputs, initializer bookkeeping, advice, result)':<60} {rest:7.3f}   {rest:+.3f}")
    print("inside the recorded passes")
    for key, text in _CALLBACKS:
        print(f"  {text:<60} {med.get(key, 0.0):7.3f}")
    callbacks = sum(med.get(key, 0.0) for key, _ in _CALLBACKS if key != "kernel")
    print(f"  {'the passes over plain beyond the callbacks':<60} {passes_over - callbacks:7.3f}")


if __name__ == "__main__":
    main()
