"""The wide zoo's catalogue: models from outside our own zoo, built by their libraries with their own init.

Each :class:`ModelSpec` says how to build one small model (a zero-argument builder: the smallest variant of
a family, or a small config) and how to feed it to ``initdiag.audit`` (a generated ``input_shape``, or an
``example`` function that makes one batch from the built model). The catalogue is generated from each
library's own registry (timm's modules, transformers' task mappings, torchvision's model lists, smp's
architectures and encoders) with a few hand-written tables where a library has no registry (MONAI).
A spec that cannot run here carries ``skip`` (why); it stays in the catalogue and is reported as skipped.

Ground truth: a library's model at its library's init trains, so a failing verdict on it is a false alarm;
the broken variants of :mod:`.variants` must fail. ``held_out`` marks a fixed ~25% of the ids (by a hash of
the id, :func:`is_held_out`) to report separately: tune on the rest, measure on these.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = [
    "LIBRARIES",
    "SEED",
    "ModelSpec",
    "by_id",
    "catalog",
    "is_held_out",
    "seeded",
    "size_key",
]

SEED = 0
HELD_OUT_BUCKETS = 4
"""One id in ``HELD_OUT_BUCKETS`` is held out: the first byte of its SHA-256 modulo this is 0."""

Example = Callable[[nn.Module], tuple[torch.Tensor, ...]]
"""Makes one batch (the model's positional arguments, batch first) from the built model, e.g. from its config."""


def is_held_out(spec_id: str) -> bool:
    """Whether ``spec_id`` is in the held-out quarter: SHA-256 of the id, first byte mod 4 == 0 (fixed forever,
    independent of the catalogue's order or size)."""
    return hashlib.sha256(spec_id.encode()).digest()[0] % HELD_OUT_BUCKETS == 0


@dataclass(frozen=True)
class ModelSpec:
    """One model of the wide zoo.

    ``id`` is ``library/name`` (unique); ``kind`` the family tag (classification, detection, encoder, ...);
    ``build`` a zero-argument builder, seeded, at the library's own init. Inputs: ``input_shape`` (one
    sample, generated batches of ``input_dtype``; token ids below ``vocab``) or ``example`` (one batch made from
    the built model). ``residual``: a residual net, so the ``no_norm_he`` variant applies. ``skip``: why this
    spec cannot run here (empty when it can). ``held_out`` follows from the id (:func:`is_held_out`).
    """

    id: str
    library: str
    kind: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...] | None = None
    example: Example | None = None
    input_dtype: str = "float"
    vocab: int | None = None
    loss: str = "auto"
    residual: bool = True
    skip: str = ""
    note: str = ""
    held_out: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "held_out", is_held_out(self.id))

    def audit_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """The keyword arguments of ``initdiag.audit(model, **spec.audit_kwargs(model))``: two batches of 8."""
        kwargs: dict[str, Any] = {"batches": 2, "batch_size": 8, "loss": self.loss, "seed": SEED}
        if self.example is not None:
            kwargs["example_input"] = self.example(model)
            kwargs["input_shape"] = None
            return kwargs
        kwargs.update(input_shape=self.input_shape, input_dtype=self.input_dtype)
        if self.vocab is not None:
            kwargs["vocab"] = self.vocab
        return kwargs


def seeded(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``fn`` under ``torch.manual_seed(SEED)``: the same weights on every call."""

    def build() -> nn.Module:
        torch.manual_seed(SEED)
        return fn()

    return build


# -- the smallest variant of a family, from its name ---------------------------------------------------------
_SIZES = ("atto", "zepto", "femto", "pico", "nano", "xxtiny", "xtiny", "xxs", "xxsmall", "tiny", "ti", "t", "xs",
          "xsmall", "slim", "mini", "small", "s", "lite", "light", "medium", "m", "base", "large", "l", "xl", "huge",
          "h", "giant", "g")
_RANK = {word: i for i, word in enumerate(_SIZES)}
_IMAGE_SIZES = frozenset({"160", "192", "224", "240", "256", "288", "299", "320", "336", "384", "448", "480", "512",
                          "518", "560", "576", "640"})
_NO_NUMBER = 10**6


def size_key(name: str, input_size: int = 224) -> tuple[float, int, int, int]:
    """A sort key that puts the smallest variant of a family first, from its name alone.

    By: the first size word (atto < femto < ... < tiny < small < base < large < huge; a word after a plain
    number, as in ``levit_384_s8``, is a stride, not a size), then the first number other than a version
    (``v2``), a patch size or a trailing image size (``resnet18`` < ``resnet50``; ``b0`` < ``b3``; ``050`` <
    ``100``), then the pretrained input size, then the name's length (the plain variant before its
    decorated ones). Checked against parameter counts of timm's 98 families (built on the meta device):
    within 2x of the smallest for 91 of them."""
    toks = re.split(r"[_\-.]", name.lower().replace("xx_small", "xxsmall").replace("x_small", "xsmall"))
    rank = _RANK["medium"] - 0.5
    for tok in toks:
        if tok.isdigit():
            break
        found = re.fullmatch(r"([a-z]+?)(\d*)", tok)
        if found and found.group(1) in _RANK and not (found.group(1) in ("b", "l", "f") and found.group(2)):
            rank = _RANK[found.group(1)]
            break
    numbered = [re.sub(r"v\d+", "", t) for t in toks if re.search(r"\d", t) and not t.startswith("patch")]
    if len(numbered) > 1 and numbered[-1] in _IMAGE_SIZES:
        numbered = numbered[:-1]
    numbers = [int(n) for t in numbered for n in re.findall(r"\d+", t)]
    return rank, numbers[0] if numbers else _NO_NUMBER, input_size, len(name)


# -- the catalogue ---------------------------------------------------------------------------------------------
def _sources() -> dict[str, Callable[[], list[ModelSpec]]]:
    from . import extra_specs, hf_specs, timm_specs, tv_specs

    return {"timm": timm_specs.specs, "hf": hf_specs.specs, "tv": tv_specs.specs, "smp": extra_specs.smp_specs,
            "monai": extra_specs.monai_specs}


LIBRARIES = ("timm", "hf", "tv", "smp", "monai")
"""The id prefixes, one per library: timm, Hugging Face transformers, torchvision, segmentation-models-pytorch,
MONAI."""


def catalog(libraries: Iterable[str] | None = None) -> list[ModelSpec]:
    """Every spec of ``libraries`` (all by default), in a fixed order; a library that is not installed gives one
    skipped spec ``<library>/*`` saying so."""
    sources = _sources()
    wanted = list(libraries) if libraries is not None else list(LIBRARIES)
    unknown = set(wanted) - set(sources)
    if unknown:
        raise KeyError(f"no library {', '.join(sorted(unknown))}; choose from {', '.join(LIBRARIES)}")
    specs: list[ModelSpec] = []
    for lib in wanted:
        try:
            specs.extend(sources[lib]())
        except ImportError as exc:
            specs.append(ModelSpec(f"{lib}/*", lib, "library", _unavailable, skip=f"not installed: {exc}"))
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return specs


def by_id(ids: Sequence[str]) -> list[ModelSpec]:
    """The specs of ``ids``, in that order; only their libraries' catalogues are generated."""
    libs = list(dict.fromkeys(i.split("/", 1)[0] for i in ids))
    known = {s.id: s for s in catalog(libs)}
    missing = [i for i in ids if i not in known]
    if missing:
        raise KeyError(f"no spec {', '.join(missing)}")
    return [known[i] for i in ids]


def _unavailable() -> nn.Module:
    raise RuntimeError("this spec is a placeholder for a library that is not installed")
