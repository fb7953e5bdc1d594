"""Everything initdiag knows about an activation, in one registry: :data:`ACTIVATIONS`, one
:class:`ActivationInfo` per :class:`~initdiag.vocab.ActivationName`.

An entry says which ``torch.nn`` module types and which torch functions compute the activation, how to read
its parameters off a module or a call, its :class:`~initdiag.vocab.ActivationFamily`, its display name, how
theory evaluates it (``phi(x, **params)`` with the parameters' defaults, its kinks, its scale, the negative
slope of a piecewise-linear one), the bounds where ``sat_frac`` is measured, and the initializer advised
before it (by family, :data:`ADVICE`). Structure discovery matches modules by type (subclasses included) or,
for a parameter-free class outside ``torch.nn``, by class name (transformers' ``NewGELUActivation``), and
function calls by name, so ``F.relu``, ``torch.relu``, ``Tensor.relu`` and ``relu_`` are one; the theory
(:mod:`initdiag.theory.activations`) and the checks' advice read the same entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..vocab import ActivationFamily, ActivationName

__all__ = [
    "ACTIVATIONS",
    "ADVICE",
    "RELU_FAMILY",
    "SATURATING",
    "ActivationInfo",
    "Advice",
    "Param",
    "Params",
    "activation_of_function",
    "activation_of_module",
    "function_activations",
    "lookup",
    "named_activation",
]

Param = float | str
"""A parameter value: a float, or a string for ``gelu``'s ``approximate``."""
Params = tuple[tuple[str, Any], ...]
ModuleReader = Callable[[nn.Module], Params]
CallReader = Callable[[tuple[Any, ...], dict[str, Any]], Params]
Bound = Mapping[str, Param]


class Advice(NamedTuple):
    """The initializer advised before an activation (its ``--init`` name) and that initializer's gain:
    ``Var(W) = gain^2 / fan`` (``fan_in`` for he and lecun, the mean of the fans for xavier)."""

    initializer: str
    gain: float


ADVICE: dict[ActivationFamily, Advice] = {
    ActivationFamily.RECTIFIER: Advice("he", math.sqrt(2.0)),
    ActivationFamily.LEAKY: Advice("he", math.sqrt(2.0)),
    ActivationFamily.SMOOTH: Advice("he", math.sqrt(2.0)),
    ActivationFamily.SELF_NORMALIZING: Advice("lecun", 1.0),
    ActivationFamily.SATURATING: Advice("xavier", 1.0),
    ActivationFamily.LINEAR: Advice("xavier", 1.0),
    ActivationFamily.UNKNOWN: Advice("xavier", 1.0),
}
"""Family -> advice: He et al. 2015 for the ReLU family and its smooth relatives, LeCun (Klambauer et al. 2017)
for SELU, Glorot & Bengio 2010 for tanh, sigmoid, linear layers and what theory does not know."""


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any = None) -> Any:
    """Argument ``i`` of a call (or keyword ``key``, else ``default``)."""
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def _num(v: Any) -> Any:
    """A parameter as a plain value: a tensor's mean, a number as float; bool, None and str unchanged."""
    if isinstance(v, Tensor):
        return float(v.detach().float().mean()) if v.numel() else 0.0
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    return float(v)


@dataclass(frozen=True, eq=False)
class ActivationInfo:
    """One activation.

    ``modules`` / ``functions``: the module types and torch callables that compute it, each with the reader
    of its parameters (None: the generic one, which reads each key of ``defaults`` as an attribute of the
    module, or as the call's argument at position 1, 2, ... by the order of ``defaults``). ``class_names``:
    lower-case class names without underscores (library classes recognized by name) -> the parameters they
    imply. ``phi``: ``f(x, **params)``, elementwise (None: theory cannot evaluate it by name). ``defaults``:
    the parameters ``phi`` takes, with torch's defaults. ``kinks``: where ``phi`` or ``phi'`` (or ``phi''``)
    is not smooth; ``scale``: the pre-activation scale of its features; ``negative_slope``: for a function
    piecewise linear through 0 with slope 1 above, its slope below (theory's closed form). ``bounds``: the
    outputs counted as saturated by ``sat_frac``. ``aliases``: other names theory accepts for it.
    """

    name: ActivationName
    family: ActivationFamily
    display: str
    modules: Mapping[type[nn.Module], ModuleReader | None] = field(default_factory=dict)
    functions: Mapping[Callable[..., Any], CallReader | None] = field(default_factory=dict)
    class_names: Mapping[str, Params] = field(default_factory=dict)
    phi: Callable[..., Tensor] | None = None
    defaults: Mapping[str, Param] = field(default_factory=dict)
    kinks: Callable[[Bound], tuple[float, ...]] = lambda p: ()
    scale: Callable[[Bound], float] = lambda p: 1.0
    negative_slope: Callable[[Bound], float] | None = None
    bounds: tuple[float, float] | None = None
    aliases: tuple[str, ...] = ()
    invalid: Callable[[Bound], str | None] = lambda p: None
    """A message when bound parameters are out of range, else None."""

    @property
    def initializer(self) -> str:
        """The ``--init`` name advised before this activation (:data:`ADVICE`)."""
        return ADVICE[self.family].initializer

    @property
    def gain(self) -> float:
        """The gain of :attr:`initializer`."""
        return ADVICE[self.family].gain

    def module_params(self, module: nn.Module, class_name: str = "") -> Params:
        """The parameters of ``module`` (``class_name``: its key in ``class_names`` when recognized by name)."""
        reader = next((self.modules[c] for c in type(module).__mro__ if c in self.modules), None)
        if reader is not None:
            return reader(module)
        named = dict(self.class_names.get(class_name, ()))
        out: list[tuple[str, Any]] = []
        for key, default in self.defaults.items():
            value = getattr(module, key, None)
            if value is not None and (isinstance(value, str) or not isinstance(default, str)):
                out.append((key, _num(value)))
            elif key in named:
                out.append((key, named[key]))
        return tuple(out)

    def call_params(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Params:
        """The parameters of a call ``func(*args, **kwargs)`` (``args[0]`` the input), torch's defaults where
        not given."""
        reader = self.functions.get(func)
        if reader is not None:
            return reader(args, kwargs)
        return tuple((key, _num(_arg(args, kwargs, i, key, default)))
                     for i, (key, default) in enumerate(self.defaults.items(), 1))


def _identity(x: Tensor) -> Tensor:
    return x


def _leaky(x: Tensor, negative_slope: float = 0.25) -> Tensor:
    return torch.where(x >= 0, x, x * negative_slope)


def _gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """torch's GELU, or ``approximate="sigmoid"``: ``x sigmoid(1.702 x)`` (transformers' ``QuickGELU``)."""
    return x * torch.sigmoid(1.702 * x) if approximate == "sigmoid" else F.gelu(x, approximate=approximate)


def _slope(p: Bound) -> float:
    return float(p["negative_slope"])


def _prelu_module(m: nn.Module) -> Params:
    return (("negative_slope", _num(m.weight)),)  # the mean of its slopes: exact at init (all ``init``)


def _prelu_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Params:
    return (("negative_slope", _num(_arg(args, kwargs, 1, "weight", 0.25))),)


def _rrelu_module(m: nn.Module) -> Params:
    rrelu = cast(nn.RReLU, m)
    return (("negative_slope", (rrelu.lower + rrelu.upper) / 2),)


def _rrelu_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Params:
    lo, hi = _arg(args, kwargs, 1, "lower", 1 / 8), _arg(args, kwargs, 2, "upper", 1 / 3)
    return (("negative_slope", (float(lo) + float(hi)) / 2),)


def _kink_at_0(p: Bound) -> tuple[float, ...]:
    return (0.0,)


def _kinks_at_3(p: Bound) -> tuple[float, ...]:
    return (-3.0, 3.0)


def _nonzero(key: str) -> Callable[[Bound], str | None]:
    return lambda p: f"{key} must be non-zero" if p[key] == 0.0 else None


def _hardtanh_invalid(p: Bound) -> str | None:
    if float(p["min_val"]) < float(p["max_val"]):
        return None
    return f"min_val must be below max_val, got {p['min_val']} >= {p['max_val']}"


def _gelu_invalid(p: Bound) -> str | None:
    ok = p["approximate"] in ("none", "tanh", "sigmoid")
    return None if ok else f"approximate must be 'none', 'tanh' or 'sigmoid', got {p['approximate']!r}"


_A = ActivationName
_RECT, _LEAKY, _SMOOTH, _SAT = (ActivationFamily.RECTIFIER, ActivationFamily.LEAKY, ActivationFamily.SMOOTH,
                                ActivationFamily.SATURATING)
_APPROX_TANH: Params = (("approximate", "tanh"),)

_ENTRIES = (
    ActivationInfo(_A.RELU, _RECT, "ReLU", {nn.ReLU: None}, {torch.relu: None, F.relu: None, Tensor.relu: None},
                   {"relu": ()}, lambda x: F.relu(x), kinks=_kink_at_0, negative_slope=lambda p: 0.0),
    ActivationInfo(_A.RELU6, _RECT, "ReLU6", {nn.ReLU6: None}, {F.relu6: None}, {"relu6": ()},
                   lambda x: F.relu6(x), kinks=lambda p: (0.0, 6.0)),
    ActivationInfo(_A.LEAKY_RELU, _LEAKY, "LeakyReLU", {nn.LeakyReLU: None, nn.RReLU: _rrelu_module},
                   {F.leaky_relu: None, F.rrelu: _rrelu_call}, {"leakyrelu": ()},
                   lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope), {"negative_slope": 0.01},
                   _kink_at_0, negative_slope=_slope),  # nn.RReLU: its mean slope (exact in eval mode)
    ActivationInfo(_A.PRELU, _LEAKY, "PReLU", {nn.PReLU: _prelu_module}, {F.prelu: _prelu_call}, {},
                   _leaky, {"negative_slope": 0.25}, _kink_at_0, negative_slope=_slope),  # learned slope, init 0.25
    ActivationInfo(_A.ELU, _SMOOTH, "ELU", {nn.ELU: None}, {F.elu: None}, {"elu": ()},
                   lambda x, alpha=1.0: F.elu(x, alpha), {"alpha": 1.0}, _kink_at_0),  # phi'' jumps at 0
    ActivationInfo(_A.SELU, ActivationFamily.SELF_NORMALIZING, "SELU", {nn.SELU: None},
                   {F.selu: None, torch.selu: None}, {"selu": ()}, lambda x: F.selu(x), kinks=_kink_at_0),
    ActivationInfo(_A.CELU, _SMOOTH, "celu", {nn.CELU: None}, {F.celu: None, torch.celu: None}, {"celu": ()},
                   lambda x, alpha=1.0: F.celu(x, alpha), {"alpha": 1.0}, _kink_at_0,
                   lambda p: abs(float(p["alpha"])), invalid=_nonzero("alpha")),
    ActivationInfo(_A.GELU, _SMOOTH, "GELU", {nn.GELU: None}, {F.gelu: None},
                   {"gelu": (("approximate", "none"),), "geluerf": (("approximate", "none"),),
                    "clippedgelu": (("approximate", "none"),), "newgelu": _APPROX_TANH, "fastgelu": _APPROX_TANH,
                    "gelutanh": _APPROX_TANH, "pytorchgelutanh": _APPROX_TANH, "accurategelu": _APPROX_TANH,
                    "gelunew": _APPROX_TANH, "quickgelu": (("approximate", "sigmoid"),)},
                   _gelu, {"approximate": "none"}, invalid=_gelu_invalid),
    ActivationInfo(_A.SILU, _SMOOTH, "SiLU", {nn.SiLU: None}, {F.silu: None}, {"silu": (), "swish": ()},
                   lambda x: F.silu(x)),
    ActivationInfo(_A.MISH, _SMOOTH, "mish", {nn.Mish: None}, {F.mish: None}, {"mish": ()}, lambda x: F.mish(x)),
    ActivationInfo(_A.SOFTPLUS, _SMOOTH, "softplus", {nn.Softplus: None}, {F.softplus: None}, {"softplus": ()},
                   lambda x, beta=1.0, threshold=20.0: F.softplus(x, beta, threshold),
                   {"beta": 1.0, "threshold": 20.0}, scale=lambda p: 1.0 / abs(float(p["beta"])),
                   invalid=_nonzero("beta")),
    ActivationInfo(_A.TANH, _SAT, "tanh", {nn.Tanh: None}, {torch.tanh: None, F.tanh: None, Tensor.tanh: None},
                   {"tanh": ()}, torch.tanh, bounds=(-1.0, 1.0)),
    ActivationInfo(_A.HARDTANH, _SAT, "hardtanh", {nn.Hardtanh: None}, {F.hardtanh: None}, {"hardtanh": ()},
                   lambda x, min_val=-1.0, max_val=1.0: F.hardtanh(x, min_val, max_val),
                   {"min_val": -1.0, "max_val": 1.0}, lambda p: (float(p["min_val"]), float(p["max_val"])),
                   bounds=(-1.0, 1.0), invalid=_hardtanh_invalid),
    ActivationInfo(_A.SIGMOID, _SAT, "sigmoid", {nn.Sigmoid: None},
                   {torch.sigmoid: None, F.sigmoid: None, Tensor.sigmoid: None, torch.special.expit: None},
                   {"sigmoid": ()}, torch.sigmoid, bounds=(0.0, 1.0)),
    ActivationInfo(_A.HARDSIGMOID, _SAT, "hardsigmoid", {nn.Hardsigmoid: None}, {F.hardsigmoid: None},
                   {"hardsigmoid": ()}, lambda x: F.hardsigmoid(x), kinks=_kinks_at_3),
    ActivationInfo(_A.HARDSWISH, _SMOOTH, "hardswish", {nn.Hardswish: None}, {F.hardswish: None},
                   {"hardswish": ()}, lambda x: F.hardswish(x), kinks=_kinks_at_3),
    ActivationInfo(_A.SOFTSIGN, _SAT, "softsign", {nn.Softsign: None}, {F.softsign: None}, {"softsign": ()},
                   lambda x: F.softsign(x), kinks=_kink_at_0),  # x / (1 + |x|): phi'' jumps at 0
    ActivationInfo(_A.LINEAR, ActivationFamily.LINEAR, "linear", {nn.Identity: None}, {}, {}, _identity,
                   negative_slope=lambda p: 1.0, aliases=("identity", "none", "")),
    ActivationInfo(_A.MODULE, ActivationFamily.UNKNOWN, "module",
                   {nn.Tanhshrink: None, nn.Softshrink: None, nn.Hardshrink: None, nn.LogSigmoid: None,
                    nn.Threshold: None}),  # elementwise torch modules outside the families: evaluated as they are
    ActivationInfo(_A.OTHER, ActivationFamily.UNKNOWN, "other"),
)

ACTIVATIONS: dict[str, ActivationInfo] = {info.name: info for info in _ENTRIES}
"""Every activation, by canonical name."""
_BY_NAME: dict[str, ActivationInfo] = {alias: info for info in _ENTRIES for alias in (info.name, *info.aliases)}
_BY_MODULE: dict[type, ActivationInfo] = {cls: info for info in _ENTRIES for cls in info.modules}
_BY_FUNCTION: dict[Any, ActivationInfo] = {f: info for info in _ENTRIES for f in info.functions}
_BY_CLASS_NAME: dict[str, ActivationInfo] = {key: info for info in _ENTRIES for key in info.class_names}
_CLASS_SUFFIXES = ("activation", "act", "layer", "me", "jit", "auto")

RELU_FAMILY = frozenset(info.name for info in _ENTRIES if info.family == ActivationFamily.RECTIFIER)
"""Activations whose inactive outputs are exactly zero, so a unit can be dead."""
SATURATING: dict[str, tuple[float, float]] = {info.name: info.bounds for info in _ENTRIES if info.bounds is not None}
"""Bounded activations and their bounds, for ``sat_frac``."""


def lookup(name: str) -> ActivationInfo | None:
    """The entry of a canonical name or an alias (``identity`` is ``linear``), else None."""
    return _BY_NAME.get(name)


def activation_of_module(module: nn.Module, exact: bool = False) -> ActivationInfo | None:
    """The entry of a module by its type: the most specific registered class in its MRO (``nn.ReLU6`` is
    ``relu6``, not its base ``nn.Hardtanh``), or with ``exact`` its own class only; None if not registered."""
    if exact:
        return _BY_MODULE.get(type(module))
    return next((_BY_MODULE[c] for c in type(module).__mro__ if c in _BY_MODULE), None)


def named_activation(class_name: str) -> tuple[ActivationInfo, str] | None:
    """``(entry, key)`` of a library class recognized by its name (``NewGELUActivation`` -> gelu, key
    ``newgelu``; a suffix activation/act/layer/me/jit/auto dropped), else None."""
    key = class_name.lower().replace("_", "")
    for suffix in _CLASS_SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_CLASS_NAME:
            key = key[: -len(suffix)]
            break
    info = _BY_CLASS_NAME.get(key)
    return None if info is None else (info, key)


def activation_of_function(func: Any) -> ActivationInfo | None:
    """The entry of a torch callable (``torch.relu``, ``F.gelu``, ``Tensor.tanh``, ...), else None."""
    try:
        return _BY_FUNCTION.get(func)
    except TypeError:  # an unhashable callable
        return None


def function_activations() -> dict[Callable[..., Any], ActivationInfo]:
    """Every registered torch callable with its entry (discovery names them by ``__name__``)."""
    return dict(_BY_FUNCTION)
