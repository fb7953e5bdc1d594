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
    ``recommended_variance`` its Var(W) for this shape, and ``ratio = variance / recommended_variance``
    (Conv/Linear only; None otherwise). ``default_init``: the weights are consistent with PyTorch's
    default; ``reinitialized``: this audit replaced them (Conv/Linear weights, for a named initializer)."""

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

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN -> None)."""
        data = dict(self.__dict__)
        data["shape"] = list(self.shape)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


@dataclass(frozen=True)
class Recommendation:
    """The initializer to use (a ``--init`` label, ``keep`` for the model's own) and the evidence for it (text
    that starts with the advice, CLI names in backticks). ``compared``: chosen among several audited
    initializations; otherwise advised from one run's verdicts and activations."""

    initializer: str
    evidence: str
    compared: bool

    def __str__(self) -> str:
        return f"{self.initializer}: {self.evidence}"

    def to_json(self) -> dict[str, Any]:
        return {"initializer": self.initializer, "evidence": self.evidence, "compared": self.compared}


@dataclass(frozen=True)
class AuditRun(_LossRun):
    """One audited initialization of a model (``label``: ``keep`` or an initializer): no training.

    ``frame`` holds each statistic averaged over the batches (what the checks read, at step 0), ``series``
    every batch (``step`` = batch); ``weights`` each weight layer against its activation; ``losses`` the
    loss of each batch."""

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
