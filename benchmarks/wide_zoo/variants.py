"""Broken variants of any known-good model, each with the answer an audit of it must give.

* ``good``: the model as its library built it. Expect ``passes``: no failing verdict (it trains).
* ``zeros``: every weight matrix, conv kernel and embedding table of a non-normalization module zero, every
  bias zero. Expect ``fails``: no signal, and every unit of a layer identical (symmetry).
* ``normal1``: every weight matrix and conv kernel N(0, 1) whatever its fan-in; embeddings, normalization
  parameters and biases untouched. Expect ``fails``: the variance grows ~fan_in-fold per layer. Except in a
  fully normalized conv net, where each conv's scale is absorbed by the normalization after it (BN(a x) =
  BN(x) for a > 0, Ioffe & Szegedy 2015; InstanceNorm, GroupNorm and LayerNorm alike) and only the head's
  scale is left, so such a variant fails only if the head's scale matters: expect ``theory`` (recorded, not
  counted as a miss).
* ``no_norm_he`` (residual nets only): every normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
  ...) replaced by ``nn.Identity``, every Conv/Linear weight He normal (fan-in, ReLU gain), every other 1-D
  scale (LayerScale, SkipInit gains) 1, since a scale alpha < 1 bounds the stream by design. Expect ``fails``:
  each block adds a branch of the stream's variance, so the stream grows ~2x per block (Zhang et al. 2019,
  Fixup; De & Smith 2020), less where a block applies ReLU to its sum, gates its branch (squeeze-excite) or
  restarts the stream with a projection. Where the stream's measured variance (entering the first block to
  leaving the last, as the audit's structure finds the blocks) grows less than the 100x the checks need, the
  variant is not broken by their standard: expect ``theory``. A model without a normalization layer has
  nothing to remove: skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["EXPECT", "VARIANTS", "Prepared", "is_norm", "norm_absorbs", "prepare", "variants_for"]

VARIANTS = ("good", "zeros", "normal1", "no_norm_he")
EXPECT = {"good": "passes", "zeros": "fails", "normal1": "fails", "no_norm_he": "fails"}
"""Each variant's expectation before looking at the model (``normal1`` may turn into ``theory``)."""

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
               nn.RMSNorm, nn.LocalResponseNorm)
_NORM_NAME = re.compile(r"Norm")


@dataclass(frozen=True)
class Prepared:
    """A variant ready to audit: the model, its expectation (``passes``, ``fails`` or ``theory``), a note on
    what was done, and ``skip`` (why the variant does not apply) when it does not."""

    model: nn.Module
    expect: str
    note: str = ""
    skip: str = ""


def variants_for(residual: bool, wanted: tuple[str, ...] = VARIANTS) -> tuple[str, ...]:
    """The variants of ``wanted`` that apply to a model: ``no_norm_he`` only to residual nets."""
    return tuple(v for v in wanted if v != "no_norm_he" or residual)


def is_norm(module: nn.Module) -> bool:
    """A normalization layer: a torch norm type, or a library's own leaf module named ``...Norm...`` whose
    parameters are at most vectors (``LlamaRMSNorm``, ``T5LayerNorm``, ``FrozenBatchNorm2d``, ``LayerNorm2d``)."""
    if isinstance(module, _NORM_TYPES):
        return True
    leaf = next(module.children(), None) is None
    return leaf and bool(_NORM_NAME.search(type(module).__name__)) and all(p.dim() <= 1 for p in module.parameters())


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(module).__name__


def _weights(model: nn.Module, embeddings: bool) -> list[nn.Parameter]:
    """Each weight matrix / conv kernel (a parameter named ``weight...`` or ``..._weight`` with 2+ dims) of a
    module that is not a normalization layer; embedding tables only when ``embeddings``; shared ones once."""
    seen: set[int] = set()
    out = []
    for module in model.modules():
        if is_norm(module) or (not embeddings and isinstance(module, (nn.Embedding, nn.EmbeddingBag))):
            continue
        for name, p in module.named_parameters(recurse=False):
            weightlike = name.startswith("weight") or name.endswith("weight")
            if weightlike and p.dim() >= 2 and p.is_floating_point() and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _biases(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if not is_norm(m) for n, p in m.named_parameters(recurse=False)
            if "bias" in n and p.is_floating_point()]


def norm_absorbs(model: nn.Module) -> bool:
    """Whether every conv before the head (the layers registered after the last normalization) is followed (in
    registration order, among weight and norm layers) by a normalization (a leaf, or a BatchNorm with children
    such as timm's BatchNormAct2d, whose activation is its child): a fully normalized conv net, where a conv's
    scale does not reach the next layer (BatchNorm, InstanceNorm, GroupNorm and LayerNorm all give
    ``norm(a x) = norm(x)`` for ``a > 0``) and only the head's scale is left (a U-Net's segmentation conv)."""
    layers = [m for m in model.modules() if (next(m.children(), None) is None or _is_batch_norm(m))
              and (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or is_norm(m) or _is_batch_norm(m))]
    normed = [i for i, m in enumerate(layers) if is_norm(m) or _is_batch_norm(m)]
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.modules.conv._ConvNd)]
    body = [i for i in convs if normed and i < normed[-1]]
    return bool(body) and all(i + 1 in normed for i in body)


def _branch_scales(model: nn.Module) -> list[nn.Parameter]:
    """The per-channel multiplicative parameters left once the norms are gone (LayerScale's ``gamma``, shaped
    ``(C,)`` or ``(C, 1, 1)``, SkipInit's gain): every floating-point parameter with one non-1 dim but biases.
    At 1e-6 or 0.1 they keep each branch's variance ``alpha^2`` times smaller, so the stream grows
    ``(1 + alpha^2 g)`` per block and stays bounded by design (Touvron et al. 2021; De & Smith 2020): set to 1,
    the variant is the plain residual net theory says explodes."""
    return [p for name, p in model.named_parameters() if p.squeeze().dim() == 1 and p.is_floating_point()
            and not name.rpartition(".")[2].endswith("bias")]


def _he(module: nn.Module) -> None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return
    fan_in = weight.shape[0] if type(module).__name__ == "Conv1D" else weight[0].numel()
    nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_in))


def _remove_norms(model: nn.Module) -> int:
    """Replace every normalization layer by ``nn.Identity`` in its parent; return how many."""
    names = [name for name, m in model.named_modules() if name and is_norm(m)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return len(names)


@torch.no_grad()
def prepare(variant: str, model: nn.Module) -> Prepared:
    """``model`` made into ``variant`` (in place) with its expectation."""
    if variant == "good":
        return Prepared(model, EXPECT[variant])
    if variant == "zeros":
        tensors = _weights(model, embeddings=True) + _biases(model)
        for t in tensors:
            t.zero_()
        return Prepared(model, EXPECT[variant], f"{len(tensors)} weights and biases zeroed")
    if variant == "normal1":
        weights = _weights(model, embeddings=False)
        for t in weights:
            t.normal_(0.0, 1.0)
        if norm_absorbs(model):
            return Prepared(model, "theory", f"{len(weights)} weights N(0,1); every conv feeds a normalization, "
                            "which absorbs its scale: only the head's scale is left")
        return Prepared(model, EXPECT[variant], f"{len(weights)} weights N(0,1)")
    if variant == "no_norm_he":
        removed = _remove_norms(model)
        if not removed:
            return Prepared(model, EXPECT[variant], skip="no normalization layer to remove")
        layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
                  or type(m).__name__ == "Conv1D"]
        for m in layers:
            _he(m)
        scales = _branch_scales(model)
        for t in scales:
            t.fill_(1.0)
        return Prepared(model, EXPECT[variant], f"{removed} norm layers removed, {len(layers)} layers He-initialized, "
                        f"{len(scales)} per-channel scales set to 1")
    raise ValueError(f"no variant {variant!r}; choose from {', '.join(VARIANTS)}")
