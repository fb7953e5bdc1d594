"""Train and evaluate a classifier on in-memory tensors (Adam + cross-entropy). Knows nothing of statistics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .memory import release_heap
from .modes import preserve_modes
from .progress import NullProgress, Progress

__all__ = ["EpochStats", "TrainOutcome", "evaluate", "grad_norm", "prepare_model", "to_batch", "train",
           "uses_channels_last"]


def prepare_model(model: nn.Module, device: torch.device | str, channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device``; models with 2-d convolutions go to the channels-last memory format
    (faster on the CPU; the results are unchanged).
    ``channels_last=None`` decides from the model."""
    model.to(device)
    if channels_last is None:
        channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def uses_channels_last(model: nn.Module) -> bool:
    """True when the model's first 4-d parameter is stored channels-last."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def to_batch(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device``, in the model's memory format."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


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
    """First step whose loss or gradient norm was not finite (training stopped there), else None."""
    grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """L2 norm of all parameter gradients of every step (float32 arithmetic, as float64); NaN/Inf kept."""


def grad_norm(parameters: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm over the gradients of ``parameters`` (0 when none has one), as a 0-d float32 tensor on
    ``device``, without a host sync. Computed in float32: it is infinite when it passes ~1.8e19."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm([g if g.dtype == torch.float32 else g.float() for g in grads])  # one kernel call
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250,
             device: torch.device | str = "cpu") -> tuple[float, float, np.ndarray]:
    """Return ``(mean cross-entropy, accuracy, predictions)`` of ``model`` on ``(x, y)`` in eval mode.

    The train/eval mode of every module is restored afterwards.
    """
    device = torch.device(device)
    channels_last = uses_channels_last(model)
    with preserve_modes(model):
        model.eval()
        total = 0.0
        predictions = np.empty(len(x), dtype=np.int64)  # one buffer, not a tensor kept per batch (see _train)
        for i in range(0, len(x), batch_size):
            xb = to_batch(x[i:i + batch_size], device, channels_last)
            yb = y[i:i + batch_size].to(device, non_blocking=True)
            logits = model(xb)
            total += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            predictions[i:i + len(yb)] = logits.argmax(1).cpu().numpy()
        accuracy = float((predictions == y.numpy()).mean())
        return total / len(x), accuracy, predictions


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
    optimizer: str = "adam",
    seed: int = 0,
    device: torch.device | str = "cpu",
    eval_batch_size: int = 250,
    progress: Progress | None = None,
    label: str = "run",
    on_epoch_start: Callable[[int], None] | None = None,
) -> TrainOutcome:
    """Train with Adam(lr) (``optimizer="sgd"``: SGD(lr, momentum 0.9), as He et al. 2015) on cross-entropy,
    shuffling with a generator seeded by ``seed``.

    After every epoch the full test set is evaluated. A training loss or gradient norm that is NaN/Inf
    (the norm overflows float32 beyond ~1.8e19) stops training at that step (``diverged_step``; on a GPU
    it is noticed at the next check, every 50 steps, to avoid a host sync per step, and the steps run in
    between are kept); the partial history, with that epoch evaluated, is returned. The model's train/eval
    mode of every module is restored afterwards, also when training raises.
    """
    progress = progress or NullProgress()
    device = torch.device(device)
    with preserve_modes(model):
        return _train(model, train_x, train_y, test_x, test_y, epochs=epochs, batch_size=batch_size, lr=lr,
                      optimizer=optimizer, seed=seed, device=device, eval_batch_size=eval_batch_size,
                      progress=progress, label=label, on_epoch_start=on_epoch_start)


def _optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}: adam or sgd")


def _train(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
           test_y: torch.Tensor, *, epochs: int, batch_size: int, lr: float, optimizer: str, seed: int,
           device: torch.device,
           eval_batch_size: int, progress: Progress, label: str,
           on_epoch_start: Callable[[int], None] | None) -> TrainOutcome:
    generator = torch.Generator().manual_seed(seed)
    opt = _optimizer(optimizer, model, lr)
    n = len(train_x)
    steps = math.ceil(n / batch_size)
    check_every = 1 if device.type == "cpu" else 50
    channels_last = uses_channels_last(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    # every step's loss and gradient norm written into one buffer each, not kept as 0-d tensors: a small
    # allocation kept per step lands above the step's freed activation buffers and the heap grows past them
    # (~0.85 MiB per step of the seed CNN at batch 64)
    losses = torch.empty(steps * epochs, dtype=torch.float64, device=device)
    norms = torch.empty_like(losses)
    done = 0  # steps written into losses and norms
    history: list[EpochStats] = []
    diverged: int | None = None
    checked = 0  # losses and norms before this index are known to be finite
    model.train()
    progress.start(label, steps * epochs)
    for epoch in range(1, epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        first = done
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = to_batch(train_x[idx], device, channels_last)
            yb = train_y[idx].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            norms[done].copy_(grad_norm(parameters, device))
            opt.step()
            losses[done].copy_(loss.detach())
            done += 1
            if (i + 1) % check_every == 0 or i + 1 == steps:
                window = losses[checked:done]
                finite = torch.isfinite(window) & torch.isfinite(norms[checked:done])
                bad = (~finite).nonzero()
                if len(bad):
                    diverged = checked + int(bad[0, 0])
                    break
                checked = done
                progress.step(epoch, epochs, i + 1, steps, float(window[-1]))
        epoch_losses = losses[first:done].cpu()
        test_loss, accuracy, predictions = evaluate(model, test_x, test_y, eval_batch_size, device)
        release_heap()  # the evaluation's large batches
        train_loss = float(epoch_losses.mean())
        history.append(EpochStats(epoch, train_loss, test_loss, accuracy, time.perf_counter() - start))
        progress.epoch(epoch, epochs, train_loss, test_loss, accuracy)
        if diverged is not None:
            what = "loss" if not math.isfinite(float(losses[diverged])) else "gradient norm"
            progress.message(f"[{label}] diverged: the {what} is not finite at step {diverged}; run stopped")
            break
    step_losses = losses[:done].cpu().numpy()
    grad_norms = norms[:done].cpu().numpy()
    return TrainOutcome(tuple(history), step_losses, predictions, history[-1].test_loss,
                        history[-1].test_accuracy, diverged, grad_norms)
