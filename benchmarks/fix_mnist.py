"""Does a repaired initialization train as well as the one theory prescribes? The 30-layer ReLU MLP (784-256x28-10)
at PyTorch's default init, repaired by ``initdiag.fix`` (both methods), against the same net at He init and as
it is: one epoch on MNIST each, same seed, same batch order, test accuracy. Several seeds; mean with a t
interval.

    python benchmarks/fix_mnist.py --data-dir DIR --seeds 3 [--optimizer sgd --lr 0.01] [--out results.json]

Without ``--data-dir`` MNIST is found or downloaded as ``initdiag report`` does (the bundled sample when offline).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

import initdiag
from initdiag.data import load_mnist
from initdiag.initializers import InitSpec, apply_initializer
from initdiag.models import deep_mlp
from initdiag.training import train


def _interval(values: list[float]) -> str:
    m = float(np.mean(values))
    if len(values) < 2:
        return f"{m:.4f}"
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return f"{m:.4f} [{m - half:.4f}, {m + half:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = load_mnist(args.data_dir)
    print(f"data: {data.provenance.name} ({data.provenance.train_size} train / {data.provenance.test_size} test)")
    acc: dict[str, list[float]] = {}
    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        default = deep_mlp(args.depth, args.width, "relu")
        he = copy.deepcopy(default)
        apply_initializer(he, InitSpec.parse("he"), seed)
        models: dict[str, nn.Module] = {"pytorch-default": default, "he": he}
        for method in ("theory", "lsuv"):
            start = time.perf_counter()
            result = initdiag.fix(default, inputs="mnist", input_shape=(1, 28, 28), data_dir=args.data_dir,
                                  method=method, seed=seed, verify_steps=0)
            print(f"seed {seed} fix --method {method}: before passed {result.before.passed}, after passed "
                  f"{result.after.passed}, {len(result.changes)} changes, {time.perf_counter() - start:.1f} s")
            models[f"fix-{method}"] = result.model
        for name, model in models.items():
            out = train(model, data.train_x, data.train_y, data.test_x, data.test_y, epochs=1,
                        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, seed=seed)
            a = out.history[-1].test_accuracy
            acc.setdefault(name, []).append(a)
            rows.append({"seed": seed, "init": name, "test_accuracy": a})
            print(f"seed {seed} {name:16s} test accuracy after 1 epoch {a:.4f}")
    print(f"\n{args.depth}-layer ReLU MLP, 1 epoch of {data.provenance.name}, {args.optimizer} lr {args.lr}, "
          f"{args.seeds} seeds (mean, 95% t interval):")
    for name, values in acc.items():
        print(f"  {name:16s} {_interval(values)}")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
