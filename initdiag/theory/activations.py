"""The activation registry of the signal-propagation theory engine (``initdiag.theory.gauss``).

Each family is a torch callable ``f(x, **params)`` in ``ACTIVATION_FUNCTIONS``; ``activation_function(name,
**params)`` binds its parameters into a hashable, callable ``ActivationSpec`` that also knows where the
function is not smooth (``breakpoints``, the kinks of ``phi`` or of ``phi'``, in pre-activation units) and
which families have an exact Gaussian expectation (``closed_form_moments``: the ReLU family and the identity).
The quadrature in ``gauss`` uses both: a split rule with panel edges at the kinks for kinked families, the
closed form where there is one, Gauss–Hermite for the smooth rest.

``as_activation`` recognises the standard ``torch.nn`` activation modules (``nn.ReLU()``, ``nn.GELU("tanh")``,
``nn.Hardtanh(-2, 2)``, a single-parameter ``nn.PReLU`` ...) and the plain torch functions (``torch.tanh``,
``F.relu`` ...), so that they get the same treatment as their registry names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ACTIVATION_DEFAULTS",
    "ACTIVATION_FUNCTIONS",
    "ActivationSpec",
    "activation_function",
    "as_activation",
    "closed_form_moments",
]

Param = float | str
"""A bound parameter value: a float, or a string for ``gelu``'s ``approximate``."""


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _leaky(x: torch.Tensor, negative_slope: float = 0.25) -> torch.Tensor:
    return torch.where(x >= 0, x, x * negative_slope)


ACTIVATION_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda x: F.relu(x),
    "relu6": lambda x: F.relu6(x),
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    "prelu": _leaky,  # nn.PReLU with one shared slope (its ``init``, 0.25 by default): a leaky ReLU
    "elu": lambda x, alpha=1.0: F.elu(x, alpha),
    "selu": lambda x: F.selu(x),
    "celu": lambda x, alpha=1.0: F.celu(x, alpha),
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "silu": lambda x: F.silu(x),
    "mish": lambda x: F.mish(x),
    "softplus": lambda x, beta=1.0: F.softplus(x, beta=beta),
    "tanh": torch.tanh,
    "hardtanh": lambda x, min_val=-1.0, max_val=1.0: F.hardtanh(x, min_val, max_val),
    "sigmoid": torch.sigmoid,
    "hardsigmoid": lambda x: F.hardsigmoid(x),
    "hardswish": lambda x: F.hardswish(x),
    "softsign": lambda x: F.softsign(x),
    "linear": _identity,
    "identity": _identity,
}
"""Family name (lower case) -> torch callable ``f(x, **params)``, elementwise, any dtype."""

ACTIVATION_DEFAULTS: dict[str, dict[str, Param]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "prelu": {"negative_slope": 0.25},
    "elu": {"alpha": 1.0},
    "celu": {"alpha": 1.0},
    "gelu": {"approximate": "none"},
    "softplus": {"beta": 1.0},
    "hardtanh": {"min_val": -1.0, "max_val": 1.0},
}
"""The parameters each family accepts, with their defaults (families not listed take none)."""

_KINKS: dict[str, Callable[[dict[str, Any]], tuple[float, ...]]] = {
    "relu": lambda p: (0.0,),
    "relu6": lambda p: (0.0, 6.0),
    "leaky_relu": lambda p: (0.0,),
    "prelu": lambda p: (0.0,),
    "elu": lambda p: (0.0,),  # phi'' jumps at 0 even for alpha = 1
    "selu": lambda p: (0.0,),  # phi' jumps (1.0507 vs 1.7581)
    "celu": lambda p: (0.0,),
    "hardtanh": lambda p: (float(p["min_val"]), float(p["max_val"])),
    "hardsigmoid": lambda p: (-3.0, 3.0),
    "hardswish": lambda p: (-3.0, 3.0),
    "softsign": lambda p: (0.0,),  # x / (1 + |x|): phi'' jumps at 0
}


@dataclass(frozen=True)
class ActivationSpec:
    """A registry family with its parameters bound: hashable (a cache key) and callable on tensors."""

    name: str
    params: tuple[tuple[str, Param], ...] = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATION_FUNCTIONS[self.name](x, **dict(self.params))

    def param(self, key: str) -> Param:
        """The bound value of parameter ``key``."""
        return dict(self.params)[key]

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Pre-activation values where ``phi`` or ``phi'`` (or, for elu/celu/softsign, ``phi''``) is not smooth."""
        kinks = _KINKS.get(self.name)
        return () if kinks is None else kinks(dict(self.params))

    @property
    def scale(self) -> float:
        """The pre-activation scale of the function's features (1 unless a parameter stretches it)."""
        if self.name == "softplus":
            return 1.0 / abs(float(self.param("beta")))
        if self.name == "celu":
            return abs(float(self.param("alpha")))
        return 1.0

    def __str__(self) -> str:
        bound = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.name}({bound})" if bound else self.name


def activation_function(name: str, **params: Param) -> ActivationSpec:
    """The registry family ``name`` with ``params`` bound (the others at their defaults in ACTIVATION_DEFAULTS).

    Raises KeyError for an unknown family name and ValueError for an unknown or invalid parameter.
    """
    if not isinstance(name, str) or name not in ACTIVATION_FUNCTIONS:
        raise KeyError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATION_FUNCTIONS))}")
    defaults = ACTIVATION_DEFAULTS.get(name, {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"activation {name!r} takes no parameter {', '.join(unknown)} (accepted: {accepted})")
    bound: dict[str, Param] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        if isinstance(default, str):
            if value not in ("none", "tanh"):
                raise ValueError(f"{name}: {key} must be 'none' or 'tanh', got {value!r}")
            bound[key] = str(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"{name}: {key} must be finite, got {value!r}")
            bound[key] = number
    if name in ("celu", "softplus") and bound[next(iter(defaults))] == 0.0:
        raise ValueError(f"{name}: {next(iter(defaults))} must be non-zero")
    if name == "hardtanh" and not float(bound["min_val"]) < float(bound["max_val"]):
        raise ValueError(f"hardtanh: min_val must be below max_val, got {bound['min_val']} >= {bound['max_val']}")
    return ActivationSpec(name, tuple(sorted(bound.items())))


_MODULES: dict[type, Callable[[Any], ActivationSpec | None]] = {
    nn.ReLU: lambda m: activation_function("relu"),
    nn.ReLU6: lambda m: activation_function("relu6"),
    nn.LeakyReLU: lambda m: activation_function("leaky_relu", negative_slope=m.negative_slope),
    nn.PReLU: lambda m: (activation_function("prelu", negative_slope=float(m.weight.detach().reshape(-1)[0]))
                         if m.weight.numel() == 1 else None),
    nn.ELU: lambda m: activation_function("elu", alpha=m.alpha),
    nn.SELU: lambda m: activation_function("selu"),
    nn.CELU: lambda m: activation_function("celu", alpha=m.alpha),
    nn.GELU: lambda m: activation_function("gelu", approximate=m.approximate),
    nn.SiLU: lambda m: activation_function("silu"),
    nn.Mish: lambda m: activation_function("mish"),
    nn.Softplus: lambda m: activation_function("softplus", beta=m.beta),
    nn.Tanh: lambda m: activation_function("tanh"),
    nn.Hardtanh: lambda m: activation_function("hardtanh", min_val=m.min_val, max_val=m.max_val),
    nn.Sigmoid: lambda m: activation_function("sigmoid"),
    nn.Hardsigmoid: lambda m: activation_function("hardsigmoid"),
    nn.Hardswish: lambda m: activation_function("hardswish"),
    nn.Softsign: lambda m: activation_function("softsign"),
    nn.Identity: lambda m: activation_function("identity"),
}

_FUNCTIONS: dict[object, str] = {
    torch.relu: "relu", F.relu: "relu", F.relu6: "relu6", F.elu: "elu", F.selu: "selu", torch.selu: "selu",
    F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.mish: "mish", F.softplus: "softplus", torch.tanh: "tanh",
    F.tanh: "tanh", F.hardtanh: "hardtanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.softsign: "softsign", F.leaky_relu: "leaky_relu",
}


def as_activation(phi: object) -> ActivationSpec | None:
    """``phi`` as a registry spec: a name, a spec, a standard ``torch.nn`` activation module (exact type, its
    parameters read off) or a plain torch activation function (at its default parameters); None otherwise.

    A ``str`` that is not a family name raises KeyError (see ``activation_function``).
    """
    if isinstance(phi, ActivationSpec):
        return phi
    if isinstance(phi, str):
        return activation_function(phi)
    module_rule = _MODULES.get(type(phi))
    if module_rule is not None:
        return module_rule(phi)
    try:
        name = _FUNCTIONS.get(phi)
    except TypeError:  # an unhashable callable
        return None
    return None if name is None else activation_function(name)


def closed_form_moments(spec: ActivationSpec, q: float) -> tuple[float, float, float] | None:
    """Exact ``(E[phi(x)], E[phi(x)^2], E[phi'(x)^2])`` for x ~ N(0, q), or None where there is no closed form.

    Piecewise-linear through 0 with slopes 1 (x > 0) and ``a`` (x < 0): relu (a = 0), leaky_relu/prelu
    (a = negative_slope), linear/identity (a = 1). Since E[x 1{x>0}] = sqrt(q / (2 pi)) and
    E[x^2 1{x>0}] = q / 2:  E[phi] = (1 - a) sqrt(q / (2 pi)),  E[phi^2] = (1 + a^2) q / 2,
    E[phi'^2] = (1 + a^2) / 2 (He et al. 2015 for a = 0; the q -> 0 limit is kept at q = 0).
    """
    if spec.name in ("linear", "identity"):
        a = 1.0
    elif spec.name == "relu":
        a = 0.0
    elif spec.name in ("leaky_relu", "prelu"):
        a = float(spec.param("negative_slope"))
    else:
        return None
    return (1.0 - a) * math.sqrt(q / (2.0 * math.pi)), (1.0 + a * a) * q / 2.0, (1.0 + a * a) / 2.0

