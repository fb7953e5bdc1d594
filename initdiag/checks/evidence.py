"""The evidence the checks read for one run, and the advice they give from it."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..structure import Structure
from ..structure.layers import WEIGHT_LAYER_TYPES, LayerInfo, main_weight
from ..vocab import Role

__all__ = ["RunEvidence", "Weights", "dominant_activation", "hidden_activations", "init_advice",
           "norm_gains", "pretty_activation", "recommended_initializer", "snapshot_grads", "snapshot_weights",
           "transposed_weights", "weight_moments", "zero_parameters"]

Weights = Mapping[str, tuple[np.ndarray, np.ndarray | None]]
"""Weight-layer module name -> (weight, bias) as numpy arrays."""


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().copy()


def transposed_weights(structure: Structure | None) -> set[str]:
    """The modules whose weight is stored ``(in, out)`` (applied as ``x @ W``, as transformers' ``Conv1D``),
    so that a snapshot turns it into rows of output units like every other layer's."""
    if structure is None:
        return set()
    return {w.module_name for w in structure.weight_layers
            if w.op in ("addmm", "matmul", "mm") and len(w.param_shape) == 2 and w.param_shape[0] == w.fan_in}


def snapshot_weights(model: nn.Module, names: Collection[str] | None = None,
                     transposed: Collection[str] = ()) -> Weights:
    """Copies of weight layers' weights and matching biases (for the symmetry check), by module name (the
    root as its class name): the modules in ``names`` whose weight (:func:`~initdiag.structure.main_weight`)
    has two or more dims, or, without ``names``, every Conv/Linear module. A weight of a module in
    ``transposed`` (:func:`transposed_weights`) is stored transposed: one row per output unit."""
    snap: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, module in model.named_modules():
        key = name or type(module).__name__
        if (names is None and not isinstance(module, WEIGHT_LAYER_TYPES)) or (names is not None and key not in names):
            continue
        weight = main_weight(module)
        if weight is None or weight.dim() < 2:
            continue
        bias = next((b for b in (getattr(module, attr, None) for attr in ("bias", "in_proj_bias", "bias_ih_l0"))
                     if isinstance(b, torch.Tensor)), None)
        snap[key] = (_numpy(weight.t() if key in transposed else weight), None if bias is None else _numpy(bias))
    return snap


@dataclass(frozen=True)
class RunEvidence:
    """Everything the checks look at for one run (one initializer x seed).

    ``initializer``: the run's initializer label (``he``, ``random:std=0.05``, ``keep`` for a model audited
    as given); ``weight_vars``: weight-layer module name -> the Var(W) the theory uses (the initializer's
    formula, or the measured variance of the weights as given); ``default_init``: the weights look like
    PyTorch's default initialization (theory then notes the biases it ignores).
    ``frame``: this run's recorded series; ``layers``: ``Recorder.layers()``; ``weights_init`` /
    ``weights_final``: Conv/Linear module name -> (weight, bias) at init / after training (final may be
    empty, e.g. for an audit); ``losses``: the training loss of each step (``losses[i]`` is step ``i``);
    ``output_numel`` (optional): Conv/Linear call-site name -> elements per sample of its output
    (C x H x W), used to measure the backward signal as per-sample energy (see :meth:`output_sizes`);
    ``grad_norms`` (optional): the L2 norm of all parameter gradients of each step, as ``losses``.

    With the model's structure known (``structure``), the checks judge each chain of layers and the residual
    stream on their own; ``grads_init`` (weight-layer module name -> (weight gradient, bias gradient) of the
    first step) lets the symmetry check look one step ahead; ``zero_params`` (the parameters that are all
    zero at initialization, by qualified name -> whether their gradient is non-zero: they learn from step
    1) tells intentional zeros from failures; ``norm_gains`` (normalization call site -> ``mean(gamma^2) +
    mean(beta^2)``, the second moment it sets) serves the theory of the stream.
    """

    run: str
    initializer: str
    frame: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    weights_init: Weights
    weights_final: Weights
    losses: np.ndarray
    output_numel: Mapping[str, int] = field(default_factory=dict)
    grad_norms: np.ndarray | None = None
    weight_vars: Mapping[str, float] = field(default_factory=dict)
    default_init: bool = False
    structure: Structure | None = None
    grads_init: Weights = field(default_factory=dict)
    zero_params: Mapping[str, bool] = field(default_factory=dict)
    norm_gains: Mapping[str, float] = field(default_factory=dict)
    steps_per_epoch: int | None = None
    """Training steps per epoch (the ``stalled`` check judges the first epoch); None: unknown or no training."""

    @property
    def blocks(self) -> tuple[LayerInfo, ...]:
        """The residual stream's recorded sites (the stream entering the first block, then each block), in
        stream order."""
        return tuple(sorted((la for la in self.layers if la.role == Role.BLOCK), key=lambda la: la.depth))

    @property
    def weight_layers(self) -> tuple[LayerInfo, ...]:
        """Conv/Linear call sites in execution order."""
        return tuple(sorted((la for la in self.layers if la.role == Role.WEIGHT), key=lambda la: la.depth))

    def output_sizes(self) -> dict[str, float] | None:
        """Elements per sample of each Conv/Linear output, or None when any is unknown.

        From ``output_numel``, else a ``numel`` attribute of the LayerInfo (if the recorder provides
        one), else ``out_features`` for a Linear layer (exact for (batch, features) outputs).
        """
        sizes: dict[str, float] = {}
        for la in self.weight_layers:
            size = self.output_numel.get(la.name) or getattr(la, "numel", None)
            if not size and la.module == "Linear" and la.weight_shape:
                size = la.weight_shape[0]
            if not size:
                return None
            sizes[la.name] = float(size)
        return sizes or None


_PRETTY = {"relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "elu": "ELU",
           "selu": "SELU", "gelu": "GELU", "silu": "SiLU", "linear": "linear"}
_USE_HE = frozenset({"relu", "relu6", "leaky_relu", "prelu", "elu", "celu", "gelu", "silu", "mish",
                     "softplus", "hardswish"})


def pretty_activation(activation: str) -> str:
    """Display name of an activation family: ``relu`` -> ``ReLU``."""
    return _PRETTY.get(activation, activation)


def recommended_initializer(activation: str) -> str:
    """CLI name of the initializer whose variance theory fits ``activation``.

    ``he`` (Var(W) = 2/fan_in) for the ReLU family, ``lecun`` (1/fan_in) for SELU, ``xavier``
    (2/(fan_in + fan_out)) for tanh, sigmoid and linear layers.
    """
    if activation in _USE_HE:
        return "he"
    if activation == "selu":
        return "lecun"
    return "xavier"


def hidden_activations(ev: RunEvidence) -> tuple[str, ...]:
    """Activations after each Conv/Linear layer but the last (the output layer), in order."""
    acts = [la.activation or "linear" for la in ev.weight_layers]
    return tuple(acts[:-1]) if len(acts) > 1 else tuple(acts)


def dominant_activation(ev: RunEvidence) -> str:
    """The most common activation among the hidden layers (``linear`` if none)."""
    acts = hidden_activations(ev)
    return max(dict.fromkeys(acts), key=acts.count) if acts else "linear"


def init_advice(ev: RunEvidence) -> str:
    """Which initializer to use, by CLI name, for the run's hidden activation(s)."""
    acts = dict.fromkeys(hidden_activations(ev)) or {"linear": None}
    parts = []
    for act in acts:
        rec = recommended_initializer(act)
        parts.append(f"{pretty_activation(act)} layers: use `{rec}`")
    text = "; ".join(parts)
    if ev.initializer.partition(":")[0].removesuffix("-uniform") in {recommended_initializer(a) for a in acts}:
        text += (" (already in use: at this depth consider normalization layers (BatchNorm/LayerNorm) or "
                 "residual connections)")
    return text


_MULTIPLICATIVE_EXCLUDED = ("bias", "beta", "running_mean", "running_var")


def zero_parameters(model: nn.Module) -> dict[str, bool]:
    """The multiplicative parameters of ``model`` (weights, normalization scales, scalar gains: not biases)
    that are all zero, by qualified name -> whether their ``.grad`` (after a backward pass) is non-zero.

    A zero parameter with a non-zero gradient breaks out of zero at the first step (a zero-initialized
    head, the last layer of a residual branch under Fixup, ``zero_init_residual``'s BatchNorm scale,
    SkipInit's gain); one whose gradient is zero too stays zero and silences what it multiplies."""
    found: dict[str, bool] = {}
    for name, p in model.named_parameters():
        last = name.rpartition(".")[2].lower()
        if last in _MULTIPLICATIVE_EXCLUDED or last.endswith("bias") or not p.is_floating_point() or p.numel() == 0:
            continue
        if not bool(p.detach().any()):
            found[name] = p.grad is not None and bool(p.grad.detach().any())
    return found


def snapshot_grads(model: nn.Module, names: Collection[str], transposed: Collection[str] = ()) -> Weights:
    """Copies of the gradients (``.grad``) of the weights and biases :func:`snapshot_weights` takes, for the
    modules in ``names`` whose weight has a gradient (for the symmetry check's look-ahead), oriented alike."""
    snap: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, module in model.named_modules():
        key = name or type(module).__name__
        weight = main_weight(module) if key in names else None
        if weight is None or weight.dim() < 2 or weight.grad is None:
            continue
        bias = next((b for b in (getattr(module, attr, None) for attr in ("bias", "in_proj_bias", "bias_ih_l0"))
                     if isinstance(b, torch.Tensor)), None)
        grad = weight.grad.t() if key in transposed else weight.grad
        snap[key] = (_numpy(grad), None if bias is None or bias.grad is None else _numpy(bias.grad))
    return snap


def weight_moments(model: nn.Module, structure: Structure | None) -> dict[str, float]:
    """Module name -> ``mean(W^2)`` of each weight layer's weight (its Var(W) for zero-mean weights): the
    structure's weight layers (their parameter as seen), or every Conv/Linear module without a structure."""
    modules = dict(model.named_modules())
    out: dict[str, float] = {}
    layers = [(w.module_name, w.param) for w in structure.weight_layers] if structure is not None else \
        [(name, "weight") for name, m in modules.items() if isinstance(m, WEIGHT_LAYER_TYPES)]
    for name, param in layers:
        module = modules.get(name)
        weight = getattr(module, param, None) if module is not None else None
        if isinstance(weight, torch.Tensor):
            out[name or type(module).__name__] = float(weight.detach().double().square().mean())
    return out


def norm_gains(model: nn.Module, structure: Structure | None) -> dict[str, float]:
    """Normalization call site -> ``mean(gamma^2) + mean(beta^2)``: the second moment its output has at
    initialization (1 without affine parameters)."""
    if structure is None:
        return {}
    modules = dict(model.named_modules())
    out: dict[str, float] = {}
    for norm in structure.norms:
        module = modules.get(norm.module_name) if norm.module_name is not None else None
        gamma = getattr(module, "weight", None) if module is not None else None
        beta = getattr(module, "bias", None) if module is not None else None
        g2 = float(gamma.detach().double().square().mean()) if isinstance(gamma, torch.Tensor) else 1.0
        b2 = float(beta.detach().double().square().mean()) if isinstance(beta, torch.Tensor) else 0.0
        out[norm.name] = g2 + b2
    return out
