"""The audit of a big model as a user meets it: ``initdiag.audit(model, input_shape=..., batches=4, batch_size=8)``
against the work it cannot avoid, 4 plain forward+backward passes of the same batches on a copy of the model.

Both sides run in one process with torch's defaults, alternated ``--rounds`` times after one warm-up of each;
the plain side makes its copy (``copy.deepcopy``) outside the timed part and uses the same loss the audit
takes (cross-entropy against random labels). Prints the median ratio (audit / plain) with a 95% bootstrap
interval, and the audit's verdicts, which must not move with any change made for speed.

    python benchmarks/audit.py                       # torchvision resnet50, 3x128x128, 4 batches of 8
    python benchmarks/audit.py --model vgg11_bn --rounds 3
    python benchmarks/audit.py --device cuda         # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from _measure import interval
from torch.nn import functional as F

import initdiag


@dataclass(frozen=True)
class Workload:
    """The model, input shape, batches and labels both sides of the comparison use."""

    model: torch.nn.Module
    shape: tuple[int, int, int]
    batches: list[torch.Tensor]
    labels: list[torch.Tensor]
    device: torch.device


def add_workload_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The options that choose the model and its batches, and the number of alternations."""
    parser.add_argument("--model", default="resnet50", help="a torchvision model name")
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=rounds, help="(audit, plain) alternations after a warm-up")


def make_workload(args: argparse.Namespace, device: torch.device) -> Workload:
    """The torchvision model (seeded, no weights) and seeded random batches and labels on ``device``."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).to(device)
    shape = (3, args.size, args.size)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, *shape, generator=g).to(device) for _ in range(args.batches)]
    labels = [torch.randint(0, 1000, (args.batch_size,), generator=g).to(device) for _ in range(args.batches)]
    return Workload(model, shape, batches, labels, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_passes(w: Workload) -> float:
    """Seconds of the plain forward+backward passes of every batch on a copy of the model (copied untimed)."""
    work = copy.deepcopy(w.model).train()
    sync(w.device)
    start = time.perf_counter()
    for x, y in zip(w.batches, w.labels, strict=True):
        F.cross_entropy(work(x), y).backward()
        work.zero_grad(set_to_none=True)
    sync(w.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser, rounds=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    work = make_workload(args, device)
    model, shape = work.model, work.shape

    def audited() -> tuple[float, initdiag.AuditResult]:
        sync(device)
        start = time.perf_counter()
        result = initdiag.audit(model, input_shape=shape, batches=args.batches, batch_size=args.batch_size,
                                device=args.device)
        sync(device)
        return time.perf_counter() - start, result

    plain_passes(work)
    audited()
    ours: list[float] = []
    base: list[float] = []
    result = None
    for r in range(args.rounds):
        order = ("audit", "plain") if r % 2 == 0 else ("plain", "audit")
        for side in order:
            if side == "plain":
                base.append(plain_passes(work))
            else:
                seconds, result = audited()
                ours.append(seconds)
    assert result is not None
    ratio = interval(np.array(ours) / np.array(base), np.random.default_rng(0))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.model} {args.batches}x{args.batch_size}x{'x'.join(map(str, shape))} on {name}: "
          f"audit {np.median(ours):.2f} s, plain {np.median(base):.2f} s")
    print(f"audit / plain: median {ratio[0]:.2f} (95% CI {ratio[1]:.2f}-{ratio[2]:.2f}) over {args.rounds} rounds")
    print(f"verdict: {'pass' if result.passed else 'fail'}; " + ", ".join(
        f"{v.check}={v.status}" for v in result.verdicts if v.status != "pass"))


if __name__ == "__main__":
    main()
