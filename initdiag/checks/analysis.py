"""One analysis per run: every registered check, the fits they share and the theory beside them, computed once.

``analyze(evidence, thresholds)`` runs each check of :data:`~initdiag.checks.registry.CHECKS` whose needs the
evidence meets, in registry order, on one :class:`~initdiag.checks.registry.AnalysisContext` (so the chain
fits, the design notes and the stream theory are computed once for every check that reads them), and returns
a :class:`RunAnalysis`: what the report, ``summary.json``, the CLI table and the callbacks read, never
recomputing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

from ..jsonable import json_safe
from ..theory.stream import StreamTheory
from .chains import main_fits_of
from .evidence import RunEvidence
from .overlay import TheoryProfile, TheoryRow, theory_profiles, theory_rows
from .registry import CHECKS, AnalysisContext, Check, available_needs
from .signal import SignalFit
from .stream import stream_theory_of
from .verdict import DEFAULT_THRESHOLDS, Thresholds, Verdict, failed_checks

__all__ = ["RunAnalysis", "analyze"]


@dataclass(frozen=True)
class RunAnalysis:
    """Everything the checks concluded about one run.

    ``verdicts``: every registered check's, in registry order; ``fits``: per direction the fit that stands
    for it (the longest chain's, :func:`~initdiag.checks.chains.main_fit`), fitted under the analysis'
    thresholds; ``theory``: expected next to measured per-layer gain for those fits; ``profiles``: the
    variance theory expects per layer; ``stream``: the residual stream theory predicts (models with blocks).
    """

    verdicts: tuple[Verdict, ...] = ()
    fits: Mapping[str, SignalFit] | None = None
    theory: tuple[TheoryRow, ...] = ()
    profiles: tuple[TheoryProfile, ...] = ()
    stream: StreamTheory | None = None

    def failed(self, names: Iterable[str] | None = None) -> set[str]:
        """The ``--fail-on`` names this run fails (among ``names`` when given)."""
        return failed_checks(self.verdicts, names)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/Inf -> None)."""
        return {
            "verdicts": [v.to_json() for v in self.verdicts],
            "fits": {k: json_safe(f.__dict__) for k, f in (self.fits or {}).items()},
            "theory": [t.to_json() for t in self.theory],
            "profiles": [p.to_json() for p in self.profiles],
            "stream": None if self.stream is None else {"values": list(self.stream.values),
                                                        "bounded": self.stream.bounded,
                                                        "rules": list(self.stream.rules)},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunAnalysis:
        """The analysis :meth:`to_json` wrote."""
        stream = data.get("stream")
        return cls(
            verdicts=tuple(Verdict.from_json(v) for v in data.get("verdicts", ())),
            fits={k: _fit_from(f) for k, f in (data.get("fits") or {}).items()},
            theory=tuple(TheoryRow.from_json(t) for t in data.get("theory", ())),
            profiles=tuple(TheoryProfile.from_json(p) for p in data.get("profiles", ())),
            stream=None if stream is None else StreamTheory(
                tuple(None if v is None else float(v) for v in stream["values"]), bool(stream["bounded"]),
                tuple(map(str, stream["rules"]))),
        )


def _fit_from(data: Mapping[str, Any]) -> SignalFit:
    """The fit :meth:`RunAnalysis.to_json` wrote: lists back to tuples, undefined numbers (null) back to NaN."""
    def value(name: str, default: Any) -> Any:
        v = data.get(name, default)
        return tuple(v) if isinstance(v, list) else float("nan") if v is None or v is MISSING else v
    return SignalFit(**{f.name: value(f.name, f.default) for f in fields(SignalFit)})


def _stamped(check: Check, verdicts: Iterable[Verdict | None]) -> list[Verdict]:
    """The check's verdicts with its registered name and family."""
    return [v if (v.check, v.family) == (check.name, check.family) else
            replace(v, check=check.name, family=check.family) for v in verdicts if v is not None]


def analyze(evidence: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS, seed: int = 0,
            checks: Iterable[Check] | None = None, theory: bool = True) -> RunAnalysis:
    """Run every check (of :data:`CHECKS`, or ``checks``) whose needs ``evidence`` meets, and the theory.

    ``seed`` seeds each check's random draws (the subsampling of large layers for the cosine test), the same
    for every check. ``theory=False`` leaves out the theory rows and profiles (a run that only trained)."""
    ctx = AnalysisContext(evidence, thresholds, seed)
    have = available_needs(evidence)
    verdicts: list[Verdict] = []
    for check in (CHECKS if checks is None else checks):
        if check.needs <= have:
            verdicts += _stamped(check, check.run(ctx))
    if not theory:
        return RunAnalysis(tuple(verdicts))
    fits = ctx.derive(main_fits_of)
    chains = evidence.structure.segments() if evidence.structure is not None else None
    return RunAnalysis(tuple(verdicts), fits, theory_rows(evidence, fits), theory_profiles(evidence, chains),
                       ctx.derive(stream_theory_of))
