"""An audit's result: each audited initialization of a model (no training) and the recommendation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..checks import RunAnalysis
from ..config import AuditConfig
from ..initializers import Kept
from ..series import concat
from ..structure import Structure
from ..structure.layers import LayerInfo
from ..vocab import ResultKind
from .base import _LossRun, _Writes

__all__ = ["AuditInputs", "AuditResult", "AuditRun", "LayerWeight", "Recommendation"]


@dataclass(frozen=True)
class AuditInputs:
    """What went through the model: ``kind`` ("normal", "tokens", "mnist" or "example"), a description,
    the shape of one batch (batch dimension first), its dtype, the number of batches, and the source (for
    MNIST its provenance: files with their md5, and any notice)."""

    kind: str
    description: str
    batch_shape: tuple[int, ...]
    dtype: str
    batches: int
    source: str
    files: dict[str, str] = field(default_factory=dict)
    notice: str | None = None


@dataclass(frozen=True)
class LayerWeight:
    """One weight layer's weight against what the activation after it calls for.

    ``variance``: population variance of the weight; ``recommended``: the initializer the checks advise
    for ``activation`` (``he`` for the ReLU family, ``xavier`` for tanh/sigmoid/linear, ``lecun`` for SELU),
    ``recommended_variance`` its Var(W) for the fans the forward showed, and ``ratio = variance /
    recommended_variance`` (None for a lookup such as an embedding, or a layer whose fans are unknown).
    ``default_init``: the weights are consistent with PyTorch's default; ``reinitialized``: this audit
    replaced them (for a named initializer); ``normalized``: a normalization follows the layer before its
    activation, so its scale does not matter (any Var(W) conforms)."""

    layer: str
    module: str
    activation: str
    shape: tuple[int, ...]
    variance: float
    recommended: str
    recommended_variance: float | None
    ratio: float | None
    default_init: bool
    reinitialized: bool
    normalized: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN -> None)."""
        data = dict(self.__dict__)
        data["shape"] = list(self.shape)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


@dataclass(frozen=True)
class Recommendation:
    """The initializer to use (a ``--init`` label, ``keep`` for the model's own) and the evidence for it (text
    that starts with the advice, CLI names in backticks). ``compared``: chosen among several audited
    initializations; otherwise advised from one run's verdicts and activations. ``equal``: the audited
    labels that did not differ from the recommended one (it included), when there are several: none of
    them is better than the others."""

    initializer: str
    evidence: str
    compared: bool
    equal: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.initializer}: {self.evidence}"

    def to_json(self) -> dict[str, Any]:
        return {"initializer": self.initializer, "evidence": self.evidence, "compared": self.compared,
                "equal": list(self.equal)}


@dataclass(frozen=True)
class AuditRun(_LossRun):
    """One audited initialization of a model (``label``: ``keep`` or an initializer): no training.

    ``frame`` holds each statistic averaged over the batches (what the checks read, at step 0), ``series``
    every batch (``step`` = batch); ``weights`` each weight layer against its activation; ``losses`` the
    loss of each batch; ``kept`` the weights the initializer left as they were, and why (none for ``keep``);
    ``digest`` a SHA-256 of every parameter as audited (equal digests: identical weights)."""

    name: str
    label: str
    seed: int
    frame: pd.DataFrame
    series: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    analysis: RunAnalysis
    weights: tuple[LayerWeight, ...]
    losses: np.ndarray
    seconds: float
    structure: Structure | None = None
    kept: tuple[Kept, ...] = ()
    digest: str = ""

    def kept_text(self, limit: int = 8) -> str:
        """The weights left as they were, grouped by reason (at most ``limit`` names each); "" for none."""
        groups: dict[str, list[str]] = {}
        for k in self.kept:
            groups.setdefault(k.reason, []).append(k.name)
        return "; ".join(f"{', '.join(names[:limit])}{f' and {len(names) - limit} more' if len(names) > limit else ''}"
                         f" ({reason})" for reason, names in groups.items())


@dataclass(frozen=True)
class AuditResult(_Writes):
    """Everything an audit found: one :class:`AuditRun` per audited initialization, and the recommendation."""

    config: AuditConfig
    model: str
    inputs: AuditInputs
    runs: tuple[AuditRun, ...]
    recommendation: Recommendation
    started: datetime
    seconds: float
    command: str
    environment: dict[str, str] = field(default_factory=dict)
    kind: ClassVar[str] = ResultKind.AUDIT

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Every run's statistics, batch by batch (``step`` = batch), as one tidy DataFrame."""
        return concat([run.series for run in self.runs])
