"""The audit's view of each weight: what an initializer re-initializes, its variance against what its
activation calls for, PyTorch's default init recognized.

Pure functions of weights, layers and verdicts; no hooks, no running.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..checks import Verdict, recommended_initializer
from ..initializers import INITIALIZERS, Target, shape_targets
from ..recording.tensor_stats import TensorMoments, tensor_moments
from ..results import LayerWeight
from ..shapes import shape_fans
from ..structure import Structure
from ..structure.layers import WEIGHT_LAYER_TYPES, LayerInfo, fans, main_weight
from ..vocab import Role, Signal

__all__ = [
    "DEFAULT_INIT_MISS",
    "DEFAULT_INIT_Z",
    "LOOKUPS",
    "forward_gain",
    "hidden_activation",
    "init_targets",
    "layer_weights",
    "looks_pytorch_default",
    "weights_digest",
]

DEFAULT_INIT_Z = 5.0
"""How many standard deviations the second moment of a weight may be from its value under PyTorch's default
init and still count as default (:func:`looks_pytorch_default`)."""
DEFAULT_INIT_MISS = 1e-6
"""Probability, under PyTorch's default (uniform) init, that the largest |w| falls short of the bound that
:func:`looks_pytorch_default` requires, i.e. of missing a default-initialized layer on that criterion."""


def _uniform_like(m: TensorMoments, bound: float) -> bool:
    n = m.n
    if n < 2 or not bound > 0:
        return False
    return (m.top <= bound * (1 + 1e-6) and m.top >= bound * (1 - math.log(1 / DEFAULT_INIT_MISS) / n)
            and abs(m.mean_sq / (bound**2 / 3) - 1) <= DEFAULT_INIT_Z * math.sqrt(0.8 / n))


def _normal_like(m: TensorMoments, std: float) -> bool:
    n = m.n
    if n < 2:
        return False
    return (abs(m.mean_sq / std**2 - 1) <= DEFAULT_INIT_Z * math.sqrt(2 / n)
            and abs(m.mean) <= DEFAULT_INIT_Z * std / math.sqrt(n))


def _pooled(parts: Sequence[TensorMoments]) -> TensorMoments:
    """The moments of the values of ``parts`` taken together."""
    n = sum(p.n for p in parts)
    if n == 0:
        return TensorMoments(0, math.nan, math.nan, 0, 0.0)
    return TensorMoments(n, sum(p.mean * p.n for p in parts if p.n) / n, sum(p.mean_sq * p.n for p in parts if p.n) / n,
                         sum(p.nonzero for p in parts), max(p.top for p in parts))


def _without_row(m: TensorMoments, w: torch.Tensor, row: int) -> TensorMoments:
    """The moments of ``w`` (``m``) without its row ``row``: the largest |value| is not needed here and kept."""
    r = tensor_moments(w[row])
    return _pooled([m, TensorMoments(-r.n, r.mean, r.mean_sq, -r.nonzero, 0.0)])


def looks_pytorch_default(module: nn.Module) -> bool:
    """Whether the weights of ``module`` are consistent with PyTorch's own init for its type (doing nothing).

    Conv/Linear: ``W, b ~ U(-a, a)``, ``a = 1/sqrt(fan_in)`` (``kaiming_uniform_(a=sqrt(5))``); LSTM/GRU/RNN:
    every weight and bias ``~ U(-a, a)``, ``a = 1/sqrt(hidden_size)``; MultiheadAttention: ``in_proj_weight``
    ``~ U(-a, a)``, ``a = sqrt(6/(fan_in + fan_out))`` (xavier_uniform); Embedding: ``W ~ N(0, 1)``.
    A uniform ``U(-a, a)`` with ``n`` values is accepted when every ``|w| <= a`` (float tolerance), the largest
    ``|w| >= a (1 - ln(1/DEFAULT_INIT_MISS)/n)`` and the second moment ``m2 = mean(w^2)`` is within
    ``DEFAULT_INIT_Z`` standard deviations of ``a^2/3`` (relative sd ``sqrt(0.8/n)``); a normal ``N(0, s^2)``
    when ``m2/s^2`` is within ``DEFAULT_INIT_Z sqrt(2/n)`` of 1 and the mean within ``DEFAULT_INIT_Z s/sqrt(n)``
    of 0. A consistency check, not a test with a p-value: weights drawn like the default pass it.
    """
    weight = main_weight(module)
    if weight is None:
        return False
    if isinstance(module, WEIGHT_LAYER_TYPES):
        bound = 1 / math.sqrt(fans(weight)[0])
        bias = getattr(module, "bias", None)
        return _uniform_like(tensor_moments(weight), bound) and (
            not isinstance(bias, torch.Tensor) or tensor_moments(bias).top <= bound * (1 + 1e-6))
    if isinstance(module, nn.RNNBase):
        pooled = _pooled([tensor_moments(p) for p in module.parameters(recurse=False)])
        return _uniform_like(pooled, 1 / math.sqrt(module.hidden_size))
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        out_f, in_f = module.in_proj_weight.shape
        return _uniform_like(tensor_moments(module.in_proj_weight), math.sqrt(6 / (in_f + out_f)))
    if isinstance(module, nn.Embedding):
        m = tensor_moments(weight)
        return _normal_like(m if module.padding_idx is None else _without_row(m, weight, module.padding_idx), 1.0)
    return False


LOOKUPS = ("embedding", "embedding_bag")
"""Ops that look a row up (fan_in 1) rather than sum over inputs: no fan rule applies, initializers keep them."""
NO_RULE = "a lookup (embedding), not a sum over inputs: no fan rule applies"


def init_targets(model: nn.Module, structure: Structure | None) -> tuple[Target, ...]:
    """What an initializer re-initializes: each weight layer the structure found (its first call site), with
    the fans the forward showed, in execution order; then every Conv/Linear module it did not see (its fans
    from its weight's shape). Lookups are targets with a reason: they are kept, and named."""
    out: list[Target] = []
    seen: set[tuple[str, str]] = set()
    for w in structure.weight_layers if structure is not None else ():
        if (w.module_name, w.param) not in seen:
            seen.add((w.module_name, w.param))
            out.append(Target(w.module_name, w.param, w.fan_in, w.fan_out, NO_RULE if w.op in LOOKUPS else ""))
    out += [t for t in shape_targets(model) if (t.module, t.param) not in seen]
    return tuple(out)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters' own SHA-256s (each of its name, dtype, shape and bytes), in registration
    order: the parameters are hashed in parallel threads (``hashlib`` releases the GIL), one per core."""
    params = list(model.named_parameters())

    def one(item: tuple[str, torch.Tensor]) -> bytes:
        name, p = item
        digest = hashlib.sha256(f"{name}:{p.dtype}:{tuple(p.shape)}".encode())
        digest.update(p.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().data)  # no bytes copy
        return digest.digest()

    with ThreadPoolExecutor(max_workers=max(1, min(len(params), os.cpu_count() or 1))) as pool:
        return hashlib.sha256(b"".join(pool.map(one, params))).hexdigest()


def layer_weights(model: nn.Module, layers: Sequence[LayerInfo], structure: Structure | None,
                  reinitialized: Collection[str]) -> tuple[LayerWeight, ...]:
    """One :class:`LayerWeight` per recorded weight layer (first call site) that has a weight: the parameter
    the structure saw applied (else the module's main weight), against the initializer advised for the
    activation after it, for the fans the forward showed (else a Conv/Linear weight's shape fans).
    ``reinitialized``: the modules an initializer re-initialized."""
    modules = {name or type(m).__name__: m for name, m in model.named_modules()}
    seen_as = {w.name: w for w in structure.weight_layers} if structure is not None else {}
    rows: list[LayerWeight] = []
    seen: set[str] = set()
    for la in sorted((la for la in layers if la.role == Role.WEIGHT), key=lambda la: la.depth):
        module = modules.get(la.module_name)
        found = seen_as.get(la.name)
        weight = getattr(module, found.param, None) if module is not None and found is not None else \
            main_weight(module) if module is not None else None
        if module is None or not isinstance(weight, torch.Tensor) or la.module_name in seen:
            continue
        seen.add(la.module_name)
        act = la.activation or "linear"
        rec = recommended_initializer(act)
        shape = tuple(weight.shape)
        variance = tensor_moments(weight).var
        layer_fans: tuple[float, float] | None = None
        if found is not None and found.op in LOOKUPS:
            pass  # a lookup: no fan rule
        elif la.fan_in is not None and la.fan_out is not None:
            layer_fans = (la.fan_in, la.fan_out)
        elif isinstance(module, WEIGHT_LAYER_TYPES):
            layer_fans = shape_fans(shape)
        rec_var = (INITIALIZERS[rec].rule(layer_fans[0], layer_fans[1], shape, INITIALIZERS[rec].defaults)
                   if layer_fans is not None else None)
        rows.append(LayerWeight(la.module_name, la.module, act, shape, variance, rec, rec_var,
                                variance / rec_var if rec_var else None, looks_pytorch_default(module),
                                la.module_name in reinitialized, la.norm_after is not None))
    return tuple(rows)


def hidden_activation(layers: Sequence[LayerInfo]) -> str:
    """The most common activation after the weight layers but the last (the output layer), ``linear`` if none."""
    acts = [la.activation or "linear" for la in sorted((la for la in layers if la.role == Role.WEIGHT),
                                                       key=lambda la: la.depth)]
    hidden = acts[:-1] if len(acts) > 1 else acts
    return max(dict.fromkeys(hidden), key=hidden.count) if hidden else "linear"


def forward_gain(verdicts: Sequence[Verdict]) -> float:
    """The fitted per-layer forward variance gain of a run (NaN when not measured)."""
    for v in verdicts:
        if v.signal == Signal.FORWARD:
            gain = v.effect.get("gain")
            return float(gain) if gain is not None else math.nan
    return math.nan
