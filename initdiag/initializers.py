"""Registry of weight initializers, each applied in place to the weights of a model: every linear map the
structure saw (:func:`initialize`, with the fans it saw), or every Conv/Linear weight (:func:`apply_initializer`).

Every initializer draws from a ``torch.Generator`` seeded by the run's seed, so the same seed gives the
same weights. Biases are set to zero (as Keras does), except for ``pytorch-default``, which is exactly
what ``reset_parameters()`` does when the user does nothing (biases included).

Notation: ``fan_in`` = inputs summed into one output unit (in_channels / groups x kernel area for a
convolution), ``fan_out`` = outputs each input feeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
    "Draw",
    "InitName",
    "InitSpec",
    "Initializer",
    "Kept",
    "Reinit",
    "Target",
    "apply_initializer",
    "initialize",
    "parse_init_list",
    "shape_targets",
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

Rule = Callable[[float, float, tuple[int, ...], Mapping[str, float]], float]
"""Var(W) of the weights an initializer draws, from ``(fan_in, fan_out, weight shape, parameters)``."""


class Draw(StrEnum):
    """How an initializer fills a weight: from a normal or a uniform of its rule's variance, a (semi-)orthogonal
    matrix, a constant, or the owning module's ``reset_parameters()``."""

    NORMAL = "normal"
    UNIFORM = "uniform"
    ORTHOGONAL = "orthogonal"
    CONSTANT = "constant"
    DEFAULT = "default"


@dataclass(frozen=True)
class Initializer:
    """One registered initializer.

    ``rule(fan_in, fan_out, shape, params)`` is the variance of each weight it draws (for orthogonal:
    ``gain^2 / max(rows, cols)`` of the weight flattened to ``(shape[0], -1)``; for ``pytorch-default``
    torch's own rule, from the shape); ``draw`` says how: a normal ``N(mean, var)``, a uniform
    ``U(-sqrt(3 var), sqrt(3 var))``, ``orthogonal_`` with the gain, the constant ``value`` (0 without one),
    or ``reset_parameters()``.
    """

    name: str
    summary: str
    formula: str
    draw: Draw
    rule: Rule
    defaults: Mapping[str, float] = field(default_factory=dict)
    zero_bias: bool = True

    def variance(self, shape: tuple[int, ...], params: Mapping[str, float]) -> float:
        """The rule for a Conv/Linear weight of ``shape`` (``(out, in, *kernel)``: :func:`shape_fans`)."""
        return self.rule(*shape_fans(shape), shape, params)

    def fill(self, weight: torch.Tensor, fan_in: float, fan_out: float, generator: torch.Generator,
             params: Mapping[str, float]) -> float:
        """Draw ``weight`` in place (CPU ``generator``) for the fans given; returns the Var(W) drawn. Not for
        ``Draw.DEFAULT``: the owning module's ``reset_parameters()`` draws those (:func:`initialize`)."""
        import torch
        from torch import nn

        if self.draw == Draw.DEFAULT:
            raise ValueError(f"{self.name} draws through reset_parameters(), not fill()")
        shape = tuple(weight.shape)
        var = self.rule(fan_in, fan_out, shape, params)
        fresh = torch.empty(shape, dtype=weight.dtype)
        if self.draw == Draw.NORMAL:
            fresh.normal_(params.get("mean", 0.0), math.sqrt(var), generator=generator)
        elif self.draw == Draw.UNIFORM:
            bound = math.sqrt(3.0 * var)
            fresh.uniform_(-bound, bound, generator=generator)
        elif self.draw == Draw.ORTHOGONAL:
            nn.init.orthogonal_(fresh, gain=params["gain"], generator=generator)
        else:
            fresh.fill_(params.get("value", 0.0))
        weight.copy_(fresh)
        return var


def _xavier_var(fan_in: float, fan_out: float, shape: tuple[int, ...], p: Mapping[str, float]) -> float:
    return p["gain"] ** 2 * 2.0 / (fan_in + fan_out)


INITIALIZERS: dict[str, Initializer] = {
    i.name: i
    for i in (
        Initializer(
            InitName.ZEROS, "every weight 0: all neurons identical, no signal", "W = 0", Draw.CONSTANT,
            lambda fi, fo, sh, p: 0.0,
        ),
        Initializer(
            InitName.CONSTANT, "every weight the same constant (value=0.05): fully symmetric",
            "W = value", Draw.CONSTANT, lambda fi, fo, sh, p: 0.0, {"value": 0.05},
        ),
        Initializer(
            InitName.RANDOM, "normal with a fixed std (0.1), ignoring layer size: the classic 'random'",
            "W ~ N(mean, std^2), std = 0.1", Draw.NORMAL, lambda fi, fo, sh, p: p["std"] ** 2,
            {"std": 0.1, "mean": 0.0},
        ),
        Initializer(
            InitName.XAVIER, "Glorot & Bengio (2010), normal: keeps variance for linear/tanh layers",
            "W ~ N(0, gain^2 * 2 / (fan_in + fan_out))", Draw.NORMAL, _xavier_var, {"gain": 1.0},
        ),
        Initializer(
            InitName.XAVIER_UNIFORM, "Glorot & Bengio (2010), uniform",
            "W ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))", Draw.UNIFORM, _xavier_var, {"gain": 1.0},
        ),
        Initializer(
            InitName.HE, "He et al. (2015), normal, fan_in: keeps variance through ReLU layers",
            "W ~ N(0, 2 / fan_in)", Draw.NORMAL, lambda fi, fo, sh, p: 2.0 / fi,
        ),
        Initializer(
            InitName.HE_UNIFORM, "He et al. (2015), uniform, fan_in", "W ~ U(-a, a), a = sqrt(6 / fan_in)",
            Draw.UNIFORM, lambda fi, fo, sh, p: 2.0 / fi,
        ),
        Initializer(
            InitName.LECUN, "LeCun et al. (1998), normal: keeps variance for linear/SELU layers",
            "W ~ N(0, 1 / fan_in)", Draw.NORMAL, lambda fi, fo, sh, p: 1.0 / fi,
        ),
        Initializer(
            InitName.ORTHOGONAL, "Saxe et al. (2014): a (semi-)orthogonal matrix of the flattened weight",
            "W = gain * Q, Q from the QR decomposition of a normal matrix", Draw.ORTHOGONAL,
            lambda fi, fo, sh, p: p["gain"] ** 2 / max(sh[0], math.prod(sh[1:])), {"gain": 1.0},
        ),
        Initializer(
            InitName.PYTORCH_DEFAULT, "what PyTorch does when you do nothing (reset_parameters), biases too",
            "W ~ U(-a, a), a = 1 / sqrt(fan_in) (kaiming_uniform, a=sqrt(5)); b ~ U(-a, a)", Draw.DEFAULT,
            lambda fi, fo, sh, p: 1.0 / (3.0 * shape_fans(sh)[0]), zero_bias=False,
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


@dataclass(frozen=True)
class Target:
    """A weight to re-initialize: parameter ``param`` of the module named ``module`` ("" for the root), with
    the fans the forward showed (:class:`~initdiag.structure.WeightLayer`). A non-empty ``reason`` says why it
    cannot be re-initialized (it is then kept, and named)."""

    module: str
    param: str
    fan_in: float
    fan_out: float
    reason: str = ""


@dataclass(frozen=True)
class Kept:
    """A weight (a parameter of 2+ dims) an initializer left as it was, by qualified name, and why."""

    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class Reinit:
    """What :func:`initialize` did: ``variances`` maps each re-initialized module (the root by its class name)
    to the Var(W) drawn, ``kept`` names every weight left as it was."""

    variances: Mapping[str, float]
    kept: tuple[Kept, ...]


NOT_A_MAP = "not seen as a linear map in the forward"
RECURRENT = "a recurrent layer's gate weights: no initializer here has a rule for gates (the gates check judges them)"
NO_RESET = "its module has no reset_parameters()"
DERIVED = "computed from other parameters (a parametrization or weight norm)"


def _qualified(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


def _stands_for(weight: str, name: str) -> bool:
    """Whether parameter ``name`` is ``weight`` or what it is computed from (``parametrizations.<w>.*``,
    ``<w>_orig``, ``<w>_g``, ``<w>_v``)."""
    module, _, attr = weight.rpartition(".")
    prefix = module + "." if module else ""
    return name == weight or name.startswith(f"{prefix}parametrizations.{attr}.") or \
        name in {f"{weight}_orig", f"{weight}_g", f"{weight}_v"}


def _reset(model: nn.Module, modules: Sequence[nn.Module], seed: int) -> None:
    """``reset_parameters()`` of each module under a forked global RNG seeded with ``seed``: the CPU generator
    for a model on the CPU (no CUDA generator is touched), the generators of the model's GPUs otherwise."""
    import torch

    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        if cuda:  # reset_parameters draws from the device's generator
            torch.manual_seed(seed)
        else:  # seed only the CPU generator: no CUDA generator is touched, even lazily
            torch.random.default_generator.manual_seed(seed)
        for module in modules:
            module.reset_parameters()  # type: ignore[operator]


def initialize(model: nn.Module, spec: InitSpec, seed: int, targets: Sequence[Target]) -> Reinit:
    """Re-initialize each target's weight in place with ``spec``, for the target's fans, seeded by ``seed``.

    A weight shared by several targets is drawn once. Biases (each owning module's ``bias``) become zero,
    except for ``pytorch-default``, which calls each owning module's ``reset_parameters()`` (:func:`_reset`)
    and reports the second moment it drew. Every parameter of 2+ dims left as it was is named in
    :attr:`Reinit.kept`: targets with a reason, weights that are no parameter of their module, modules
    without ``reset_parameters()`` (``pytorch-default``) and parameters no target names.
    """
    import torch
    from torch import nn

    init, params = spec.initializer, spec.resolved
    modules = dict(model.named_modules())
    root = type(model).__name__
    drawn: dict[int, float] = {}
    variances: dict[str, float] = {}
    kept: list[tuple[Kept, int]] = []  # with the parameter's id (0: none)
    owners: dict[str, tuple[nn.Module, torch.Tensor, Target]] = {}
    for t in targets:
        module = modules.get(t.module)
        if module is None:
            continue
        weight = dict(module.named_parameters(recurse=False)).get(t.param)
        reason = t.reason or ("" if weight is not None else DERIVED)
        if not reason and init.draw == Draw.DEFAULT and not callable(getattr(module, "reset_parameters", None)):
            reason = NO_RESET
        if reason or weight is None:
            kept.append((Kept(_qualified(t.module, t.param), reason), id(weight) if weight is not None else 0))
        else:
            owners.setdefault(_qualified(t.module, t.param), (module, weight, t))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    touched: set[int] = set()
    with torch.no_grad():
        if init.draw == Draw.DEFAULT:
            reset = list({id(m): m for m, _, _ in owners.values()}.values())
            _reset(model, reset, seed)
            touched = {id(p) for m in reset for p in m.parameters(recurse=False)}
        for module, weight, t in owners.values():
            if id(weight) not in drawn:
                drawn[id(weight)] = (float(weight.detach().double().square().mean()) if init.draw == Draw.DEFAULT
                                     else init.fill(weight, t.fan_in, t.fan_out, generator, params))
                bias = dict(module.named_parameters(recurse=False)).get("bias")
                if init.zero_bias and bias is not None:
                    bias.zero_()
            variances[t.module or root] = drawn[id(weight)]
    touched |= set(drawn)  # a weight kept by one target but drawn for another (tied) is no longer kept
    named = [k for k, pid in kept if pid not in touched]
    named += [Kept(name, RECURRENT if isinstance(modules.get(name.rpartition(".")[0]), (nn.RNNBase, nn.RNNCellBase))
                   else NOT_A_MAP) for name, p in model.named_parameters()
              if p.dim() >= 2 and id(p) not in touched and not any(_stands_for(k.name, name) for k, _ in kept)]
    return Reinit(variances, tuple(named))


def shape_targets(model: nn.Module) -> tuple[Target, ...]:
    """A target per Conv/Linear module (registration order), its fans from its weight's shape."""
    from .structure.layers import weight_layers

    return tuple(Target(name, "weight", *shape_fans(tuple(m.weight.shape))) for name, m in weight_layers(model))


def apply_initializer(model: nn.Module, spec: InitSpec, seed: int) -> Reinit:
    """Re-initialize every Conv/Linear weight of ``model`` in place with ``spec``, seeded by ``seed``
    (:func:`initialize` on :func:`shape_targets`). Biases become zero, except for ``pytorch-default``, which
    calls each layer's ``reset_parameters()``; the global RNG states are restored afterwards."""
    return initialize(model, spec, seed, shape_targets(model))
