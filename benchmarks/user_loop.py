"""The recorder as a user meets it: ``initdiag.Recorder`` around their own training loop, torch's defaults.

The README's API example shape on the seed CNN: torch's default thread count, NCHW tensors, the
default heap settings, Adam, batch 64 from the bundled MNIST sample. Blocks of ``--steps`` steps alternate
between plain training and training inside ``with initdiag.Recorder(model, every=K):`` (attached once
per block, its flush and frame inside the timed block, as a loop that attaches once would pay them).
Prints the median ratio of wall time (recorded / plain) over the pairs with a 95% bootstrap interval,
and the same for single steps timed inside the blocks. Then ``--paired`` steps of a second protocol, the
least exposed to the machine's drifts: two copies of the model, one inside the recorder for the whole
run, train on the same batches in alternation (the order swapped every step), and the ratio of each pair
of steps (of each cycle of ``every`` steps) is taken. ``--count-ops``: the torch operations a recorded step
runs beyond a plain one (torch.profiler's count of ATen operations that compute, views left out): on a GPU each
is a kernel launch, so this is the launch count the recorder adds, measured without one. Usage::

    python benchmarks/user_loop.py [--steps 100] [--pairs 8] [--every 1] [--threads N] [--paired 600] [--count-ops]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from _measure import interval
from torch.nn import functional as F

import initdiag
from initdiag.data import MnistData, load_mnist
from initdiag.models import seed_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per block")
    parser.add_argument("--pairs", type=int, default=8, help="(plain, recorded) block pairs, alternated")
    parser.add_argument("--every", type=int, default=1, help="Recorder(every=K)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--paired", type=int, default=600, help="steps of the paired protocol (0: skip it)")
    parser.add_argument("--count-ops", action="store_true", help="also count the operations the recorder adds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(dataset="mnist-sample")
    torch.manual_seed(0)
    model = seed_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def block(steps: int) -> tuple[float, list[float]]:
        start, per_step = time.perf_counter(), []
        for _ in range(steps):
            t = time.perf_counter()
            idx = torch.randint(0, len(data.train_x), (args.batch_size,), generator=g)
            x, y = data.train_x[idx], data.train_y[idx]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            per_step.append(time.perf_counter() - t)
        return time.perf_counter() - start, per_step

    block(20)  # warm-up
    plain: list[float] = []
    recorded: list[float] = []
    step_plain: list[float] = []
    step_recorded: list[float] = []
    rows = 0
    for i in range(args.pairs):
        for kind in (("plain", "recorded") if i % 2 == 0 else ("recorded", "plain")):
            if kind == "plain":
                seconds, steps = block(args.steps)
                plain.append(seconds)
                step_plain += steps
                continue
            start = time.perf_counter()
            with initdiag.Recorder(model, every=args.every) as recorder:
                _, steps = block(args.steps)
            rows = len(recorder.frame())
            recorded.append(time.perf_counter() - start)
            step_recorded += steps
    rng = np.random.default_rng(0)
    print(f"threads={torch.get_num_threads()} every={args.every} steps/block={args.steps} pairs={args.pairs} "
          f"rows per recorded block={rows}")
    ratio = interval(np.array(recorded) / np.array(plain), rng)
    print(f"blocks: recorded / plain wall time, median {ratio[0]:.3f} (95% CI {ratio[1]:.3f}-{ratio[2]:.3f}); "
          f"ms/step plain {1000 * np.median(plain) / args.steps:.1f}, "
          f"recorded {1000 * np.median(recorded) / args.steps:.1f}")
    sp, sr = np.array(step_plain), np.array(step_recorded)
    boot = [np.median(rng.choice(sr, len(sr))) / np.median(rng.choice(sp, len(sp))) for _ in range(2000)]
    low, high = np.percentile(boot, [2.5, 97.5])
    print(f"steps: median step recorded / plain {np.median(sr) / np.median(sp):.3f} (95% CI {low:.3f}-{high:.3f})")
    if args.paired:
        paired(model, data, args, rng)
    if args.count_ops:
        count_ops(model, block)


_VIEWS = frozenset({"aten::as_strided", "aten::view", "aten::slice", "aten::select", "aten::narrow", "aten::reshape",
                    "aten::detach", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::permute",
                    "aten::expand", "aten::alias", "aten::t", "aten::transpose", "aten::squeeze", "aten::unsqueeze",
                    "aten::_reshape_alias", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg"})


def count_ops(model: torch.nn.Module, block: Callable[[int], object], steps: int = 20) -> None:
    """Computing ATen operations per step of ``block`` (the timed loop's own steps; views left out, an
    operation inside another counted too), plain against recorded (``every`` = 1, after a warm-up past the
    buffers' growth)."""
    from torch.profiler import profile

    counts = []
    for recorded in (False, True):
        with initdiag.Recorder(model) if recorded else contextlib.nullcontext():
            block(300 if recorded else 5)
            with profile() as prof:
                block(steps)
        counts.append(sum(e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key not in _VIEWS))
    plain, recorded_ops = (c / steps for c in counts)
    print(f"operations per step (computing ATen operations, views left out): plain {plain:.0f}, recorded "
          f"{recorded_ops:.0f}: the recorder adds {recorded_ops - plain:.0f}")


def paired(model: torch.nn.Module, data: MnistData, args: argparse.Namespace,
           rng: np.random.Generator) -> None:
    """Two copies of ``model`` on the same batches, one recorded throughout, steps alternated."""
    plain, recorded = copy.deepcopy(model), copy.deepcopy(model)
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m in (plain, recorded)}
    g = torch.Generator().manual_seed(1)

    def step(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opts[id(m)].zero_grad()
        loss.backward()
        opts[id(m)].step()
        return time.perf_counter() - t

    times: dict[int, list[float]] = {id(plain): [], id(recorded): []}
    warm = 2 * args.every
    with initdiag.Recorder(recorded, every=args.every):
        for i in range(warm + args.paired):
            idx = torch.randint(0, len(data.train_x), (args.batch_size,), generator=g)
            x, y = data.train_x[idx], data.train_y[idx]
            for m in ((plain, recorded) if i % 2 else (recorded, plain)):
                seconds = step(m, x, y)
                if i >= warm:
                    times[id(m)].append(seconds)
    n = len(times[id(plain)]) // args.every * args.every
    a = np.array(times[id(recorded)][:n]).reshape(-1, args.every).sum(1)
    b = np.array(times[id(plain)][:n]).reshape(-1, args.every).sum(1)
    ratio = interval(a / b, rng)
    print(f"paired: {len(a)} cycles of {args.every} step(s), recorded / plain median {ratio[0]:.3f} "
          f"(95% CI {ratio[1]:.3f}-{ratio[2]:.3f}); ratio of the sums {a.sum() / b.sum():.3f}")


if __name__ == "__main__":
    main()
