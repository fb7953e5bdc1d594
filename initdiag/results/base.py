"""The protocol every result satisfies, and what the kinds share.

Every kind satisfies one protocol, :class:`Result`: ``kind``, ``runs``, ``frame`` (a property), ``analysis``
(run name -> :class:`~initdiag.checks.RunAnalysis`) and ``write(out_dir)``. The runs are different types: a
trained run (:class:`RunResult`) has a history, accuracy and predictions; an audited initialization
(:class:`AuditRun`) trains nothing and has each weight against its activation and the statistics batch by
batch; a run of someone else's training (:class:`TrainingRun`) has the loss of every step and what was
recorded during it. Writing the report is the report package's: it registers its writer here
(:func:`set_report_writer`), so this module never imports the layer that reads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from ..checks import RunAnalysis, TheoryProfile, TheoryRow, Verdict, failed_checks
from ..theory.stream import StreamTheory
from ..vocab import FORMATS, RunStatus, Status

__all__ = ["Result", "first_nonfinite", "set_report_writer"]

ReportWriter = Callable[[Any, Path, Sequence[str], str], dict[str, Path]]
_WRITER: list[ReportWriter] = []


def set_report_writer(writer: ReportWriter) -> None:
    """Register the function that writes a result's report (:func:`initdiag.report.write_report` does, on import)."""
    _WRITER[:] = [writer]


class Result(Protocol):
    """What every kind of result offers."""

    kind: ClassVar[str]

    @property
    def command(self) -> str: ...

    @property
    def started(self) -> datetime: ...

    @property
    def seconds(self) -> float: ...

    @property
    def environment(self) -> dict[str, str]: ...

    @property
    def runs(self) -> Sequence[Any]: ...

    @property
    def frame(self) -> pd.DataFrame: ...

    @property
    def analysis(self) -> Mapping[str, RunAnalysis]: ...

    def write(self, out_dir: str | Path, formats: Sequence[str] = FORMATS, paper: str = "a4") -> dict[str, Path]: ...


class _HasRuns(Protocol):
    @property
    def runs(self) -> Sequence[Any]: ...


class _Writes:
    """``write()`` for a result: the registered report writer; and what every kind reads off its runs:
    ``analysis`` (each run's by its name), ``verdicts``, ``passed`` and ``failed(checks)``."""

    @property
    def analysis(self: _HasRuns) -> dict[str, RunAnalysis]:
        return {r.name: r.analysis for r in self.runs}

    @property
    def verdicts(self: _HasRuns) -> tuple[Verdict, ...]:
        """Every run's verdicts, run by run."""
        return tuple(v for run in self.runs for v in run.verdicts)

    @property
    def passed(self: _HasRuns) -> bool:
        """True when no verdict of any run is ``fail``."""
        return not any(v.status == Status.FAIL for run in self.runs for v in run.verdicts)

    def failed(self: _HasRuns, checks: Sequence[str]) -> set[str]:
        """The names among ``checks`` (``--fail-on`` names) that some run fails."""
        return failed_checks((v for run in self.runs for v in run.verdicts), checks)

    def write(self, out_dir: str | Path, formats: Sequence[str] = FORMATS, paper: str = "a4") -> dict[str, Path]:
        """Write the report (report.html, report.pdf, summary.json, series.csv, as ``formats`` says) into
        ``out_dir``; returns the files written."""
        if not _WRITER:  # the report package registers its writer when it is first imported
            importlib.import_module(f"{__package__.rpartition('.')[0]}.report")
        return _WRITER[0](self, Path(out_dir), tuple(formats), paper)


class _Analysed:
    """The per-run analysis as properties of a run (``verdicts``, ``theory``, ``profiles``, ``stream``)."""

    analysis: RunAnalysis

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return self.analysis.verdicts

    @property
    def theory(self) -> tuple[TheoryRow, ...]:
        return self.analysis.theory

    @property
    def profiles(self) -> tuple[TheoryProfile, ...]:
        """The variance theory expects per layer at initialization (:func:`~initdiag.checks.theory_profiles`)."""
        return self.analysis.profiles

    @property
    def stream(self) -> StreamTheory | None:
        """The residual stream theory predicts (models with residual blocks)."""
        return self.analysis.stream

    @property
    def failed(self) -> tuple[str, ...]:
        """The ``--fail-on`` names this run fails."""
        return tuple(sorted(self.analysis.failed()))


class _LossRun(_Analysed):
    """A run whose ``losses`` (one per step or batch) decide its status: diverged at the first non-finite one."""

    losses: np.ndarray

    @property
    def diverged_step(self) -> int | None:
        """The first step (or batch) whose loss is not finite, else None."""
        return first_nonfinite(self.losses)

    @property
    def status(self) -> str:
        return RunStatus.DIVERGED if self.diverged_step is not None else RunStatus.OK


def first_nonfinite(losses: np.ndarray) -> int | None:
    """The index of the first loss that is not finite, else None."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses, dtype=np.float64)))
    return int(bad[0]) if len(bad) else None
