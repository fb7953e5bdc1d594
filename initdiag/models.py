"""Model zoo: the seed CNN, an MLP, and deep MLPs for depth studies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from torch import nn

from .errors import UsageError, did_you_mean

__all__ = ["ACTIVATIONS", "MODELS", "ModelName", "ModelSpec", "build_model"]


class ModelName(StrEnum):
    CNN = "cnn"
    MLP = "mlp"
    DEEP_MLP = "deep-mlp"


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a zoo name with the depth-study knobs (ignored by ``cnn`` and ``mlp``)."""

    name: str = ModelName.CNN
    depth: int = 10
    width: int = 256
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise UsageError(f"unknown model '{self.name}'{did_you_mean(self.name, MODELS)}; "
                             f"choose from {', '.join(MODELS)}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"unknown activation '{self.activation}'"
                             f"{did_you_mean(self.activation, ACTIVATIONS)}; choose from {', '.join(ACTIVATIONS)}")
        if self.depth < 2:
            raise UsageError(f"--depth must be at least 2 (got {self.depth})")
        if self.width < 1:
            raise UsageError(f"--width must be at least 1 (got {self.width})")

    @property
    def label(self) -> str:
        if self.name == ModelName.DEEP_MLP:
            return f"deep-mlp (depth {self.depth}, width {self.width}, {self.activation})"
        return self.name


def seed_cnn() -> nn.Sequential:
    """The seed experiment's CNN (Keras original), for 1x28x28 inputs and 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(576, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def mlp() -> nn.Sequential:
    """784-256-256-10 with ReLU."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def deep_mlp(depth: int, width: int, activation: str) -> nn.Sequential:
    """``depth`` Linear layers in all: 784-width, (depth-2) x width-width, width-10, activation between."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


MODELS: dict[str, str] = {
    ModelName.CNN: "seed CNN: 3 conv (32, 64, 64 filters, 3x3) + 2 dense (64, 10), ReLU, max-pooling",
    ModelName.MLP: "MLP 784-256-256-10, ReLU",
    ModelName.DEEP_MLP: "deep MLP for depth studies: --depth Linear layers of --width units, --activation",
}


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a fresh zoo model (PyTorch's default init; the initializer is applied afterwards)."""
    if spec.name == ModelName.CNN:
        return seed_cnn()
    if spec.name == ModelName.MLP:
        return mlp()
    return deep_mlp(spec.depth, spec.width, spec.activation)
