"""What structure discovery measures while it watches the forward: the variances a residual add sums, and
the weights of every softmax attention.

These are values, not structure, taken on the discovery batch (under ``no_grad``, inside the torch function
mode, where torch calls are not seen again). :mod:`~initdiag.structure.blocks` turns the add variances into
each block's branch-to-stream ratios, and the checks read the attention sites
(:mod:`~initdiag.checks.attention`).

Attention is recognized by dataflow, whatever the module: a ``softmax`` whose input comes, through shape
ops, masks and constant scales, from a product of two data tensors (``q @ k^T``); a
``scaled_dot_product_attention`` call (its weights recomputed as ``softmax(q k^T scale + mask)``); and
``multi_head_attention_forward`` (``nn.MultiheadAttention``, re-run for its per-head weights).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from . import functional as fn
from .records import Call, Graph

__all__ = ["MASKED_BELOW", "MASK_VALUE", "AttentionSite", "Measurer", "attention_site", "mha_site", "operand_vars",
           "qk_moments", "sdpa_site"]

MASK_VALUE = -50.0
"""An added value (or a ``masked_fill`` value) at or below this masks a key (its weight ``e^-50 ~ 2e-22`` of
another's): masks use -100 (Swin's shifted windows), -1e4 (BERT's extended mask), ``finfo.min`` or -inf;
additive position biases at initialization are far smaller."""
MASKED_BELOW = -5e3
"""Where no mask was seen on the way (it came through an op the walk does not follow), a logit below this
(or not finite) is a masked key: far below any logit of a model at initialization that is not saturated."""


@dataclass(frozen=True)
class AttentionSite:
    """One softmax attention of the forward, per head (``heads`` = 1 when the layout does not show them).

    Over the rows (queries) with at least two unmasked keys: ``entropy`` the mean of ``H = -sum_j p_j log
    p_j`` (nats), ``max_entropy`` the mean of ``log n`` (``n`` unmasked keys: uniform attention),
    ``logit_std`` ``sqrt(mean_rows Var_j(z_j))`` over the unmasked logits ``z`` (from ``log p`` where the
    logits themselves are not at hand). ``predicted_logit_std``: ``sqrt(scale^2 d E[q^2] Var(k))`` (``d``
    the head dimension, ``Var(k)`` over the keys, per feature), None where the query and key are not seen."""

    name: str
    op: str
    heads: int
    queries: int
    keys: int
    entropy: tuple[float, ...]
    max_entropy: tuple[float, ...]
    logit_std: tuple[float, ...]
    predicted_logit_std: float | None = None
    head_dim: int | None = None
    scale: float | None = None
    joint: bool = False
    """The softmax ran over a flattened query x key map (``softmax(z.view(b, -1))``), not over each query's
    keys: the whole map sums to one, each query's row to ``1 / queries`` on average."""
    sources: tuple[str, ...] = ()
    """The weight layers (call sites) the queries and keys were last mapped by: what scales the logits."""

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("entropy", "max_entropy", "logit_std"):
            d[k] = [None if not math.isfinite(v) else v for v in d[k]]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttentionSite:
        kw = dict(d)
        for k in ("entropy", "max_entropy", "logit_std"):
            kw[k] = tuple(math.nan if v is None else float(v) for v in d[k])
        return cls(**kw)


def operand_vars(args: tuple[Any, ...]) -> tuple[float, float] | None:
    """``(Var(a), Var(b))`` of an addition of two floating tensors of one shape (taken before the add,
    which may be in place): population variances over all elements."""
    if len(args) < 2:
        return None
    a, b = args[0], args[1]
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a.numel() < 2 \
            or not a.is_floating_point() or not b.is_floating_point():
        return None
    with torch.no_grad():
        return float(a.detach().double().var(unbiased=False)), float(b.detach().double().var(unbiased=False))


def qk_moments(name: str, args: tuple[Any, ...]) -> tuple[float, float, int] | None:
    """``(E[a^2], Var(b) per feature over its last dim, d)`` of ``a @ b`` (``matmul``, ``bmm``, ``@``): a query
    times transposed keys, ``d`` the contracted size."""
    if name not in ("matmul", "__matmul__", "bmm") or len(args) < 2:
        return None
    a, b = args[0], args[1]
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 2 or b.dim() < 2 or b.shape[-1] < 2:
        return None
    with torch.no_grad():
        q2 = float(a.detach().double().square().mean())
        kv = float(b.detach().double().var(dim=-1, unbiased=False).mean())
    return q2, kv, int(a.shape[-1])


def _per_head(p: Tensor, z: Tensor | None, masked: Tensor | None = None
              ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Entropy, uniform entropy and logit std per head of attention weights ``p`` (..., keys) with heads on
    dim 1 of a 4-dim layout (one head otherwise); ``z`` the logits when known, ``masked`` the masked keys."""
    p = p.detach().double()
    if z is not None:
        z = z.detach().double()
        valid = torch.isfinite(z) & (z > MASKED_BELOW)
        if masked is not None:
            valid &= ~masked
    else:
        valid = p > 0
        z = torch.where(valid, p.clamp_min(1e-300).log(), torch.zeros_like(p))
    if p.dim() == 4:
        p, z, valid = (t.transpose(0, 1).reshape(t.shape[1], -1, t.shape[-1]) for t in (p, z, valid))
    else:
        p, z, valid = (t.reshape(1, -1, t.shape[-1]) for t in (p, z, valid))
    n = valid.sum(-1)
    rows = n >= 2
    plogp = torch.where(valid & (p > 0), p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    entropy = -plogp.sum(-1)
    nf = n.clamp_min(1).double()
    zm = torch.where(valid, z, torch.zeros_like(z)).sum(-1, keepdim=True) / nf[..., None]
    zvar = torch.where(valid, (z - zm).square(), torch.zeros_like(z)).sum(-1) / nf
    out: list[list[float]] = [[], [], []]
    for h in range(p.shape[0]):
        r = rows[h]
        values = (entropy[h][r].mean(), nf[h][r].log().mean(), zvar[h][r].mean().sqrt()) if bool(r.any()) else ()
        for k in range(3):
            out[k].append(float(values[k]) if values else math.nan)
    return tuple(out[0]), tuple(out[1]), tuple(out[2])


def attention_site(name: str, op: str, p: Tensor, z: Tensor | None, dim: int, qk: tuple[float, float, int] | None,
                   scale: float | None, masked: Tensor | None = None, keys: int | None = None) -> AttentionSite | None:
    """The site of a softmax over ``dim`` of logits ``z`` giving ``p``; ``qk`` the moments of the product the
    logits came from (:func:`qk_moments`), ``scale`` the constant factors applied since, ``masked`` the masks
    added on the way (broadcastable to ``z``) and ``keys`` the product's last dim (a softmax over a multiple of
    it spans several queries' rows: ``joint``)."""
    if p.dim() < 2 or p.shape[dim] < 2:
        return None
    same = z is not None and z.shape == p.shape
    if masked is not None and same:
        if masked.numel() == p.numel():  # added before a reshape (windows folded into the batch)
            masked = masked.reshape(p.shape)
        try:
            masked = torch.broadcast_to(masked, p.shape).movedim(dim, -1)
        except RuntimeError:
            masked = None
    p = p.movedim(dim, -1)
    z = z.movedim(dim, -1) if z is not None and same else None
    ent, top, std = _per_head(p, z, masked if z is not None else None)
    pred = None
    if qk is not None:
        s = 1.0 if scale is None else scale
        pred = math.sqrt(max(s * s * qk[2] * qk[0] * qk[1], 0.0))
    n = int(p.shape[-1])
    joint = keys is not None and n > keys and n % keys == 0
    return AttentionSite(name, op, len(ent), n // keys if joint and keys else int(p.shape[-2]), n, ent, top, std,
                         pred, None if qk is None else qk[2], scale, joint)


def _predicted(q: Tensor, k: Tensor, scale: float) -> float:
    q2 = float(q.detach().double().square().mean())
    kv = float(k.detach().double().var(dim=-2, unbiased=False).mean())
    return math.sqrt(max(scale * scale * q.shape[-1] * q2 * kv, 0.0))


def sdpa_site(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> AttentionSite | None:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)``: its
    weights ``softmax(q k^T scale + mask)`` (``scale`` default ``1/sqrt(d)``; grouped keys repeated)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    given = {**dict(zip(names, args, strict=False)), **kwargs}
    q, k = given.get("query"), given.get("key")
    if not (isinstance(q, Tensor) and isinstance(k, Tensor)) or q.dim() < 2:
        return None
    with torch.no_grad():
        q, k = q.detach().double(), k.detach().double()
        if k.dim() >= 3 and q.dim() >= 3 and k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        scale = given.get("scale") or 1.0 / math.sqrt(q.shape[-1])
        z = q @ k.transpose(-2, -1) * scale
        mask = given.get("attn_mask")
        if isinstance(mask, Tensor):
            hidden = ~mask if mask.dtype == torch.bool else mask.double() <= MASK_VALUE
            if mask.dtype != torch.bool:
                z = z + mask.double()
            z = z.masked_fill(hidden, -math.inf)
        if given.get("is_causal"):
            keep = torch.ones(z.shape[-2], z.shape[-1], dtype=torch.bool, device=z.device).tril()
            z = z.masked_fill(~keep, -math.inf)
        p = torch.softmax(z, dim=-1)
        site = attention_site(name, "scaled_dot_product_attention", p, z, -1, None, float(scale))
        pred = _predicted(q, k, float(scale))
    return None if site is None else replace(site, predicted_logit_std=pred, head_dim=int(q.shape[-1]))


def mha_site(name: str, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> AttentionSite | None:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) called again for its per-head weights
    (``need_weights=True``, ``average_attn_weights=False``, no dropout)."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.arguments.update(need_weights=True, average_attn_weights=False, dropout_p=0.0, training=False)
        with torch.no_grad():
            out = func(*bound.args, **bound.kwargs)
    except Exception:  # an argument layout this version does not take: no measurement, never a failed discovery
        return None
    weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    if not isinstance(weights, Tensor) or weights.dim() < 3:
        return None
    p = weights if weights.dim() == 4 else weights.unsqueeze(1)
    return attention_site(name, "multi_head_attention_forward", p, None, -1, None, None)


def _mask(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], data: list[bool]) -> Tensor | None:
    """The keys a mask hides (bool): the non-data addend's entries at or below ``MASK_VALUE`` (or not finite),
    or ``masked_fill``'s mask when its value is; None for other adds (biases)."""
    with torch.no_grad():
        if name == "masked_fill":
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            value = args[2] if len(args) > 2 else kwargs.get("value")
            value = float(value) if isinstance(value, (int, float)) or (
                isinstance(value, Tensor) and value.numel() == 1) else 0.0
            return mask.detach().bool() if isinstance(mask, Tensor) and value <= MASK_VALUE else None
        tensors = [a for a in args[:2] if isinstance(a, Tensor)]
        if len(tensors) != 2 or len(data) < 2 or data[0] == data[1]:
            return None
        other = (tensors[1] if data[0] else tensors[0]).detach()
        if not other.is_floating_point():
            return None
        hidden = ~torch.isfinite(other) | (other <= MASK_VALUE)
        return hidden if bool(hidden.any()) else None


class Measurer:
    """The measurements of one :class:`~initdiag.structure.graph.Tracker`, into its graph: ``add_vars`` (add
    node -> operand node -> variance) and ``attention`` (the sites in call order)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._names: dict[Any, str] = {}

    def before(self, func: Any, args: tuple[Any, ...]) -> tuple[float, float] | None:
        """The operands' variances of an addition, before it runs (it may be in place)."""
        if len(args) < 2 or not isinstance(args[1], Tensor):
            return None
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = fn.function_name(func)
        return operand_vars(args) if name in fn.ADD_FUNCS else None

    def after(self, n: int, cat: int, name: str, call: Call, func: Any, args: tuple[Any, ...],
              kwargs: Mapping[str, Any], ins: list[int], out: Tensor,
              pre: tuple[float, float] | None) -> None:
        """Record what node ``n`` (category ``cat``, made by ``func``) showed."""
        g = self.graph
        if cat == fn.RESADD and pre is not None and len(ins) >= 2:
            g.add_vars[n] = {ins[0]: pre[0], ins[1]: pre[1]}
        elif cat == fn.NORM and args and isinstance(args[0], Tensor) and args[0].numel() > 1:
            eps = fn.norm_function_eps(name, args, dict(kwargs))
            if eps is not None:
                g.norm_vars[n] = (float(args[0].detach().double().var(unbiased=False)), eps)
        elif cat == fn.PRODUCT and name == "scaled_dot_product_attention":
            self._site(call, lambda site: sdpa_site(site, args, kwargs), self._sources(ins[:2]))
        elif cat == fn.PRODUCT:
            qk = qk_moments(name, args)
            if qk is not None:
                g.extra[n] = ("qk", qk, int(out.shape[-1]), self._sources(ins[:2]))
        elif cat == fn.TRANSPARENT and (name in fn.MUL_FUNCS or name in fn.DIV_FUNCS) and len(args) == 2:
            factor = args[1] if isinstance(args[1], (int, float)) else args[0] if isinstance(args[0], (int, float)) \
                else math.nan  # a learned temperature or a tensor of scales: theory does not know it
            if factor != 0:
                g.extra[n] = ("scale", float(factor) if name in fn.MUL_FUNCS else 1.0 / float(factor))
        elif cat == fn.TRANSPARENT and (name in fn.ADD_FUNCS or name == "masked_fill"):
            mask = _mask(name, args, kwargs, [g.data[i] for i in ins])
            if mask is not None:
                with contextlib.suppress(RuntimeError):  # one that does not broadcast to the sum: not a key mask
                    g.extra[n] = ("mask", torch.broadcast_to(mask, out.shape).clone())
        elif name == "softmax" and g.data[n] and ins:
            found = self._product_before(ins[0])
            if found is not None:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
                z = args[0] if isinstance(args[0], Tensor) else None
                self._site(call, lambda site: attention_site(site, "softmax", out, z, int(dim), *found[:4]),
                           found[4])
        elif name == "multi_head_attention_forward":
            self._site(call, lambda site: mha_site(site, func, args, kwargs), (call.site,))

    def _product_before(self, node: int) -> tuple[tuple[float, float, int] | None, float | None, Tensor | None,
                                                   int | None, tuple[str, ...]] | None:
        """From a softmax's input back through shape ops, masks and constant scales to a product of two data
        tensors: ``(its q/k moments, the scales' product, the masks, its last dim: the keys, the layers its operands
        come from)``, moments and
        scale None past a scale theory does not know (a tensor); None when there is no such product. Additive
        position biases are not in the prediction."""
        g, scale = self.graph, 1.0
        masked: Tensor | None = None
        for _ in range(32):
            kind = g.kind[node]
            if kind == fn.PRODUCT:
                extra = g.extra.get(node)
                kept = extra if isinstance(extra, tuple) and extra[0] == "qk" else ("qk", None, None, ())
                return (kept[1] if math.isfinite(scale) else None, scale if math.isfinite(scale) else None, masked,
                        kept[2], kept[3])
            if kind != fn.TRANSPARENT:
                return None
            extra = g.extra.get(node)
            if isinstance(extra, tuple) and extra[0] == "scale":
                scale *= extra[1]
            elif isinstance(extra, tuple) and extra[0] == "mask":
                later = extra[1]
                if masked is not None and masked.numel() == later.numel():
                    masked = masked.reshape(later.shape) | later
                else:
                    masked = later
            data = [i for i in g.inputs[node] if g.data[i]]
            if len(data) != 1:
                return None
            node = data[0]
        return None

    def _sources(self, nodes: Any) -> tuple[str, ...]:
        """The weight layers (call sites) that last mapped the data of ``nodes``: back through everything but
        normalizations and other weight layers (a few steps: shape ops, RoPE's products and sums, scales)."""
        g, found, todo = self.graph, [], list(nodes)
        seen: set[int] = set()
        while todo and len(seen) < 64:
            n = todo.pop(0)
            if n in seen or not g.data[n]:
                continue
            seen.add(n)
            li = g.node_layer.get(n)
            if li is not None:
                found.append(g.calls[g.layers[li].call].site)
            elif g.kind[n] not in (fn.NORM, fn.LEAF):
                todo.extend(g.inputs[n])
        return tuple(dict.fromkeys(found))

    def _site(self, call: Call, make: Any, sources: tuple[str, ...] = ()) -> None:
        k = call.fcount["attention"] = call.fcount.get("attention", 0) + 1
        site = make(f"{call.site}:attention" if k == 1 else f"{call.site}:attention@{k}")
        if site is not None:
            self.graph.attention.append(replace(site, sources=sources))
