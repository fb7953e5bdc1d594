"""The seed experiment as a plain PyTorch loop: no recorder, no checks, no report; runs in turn.

The reference initdiag is compared with in ``full_run.py``: same model, initializers, optimizer,
batch size, epochs, evaluation after every epoch. Prints one line per run and the total time.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from initdiag.data import load_mnist


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 64),
                         nn.ReLU(), nn.Linear(64, 10))


INITS = {
    "zeros": lambda w, g: nn.init.zeros_(w),
    "random": lambda w, g: nn.init.normal_(w, 0.0, 0.1, generator=g),
    "xavier": lambda w, g: nn.init.xavier_normal_(w, generator=g),
    "he": lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    data = load_mnist(args.data_dir, limit_train=args.limit_train)
    start = time.perf_counter()
    for name, init in INITS.items():
        model = cnn()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    init(m.weight, g)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        order_g = torch.Generator().manual_seed(0)
        n = len(data.train_x)
        for _ in range(args.epochs):
            model.train()
            order = torch.randperm(n, generator=order_g)
            for i in range(math.ceil(n / 64)):
                idx = order[i * 64:(i + 1) * 64]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(data.train_x[idx].contiguous(memory_format=fmt)), data.train_y[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                correct = sum(int((model(data.test_x[i:i + 1000].contiguous(memory_format=fmt)).argmax(1)
                                   == data.test_y[i:i + 1000]).sum()) for i in range(0, len(data.test_x), 1000))
        print(f"{name}: test accuracy {correct / len(data.test_x):.4f}", flush=True)
    print(f"plain loop: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
