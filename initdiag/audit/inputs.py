"""What goes through the model in an audit, and the copy it goes through.

The batches (generated, MNIST, or the caller's example) and :func:`working_copy`, which keeps the caller's
model untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..config import AuditConfig
from ..errors import UsageError
from ..modes import preserve_modes
from ..results import AuditInputs

__all__ = ["AuditInputs", "Inputs", "first_embedding", "make_inputs", "working_copy"]

Inputs = tuple[torch.Tensor, ...]
"""One batch: the model's positional arguments."""


# -- inputs ------------------------------------------------------------------------------------------
def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def first_embedding(model: nn.Module) -> nn.Embedding | None:
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def _example(example: Any) -> Inputs:
    args = (example,) if isinstance(example, torch.Tensor) else tuple(example) if isinstance(example, (tuple, list)) \
        else ()
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise UsageError("example_input must be a tensor (one batch, batch dimension first) or a tuple of tensors "
                         f"(the model's positional arguments), not {type(example).__name__}")
    if args[0].dim() == 0 or len(args[0]) < 2:
        raise UsageError(f"example_input needs a batch of at least 2 (got shape {tuple(args[0].shape)}): "
                         "variances are taken over the batch")
    return args


def make_inputs(model: nn.Module, cfg: AuditConfig, example: Any = None) -> tuple[list[Inputs], AuditInputs]:
    """The batches to push through the model (on the CPU), and their description.

    ``example`` (a tensor or a tuple of tensors) is used as the only batch. Otherwise ``cfg.batches``
    batches of ``cfg.batch_size``: standard normal in the model's float dtype, token ids uniform in
    ``[0, vocab)`` (``input_dtype="long"``; ``vocab`` defaults to the first Embedding's size), or MNIST
    training images in a random order; all drawn from a ``torch.Generator`` seeded with ``cfg.seed``.
    """
    if example is not None:
        args = _example(example)
        shape = tuple(args[0].shape)
        return [args], AuditInputs("example", f"the example input, one batch of shape {shape}", shape,
                                   str(args[0].dtype).removeprefix("torch."), 1, "given by the caller")
    gen = torch.Generator().manual_seed(cfg.seed)
    n, size = cfg.batches, cfg.batch_size
    if cfg.inputs == "mnist":
        from ..data import load_mnist

        data = load_mnist(cfg.data_dir, "mnist")
        if n * size > len(data.train_x):
            raise UsageError(f"--batches {n} x --batch-size {size} is more than the {len(data.train_x):,} MNIST "
                             "training images")
        sample = cfg.input_shape or (1, 28, 28)
        order = torch.randperm(len(data.train_x), generator=gen)[: n * size]
        images = data.train_x[order].to(_float_dtype(model)).reshape(n, size, *sample)
        prov = data.provenance
        return ([(images[i],) for i in range(n)],
                AuditInputs("mnist", f"MNIST training images ({prov.name}), {n} batches of {size} x "
                            f"{' x '.join(map(str, sample))}, pixels in [0, 1]", (size, *sample),
                            str(images.dtype).removeprefix("torch."), n, prov.source, dict(prov.files), prov.notice))
    if cfg.input_shape is None:
        raise UsageError("give the input shape of one sample (--input-shape, e.g. 3,224,224), or an example input")
    shape = (size, *cfg.input_shape)
    dims = " x ".join(map(str, shape))
    if cfg.input_dtype == "long":
        emb = first_embedding(model)
        vocab = cfg.vocab or (emb.num_embeddings if emb is not None else None)
        if vocab is None:
            raise UsageError("--input-dtype long needs --vocab N (the model has no nn.Embedding to take it from)")
        batches: list[Inputs] = [(torch.randint(0, vocab, shape, generator=gen),) for _ in range(n)]
        return batches, AuditInputs("tokens", f"token ids uniform in [0, {vocab}), {n} batches of {dims}", shape,
                                    "int64", n, f"synthetic (torch.Generator, seed {cfg.seed})")
    dtype = _float_dtype(model)
    batches = [(torch.randn(shape, generator=gen).to(dtype),) for _ in range(n)]
    return batches, AuditInputs("normal", f"standard normal, {n} batches of {dims}", shape,
                                str(dtype).removeprefix("torch."), n, f"synthetic (torch.Generator, seed {cfg.seed})")


# -- the model, untouched ------------------------------------------------------------------------------
def _prepare(model: nn.Module) -> None:
    """Train mode; every floating-point parameter requires grad (dL/dy exists behind frozen layers), no grad."""
    model.train()
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
        p.grad = None


@contextmanager
def working_copy(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """A deep copy of ``model`` on ``device`` to audit, prepared (train mode, parameters requiring grad).

    When ``copy.deepcopy`` fails, the model itself (it must be on ``device``), restored in ``finally``:
    parameter and buffer values, each module's train/eval mode, ``requires_grad`` and ``.grad``.
    """
    try:
        work: nn.Module | None = copy.deepcopy(model)
    except Exception:
        work = None
    if work is not None:
        work.to(device)
        _prepare(work)
        yield work
        return
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device != device for t in tensors):
        raise UsageError(f"the model cannot be copied (copy.deepcopy failed), so it is audited in place, which "
                         f"needs it on the audit's device {device}")
    values = [t.detach().clone() for t in tensors]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    with preserve_modes(model):
        try:
            _prepare(model)
            yield model
        finally:
            with torch.no_grad():
                for t, v in zip(tensors, values, strict=True):
                    t.copy_(v)
            for p, req, grad in params:
                p.requires_grad_(req)
                p.grad = grad
