"""timm: the smallest variant of every family (the module a model is registered from), at timm's own init.

``timm.list_modules()`` gives the families, ``timm.list_models(module=...)`` their models; :func:`size_key`
picks the smallest by name (timm's ``test_*`` models, made for timm's own unit tests, are left out). Inputs
are 64x64 (96x96 for families whose pretrained size is above 256, e.g. Inception's 299); a family with a
fixed input size (``pretrained_cfg.fixed_input_size``: ViTs, Swin, ...) is built with ``img_size`` set to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from .catalog import ModelSpec, seeded, size_key

__all__ = ["MAX_PARAMS_M", "NOT_RESIDUAL", "build", "specs"]

NOT_RESIDUAL = frozenset({"vgg", "inception_v3", "inception_v4", "densenet", "nasnet", "pnasnet"})
"""Families without residual additions: no ``no_norm_he`` variant (removing BN from a plain He-init net is
healthy, He et al. 2015)."""

MAX_PARAMS_M = 150
"""Models whose name states more parameters than this, in millions (``deepseek_vit_412m``), are skipped: too big
to audit on the 2-core benchmark machine within the time cap."""

SMALL_INPUT, LARGE_INPUT = 64, 96
NATIVE_INPUT = frozenset({"byoanet", "crossvit", "efficientformer"})
"""Families that only run at their pretrained size: halo/bottleneck attention asserts it (byoanet), two patch
sizes must both divide it (crossvit), attention biases are sized for it (efficientformer)."""


def build(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A seeded builder of ``timm.create_model(name, pretrained=False, num_classes=10, **kwargs)``."""

    def create() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return seeded(create)


def _spec(module: str, name: str) -> ModelSpec:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    native = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    size = int(native[-1]) if module in NATIVE_INPUT else SMALL_INPUT if native[-1] <= 256 else LARGE_INPUT
    fixed = cfg is not None and cfg.fixed_input_size and size != native[-1]
    kwargs: dict[str, Any] = {"img_size": size} if fixed else {}
    stated = [int(m) for m in re.findall(r"(\d+)m(?:_|$)", name)]
    skip = f"~{stated[0]}M parameters (from its name): over {MAX_PARAMS_M}M" if stated and stated[0] > \
        MAX_PARAMS_M else ""
    note = f"family {module}; native input {native[-1]}" + (f", built at img_size={size}" if kwargs else "")
    return ModelSpec(f"timm/{name}", "timm", "classification", build(name, **kwargs),
                     input_shape=(native[0], size, size), residual=module not in NOT_RESIDUAL, skip=skip, note=note)


def _input_size(name: str) -> int:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


def specs() -> list[ModelSpec]:
    """One spec per timm family: its smallest model by :func:`size_key`."""
    import timm

    out = []
    for module in sorted(timm.list_modules()):
        names = [n for n in timm.list_models(module=module) if not n.startswith("test_")]
        if names:
            out.append(_spec(module, min(names, key=lambda n: size_key(n, _input_size(n)))))
    return out
