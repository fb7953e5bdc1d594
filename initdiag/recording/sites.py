"""Where the recorder looks: the tensors in a module's output, the channel dim of each, tracing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..structure.layers import CONV_TYPES, RECORDED_WEIGHT_TYPES, main_weight
from ..vocab import Role

__all__ = ["channel_dim", "iter_tensors", "traced"]


def iter_tensors(output: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Walk a module output (tensor, tuple/list, dict) and yield (suffix, floating-point tensor)."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() and output.numel() > 0:
            yield path, output
    elif isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            yield from iter_tensors(item, f"{path}.{i}")
    elif isinstance(output, dict):
        for key, item in output.items():
            yield from iter_tensors(item, f"{path}.{key}")


def traced() -> bool:
    """True while torch.jit.trace or torch.compile traces the model: not a training step, no numbers (under
    torch.fx the outputs are proxies, not tensors, and nothing is recorded either)."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def channel_dim(module: nn.Module, role: str, y: torch.Tensor, last_weight_out: tuple[torch.Size, int] | None) -> int:
    """The channel dim of ``y``, an output of ``module``: dim 1 for a convolution's output (any module whose
    weight has 3+ dims), the last dim for other weight layers; an activation's are those of the weight layer
    that ran before it (``last_weight_out``: its output's shape and channel dim) when the shapes agree; a
    block's those of its first weight layer's kind."""
    if y.dim() <= 1:
        return 0
    if role == Role.WEIGHT:
        return 1 if isinstance(module, CONV_TYPES) or _conv_weight(module) else y.dim() - 1
    if role == Role.BLOCK:
        inner = next((m for m in module.modules() if _is_weight_like(m)), None)
        conv = inner is not None and (isinstance(inner, CONV_TYPES) or _conv_weight(inner))
        return 1 if conv and y.dim() >= 3 else y.dim() - 1
    if last_weight_out is not None and y.shape == last_weight_out[0]:
        return last_weight_out[1]
    return 1 if y.dim() >= 4 else y.dim() - 1


def _is_weight_like(module: nn.Module) -> bool:
    """A module with a parameter of its own of 2 or more dims (a weight layer of any type)."""
    return isinstance(module, RECORDED_WEIGHT_TYPES) or any(p.dim() >= 2 for p in module.parameters(recurse=False))


def _conv_weight(module: nn.Module) -> bool:
    """A module whose own weight has 3+ dims (a convolution of any type)."""
    weight = main_weight(module)
    return weight is not None and weight.dim() >= 3
