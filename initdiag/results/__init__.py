"""What an experiment, an audit, a training or a sweep found, as plain frozen data: what the report, the store
and the CLI read. Every kind satisfies :class:`Result` (:mod:`.base`)."""

from __future__ import annotations

from .audit import AuditInputs, AuditResult, AuditRun, LayerWeight, Recommendation
from .base import Result, first_nonfinite, set_report_writer
from .experiment import ExperimentResult, RunResult, SweepResult, cell_key
from .fix import FixResult, ParamChange, Verification
from .training import TrainingResult, TrainingRun

__all__ = ["AuditInputs", "AuditResult", "AuditRun", "ExperimentResult", "FixResult", "LayerWeight", "ParamChange",
           "Recommendation", "Result", "RunResult", "SweepResult", "TrainingResult", "TrainingRun", "Verification",
           "cell_key", "first_nonfinite", "set_report_writer"]
