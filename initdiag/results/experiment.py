"""An experiment's and a sweep's results: trained runs (initializer x seed) and the comparisons between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..checks import Comparison, RunAnalysis
from ..config import ExperimentConfig
from ..data import DataProvenance
from ..initializers import InitSpec
from ..jsonable import file_name
from ..models import ModelSpec
from ..series import concat
from ..structure import Structure
from ..structure.layers import LayerInfo
from ..sweep_config import SweepConfig
from ..training import EpochStats
from ..vocab import ResultKind, RunStatus
from .base import _Analysed, _Writes

__all__ = ["ExperimentResult", "RunResult", "SweepResult", "cell_key"]


@dataclass(frozen=True)
class RunResult(_Analysed):
    """One trained run (an initializer x seed): its training history, predictions, series and analysis.

    ``step_losses`` / ``grad_norms``: the training loss and the L2 norm of all parameter gradients of every
    step; ``predictions``: the predicted class of every test image after the last epoch."""

    name: str
    spec: InitSpec
    seed: int
    history: tuple[EpochStats, ...]
    test_accuracy: float
    test_loss: float
    predictions: np.ndarray
    step_losses: np.ndarray
    frame: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    analysis: RunAnalysis
    diverged_step: int | None
    seconds: float
    grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    structure: Structure | None = None
    """What the model is (weight layers, activations, normalizations, residual blocks), seen at initialization."""

    @property
    def label(self) -> str:
        """The initializer as the CLI spells it."""
        return self.spec.label

    @property
    def status(self) -> str:
        return RunStatus.DIVERGED if self.diverged_step is not None else RunStatus.OK


@dataclass(frozen=True)
class ExperimentResult(_Writes):
    """Everything ``initdiag report`` found: config, data provenance, runs, comparisons, the environment."""

    config: ExperimentConfig
    provenance: DataProvenance
    runs: tuple[RunResult, ...]
    comparisons: tuple[Comparison, ...]
    accuracy: dict[str, dict[str, Any]]
    test_labels: np.ndarray
    started: datetime
    seconds: float
    command: str
    environment: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    """Runs that were planned but did not finish (a partial report says so)."""
    kind: ClassVar[str] = ResultKind.EXPERIMENT

    @cached_property
    def frame(self) -> pd.DataFrame:
        """All runs' series in one tidy DataFrame."""
        return concat([r.frame for r in self.runs])



def cell_key(model: ModelSpec) -> str:
    """A sweep cell's name: ``cnn``, ``mlp``, or ``deep-mlp-d30-w256-relu``."""
    if model.name == "deep-mlp":
        return f"{model.name}-d{model.depth}-w{model.width}-{model.activation}"
    return file_name(str(model.name)).strip("_")


@dataclass(frozen=True)
class SweepResult(_Writes):
    """Everything ``initdiag sweep`` found: one :class:`ExperimentResult` per model cell (its ``config.model``
    is the cell; its runs the initializers x seeds), in grid order, and where it ran (``backend``)."""

    config: SweepConfig
    cells: tuple[ExperimentResult, ...]
    backend: str
    started: datetime
    seconds: float
    command: str
    environment: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    """``cell/initializer/seedN`` of the runs planned but not finished."""

    kind: ClassVar[str] = ResultKind.SWEEP

    @property
    def provenance(self) -> DataProvenance:
        return self.cells[0].provenance

    @property
    def runs(self) -> tuple[RunResult, ...]:
        """Every cell's runs, in grid order."""
        return tuple(r for cell in self.cells for r in cell.runs)

    @property
    def analysis(self) -> dict[str, RunAnalysis]:
        """``cell/initializer/seedN`` -> that run's analysis."""
        return {f"{cell_key(c.config.model)}/{r.name}": r.analysis for c in self.cells for r in c.runs}

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Every run's series; ``run`` is ``cell/initializer/seedN``."""
        frames = []
        for cell in self.cells:
            key = cell_key(cell.config.model)
            for run in cell.runs:
                f = run.frame.copy()
                f["run"] = f"{key}/{run.name}"
                frames.append(f)
        return concat(frames)
