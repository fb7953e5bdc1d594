"""The activations of the signal-propagation theory engine (``initdiag.theory.gauss``), as bound specs.

Every activation theory evaluates by name is an entry of the registry
(:data:`~initdiag.structure.activations.ACTIVATIONS`) with a ``phi``; ``activation_function(name, **params)``
binds its parameters into a hashable, callable ``ActivationSpec`` that also knows where the function is not
smooth (``breakpoints``, the kinks of ``phi`` or of ``phi'``, in pre-activation units) and which families have
an exact Gaussian expectation (``closed_form_moments``: the piecewise-linear ReLU family and the identity).
The quadrature in ``gauss`` uses both: a split rule with panel edges at the kinks for kinked families, the
closed form where there is one, Gauss–Hermite for the smooth rest.

``as_activation`` recognises the registry's ``torch.nn`` activation modules (``nn.ReLU()``, ``nn.GELU("tanh")``,
``nn.Hardtanh(-2, 2)``, ``nn.PReLU`` at the mean of its slopes ...) and its torch functions (``torch.tanh``,
``F.relu`` ...), so that they get the same treatment as their registry names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..structure.activations import (
    ACTIVATIONS,
    ActivationInfo,
    Param,
    activation_of_function,
    activation_of_module,
    lookup,
)

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ActivationSpec",
    "activation_function",
    "as_activation",
    "closed_form_moments",
]

ACTIVATION_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    str(name): info.phi for name, info in ACTIVATIONS.items() if info.phi is not None}
"""The names theory evaluates -> torch callable ``f(x, **params)``, elementwise, any dtype (from the registry)."""


def _info(name: str) -> ActivationInfo:
    return ACTIVATIONS[name]


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
        return _info(self.name).kinks(dict(self.params))

    @property
    def scale(self) -> float:
        """The pre-activation scale of the function's features (1 unless a parameter stretches it)."""
        return _info(self.name).scale(dict(self.params))

    def __str__(self) -> str:
        bound = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.name}({bound})" if bound else self.name


def _bind(name: str, defaults: dict[str, Param], params: dict[str, Param]) -> dict[str, Param]:
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"activation {name!r} takes no parameter {', '.join(unknown)} (accepted: {accepted})")
    bound: dict[str, Param] = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        if isinstance(default, str):
            bound[key] = str(value)
            continue
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{name}: {key} must be finite, got {value!r}")
        bound[key] = number
    return bound


def activation_function(name: str, **params: Param) -> ActivationSpec:
    """The registry activation ``name`` (or an alias: ``identity`` is ``linear``) with ``params`` bound (the
    others at the registry's defaults).

    Raises KeyError for a name theory cannot evaluate and ValueError for an unknown or invalid parameter.
    """
    info = lookup(name) if isinstance(name, str) else None
    if info is None or info.phi is None:
        raise KeyError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATION_FUNCTIONS))}")
    bound = _bind(str(info.name), dict(info.defaults), params)
    problem = info.invalid(bound)
    if problem is not None:
        raise ValueError(f"{info.name}: {problem}")
    return ActivationSpec(str(info.name), tuple(sorted(bound.items())))


def as_activation(phi: object) -> ActivationSpec | None:
    """``phi`` as a registry spec: a name, a spec, a registered ``torch.nn`` activation module (exact type: a
    subclass may compute something else; its parameters read off) or a registered torch function (at its
    default parameters); None otherwise (theory then evaluates ``phi`` as it is).

    A ``str`` that is not a family name raises KeyError (see ``activation_function``).
    """
    if isinstance(phi, ActivationSpec):
        return phi
    if isinstance(phi, str):
        return activation_function(phi)
    if isinstance(phi, nn.Module):
        info = activation_of_module(phi, exact=True)
        params = info.module_params(phi) if info is not None else ()
    else:
        info = activation_of_function(phi)
        params = info.call_params(phi, (), {}) if info is not None else ()  # type: ignore[arg-type]
    if info is None or info.phi is None:
        return None
    try:
        return activation_function(str(info.name), **dict(params))
    except ValueError:  # parameters theory cannot take (e.g. a PReLU without slopes)
        return None


def closed_form_moments(spec: ActivationSpec, q: float) -> tuple[float, float, float] | None:
    """Exact ``(E[phi(x)], E[phi(x)^2], E[phi'(x)^2])`` for x ~ N(0, q), or None where there is no closed form.

    Piecewise-linear through 0 with slopes 1 (x > 0) and ``a`` (x < 0), the registry's ``negative_slope``:
    relu (a = 0), leaky_relu/prelu (a = negative_slope), linear (a = 1). Since E[x 1{x>0}] = sqrt(q / (2 pi))
    and E[x^2 1{x>0}] = q / 2:  E[phi] = (1 - a) sqrt(q / (2 pi)),  E[phi^2] = (1 + a^2) q / 2,
    E[phi'^2] = (1 + a^2) / 2 (He et al. 2015 for a = 0; the q -> 0 limit is kept at q = 0).
    """
    slope = _info(spec.name).negative_slope
    if slope is None:
        return None
    a = float(slope(dict(spec.params)))
    return (1.0 - a) * math.sqrt(q / (2.0 * math.pi)), (1.0 + a * a) * q / 2.0, (1.0 + a * a) / 2.0
