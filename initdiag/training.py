"""Train and evaluate a classifier on in-memory tensors (Adam + cross-entropy). Knows nothing of statistics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .progress import NullProgress, Progress

__all__ = ["EpochStats", "TrainOutcome", "evaluate", "train"]


@dataclass(frozen=True)
class EpochStats:
    """Per-epoch figures: mean training loss over the epoch's steps, test loss (mean cross-entropy,
    nats) and test accuracy (fraction correct) after the epoch, wall seconds of the epoch."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainOutcome:
    history: tuple[EpochStats, ...]
    step_losses: np.ndarray
    """Training loss of every step (float64), NaN/Inf kept as they came."""
    predictions: np.ndarray
    """Predicted class of every test image after the last epoch (int64)."""
    test_loss: float
    test_accuracy: float
    diverged_step: int | None
    """First step whose loss was NaN/Inf (training stopped there), else None."""


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             device: torch.device | str = "cpu") -> tuple[float, float, np.ndarray]:
    """Return ``(mean cross-entropy, accuracy, predictions)`` of ``model`` on ``(x, y)`` in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        total, preds = 0.0, []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            yb = y[i:i + batch_size].to(device, non_blocking=True)
            logits = model(xb)
            total += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            preds.append(logits.argmax(1).cpu())
        predictions = torch.cat(preds).numpy().astype(np.int64)
        accuracy = float((predictions == y.numpy()).mean())
        return total / len(x), accuracy, predictions
    finally:
        model.train(was_training)


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    eval_batch_size: int = 1000,
    progress: Progress | None = None,
    label: str = "run",
    on_epoch_start: Callable[[int], None] | None = None,
) -> TrainOutcome:
    """Train with Adam(lr) on cross-entropy, shuffling with a generator seeded by ``seed``.

    After every epoch the full test set is evaluated. A NaN/Inf training loss stops training at that
    step (``diverged_step``); the partial history is returned.
    """
    progress = progress or NullProgress()
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(train_x)
    steps = math.ceil(n / batch_size)
    check_every = 1 if device.type == "cpu" else 50
    losses: list[torch.Tensor] = []
    history: list[EpochStats] = []
    diverged: int | None = None
    checked = 0  # losses before this index are known to be finite
    model.train()
    progress.start(label, steps * epochs)
    for epoch in range(1, epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        first = len(losses)
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = train_x[idx].to(device, non_blocking=True)
            yb = train_y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            if (i + 1) % check_every == 0 or i + 1 == steps:
                window = torch.stack(losses[checked:])
                bad = (~torch.isfinite(window)).nonzero()
                if len(bad):
                    diverged = checked + int(bad[0, 0])
                    break
                checked = len(losses)
                progress.step(epoch, epochs, i + 1, steps, float(window[-1]))
        epoch_losses = torch.stack(losses[first:]).double().cpu()
        test_loss, accuracy, predictions = evaluate(model, test_x, test_y, eval_batch_size, device)
        train_loss = float(epoch_losses.mean())
        history.append(EpochStats(epoch, train_loss, test_loss, accuracy, time.perf_counter() - start))
        progress.epoch(epoch, epochs, train_loss, test_loss, accuracy)
        if diverged is not None:
            progress.message(f"[{label}] diverged: loss is not finite at step {diverged}; run stopped")
            break
    step_losses = torch.stack(losses).double().cpu().numpy() if losses else np.zeros(0)
    return TrainOutcome(tuple(history), step_losses, predictions, history[-1].test_loss,
                        history[-1].test_accuracy, diverged)
