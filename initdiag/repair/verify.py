"""The proof of a repair that an audit cannot give: the original and the repaired model trained a few steps from
the same seed on the same batches, each step's loss recorded.

Both are trained as copies (the user's model and the returned repaired model are never stepped), with Adam at
the same learning rate, each step's batch and labels the same for both, and the global RNG (dropout) seeded
alike before each. With ``--inputs mnist`` they train on MNIST images with their labels (cross-entropy); with
any other inputs on the audit's batches with the audit's loss (cross-entropy against random labels fixed per
batch, or the mean squared output): a fit that only an initialization able to learn makes fast.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..audit.inputs import Inputs
from ..audit.run import audit_loss
from ..config import FixConfig
from ..results import Verification

__all__ = ["verify"]

MNIST_BATCH = 64
"""Images per verification step on MNIST."""

_Batch = tuple[Inputs, Callable[[Any], torch.Tensor]]


def _mnist_steps(cfg: FixConfig, steps: int, dtype: torch.dtype) -> tuple[list[_Batch], str]:
    from ..data import load_mnist

    data = load_mnist(cfg.audit.data_dir, "mnist")
    gen = torch.Generator().manual_seed(cfg.audit.seed)
    order = torch.randperm(len(data.train_x), generator=gen)[: steps * MNIST_BATCH]
    shape = cfg.audit.input_shape or (1, 28, 28)
    out: list[_Batch] = []
    for i in range(steps):
        idx = order[i * MNIST_BATCH:(i + 1) * MNIST_BATCH]
        x, y = data.train_x[idx].to(dtype).reshape(len(idx), *shape), data.train_y[idx]
        out.append((Inputs((x,)), functools.partial(_ce, labels=y)))
    return out, (f"MNIST ({data.provenance.name}): {steps} batches of {MNIST_BATCH} training images with their "
                 "labels, cross-entropy")


def _ce(output: Any, labels: torch.Tensor) -> torch.Tensor:
    while not isinstance(output, torch.Tensor):
        output = output[0] if isinstance(output, (tuple, list)) else next(iter(output.values()))
    return F.cross_entropy(output.float(), labels.to(output.device))


def _labelled(output: Any, mode: str, seed: int) -> torch.Tensor:
    return audit_loss(output, mode, torch.Generator().manual_seed(seed))


def _audit_steps(cfg: FixConfig, batches: Sequence[Inputs], steps: int) -> tuple[list[_Batch], str]:
    out: list[_Batch] = []
    for i in range(steps):
        k = i % len(batches)
        out.append((batches[k], functools.partial(_labelled, mode=cfg.audit.loss, seed=cfg.audit.seed + 1 + k)))
    loss = {"ce": "cross-entropy against random labels", "mse": "the mean squared output"}.get(
        cfg.audit.loss, "the audit's loss (cross-entropy against random labels for class outputs, else the mean "
        "squared output)")
    return out, f"the audit's {len(batches)} batches in turn, {loss} fixed per batch"


def _train(model: nn.Module, plan: Sequence[_Batch], lr: float, seed: int, device: torch.device) -> np.ndarray:
    work = copy.deepcopy(model).to(device).train()
    params = [p for p in work.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        for step, (batch, loss_of) in enumerate(plan):
            torch.manual_seed(seed + step)
            opt.zero_grad(set_to_none=True)
            args = batch.map(lambda a: a.to(device))
            loss = loss_of(args(work))
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                losses += [math.nan] * (len(plan) - step - 1)
                break
            loss.backward()
            opt.step()
    return np.asarray(losses, dtype=np.float64)


def verify(original: nn.Module, repaired: nn.Module, cfg: FixConfig, batches: Sequence[Inputs],
           device: torch.device) -> Verification:
    """Train copies of ``original`` and ``repaired`` ``cfg.verify_steps`` steps each, alike (see the module
    docstring); a non-finite loss ends a run (its remaining steps NaN)."""
    steps = cfg.verify_steps
    dtype = next((p.dtype for p in original.parameters() if p.is_floating_point()), torch.float32)
    plan, data = (_mnist_steps(cfg, steps, dtype) if cfg.audit.inputs == "mnist"
                  else _audit_steps(cfg, batches, steps))
    optimizer = f"Adam (lr {cfg.verify_lr:g}), seed {cfg.audit.seed}"
    return Verification(steps, _train(original, plan, cfg.verify_lr, cfg.audit.seed, device),
                        _train(repaired, plan, cfg.verify_lr, cfg.audit.seed, device), data, optimizer)
