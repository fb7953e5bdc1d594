"""The check registry: every check the analysis runs, as an object, in the order it runs.

A check (in the spirit of cockpit's quantities) is a small object: its ``name`` (the verdicts' ``check``
and a ``--fail-on`` name), its ``family`` (the verdict grid's column group), the evidence it ``needs``,
its ``outcomes`` (more ``--fail-on`` names), its methods text (formula, null hypothesis, threshold,
source) and one call, ``run(ctx)``. :data:`CHECKS` is read by :func:`~initdiag.checks.analyze`, the
report's methods section and verdict grid, ``--fail-on`` and ``initdiag list``. Adding a check is one
module with a :class:`Check` subclass, one ``CHECKS.register(...)`` line and its tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..errors import UsageError, did_you_mean
from ..vocab import BUILTIN_CHECKS, Need, Signal, fail_on_names
from .evidence import RunEvidence
from .verdict import Thresholds, Verdict

__all__ = ["CHECKS", "AnalysisContext", "Check", "CheckRegistry", "MethodNote", "available_needs"]

T = TypeVar("T")


@dataclass(frozen=True)
class MethodNote:
    """One entry of the report's methods section."""

    check: str
    title: str
    description: str
    null_hypothesis: str
    threshold: str


class AnalysisContext:
    """What every check of one run reads: the evidence, the thresholds, a seeded random generator, and the
    intermediate results that several checks and the analysis share (chain fits, theory), each computed
    once by :meth:`derive`."""

    def __init__(self, evidence: RunEvidence, thresholds: Thresholds, seed: int = 0) -> None:
        self.evidence = evidence
        self.thresholds = thresholds
        self.seed = seed
        self._derived: dict[Callable[[AnalysisContext], Any], Any] = {}

    def derive(self, compute: Callable[[AnalysisContext], T]) -> T:
        """``compute(self)``, computed on the first call and kept for the run."""
        if compute not in self._derived:
            self._derived[compute] = compute(self)
        result: T = self._derived[compute]
        return result

    def rng(self) -> np.random.Generator:
        """A generator seeded with the run's seed, new for each caller (so one check's draws never depend on
        which checks ran before it)."""
        return np.random.default_rng(self.seed)


def available_needs(ev: RunEvidence) -> frozenset[Need]:
    """The kinds of evidence ``ev`` holds."""
    have = {Need.FRAME} if len(ev.frame) else set()
    if ev.structure is not None:
        have.add(Need.STRUCTURE)
    if ev.weights_init:
        have.add(Need.WEIGHTS)
    if ev.weights_final:
        have.add(Need.FINAL_WEIGHTS)
    if len(ev.losses):
        have.add(Need.LOSSES)
    if len(ev.frame) and (ev.frame["phase"] == "train").any() and ev.frame["step"].max() > 0:
        have.add(Need.TRAINING)
    return frozenset(have)


class Check(ABC):
    """One registered check. Subclasses set the class attributes and implement :meth:`methods` and
    :meth:`run`; the analysis stamps every verdict ``run`` returns with ``check = name`` and
    ``family = family``.

    ``columns``: the verdict grid's columns this check fills, as ``(key, heading)`` (default one column,
    the family); :meth:`column` says which one a verdict goes to. ``always_shown``: the column is in the
    grid even for runs without a verdict of this check (then ``n/a``)."""

    name: ClassVar[str]
    family: ClassVar[str]
    title: ClassVar[str]
    needs: ClassVar[frozenset[Need]] = frozenset({Need.FRAME})
    outcomes: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[tuple[tuple[str, str], ...]] = ()
    always_shown: ClassVar[bool] = False
    during_training: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A built-in check takes its title and outcomes from :data:`~initdiag.vocab.BUILTIN_CHECKS` (what
        ``initdiag list`` prints without importing the checks)."""
        super().__init_subclass__(**kwargs)
        info = next((c for c in BUILTIN_CHECKS if c.name == getattr(cls, "name", None)), None)
        if info is not None:
            cls.title, cls.outcomes = info.title, tuple(info.outcomes)

    @abstractmethod
    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        """The methods section's entries for this check, with the thresholds of ``th`` written in."""

    @abstractmethod
    def run(self, ctx: AnalysisContext) -> Iterable[Verdict | None]:
        """The check's verdicts for one run (None or nothing where the evidence says nothing)."""

    def grid_columns(self) -> tuple[tuple[str, str], ...]:
        return self.columns or ((self.family, self.family.replace("_", " ")),)

    def column(self, verdict: Verdict) -> str:
        """The grid column of one of this check's verdicts."""
        return self.grid_columns()[0][0]


class SignalColumns:
    """Grid columns split by direction, for checks whose verdicts are about the forward or backward signal."""

    columns: ClassVar[tuple[tuple[str, str], ...]] = (("signal-forward", "signal forward"),
                                                      ("signal-backward", "signal backward"))

    def column(self, verdict: Verdict) -> str:
        return "signal-backward" if verdict.signal == Signal.BACKWARD else "signal-forward"


class CheckRegistry:
    """The registered checks, in the order they run; names are unique."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def register(self, check: Check) -> Check:
        """Add ``check`` (after those registered before it); a name already taken is a ValueError."""
        if check.name in self._checks:
            raise ValueError(f"a check named {check.name!r} is already registered")
        self._checks[check.name] = check
        return check

    def unregister(self, name: str) -> Check:
        """Remove and return the check called ``name``."""
        return self._checks.pop(name)

    def __iter__(self) -> Iterator[Check]:
        return iter(tuple(self._checks.values()))

    def __len__(self) -> int:
        return len(self._checks)

    def __contains__(self, name: object) -> bool:
        return name in self._checks

    def get(self, name: str) -> Check | None:
        return self._checks.get(name)

    def fail_on_names(self) -> tuple[str, ...]:
        """Every name ``--fail-on`` accepts: each check's name, then its outcomes (``healthy`` excluded)."""
        return fail_on_names((c.name, c.outcomes) for c in self)

    def parse_fail_on(self, names: Iterable[str]) -> tuple[str, ...]:
        """``names`` checked against :meth:`fail_on_names`; an unknown one is a UsageError."""
        known = self.fail_on_names()
        out = tuple(names)
        for name in out:
            if name not in known:
                raise UsageError(f"unknown check '{name}'{did_you_mean(name, known)}; choose from {', '.join(known)}")
        return out

    def grid_columns(self) -> tuple[tuple[str, str, bool], ...]:
        """The verdict grid's columns in registry order: ``(key, heading, always_shown)``."""
        seen: dict[str, tuple[str, str, bool]] = {}
        for check in self:
            for key, heading in check.grid_columns():
                shown = seen[key][2] if key in seen else False
                seen[key] = (key, heading, shown or check.always_shown)
        return tuple(seen.values())

    def column(self, verdict: Verdict) -> str:
        """The grid column of ``verdict`` (its family when its check is not registered)."""
        check = self._checks.get(verdict.check)
        return check.column(verdict) if check is not None else verdict.family


CHECKS = CheckRegistry()
"""Every check :func:`~initdiag.checks.analyze` runs, in order (registered in :mod:`initdiag.checks`)."""
