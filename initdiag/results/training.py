"""A training's result: someone else's training (a framework's fit) with initdiag attached."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd

from ..checks import RunAnalysis
from ..config import AuditConfig
from ..series import concat
from ..structure import Structure
from ..structure.layers import LayerInfo
from ..vocab import ResultKind
from .audit import AuditResult, AuditRun
from .base import _LossRun, _Writes

__all__ = ["TrainingResult", "TrainingRun"]


@dataclass(frozen=True)
class TrainingRun(_LossRun):
    """Someone else's training as recorded by a callback: ``frame`` every recorded step, ``losses`` the loss of
    every step, ``analysis`` the verdicts about training (``diverged``, ``unstable``, ``stalled``,
    ``update_ratio``, ``dead_growth``)."""

    name: str
    label: str
    seed: int
    frame: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    analysis: RunAnalysis
    losses: np.ndarray
    seconds: float
    structure: Structure | None = None
    steps_per_epoch: int | None = None

    @property
    def epoch_losses(self) -> np.ndarray:
        """The mean loss of each epoch (its last may be partial), empty without ``steps_per_epoch``; a
        non-finite step makes its epoch's mean non-finite."""
        n = self.steps_per_epoch
        if not n or n < 1 or len(self.losses) == 0:
            return np.zeros(0)
        return np.array([float(np.mean(self.losses[i:i + n])) for i in range(0, len(self.losses), n)])


@dataclass(frozen=True)
class TrainingResult(_Writes):
    """A training run by a framework (Lightning, the Hugging Face Trainer, the user's own loop) with initdiag
    attached: the audit of the model at its first batch, then the training as it was recorded.
    ``framework``: who trained (the callback's label)."""

    audit: AuditResult
    training: TrainingRun
    framework: str
    started: datetime
    seconds: float
    command: str
    environment: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    """The framework's settings as its callback read them (optimizer, learning rate, epochs, precision, ...)."""
    kind: ClassVar[str] = ResultKind.TRAINING

    @property
    def runs(self) -> tuple[AuditRun | TrainingRun, ...]:
        """The audited initialization, then the training."""
        return (*self.audit.runs, self.training)

    @property
    def config(self) -> AuditConfig:
        return self.audit.config

    @property
    def model(self) -> str:
        return self.audit.model

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The audit's batches, then every recorded training step."""
        return concat([*(r.series for r in self.audit.runs), self.training.frame])

