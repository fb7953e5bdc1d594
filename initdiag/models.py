"""Model zoo: the seed CNN, an MLP, and deep MLPs for depth studies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from .errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ACTIVATIONS", "MODELS", "ModelName", "ModelSpec", "build_model", "is_reference", "load_model_ref"]


class ModelName(StrEnum):
    CNN = "cnn"
    MLP = "mlp"
    DEEP_MLP = "deep-mlp"


def _relu() -> nn.Module:
    """ReLU in place: the same numbers, no second activation buffer."""
    from torch import nn

    return nn.ReLU(inplace=True)


def _module(name: str) -> Callable[[], nn.Module]:
    """A factory of ``torch.nn.<name>()``, importing torch only when called (the CLI parses without it)."""

    def make() -> nn.Module:
        from torch import nn

        module: nn.Module = getattr(nn, name)()
        return module

    return make


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": _relu,
    "tanh": _module("Tanh"),
    "sigmoid": _module("Sigmoid"),
    "linear": _module("Identity"),
}


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a zoo name with the depth-study knobs (ignored by ``cnn`` and ``mlp``), or a reference to
    the user's own model for 1x28x28 inputs and 10 classes (``"pkg.mod:factory"``, ``"file.py:Class"``)."""

    name: str = ModelName.CNN
    depth: int = 10
    width: int = 256
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.name not in MODELS and not is_reference(self.name):
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
    """The seed experiment's CNN (Keras original), for 1x28x28 inputs and 10 classes; ReLUs in place."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3), _relu(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), _relu(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), _relu(),
        nn.Flatten(),
        nn.Linear(576, 64), _relu(),
        nn.Linear(64, 10),
    )


def mlp() -> nn.Sequential:
    """784-256-256-10 with ReLU (in place)."""
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), _relu(), nn.Linear(256, 256), _relu(), nn.Linear(256, 10)
    )


def deep_mlp(depth: int, width: int, activation: str) -> nn.Sequential:
    """``depth`` Linear layers in all: 784-width, (depth-2) x width-width, width-10, activation between."""
    from torch import nn

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


def is_reference(name: str) -> bool:
    """``pkg.mod:name`` or ``path/file.py:name``: a user's model (:func:`load_model_ref`)."""
    module, sep, attr = name.rpartition(":")
    return bool(sep and module and attr)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a fresh model (PyTorch's default init; the initializer is applied afterwards): a zoo model, or
    the user's (:func:`load_model_ref`)."""
    if is_reference(spec.name):
        return load_model_ref(spec.name)
    if spec.name == ModelName.CNN:
        return seed_cnn()
    if spec.name == ModelName.MLP:
        return mlp()
    return deep_mlp(spec.depth, spec.width, spec.activation)


def load_model_ref(ref: str, kwargs: dict[str, object] | None = None) -> nn.Module:
    """Build a user's model from ``"pkg.mod:name"`` or ``"path/to/file.py:name"``.

    ``name`` may be an ``nn.Module`` subclass (instantiated with ``kwargs``), a factory returning a
    module (called with ``kwargs``), or an ``nn.Module`` instance (``kwargs`` must then be empty).
    Every failure raises ModelLoadError with one line that says what went wrong.
    """
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from torch import nn

    from .errors import ModelLoadError

    kwargs = dict(kwargs or {})
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise ModelLoadError(f"model reference '{ref}' must look like 'package.module:name' or 'file.py:name'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        mod_name = f"_initdiag_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise ModelLoadError(f"cannot import module '{module_part}': {type(exc).__name__}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ModelLoadError(f"module '{module_part}' has no attribute '{attr}'{did_you_mean(attr, names)}") from None
    if isinstance(target, nn.Module):
        if kwargs:
            raise ModelLoadError(f"'{ref}' is a model instance; it takes no --kwargs")
        return target
    if not callable(target):
        raise ModelLoadError(f"'{ref}' is a {type(target).__name__}, not an nn.Module, class or factory")
    try:
        model = target(**kwargs)
    except Exception as exc:
        raise ModelLoadError(f"building '{ref}' failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"'{ref}' returned a {type(model).__name__}, not an nn.Module")
    return model
