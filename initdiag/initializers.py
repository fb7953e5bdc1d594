"""Registry of weight initializers, each applied in place to every Conv/Linear weight of a model.

Every initializer draws from a ``torch.Generator`` seeded by the run's seed, so the same seed gives the
same weights. Biases are set to zero (as Keras does), except for ``pytorch-default``, which is exactly
what ``reset_parameters()`` does when the user does nothing (biases included).

Notation: ``fan_in`` = in_channels x kernel area (inputs feeding one output unit), ``fan_out`` =
out_channels x kernel area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from .errors import UsageError, did_you_mean
from .shapes import shape_fans

if TYPE_CHECKING:  # torch loads where a weight is drawn: the CLI parses its options without it
    import torch
    from torch import nn

__all__ = [
    "DEFAULT_INITIALIZERS",
    "INITIALIZERS",
    "InitName",
    "InitSpec",
    "Initializer",
    "apply_initializer",
    "parse_init_list",
    "split_init_list",
    "unique_labels",
]


class InitName(StrEnum):
    """Names of the built-in initializers, as the CLI spells them."""

    ZEROS = "zeros"
    CONSTANT = "constant"
    RANDOM = "random"
    XAVIER = "xavier"
    XAVIER_UNIFORM = "xavier-uniform"
    HE = "he"
    HE_UNIFORM = "he-uniform"
    LECUN = "lecun"
    ORTHOGONAL = "orthogonal"
    PYTORCH_DEFAULT = "pytorch-default"


DEFAULT_INITIALIZERS: tuple[str, ...] = ("zeros", "random", "xavier", "he")

WeightFn = Callable[["torch.Tensor", "torch.Generator", Mapping[str, float]], None]



@dataclass(frozen=True)
class Initializer:
    """One registered initializer.

    ``variance(weight_shape, params)`` is the variance of each weight it draws (for orthogonal:
    ``gain^2 / max(rows, cols)`` of the flattened matrix); tests compare it with the realised variance
    and the theory overlay uses it for the expected per-layer gain.
    """

    name: str
    summary: str
    formula: str
    fn: WeightFn | None
    variance: Callable[[tuple[int, ...], Mapping[str, float]], float]
    defaults: Mapping[str, float] = field(default_factory=dict)
    zero_bias: bool = True


def _zeros(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.zeros_(w)


def _constant(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.constant_(w, p["value"])


def _random(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.normal_(w, mean=p["mean"], std=p["std"], generator=g)


def _xavier(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.xavier_normal_(w, gain=p["gain"], generator=g)


def _xavier_uniform(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.xavier_uniform_(w, gain=p["gain"], generator=g)


def _he(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=g)


def _he_uniform(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu", generator=g)


def _lecun(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    fan_in, _ = shape_fans(tuple(w.shape))
    nn.init.normal_(w, mean=0.0, std=math.sqrt(1.0 / fan_in), generator=g)


def _orthogonal(w: torch.Tensor, g: torch.Generator, p: Mapping[str, float]) -> None:
    from torch import nn

    nn.init.orthogonal_(w, gain=p["gain"], generator=g)


INITIALIZERS: dict[str, Initializer] = {
    i.name: i
    for i in (
        Initializer(
            InitName.ZEROS, "every weight 0: all neurons identical, no signal", "W = 0", _zeros,
            lambda sh, p: 0.0,
        ),
        Initializer(
            InitName.CONSTANT, "every weight the same constant (value=0.05): fully symmetric",
            "W = value", _constant, lambda sh, p: 0.0, {"value": 0.05},
        ),
        Initializer(
            InitName.RANDOM, "normal with a fixed std (0.1), ignoring layer size: the classic 'random'",
            "W ~ N(mean, std^2), std = 0.1", _random, lambda sh, p: p["std"] ** 2,
            {"std": 0.1, "mean": 0.0},
        ),
        Initializer(
            InitName.XAVIER, "Glorot & Bengio (2010), normal: keeps variance for linear/tanh layers",
            "W ~ N(0, gain^2 * 2 / (fan_in + fan_out))", _xavier,
            lambda sh, p: p["gain"] ** 2 * 2.0 / sum(shape_fans(sh)), {"gain": 1.0},
        ),
        Initializer(
            InitName.XAVIER_UNIFORM, "Glorot & Bengio (2010), uniform",
            "W ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))", _xavier_uniform,
            lambda sh, p: p["gain"] ** 2 * 2.0 / sum(shape_fans(sh)), {"gain": 1.0},
        ),
        Initializer(
            InitName.HE, "He et al. (2015), normal, fan_in: keeps variance through ReLU layers",
            "W ~ N(0, 2 / fan_in)", _he, lambda sh, p: 2.0 / shape_fans(sh)[0],
        ),
        Initializer(
            InitName.HE_UNIFORM, "He et al. (2015), uniform, fan_in", "W ~ U(-a, a), a = sqrt(6 / fan_in)",
            _he_uniform, lambda sh, p: 2.0 / shape_fans(sh)[0],
        ),
        Initializer(
            InitName.LECUN, "LeCun et al. (1998), normal: keeps variance for linear/SELU layers",
            "W ~ N(0, 1 / fan_in)", _lecun, lambda sh, p: 1.0 / shape_fans(sh)[0],
        ),
        Initializer(
            InitName.ORTHOGONAL, "Saxe et al. (2014): a (semi-)orthogonal matrix of the flattened weight",
            "W = gain * Q, Q from the QR decomposition of a normal matrix", _orthogonal,
            lambda sh, p: p["gain"] ** 2 / max(sh[0], math.prod(sh[1:])), {"gain": 1.0},
        ),
        Initializer(
            InitName.PYTORCH_DEFAULT, "what PyTorch does when you do nothing (reset_parameters), biases too",
            "W ~ U(-a, a), a = 1 / sqrt(fan_in) (kaiming_uniform, a=sqrt(5)); b ~ U(-a, a)", None,
            lambda sh, p: 1.0 / (3.0 * shape_fans(sh)[0]), zero_bias=False,
        ),
    )
}


@dataclass(frozen=True)
class InitSpec:
    """An initializer name with its parameters, e.g. ``random:std=0.05``."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def initializer(self) -> Initializer:
        return INITIALIZERS[self.name]

    @property
    def resolved(self) -> dict[str, float]:
        """Defaults overridden by the given parameters."""
        return {**self.initializer.defaults, **self.params}

    @property
    def label(self) -> str:
        """The name as the CLI spells it, parameters included when they differ from the defaults."""
        extra = {k: v for k, v in self.params.items() if self.initializer.defaults.get(k) != v}
        if not extra:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(extra.items()))

    @classmethod
    def parse(cls, text: str) -> InitSpec:
        """Parse ``name`` or ``name:key=value[,key=value...]``; unknown names raise UsageError."""
        name, _, rest = text.strip().partition(":")
        name = name.strip()
        if name not in INITIALIZERS:
            raise UsageError(
                f"unknown initializer '{name}'{did_you_mean(name, INITIALIZERS)}; "
                f"choose from {', '.join(INITIALIZERS)}"
            )
        params: dict[str, float] = {}
        allowed = INITIALIZERS[name].defaults
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in allowed:
                choices = ", ".join(allowed) or "none"
                raise UsageError(f"initializer '{name}' takes no parameter '{item}' (parameters: {choices})")
            try:
                number = float(value)
            except ValueError:
                raise UsageError(f"initializer parameter {key}={value!r} is not a number") from None
            if not math.isfinite(number) or (key in ("std", "gain") and number < 0):
                raise UsageError(f"initializer parameter {key}={value} is out of range")
            params[key] = number
        return cls(name, params)


def split_init_list(text: str) -> list[str]:
    """The items of a comma-separated initializer list such as ``zeros,random:std=0.05,mean=0,he``: an item
    that contains ``=`` but no ``:`` continues the previous initializer's parameters."""
    items: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and items:
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def unique_labels(labels: list[str]) -> None:
    """UsageError when an initializer is given twice."""
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UsageError(f"initializer given twice: {', '.join(dup)}")


def parse_init_list(text: str) -> tuple[InitSpec, ...]:
    """Parse a comma-separated list (:func:`split_init_list`) into specs; no list, an unknown name or a
    name given twice is a UsageError."""
    items = split_init_list(text)
    if not items:
        raise UsageError("no initializer given")
    specs = tuple(InitSpec.parse(item) for item in items)
    unique_labels([s.label for s in specs])
    return specs


def apply_initializer(model: nn.Module, spec: InitSpec, seed: int) -> None:
    """Re-initialize every Conv/Linear weight of ``model`` in place with ``spec``, seeded by ``seed``.

    Biases become zero, except for ``pytorch-default``, which calls each layer's
    ``reset_parameters()`` under a forked global RNG seeded with ``seed``: the CPU generator for a
    model on the CPU (no CUDA generator is touched), the generators of the model's GPUs otherwise;
    their states are restored afterwards.
    """
    import torch

    from .structure.layers import weight_layers

    init = spec.initializer
    params = spec.resolved
    layers = list(weight_layers(model))
    with torch.no_grad():
        if init.fn is None:
            cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=cuda):
                if cuda:  # reset_parameters draws from the device's generator
                    torch.manual_seed(seed)
                else:  # seed only the CPU generator: no CUDA generator is touched, even lazily
                    torch.random.default_generator.manual_seed(seed)
                for _, module in layers:
                    module.reset_parameters()
            return
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for _, module in layers:
            weight = module.weight
            fresh = torch.empty(weight.shape, dtype=weight.dtype)
            init.fn(fresh, generator, params)
            weight.copy_(fresh)
            if init.zero_bias and module.bias is not None:
                module.bias.zero_()
