"""What the variance rows cannot hold, taken once on an audit's first batch: how alike the samples (and the
tokens) of each site's output are, the largest activation, the smallest gradient, and the model's logits.

:class:`Extras` hooks the sites of a model's structure for the forwards and backward passes run inside it
(the audit: its first batch); each statistic is one pass over the tensor (torch's reductions, which
accumulate float32 in blocks: relative error ~1e-6, far below the thresholds read from them).

* ``cos_samples``: the mean cosine between the flattened outputs of two different samples,
  ``c = (|sum_i u_i|^2 - n) / (n (n - 1))`` with ``u_i = y_i / |y_i|`` (rows of norm 0 left out): the
  quantity of the correlation map (Poole et al. 2016) measured over the batch's ``n (n - 1) / 2`` pairs.
* ``cos_tokens``: the same between the positions of one sample, for outputs laid out (batch, positions,
  channels), averaged over the samples (token uniformity, Dong et al. 2021).
* ``max_abs`` / ``grad_min`` / ``grad_underflow``: the largest ``|y|``, the smallest nonzero ``|dL/dy|`` and
  the fraction of nonzero ``|dL/dy|`` below float16's smallest subnormal ``2^-24`` (Micikevicius et al. 2018),
  unscaled and under ``GradScaler``'s initial loss scale ``2^16`` (``grad_underflow_scaled``).
* ``in_sq``: a weight layer's input second moment ``E[x^2]``, from which theory predicts its output.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..jsonable import json_safe
from ..structure import Structure
from ..structure.records import collect_tensors
from ..vocab import Role
from .sites import channel_dim
from .tensor_stats import sum_of_squares, tensor_stats

__all__ = ["FP16_TINY", "LOSS_SCALE", "Extras", "OutputStats", "SiteExtras", "mean_cosine",
           "output_stats"]

FP16_TINY = 2.0 ** -24
"""float16's smallest subnormal: a smaller magnitude rounds to zero."""
LOSS_SCALE = 2.0 ** 16
"""``torch.amp.GradScaler``'s initial loss scale: gradients below ``FP16_TINY / LOSS_SCALE`` underflow even with it."""


@dataclass(frozen=True)
class SiteExtras:
    """One site's extra statistics (NaN where they do not apply)."""

    max_abs: float = math.nan
    rms: float = math.nan
    cos_samples: float = math.nan
    cos_tokens: float = math.nan
    in_sq: float = math.nan
    grad_min: float = math.nan
    grad_rms: float = math.nan
    grad_underflow: float = math.nan
    grad_underflow_scaled: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return dict(json_safe(self.__dict__))


@dataclass(frozen=True)
class OutputStats:
    """The model's first floating output as logits, classes along ``dim`` (the head's channel dim).

    ``logit_std``: ``sqrt(mean_rows Var_c(l))``, the spread over the classes within a row; ``loss``: the
    expected cross-entropy against a uniformly random label, ``mean_rows(logsumexp(l) - mean_c(l))``
    (exact: the mean over the labels); ``entropy``: the mean over rows of the softmax's entropy ``H =
    logsumexp(l) - sum_c p_c l_c`` (nats); ``head``: the weight layer whose output it is, None when it is not
    one's output directly."""

    head: str | None
    classes: int
    rows: int
    logit_std: float
    loss: float
    mean: float
    entropy: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return dict(json_safe(self.__dict__))


def mean_cosine(rows: Tensor) -> float:
    """Mean cosine between different rows of ``rows`` (..., n, d), averaged over the leading dims; rows of
    norm 0 left out (NaN when fewer than two remain)."""
    r = rows.detach()
    norms = torch.linalg.vector_norm(r, dim=-1)
    keep = (norms > 0) & torch.isfinite(norms)
    if not bool(keep.all()):
        r = torch.where(keep.unsqueeze(-1), r, torch.zeros((), dtype=r.dtype, device=r.device))
    weights = torch.where(keep, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))
    s = (weights.unsqueeze(-2) @ r).squeeze(-2).double().square().sum(-1)  # |sum_i y_i / |y_i||^2, one pass
    n = keep.sum(dim=-1).double()
    ok = n >= 2
    if not bool(ok.any()):
        return math.nan
    return float(((s[ok] - n[ok]) / (n[ok] * (n[ok] - 1))).mean())


class Extras:
    """Collects :class:`SiteExtras` for the sites of ``structure`` (weight layers and residual blocks, named as
    the recorder names them: ``name``, ``name@k`` for the k-th call) over the forwards and backward passes
    run inside the block; hooks come off on exit (gradient pre-hooks left on a graph do nothing then)."""

    def __init__(self, model: nn.Module, structure: Structure) -> None:
        self.model, self.structure = model, structure
        self._values: dict[str, dict[str, float]] = {}
        self._outputs: list[tuple[weakref.ref[Tensor], str, int, tuple[int, int], tuple[Any, ...]]] = []
        """(a weak reference to the output, site, channel dim, (storage address, offset), (shape, strides)): the
        outputs are not kept alive (one the forward does not save is freed as in a plain forward)."""
        self._calls: dict[int, int] = {}
        self._squares: dict[int, tuple[weakref.ref[Tensor], int, float]] = {}
        """id(output) -> (a weak reference to it, its version counter, its sum of squares): a site's output that
        is the next weight layer's input (a block's output, read by the next block's first layer and its
        shortcut) is not read again for the input's ``in_sq``."""
        self._handles: list[RemovableHandle] = []
        self._open = False

    def __enter__(self) -> Extras:
        modules = dict(self.model.named_modules())
        names = {id(m): n for n, m in modules.items()}
        weights = {w.module_name: w for w in self.structure.weight_layers}
        wanted = [*weights, *(b.module_name for b in self.structure.blocks)]
        self._handles.append(self.model.register_forward_pre_hook(lambda *_: self._calls.clear()))
        for name in dict.fromkeys(wanted):
            module = modules.get(name)
            if module is not None:
                self._handles.append(module.register_forward_hook(
                    functools.partial(self._hook, names.get(id(module)) or type(module).__name__, name in weights)))
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, base: str, weight: bool, module: nn.Module, args: Any, output: Any) -> None:
        k = self._calls[id(module)] = self._calls.get(id(module), 0) + 1
        y = output if isinstance(output, Tensor) else next(iter(collect_tensors(output, [])), None)
        if not isinstance(y, Tensor) or not y.is_floating_point() or not y.numel():
            return
        site = base if k == 1 else f"{base}@{k}"
        x = args[0] if weight and args and isinstance(args[0], Tensor) else None
        cdim = channel_dim(module, Role.WEIGHT if weight else Role.BLOCK, y, None)
        self.forward(site, y, cdim, x)
        if y.requires_grad:
            node = y.grad_fn
            if node is None:
                y.register_hook(functools.partial(self._grad, site, 0))
            else:
                node.register_prehook(functools.partial(self._grad, site, y.output_nr))

    def _grad(self, site: str, index: int, grads: Tensor | tuple[Tensor | None, ...]) -> None:
        grad = grads if isinstance(grads, Tensor) else grads[index]
        if self._open and grad is not None:
            self.backward(site, grad)

    def forward(self, site: str, y: Tensor, cdim: int, x: Any = None) -> None:
        """A site's output ``y`` (channels on ``cdim``) and, for a weight layer, its input ``x``."""
        with torch.no_grad():
            v = self._values.setdefault(site, {})
            yd = y.detach()
            stats = tensor_stats(yd)  # one pass: largest |y| (inf when any is not finite), sum of squares
            v["max_abs"] = stats.top
            v["rms"] = math.sqrt(stats.squares / stats.n)
            if not y.is_inference():
                self._squares[id(y)] = (weakref.ref(y), y._version, stats.squares)
            if yd.dim() >= 2 and yd.shape[0] >= 2:
                v["cos_samples"] = mean_cosine(yd.reshape(1, yd.shape[0], -1))
            if yd.dim() == 3 and cdim == 2 and yd.shape[1] >= 2:
                v["cos_tokens"] = mean_cosine(yd)
            if isinstance(x, Tensor) and x.is_floating_point() and x.numel():
                v["in_sq"] = self._sum_of_squares(x) / x.numel()
            self._outputs.append((weakref.ref(y), site, cdim, _where(y), _layout(y)))

    def _sum_of_squares(self, x: Tensor) -> float:
        """``sum x^2`` (:func:`~.tensor_stats.sum_of_squares`), or a site output's own when ``x`` is that output
        (the same object, unchanged since: its version counter)."""
        seen = self._squares.get(id(x))
        if seen is not None and seen[0]() is x and seen[1] == x._version:  # stored: no inference tensor
            return seen[2]
        return sum_of_squares(x)

    def backward(self, site: str, g: Tensor) -> None:
        """dL/dy at a site."""
        with torch.no_grad():
            v = self._values.setdefault(site, {})
            stats = tensor_stats(g, (FP16_TINY, FP16_TINY / LOSS_SCALE))  # one pass (the kernel's, for float32)
            v["grad_rms"] = math.sqrt(stats.squares / max(stats.n, 1))
            if stats.nonzero:
                v["grad_min"] = stats.least
                v["grad_underflow"] = stats.under[0] / stats.nonzero
                v["grad_underflow_scaled"] = stats.under[1] / stats.nonzero

    def site_of(self, t: Tensor) -> tuple[Tensor, str, int] | None:
        """The site whose output ``t`` is (the same tensor, or a view of all of it: transposed, reshaped) as
        ``(that output, site, its channel dim)``."""
        where, n = _where(t), t.numel()
        for ref, site, cdim, at, layout in reversed(self._outputs):  # the latest output at that address
            if at != where or layout[0].numel() != n:
                continue
            y = ref()
            if y is None:  # its Python object is gone, its elements live on in ``t``: the same view of them
                y = t.detach().as_strided(layout[0], layout[1], at[1])
            return y, site, cdim
        return None

    def result(self) -> dict[str, SiteExtras]:
        """Every site's statistics; the references to outputs are dropped."""
        self._outputs.clear()
        self._squares.clear()
        return {name: SiteExtras(**v) for name, v in self._values.items()}


def _where(t: Tensor) -> tuple[int, int]:
    """Where ``t``'s elements start: its storage's address and its offset in it."""
    return t.untyped_storage().data_ptr(), int(t.storage_offset())


def _layout(t: Tensor) -> tuple[torch.Size, tuple[int, ...]]:
    return t.shape, t.stride()


def output_stats(output: Tensor, extras: Extras | None, classes_dim: int | None = None) -> OutputStats | None:
    """:class:`OutputStats` of ``output``: classes along its head's channel dim when a weight layer made it (or
    made the tensor it is a view of: a transposed or reshaped head output), else along ``classes_dim`` (the
    audit's cross-entropy's dim 1) or dim 1 of a (batch, classes) output; None for other outputs or fewer than
    two classes."""
    found = extras.site_of(output) if extras is not None else None
    if found is None and classes_dim is None and not (output.dim() == 2 and output.shape[1] >= 2):
        return None
    head: str | None = None
    cdim = 1 if classes_dim is None else classes_dim
    if found is not None:
        output, head, cdim = found
    if output.dim() < 2 or output.shape[cdim] < 2:
        return None
    with torch.no_grad():
        logits = output.detach().double().movedim(cdim, -1).reshape(-1, output.shape[cdim])
        logits = logits[torch.isfinite(logits).all(-1)]
        if not len(logits):
            return OutputStats(head, int(output.shape[cdim]), 0, math.inf, math.inf, math.nan)
        lse = torch.logsumexp(logits, -1)
        loss = (lse - logits.mean(-1)).mean()
        entropy = (lse - (torch.softmax(logits, -1) * logits).sum(-1)).mean()
        std = logits.var(-1, unbiased=False).mean().sqrt()
        return OutputStats(head, int(logits.shape[1]), int(logits.shape[0]), float(std), float(loss),
                           float(logits.mean()), float(entropy))
