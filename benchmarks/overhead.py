"""Recorder overhead: the same training steps with and without ``Recorder(every=K)``, alternating blocks.

Prints each block's time and the median ratio (with recorder / without). Ratios, not absolute times,
are what matter on a noisy machine. Usage::

    python benchmarks/overhead.py [--steps 40] [--blocks 7] [--every 1] [--threads N] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from initdiag.data import load_mnist
from initdiag.initializers import InitSpec, apply_initializer
from initdiag.models import seed_cnn
from initdiag.recorder import Recorder
from initdiag.training import prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per block")
    parser.add_argument("--blocks", type=int, default=7, help="blocks of each kind, alternated")
    parser.add_argument("--every", type=int, default=1, help="record every K-th step")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(dataset="mnist-sample")
    model = seed_cnn()
    apply_initializer(model, InitSpec("he"), seed=0)
    model = prepare_model(model, torch.device("cpu"), channels_last=args.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def block(steps: int) -> None:
        for _ in range(steps):
            idx = torch.randint(0, len(data.train_x), (args.batch_size,), generator=g)
            x, y = data.train_x[idx], data.train_y[idx]
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    block(10)  # warm-up
    plain: list[float] = []
    recorded: list[float] = []
    recorder = Recorder(model, every=args.every)
    for i in range(args.blocks):
        for kind in (("plain", "recorded") if i % 2 == 0 else ("recorded", "plain")):
            start = time.perf_counter()
            if kind == "plain":
                block(args.steps)
                plain.append(time.perf_counter() - start)
            else:
                with recorder:
                    block(args.steps)
                recorder.flush()
                recorded.append(time.perf_counter() - start)
    ratios = [r / p for r, p in zip(recorded, plain, strict=True)]
    print(f"threads={torch.get_num_threads()} channels_last={args.channels_last} every={args.every} "
          f"steps/block={args.steps}")
    print("block  plain_s  recorded_s  ratio")
    for i, (p, r) in enumerate(zip(plain, recorded, strict=True)):
        print(f"{i:5d}  {p:7.3f}  {r:10.3f}  {r / p:5.3f}")
    print(f"median ratio (recorded / plain): {statistics.median(ratios):.3f}")
    print(f"median ms/step: plain {1000 * statistics.median(plain) / args.steps:.1f}, "
          f"recorded {1000 * statistics.median(recorded) / args.steps:.1f}")


if __name__ == "__main__":
    main()
