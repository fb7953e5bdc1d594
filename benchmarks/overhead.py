"""Recorder overhead: the same training steps with and without ``Recorder(every=K)``, alternating blocks.

Prints each block's time and the median ratio (with recorder / without), of wall time and of the
process's CPU time, with a 95% bootstrap interval over blocks. Only the training steps are timed: the
recorder is attached and detached between blocks, as a training loop attaches it once. Ratios, not
absolute times, are what matter on a noisy machine: single steps alternated (``--steps 1 --blocks 400``)
measure small differences more precisely than blocks of many steps, whose times drift with the
machine. The process keeps its heap for reuse as ``initdiag report``'s training processes do;
``benchmarks/user_loop.py`` measures the recorder with torch's defaults instead.
Usage::

    python benchmarks/overhead.py [--steps 20] [--blocks 25] [--every 1] [--threads N] [--no-channels-last]
                                  [--no-fast-kernel] [--device cuda]

On a GPU (``--device cuda``) each step ends with ``torch.cuda.synchronize()`` so that a step's time is its
work's, and a CUDA-side count of host syncs (``torch.cuda.set_sync_debug_mode("warn")``) shows whether the
recorder syncs the device in its hooks: it must not (its rows are copied to the host when a buffer fills).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from _measure import interval
from torch import nn
from torch.nn import functional as F

from initdiag import Recorder
from initdiag.data import load_mnist
from initdiag.initializers import InitSpec, apply_initializer
from initdiag.memory import keep_heap
from initdiag.models import seed_cnn
from initdiag.recording import moments
from initdiag.training import prepare_model


@contextlib.contextmanager
def _counting_syncs(cuda: bool, out: list[str]) -> Iterator[None]:
    """On CUDA, collect torch's warnings about synchronizing operations raised inside the block."""
    if not cuda:
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        out.extend(str(w.message).splitlines()[0] for w in caught)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--blocks", type=int, default=25, help="blocks of each kind, alternated")
    parser.add_argument("--every", type=int, default=1, help="record every K-th step")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-per-channel", type=int, default=1024, help="the recorder's sample cap")
    parser.add_argument("--fast-kernel", action=argparse.BooleanOptionalAction, default=True,
                        help="the recorder's compiled kernel (when built)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    keep_heap()
    torch_path = contextlib.ExitStack()  # held to the end of the process
    if not args.fast_kernel:
        torch_path.enter_context(moments.kernel_disabled())
    fast = moments.kernel_in_use()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(dataset="mnist-sample")
    model: nn.Module = seed_cnn()
    apply_initializer(model, InitSpec("he"), seed=0)
    model = prepare_model(model, device, channels_last=args.channels_last)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def block(steps: int) -> tuple[float, float]:
        """Train ``steps`` steps; their wall and CPU seconds."""
        wall = cpu = 0.0
        for _ in range(steps):
            w, c = time.perf_counter(), time.process_time()
            idx = torch.randint(0, len(train_x), (args.batch_size,), generator=g).to(device)
            x, y = train_x[idx], train_y[idx]
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize(device)
            wall, cpu = wall + time.perf_counter() - w, cpu + time.process_time() - c
        return wall, cpu

    block(10)  # warm-up
    kinds = ["plain", "recorded"]
    times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    recorders = {kind: Recorder(model, every=args.every, max_per_channel=args.max_per_channel)
                 for kind in kinds[1:]}
    syncs: dict[str, list[str]] = {kind: [] for kind in kinds}
    for i in range(args.blocks):
        for kind in (kinds if i % 2 == 0 else kinds[::-1]):
            if kind == "plain":
                with _counting_syncs(cuda, syncs[kind]):
                    times[kind].append(block(args.steps))
                continue
            with recorders[kind], _counting_syncs(cuda, syncs[kind]):  # it flushes when its buffers fill
                times[kind].append(block(args.steps))
    plain, recorded = times["plain"], times["recorded"]
    recorder = recorders["recorded"]
    rows = len(recorder.frame())
    where = torch.cuda.get_device_name(device) if cuda else f"cpu, threads={torch.get_num_threads()}"
    print(f"{where} channels_last={args.channels_last} every={args.every} "
          f"steps/block={args.steps} compiled_kernel={fast} rows recorded={rows}")
    if cuda:
        extra = [m for m in syncs["recorded"] if m not in syncs["plain"]]
        print(f"synchronizing CUDA calls: plain blocks {len(syncs['plain'])}, recorded blocks "
              f"{len(syncs['recorded'])} (the recorder's buffer flushes included)"
              + (f"; only when recorded: {extra[0]}" if extra else ""))
    print("block  plain_s  recorded_s  ratio  cpu_ratio")
    for i, (p, r) in enumerate(zip(plain, recorded, strict=True)):
        print(f"{i:5d}  {p[0]:7.3f}  {r[0]:10.3f}  {r[0] / p[0]:5.3f}  {r[1] / p[1]:9.3f}")
    rng = np.random.default_rng(0)
    for kind in kinds[1:]:
        for label, k in (("wall", 0), ("cpu", 1)):
            ratios = np.array([r[k] / p[k] for p, r in zip(plain, times[kind], strict=True)])
            median, low, high = interval(ratios, rng, draws=2000)
            print(f"median ratio ({kind} / plain), {label} time: {median:.3f} "
                  f"(95% CI {low:.3f}-{high:.3f})   ms/step: plain "
                  f"{1000 * statistics.median(p[k] for p in plain) / args.steps:.1f}, {kind} "
                  f"{1000 * statistics.median(r[k] for r in times[kind]) / args.steps:.1f}")


if __name__ == "__main__":
    main()
