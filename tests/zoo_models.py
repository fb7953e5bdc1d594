"""Model builders for the zoo (:mod:`tests.zoo`): small plain nets, re-initialization helpers, and thin
wrappers that let ``initdiag.audit`` feed positional ``input_ids`` / ``pixel_values`` to Hugging Face models.

Every builder seeds ``torch.manual_seed`` itself, so each call returns the same weights. timm and
transformers are imported inside the builders that need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

SEED = 0


def seeded(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``fn`` run under ``torch.manual_seed(SEED)``: deterministic weights on every call."""

    def build() -> nn.Module:
        torch.manual_seed(SEED)
        return fn()

    build.__name__ = getattr(fn, "__name__", "build")
    build.__doc__ = fn.__doc__
    return build


# -- re-initialization -------------------------------------------------------------------------------------
def weight_modules(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    """Every Conv2d and Linear of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def reinit(model: nn.Module, weight: Callable[[torch.Tensor], Any], bias: float | None = None,
           kinds: tuple[type[nn.Conv2d] | type[nn.Linear], ...] = (nn.Conv2d, nn.Linear)) -> nn.Module:
    """Apply ``weight`` (an ``nn.init`` function) to every ``kinds`` weight; set biases to ``bias`` if given."""
    for m in model.modules():
        if isinstance(m, kinds):
            weight(m.weight)
            if bias is not None and m.bias is not None:
                m.bias.fill_(bias)
    return model


def zeroed(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build``'s model with every Conv2d/Linear weight and bias zero."""

    def zero() -> nn.Module:
        return reinit(build(), nn.init.zeros_, bias=0.0)

    zero.__name__ = f"{getattr(build, '__name__', 'build')}_zeros"
    return zero


def normal1(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build``'s model with every parameter of two or more dims (weights, embeddings, position tables) drawn
    from N(0, 1): a transformer "initialized" the way a new user's ``normal_()`` loop does it."""

    @torch.no_grad()
    def draw() -> nn.Module:
        model = build()
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
        return model

    draw.__name__ = f"{getattr(build, '__name__', 'build')}_normal1"
    return draw


def he(t: torch.Tensor) -> Any:
    """He normal, fan_in, ReLU gain (He et al. 2015)."""
    return nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu")


def std_normal(std: float) -> Callable[[torch.Tensor], Any]:
    """N(0, std^2), whatever the fan-in."""
    return lambda t: nn.init.normal_(t, 0.0, std)


def fan_in_normal(gain2: float) -> Callable[[torch.Tensor], Any]:
    """N(0, gain2 / fan_in)."""
    return lambda t: nn.init.normal_(t, 0.0, math.sqrt(gain2 / t[0].numel()))


# -- plain nets ----------------------------------------------------------------------------------------------
def mlp(depth: int = 30, width: int = 256, act: type[nn.Module] = nn.ReLU, d_in: int = 64,
        classes: int = 10) -> nn.Sequential:
    """``depth`` Linear layers (``depth - 1`` hidden of ``width``) with ``act`` between, PyTorch's default init."""
    layers: list[nn.Module] = [nn.Linear(d_in, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def plain_cnn(depth: int = 30, channels: int = 16, classes: int = 10) -> nn.Sequential:
    """``depth`` Conv2d(3x3, padding 1) + ReLU, global average pool, Linear head; PyTorch's default init."""
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(depth):
        layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU()]
        c_in = channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


class FunctionalReluMLP(nn.Module):
    """An MLP whose ReLUs are ``F.relu`` calls in ``forward``, not ``nn.ReLU`` modules."""

    def __init__(self, depth: int = 30, width: int = 256, d_in: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_in, width), *(nn.Linear(width, width) for _ in range(depth - 2))])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class ResidualMLP(nn.Module):
    """``blocks`` unnormalized residual blocks ``x + fc2(relu(fc1(x)))`` between a stem and a head.

    ``init``: "he" (He normal on both branch layers: the stream's variance about doubles per block),
    "fixup" (Zhang et al. 2019: fc1 He scaled by ``blocks ** -0.5``, fc2 zero) or "skipinit" (De & Smith
    2020: He branches times a learnable scalar initialized to 0).
    """

    def __init__(self, blocks: int = 16, width: int = 128, d_in: int = 64, classes: int = 10,
                 init: str = "he") -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        fc1 = [nn.Linear(width, width) for _ in range(blocks)]
        fc2 = [nn.Linear(width, width) for _ in range(blocks)]
        self.fc1, self.fc2 = nn.ModuleList(fc1), nn.ModuleList(fc2)
        self.head = nn.Linear(width, classes)
        self.alpha = nn.Parameter(torch.zeros(blocks)) if init == "skipinit" else None
        with torch.no_grad():
            for layer in (self.stem, *fc1, *fc2):
                he(layer.weight)
                layer.bias.zero_()
            if init == "fixup":
                for a, b in zip(fc1, fc2, strict=True):
                    a.weight.mul_(blocks ** -0.5)
                    b.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, (a, b) in enumerate(zip(self.fc1, self.fc2, strict=True)):
            branch = b(F.relu(a(x)))
            x = x + (branch if self.alpha is None else self.alpha[i] * branch)
        return self.head(F.relu(x))


# -- torchvision ---------------------------------------------------------------------------------------------
def tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A seeded builder of ``torchvision.models.<name>(weights=None, num_classes=10, **kwargs)``."""

    def build() -> nn.Module:
        import torchvision

        torch.manual_seed(SEED)
        return getattr(torchvision.models, name)(weights=None, **{"num_classes": 10, **kwargs})

    build.__name__ = f"tv_{name}"
    return build


def resnet_no_norm_he(name: str = "resnet18") -> Callable[[], nn.Module]:
    """A seeded builder of torchvision's ``name`` with every BatchNorm an Identity, every Conv2d He normal."""

    def build() -> nn.Module:
        import torchvision

        torch.manual_seed(SEED)
        model = getattr(torchvision.models, name)(num_classes=10, norm_layer=lambda c: nn.Identity())
        return reinit(model, he, kinds=(nn.Conv2d,))

    build.__name__ = f"{name}_no_norm_he"
    return build


def vgg11_std_normal() -> nn.Module:
    """vgg11 (no BN) with every Conv2d/Linear weight N(0, 1)."""
    import torchvision

    torch.manual_seed(SEED)
    return reinit(torchvision.models.vgg11(num_classes=10), std_normal(1.0))


# -- timm ----------------------------------------------------------------------------------------------------
def timm_model(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A seeded builder of ``timm.create_model(name, pretrained=False, num_classes=10, **kwargs)``."""

    def build() -> nn.Module:
        import timm

        torch.manual_seed(SEED)
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    build.__name__ = f"timm_{name}"
    return build


# -- transformers --------------------------------------------------------------------------------------------
class Logits(nn.Module):
    """Calls ``model(**{key: x})`` and returns its ``.logits``; ``classes_first`` moves a (batch, seq, vocab)
    language-model output to (batch, vocab, seq), the layout ``loss="ce"`` takes. The model is unchanged."""

    def __init__(self, model: nn.Module, key: str = "input_ids", classes_first: bool = False) -> None:
        super().__init__()
        self.model, self.key, self.classes_first = model, key, classes_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(**{self.key: x}).logits
        return logits.transpose(1, 2) if self.classes_first else logits


class Seq2SeqLogits(nn.Module):
    """Encoder-decoder LM: the decoder is fed the input ids shifted right (T5's ``_shift_right``), as
    teacher forcing feeds the labels; returns (batch, vocab, seq) logits. The model is unchanged."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        decoder_ids = self.model._shift_right(input_ids)
        return self.model(input_ids=input_ids, decoder_input_ids=decoder_ids).logits.transpose(1, 2)


def hf(model_cls: str, config_cls: str, key: str = "input_ids", classes_first: bool = False,
       **config: Any) -> Callable[[], nn.Module]:
    """A seeded builder of ``transformers.<model_cls>(<config_cls>(**config))`` behind :class:`Logits`."""

    def build() -> nn.Module:
        import transformers

        torch.manual_seed(SEED)
        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg)
        if model_cls.startswith("T5ForConditional"):
            return Seq2SeqLogits(model)
        return Logits(model, key, classes_first)

    build.__name__ = f"hf_{model_cls}"
    return build
