"""What an experiment or an audit found, as plain frozen data: what the report, the store and the CLI read.

A trained run (:class:`RunResult`) and an audited initialization (:class:`AuditRun`) are different types:
an audit trains nothing, so it has no history, accuracy or predictions, and it has what a training run
lacks (each weight against its activation, the statistics batch by batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from .checks import Comparison, TheoryProfile, TheoryRow, Verdict, failed_checks
from .config import AuditConfig, ExperimentConfig, SweepConfig
from .data import DataProvenance
from .initializers import InitSpec
from .jsonable import file_name
from .models import ModelSpec
from .series import concat
from .structure import Structure
from .structure.layers import LayerInfo
from .theory.stream import StreamTheory
from .training import EpochStats
from .vocab import RunStatus, Status

__all__ = ["AuditInputs", "AuditRecord", "AuditRun", "ExperimentResult", "LayerWeight", "Recommendation",
           "RunResult", "SweepResult", "cell_key"]


@dataclass(frozen=True)
class RunResult:
    """One trained run (an initializer x seed): its training history, predictions, series and verdicts.

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
    verdicts: tuple[Verdict, ...]
    theory: tuple[TheoryRow, ...]
    diverged_step: int | None
    seconds: float
    grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    profiles: tuple[TheoryProfile, ...] = ()
    """The variance theory expects per layer at initialization (:func:`~initdiag.checks.theory_profiles`)."""
    structure: Structure | None = None
    """What the model is (weight layers, activations, normalizations, residual blocks), seen at initialization."""
    stream: StreamTheory | None = None
    """The residual stream theory predicts (models with residual blocks)."""

    @property
    def label(self) -> str:
        """The initializer as the CLI spells it."""
        return self.spec.label

    @property
    def status(self) -> str:
        return RunStatus.DIVERGED if self.diverged_step is not None else RunStatus.OK

    @property
    def failed(self) -> tuple[str, ...]:
        """The ``--fail-on`` names this run fails."""
        return tuple(sorted(failed_checks(self.verdicts)))


@dataclass(frozen=True)
class ExperimentResult:
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

    def frame(self) -> pd.DataFrame:
        """All runs' series in one tidy DataFrame."""
        return concat([r.frame for r in self.runs])


def cell_key(model: ModelSpec) -> str:
    """A sweep cell's name: ``cnn``, ``mlp``, or ``deep-mlp-d30-w256-relu``."""
    if model.name == "deep-mlp":
        return f"{model.name}-d{model.depth}-w{model.width}-{model.activation}"
    return file_name(str(model.name)).strip("_")


@dataclass(frozen=True)
class SweepResult:
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

    @property
    def provenance(self) -> DataProvenance:
        return self.cells[0].provenance

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
class AuditRun:
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
    verdicts: tuple[Verdict, ...]
    theory: tuple[TheoryRow, ...]
    weights: tuple[LayerWeight, ...]
    losses: np.ndarray
    seconds: float
    profiles: tuple[TheoryProfile, ...] = ()
    structure: Structure | None = None
    stream: StreamTheory | None = None

    @property
    def diverged_step(self) -> int | None:
        """The first batch whose loss is not finite, else None."""
        bad = np.flatnonzero(~np.isfinite(np.asarray(self.losses, dtype=np.float64)))
        return int(bad[0]) if len(bad) else None

    @property
    def status(self) -> str:
        return RunStatus.DIVERGED if self.diverged_step is not None else RunStatus.OK

    @property
    def failed(self) -> tuple[str, ...]:
        """The ``--fail-on`` names this run fails."""
        return tuple(sorted(failed_checks(self.verdicts)))


@dataclass(frozen=True)
class AuditRecord:
    """Everything an audit found: one :class:`AuditRun` per audited initialization, and the recommendation.

    Plain data; :class:`initdiag.audit.AuditResult` is this with a ``write`` method (as ``pathlib.Path``
    adds I/O to ``PurePath``), so the report, which reads records, never depends on the audit that
    writes it."""

    config: AuditConfig
    model: str
    inputs: AuditInputs
    runs: tuple[AuditRun, ...]
    recommendation: Recommendation
    started: datetime
    seconds: float
    command: str
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """Every run's verdicts, run by run."""
        return tuple(v for run in self.runs for v in run.verdicts)

    @property
    def passed(self) -> bool:
        """True when no verdict of any run is ``fail``."""
        return not any(v.status == Status.FAIL for v in self.verdicts)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Every run's statistics, batch by batch (``step`` = batch), as one tidy DataFrame."""
        return concat([run.series for run in self.runs])

    def failed(self, checks: Sequence[str]) -> set[str]:
        """The names among ``checks`` (``--fail-on`` names) that some run fails."""
        return failed_checks(self.verdicts) & set(checks)
