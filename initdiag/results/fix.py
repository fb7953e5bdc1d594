"""A repair's result: the audit before, what was changed and why, the audit after, and the short training that
says whether the repaired model trains better."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..series import concat
from ..vocab import ResultKind
from .audit import AuditInputs, AuditResult, AuditRun
from .base import _Writes

if TYPE_CHECKING:
    from torch import nn

    from ..config import FixConfig

__all__ = ["AFTER", "BEFORE", "FixResult", "ParamChange", "Verification", "relabeled"]

BEFORE, AFTER = "before", "after"
"""The names of a repair's two audited runs in its report and summary.json."""


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class ParamChange:
    """One parameter a repair changed: the layer (call site) and the parameter's qualified name, its standard
    deviation before and after (``gain = new_std / old_std``, inf from a zero weight), the checks whose failing
    verdicts it answers, and the rule applied (its formula, in words)."""

    layer: str
    param: str
    old_std: float
    new_std: float
    answers: tuple[str, ...]
    rule: str

    @property
    def gain(self) -> float:
        return self.new_std / self.old_std if self.old_std > 0 else (math.inf if self.new_std > 0 else 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "param": self.param, "old_std": _finite(self.old_std),
                "new_std": _finite(self.new_std), "gain": _finite(self.gain), "answers": list(self.answers),
                "rule": self.rule}


@dataclass(frozen=True)
class Verification:
    """The original and the repaired model trained ``steps`` steps from the same seed on the same batches:
    each step's loss. ``data`` says what they trained on, ``optimizer`` with what. ``improved``: the repaired
    model's mean loss over the last quarter of the steps is below the original's (a non-finite loss counts as
    worse than any finite one)."""

    steps: int
    original: np.ndarray
    repaired: np.ndarray
    data: str
    optimizer: str

    @staticmethod
    def tail(losses: np.ndarray) -> float:
        """The mean loss over the last quarter of the steps (at least one); inf when any of them is not finite."""
        part = np.asarray(losses, dtype=np.float64)[-max(1, len(losses) // 4):]
        return float(part.mean()) if len(part) and bool(np.isfinite(part).all()) else math.inf

    @property
    def improved(self) -> bool:
        a, b = self.tail(self.original), self.tail(self.repaired)
        return b < a or (math.isinf(a) and not math.isinf(b))

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "data": self.data, "optimizer": self.optimizer, "improved": self.improved,
                "original_tail": _finite(self.tail(self.original)), "repaired_tail": _finite(self.tail(self.repaired)),
                "original": [_finite(float(x)) for x in self.original],
                "repaired": [_finite(float(x)) for x in self.repaired]}


def relabeled(run: AuditRun, name: str) -> AuditRun:
    """``run`` under another name (its frames' ``run`` and ``initializer`` columns too)."""
    frames = []
    for frame in (run.frame, run.series):
        f = frame.copy()
        for col in ("run", "initializer"):
            if col in f:
                f[col] = pd.Categorical([name] * len(f))
        frames.append(f)
    return replace(run, name=name, label=name, frame=frames[0], series=frames[1])


@dataclass(frozen=True)
class FixResult(_Writes):
    """What ``initdiag fix`` did: the audit of the model as given (``before``), the repaired model (``model``: a
    copy unless ``inplace``), each changed parameter (``changes``), the layers a data-driven method could not
    bring to its target (``unconverged``), the audit of the repaired model (``after``), ``rounds`` of audit and
    repair taken, and the verification training when asked for."""

    config: FixConfig
    target: str
    method: str
    model: nn.Module = field(repr=False, compare=False)
    before: AuditResult
    after: AuditResult
    changes: tuple[ParamChange, ...]
    rounds: int
    started: datetime
    seconds: float
    command: str
    unconverged: tuple[str, ...] = ()
    unrepaired: tuple[str, ...] = ()
    verification: Verification | None = None
    environment: dict[str, str] = field(default_factory=dict)
    kind: ClassVar[str] = ResultKind.FIX

    @cached_property
    def runs(self) -> tuple[AuditRun, AuditRun]:
        """The model as given (``before``) and as repaired (``after``), each its audit's first run."""
        return relabeled(self.before.runs[0], BEFORE), relabeled(self.after.runs[0], AFTER)

    @property
    def inputs(self) -> AuditInputs:
        return self.before.inputs

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def passed(self) -> bool:
        """The repaired model's audit has no failing verdict."""
        return self.after.passed

    def failed(self, checks: Any) -> set[str]:
        """The ``--fail-on`` names among ``checks`` the repaired model still fails."""
        return self.after.failed(checks)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Both audits' statistics, batch by batch, runs named ``before`` and ``after``."""
        return concat([r.series for r in self.runs])
