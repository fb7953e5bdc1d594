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

import numpy as np
import torch
import torchvision
from _measure import interval
from torch.nn import functional as F

import initdiag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision model name")
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="(audit, plain) alternations after a warm-up")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).to(device)
    shape = (3, args.size, args.size)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, *shape, generator=g).to(device) for _ in range(args.batches)]
    labels = [torch.randint(0, 1000, (args.batch_size,), generator=g).to(device) for _ in range(args.batches)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def plain() -> float:
        work = copy.deepcopy(model).train()
        sync()
        start = time.perf_counter()
        for x, y in zip(batches, labels, strict=True):
            F.cross_entropy(work(x), y).backward()
            work.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    def audited() -> tuple[float, initdiag.AuditResult]:
        sync()
        start = time.perf_counter()
        result = initdiag.audit(model, input_shape=shape, batches=args.batches, batch_size=args.batch_size,
                                device=args.device)
        sync()
        return time.perf_counter() - start, result

    plain()
    audited()
    ours: list[float] = []
    base: list[float] = []
    result = None
    for r in range(args.rounds):
        order = ("audit", "plain") if r % 2 == 0 else ("plain", "audit")
        for side in order:
            if side == "plain":
                base.append(plain())
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
