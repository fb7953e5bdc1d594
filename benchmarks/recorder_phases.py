"""Where the recorder's time goes in a user's loop: each of its callbacks, timed from inside, per recorded step.

The workload of ``benchmarks/user_loop.py``'s paired protocol: the seed CNN, Adam, batches of 64 from the
bundled MNIST sample, torch's default threads; two copies of the model train on the same batches in
alternation (the order swapped every step), one inside ``Recorder(every=...)`` for the whole run. The
recorder's own functions are wrapped with a timer and nothing else is changed: its forward hooks (of which
the registration of the gradient hooks), its gradient hooks, the weights and gradients read once the backward
pass ends (of which the weights' copies kept for the updates), the model's next forward (the last step's
updates; on the torch path the staged rows' batched pass, :mod:`initdiag.recording.staging`), and across them
all the compiled kernel's calls. Each is taken per recorded step (after ``--warmup`` steps), as a median over
the steps, and set against the median plain step: what a recorded step costs beyond plain splits into these
callbacks and the rest (torch calling the hooks, the caches the reads evict).

A callback runs right after the heavy operation that made its tensor, with that operation's data in the caches
and the callback's own code and objects out of them: a push that takes ~5 us in a hot loop takes 25-50 us here.

    python benchmarks/recorder_phases.py [--steps 600] [--every 1]
    INITDIAG_NO_FAST_KERNEL=1 python benchmarks/recorder_phases.py     # the torch path (a GPU's)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _measure import Timers, interval
from torch.nn import functional as F

import initdiag
from initdiag.data import load_mnist
from initdiag.models import seed_cnn
from initdiag.recording import recorder, staging, streams, updates
from initdiag.recording.moments import kernel_status

_TIMERS = Timers()

_PARTS = (
    ("forward_hooks", "forward hooks (outputs read)"),
    ("register", "  of which: gradient hooks registered on the outputs' nodes"),
    ("grad_hooks", "gradient hooks (dL/dy read)"),
    ("backward_end", "weights and gradients read once the backward pass ends"),
    ("copies", "  of which: the weights' copies kept for the updates"),
    ("next_forward", "the model's next forward: the last step's updates, staged rows"),
    ("staging", "  of which: the staged rows' batched pass (torch path)"),
    ("kernel", "the compiled kernel's calls, in all of the above"),
)
_TOP = ("forward_hooks", "grad_hooks", "backward_end", "next_forward")


def instrument_recorder(timed: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap the recorder's callbacks with ``timed(label, f)`` (behaviour unchanged), under the labels of
    :data:`_PARTS` (``audit_phases.py`` reads the audit's recorded passes through the same labels)."""
    rec = recorder.Recorder
    setattr(rec, "_on_grad", timed("grad_hooks", rec._on_grad))  # noqa: B010 (methods: setattr for mypy)
    setattr(rec, "_on_backward_end", timed("backward_end", rec._on_backward_end))  # noqa: B010
    setattr(rec, "_on_root_forward", timed("next_forward", rec._on_root_forward))  # noqa: B010
    setattr(rec, "_hook_gradient", timed("register", rec._hook_gradient))  # noqa: B010
    make = rec._make_forward_hook

    def make_timed(self: Any, module: torch.nn.Module, role: str) -> Callable[..., Any]:
        return timed("forward_hooks", make(self, module, role))
    setattr(rec, "_make_forward_hook", make_timed)  # noqa: B010
    setattr(updates.StepWeights, "_copy", timed("copies", updates.StepWeights._copy))  # noqa: B010
    setattr(staging._Pending, "run", timed("staging", staging._Pending.run))  # noqa: B010
    streams.kernel_row = timed("kernel", streams.kernel_row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="paired steps (each: one plain, one recorded)")
    parser.add_argument("--warmup", type=int, default=100, help="paired steps left out at the start")
    parser.add_argument("--every", type=int, default=1, help="Recorder(every=K): the callbacks of recorded steps")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    instrument_recorder(_TIMERS.wrap)
    data = load_mnist(dataset="mnist-sample")
    torch.manual_seed(0)
    models = [seed_cnn()]
    models.append(copy.deepcopy(models[0]))
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    g = torch.Generator().manual_seed(0)

    def step(k: int, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(models[k](x), y)
        optimizers[k].zero_grad()
        loss.backward()
        optimizers[k].step()
        return time.perf_counter() - start

    plain: list[float] = []
    recorded: list[float] = []
    parts: defaultdict[str, list[float]] = defaultdict(list)
    with initdiag.Recorder(models[1], every=args.every):
        for i in range(args.warmup + args.steps):
            idx = torch.randint(0, len(data.train_x), (args.batch_size,), generator=g)
            x, y = data.train_x[idx], data.train_y[idx]
            times = {}
            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                if k == 1:
                    _TIMERS.clear()
                times[k] = step(k, x, y)
            if i >= args.warmup and (i - args.warmup) % args.every == 0:  # a recorded step of the recorder's
                plain.append(times[0])
                recorded.append(times[1])
                for key, _ in _PARTS:
                    parts[key].append(_TIMERS.seconds.get(key, 0.0))
    ratio, low, high = interval(np.array(recorded) / np.array(plain), np.random.default_rng(0))
    base, over = statistics.median(plain), statistics.median(recorded) - statistics.median(plain)
    print(f"seed CNN, batch {args.batch_size}, every={args.every}, {torch.get_num_threads()} threads, "
          f"{len(plain)} recorded steps; {kernel_status()}")
    print(f"plain step {base * 1e3:.1f} ms, recorded {statistics.median(recorded) * 1e3:.1f} ms: median ratio "
          f"{ratio:.3f} (95% CI {low:.3f}-{high:.3f}), {over * 1e6:+.0f} us")
    print(f"{'callback (medians per recorded step)':<64} {'us':>7} {'% of plain':>11}")
    for key, text in _PARTS:
        us = statistics.median(parts[key]) * 1e6
        print(f"  {text:<62} {us:7.0f} {100 * us * 1e-6 / base:10.1f}%")
    callbacks = statistics.median([sum(parts[k][j] for k in _TOP) for j in range(len(plain))])
    print(f"  {'the callbacks together':<62} {callbacks * 1e6:7.0f} {100 * callbacks / base:10.1f}%")
    rest = over - callbacks
    print(f"  {'the rest (torch calling the hooks, caches)':<62} {rest * 1e6:7.0f} {100 * rest / base:10.1f}%")


if __name__ == "__main__":
    main()
