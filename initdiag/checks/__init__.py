"""Statistical checks: the recorded series of one run -> verdicts a reviewer can act on.

Each :class:`Verdict` says what is wrong, where (layers), how sure we are (p-value, interval) and what to
do (advice naming an initializer by its CLI name). The checks, their null hypotheses and thresholds (all
in :class:`Thresholds`) are described by :func:`methods` for the report's methods section:

* signal, forward and backward: log-variance of the Conv/Linear outputs (or dL/dy) fitted against depth
  -> ``vanishing`` / ``exploding`` / ``no_signal`` / ``healthy`` (:mod:`.signal`);
* ``symmetry``: identical neurons and near-duplicates (:mod:`.symmetry`);
* ``dead`` ReLU units and ``saturation`` of tanh/sigmoid, from the evaluation-batch probes (:mod:`.units`);
* what variance cannot see: ``output_scale`` and ``branch_scale`` (:mod:`.scale`), ``attention_entropy``
  (:mod:`.attention`), ``correlation`` (:mod:`.correlation`), ``precision`` (:mod:`.precision`);
* ``diverged``: NaN/Inf in the loss, the gradient norm or the statistics (:mod:`.diverged`);
* training itself: ``unstable`` loss, ``stalled`` first epoch, ``update_ratio`` per layer, ``dead_growth``
  (:mod:`.dynamics`);
* accuracy comparisons between initializers (:mod:`.compare`) and the theory overlay (:mod:`.overlay`).

Every check is a registered object (:mod:`.registry`); :func:`analyze` runs them all once per run and returns
a :class:`RunAnalysis`.

Only this package imports ``scipy.stats``.
"""

from __future__ import annotations

from ..vocab import HEALTHY, CheckName, Signal, Status
from .analysis import RunAnalysis, analyze
from .attention import AttentionEntropyCheck
from .chains import SignalCheck, chain_fits, main_fit
from .compare import Comparison, accuracy_summary, compare_accuracies, holm, mcnemar_exact, welch_t
from .correlation import CorrelationCheck
from .cosine import max_cosine_pvalue, neuron_rows
from .diverged import DivergedCheck, diverged_verdict
from .dynamics import dead_growth_verdict, stalled_verdict, unstable_verdict, update_ratio_verdict, update_ratios
from .evidence import RunEvidence, init_advice, pretty_activation, recommended_initializer
from .gates import GateCheck, gate_verdict
from .intentional import Explained, explained
from .methods import MethodNote, methods
from .overlay import TheoryProfile, TheoryRow, chain_predictions, expected_chain_gain, theory_profiles, theory_rows
from .precision import PrecisionCheck
from .registry import CHECKS, AnalysisContext, Check, CheckRegistry
from .scale import BranchScaleCheck, OutputScaleCheck
from .signal import SignalFit, signal_fit
from .stream import StreamCheck, stream_prediction, stream_values, stream_verdicts
from .symmetry import SymmetryCheck, symmetry_groups, symmetry_verdict
from .training import DeadGrowthCheck, StalledCheck, UnstableCheck, UpdateRatioCheck
from .units import DeadCheck, SaturationCheck, dead_verdict, saturation_verdict
from .verdict import DEFAULT_THRESHOLDS, Thresholds, Verdict, failed_checks, worst_status
from .zeros import zero_init_note

__all__ = [
    "CHECKS",
    "DEFAULT_THRESHOLDS",
    "HEALTHY",
    "AnalysisContext",
    "Check",
    "CheckName",
    "CheckRegistry",
    "Comparison",
    "Explained",
    "MethodNote",
    "RunAnalysis",
    "RunEvidence",
    "Signal",
    "SignalFit",
    "Status",
    "TheoryProfile",
    "TheoryRow",
    "Thresholds",
    "Verdict",
    "accuracy_summary",
    "analyze",
    "chain_fits",
    "chain_predictions",
    "compare_accuracies",
    "dead_growth_verdict",
    "dead_verdict",
    "diverged_verdict",
    "expected_chain_gain",
    "explained",
    "failed_checks",
    "gate_verdict",
    "holm",
    "init_advice",
    "main_fit",
    "max_cosine_pvalue",
    "mcnemar_exact",
    "methods",
    "neuron_rows",
    "pretty_activation",
    "recommended_initializer",
    "saturation_verdict",
    "signal_fit",
    "stalled_verdict",
    "stream_prediction",
    "stream_values",
    "stream_verdicts",
    "symmetry_groups",
    "symmetry_verdict",
    "theory_profiles",
    "theory_rows",
    "unstable_verdict",
    "update_ratio_verdict",
    "update_ratios",
    "welch_t",
    "worst_status",
    "zero_init_note",
]

# The built-in checks, in the order they run (and the verdict grid's columns): one line per check.
CHECKS.register(SignalCheck())
CHECKS.register(StreamCheck())
CHECKS.register(SymmetryCheck())
CHECKS.register(DeadCheck())
CHECKS.register(SaturationCheck())
CHECKS.register(GateCheck())
CHECKS.register(OutputScaleCheck())
CHECKS.register(BranchScaleCheck())
CHECKS.register(AttentionEntropyCheck())
CHECKS.register(CorrelationCheck())
CHECKS.register(PrecisionCheck())
CHECKS.register(DivergedCheck())
CHECKS.register(UnstableCheck())
CHECKS.register(StalledCheck())
CHECKS.register(UpdateRatioCheck())
CHECKS.register(DeadGrowthCheck())
