"""What initdiag's Lightning callback costs per training step, side by side with the same fit without it.

The seed CNN (``initdiag.models``) on MNIST-shaped random data, batch 64, torch's default threads. Each pair
runs the same fit twice, with and without ``InitDiagCallback(every=EVERY)``, in alternating order; a timing
callback takes the wall time of every training batch (``on_train_batch_start`` to the next one's start,
so the optimizer step and the recorder's work are inside). The first batch of a fit (the callback's audit)
and what follows the last step (checks and report) are fixed costs, printed apart. Prints the ratio of
median step times with a 95% bootstrap interval over pairs::

    python benchmarks/callbacks.py [--pairs 6] [--steps 120] [--every 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

warnings.filterwarnings("ignore")
import lightning.pytorch as L  # noqa: E402

from initdiag.integrations.lightning import InitDiagCallback  # noqa: E402
from initdiag.models import ModelSpec, build_model  # noqa: E402


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = build_model(ModelSpec("cnn"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Clock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())


def fit(loader: Any, with_initdiag: bool, every: int, out: str) -> tuple[np.ndarray, float]:
    torch.manual_seed(0)
    clock = Clock()
    callbacks: list[Any] = [clock]  # first: its clock starts before the callback's audit at the first batch
    if with_initdiag:
        callbacks.append(InitDiagCallback(out=out, every=every, formats=("json",)))
    start = time.perf_counter()
    L.Trainer(max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", devices=1).fit(Net(), loader)
    total = time.perf_counter() - start
    return np.diff(clock.starts), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    n = 64 * args.steps
    data = torch.utils.data.TensorDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,),
                                                                                                  generator=gen))
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    ratios, fixed = [], []
    print(f"seed CNN, batch 64, {args.steps} steps, every={args.every}, {torch.get_num_threads()} threads")
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        got: dict[bool, tuple[np.ndarray, float]] = {}
        with tempfile.TemporaryDirectory() as out:
            for flag in order:
                got[flag] = fit(loader, flag, args.every, out)
        plain, diag = got[False][0][1:-1], got[True][0][1:-1]  # steady steps: not the first, not the end
        ratios.append(float(np.median(diag) / np.median(plain)))
        steps_extra = float(np.sum(got[True][0]) - np.sum(got[False][0]))
        fixed.append((float(got[True][0][0] - got[False][0][0]), got[True][1] - got[False][1] - steps_extra))
        print(f"pair {pair}: median step {np.median(plain) * 1e3:.1f} ms plain, {np.median(diag) * 1e3:.1f} ms "
              f"with the callback ({ratios[-1]:.3f}); first batch +{fixed[-1][0]:.2f} s (audit), "
              f"after the last step +{fixed[-1][1]:.2f} s (checks, report); "
              f"fit {got[False][1]:.1f} s vs {got[True][1]:.1f} s")
    r = np.asarray(ratios)
    boot = np.random.default_rng(0).choice(r, (10_000, len(r))).mean(1)
    print(f"median step ratio (callback / plain): {r.mean():.3f} (95% CI {np.quantile(boot, 0.025):.3f}-"
          f"{np.quantile(boot, 0.975):.3f}) over {len(r)} pairs; fixed: audit {np.median([f[0] for f in fixed]):.2f} s,"
          f" report {np.median([f[1] for f in fixed]):.2f} s")


if __name__ == "__main__":
    main()
