"""``initdiag sweep``'s configuration: an experiment once per cell of a grid of models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .config import ExperimentConfig
from .errors import UsageError, did_you_mean
from .models import ModelSpec
from .vocab import Backend

__all__ = ["SweepConfig", "sweep_models"]


@dataclass(frozen=True)
class SweepConfig:
    """``initdiag sweep``: the experiment ``base`` (initializers, seeds, training, data, outputs) once per
    model cell, ``models`` being the Cartesian product of the model axes (model x depth x width x
    activation), on ``backend`` (``local`` worker processes or ``ray`` tasks; ``ray_address``: None starts
    a local Ray instance, ``auto`` or ``host:port`` joins a running cluster)."""

    base: ExperimentConfig
    models: tuple[ModelSpec, ...]
    backend: str = Backend.LOCAL
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("a sweep needs at least one model cell")
        if len(set(self.models)) != len(self.models):
            raise UsageError("the sweep's model axes repeat a cell")
        if self.backend not in tuple(Backend):
            raise UsageError(f"unknown backend '{self.backend}'{did_you_mean(self.backend, tuple(Backend))}; choose "
                             f"from {', '.join(Backend)}")
        if self.ray_address is not None and self.backend != Backend.RAY:
            raise UsageError("--ray-address needs --backend ray")

    def cells(self) -> tuple[ExperimentConfig, ...]:
        """One experiment config per model cell, in grid order."""
        return tuple(replace(self.base, model=m) for m in self.models)

    @property
    def runs(self) -> int:
        return len(self.models) * len(self.base.initializers) * self.base.seeds

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base.to_json(), "models": [asdict(m) for m in self.models], "backend": self.backend,
                "ray_address": self.ray_address}

    @classmethod
    def from_json(cls, data: Any) -> SweepConfig:
        if not isinstance(data, dict) or set(data) != {"base", "models", "backend", "ray_address"}:
            raise ValueError("not a sweep configuration")
        return cls(ExperimentConfig.from_json(data["base"]), tuple(ModelSpec(**m) for m in data["models"]),
                   str(data["backend"]), data["ray_address"])


def sweep_models(names: str, depths: str, widths: str, activations: str) -> tuple[ModelSpec, ...]:
    """The Cartesian product of comma-separated model axes, e.g. ``deep-mlp``, ``10,20,30``, ``128,512``,
    ``relu,tanh`` (depth, width and activation vary only the deep MLP; other models appear once)."""
    def split(text: str, what: str) -> list[str]:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise UsageError(f"--{what} needs at least one value")
        return list(dict.fromkeys(items))

    def ints(text: str, what: str) -> list[int]:
        try:
            return [int(t) for t in split(text, what)]
        except ValueError:
            raise UsageError(f"--{what} must be comma-separated integers (got {text!r})") from None

    cells: list[ModelSpec] = []
    for name in split(names, "model"):
        if name != "deep-mlp":
            cells.append(ModelSpec(name))
            continue
        for depth in ints(depths, "depth"):
            for width in ints(widths, "width"):
                cells += [ModelSpec(name, depth, width, act) for act in split(activations, "activation")]
    return tuple(cells)
