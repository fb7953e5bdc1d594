"""Statistical checks: the recorded series of one run -> verdicts a reviewer can act on.

Each :class:`Verdict` says what is wrong, where (layers), how sure we are (p-value, interval) and what to
do (advice naming an initializer by its CLI name). The checks, their null hypotheses and thresholds (all
in :class:`Thresholds`) are listed in :data:`METHODS` for the report's methods section:

* signal, forward and backward: log-variance of the Conv/Linear outputs (or dL/dy) fitted against depth
  -> ``vanishing`` / ``exploding`` / ``no_signal`` / ``healthy`` (:mod:`.signal`);
* ``symmetry``: identical neurons and near-duplicates (:mod:`.symmetry`);
* ``dead`` ReLU units and ``saturation`` of tanh/sigmoid, from the evaluation-batch probes (:mod:`.units`);
* ``diverged``: NaN/Inf in the loss, the gradient norm or the statistics (:mod:`.diverged`);
* accuracy comparisons between initializers (:mod:`.compare`) and the theory overlay (:mod:`.overlay`).

Only this package imports ``scipy.stats``.
"""

from __future__ import annotations

import numpy as np

from ..vocab import HEALTHY, CheckName, Signal, Status
from .compare import Comparison, accuracy_summary, compare_accuracies, holm, mcnemar_exact, welch_t
from .diverged import diverged_verdict
from .evidence import RunEvidence, Weights, init_advice, pretty_activation, recommended_initializer, snapshot_weights
from .methods import METHODS, MethodNote, methods
from .overlay import TheoryProfile, TheoryRow, theory_profiles, theory_rows
from .signal import SignalFit, earliest_step, signal_fit, signal_verdict
from .symmetry import max_cosine_pvalue, neuron_rows, symmetry_groups, symmetry_verdict
from .units import dead_verdict, saturation_verdict
from .verdict import DEFAULT_THRESHOLDS, FAIL_ON_CHOICES, Thresholds, Verdict, failed_checks, worst_status
from .zeros import zero_init_note

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FAIL_ON_CHOICES",
    "HEALTHY",
    "METHODS",
    "CheckName",
    "Comparison",
    "MethodNote",
    "RunEvidence",
    "SignalFit",
    "Status",
    "TheoryProfile",
    "TheoryRow",
    "Thresholds",
    "Verdict",
    "Weights",
    "accuracy_summary",
    "check_run",
    "compare_accuracies",
    "failed_checks",
    "holm",
    "init_advice",
    "max_cosine_pvalue",
    "mcnemar_exact",
    "methods",
    "neuron_rows",
    "pretty_activation",
    "recommended_initializer",
    "run_fits",
    "signal_fit",
    "snapshot_weights",
    "symmetry_groups",
    "theory_profiles",
    "theory_rows",
    "welch_t",
    "worst_status",
]


def run_fits(ev: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, SignalFit]:
    """Forward and backward :class:`SignalFit` at initialization: the earliest training step.

    Forward: per-element variance of the outputs (what He/Xavier preserve). Backward: per-sample energy of
    dL/dy (variance x elements per output, :meth:`RunEvidence.output_sizes`), which He preserves across
    width changes and max-pooling; per-element variance when the sizes are unknown. Without training
    rows, the forward fit falls back to the ``init`` probe (there is no backward).
    """
    names = [la.name for la in ev.weight_layers] or None
    fits: dict[str, SignalFit] = {}
    for kind in (Signal.FORWARD, Signal.BACKWARD):
        phase, step = "train", earliest_step(ev.frame, kind, "train")
        if step is None and kind == "forward":
            phase, step = "init", earliest_step(ev.frame, kind, "init")
        if step is None:
            continue
        fit = signal_fit(ev.frame, kind, step, phase, layers=names, alpha=thresholds.alpha,
                         no_signal_rel=thresholds.no_signal_rel, no_signal_floor=thresholds.no_signal_floor,
                         sizes=ev.output_sizes() if kind == "backward" else None)
        if fit.n_layers:
            fits[kind] = fit
    return fits


def check_run(ev: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS, rng_seed: int = 0) -> tuple[Verdict, ...]:
    """All verdicts for one run, in the order: diverged, signal forward, signal backward, symmetry
    (init, final), dead (init, final), saturation (init, final).

    A check without evidence (no backward rows, no ReLU, no final weights, ...) gives no verdict.
    ``rng_seed`` seeds the subsampling of large layers for the cosine test. A diverged run still gets
    every verdict its finite evidence allows.
    """
    th = thresholds
    rng = np.random.default_rng(rng_seed)
    fits = run_fits(ev, th)
    expected = {row.signal: row.expected_gain
                for row in theory_rows(ev, fits.get("forward"), fits.get("backward"))}
    note = zero_init_note(ev, fits.get("forward"), fits.get("backward"))
    found: list[Verdict | None] = [diverged_verdict(ev)]
    for kind, fit in fits.items():
        found.append(signal_verdict(fit, ev, th, expected.get(kind), extra=note if kind == "forward" else ""))
    sym_init, reports = symmetry_verdict(ev, "init", th, rng, extra=note)
    sym_final, _ = symmetry_verdict(ev, "final", th, rng, init_reports=reports)
    found += [sym_init, sym_final]
    found += [dead_verdict(ev, phase, th) for phase in ("init", "final")]
    found += [saturation_verdict(ev, phase, th) for phase in ("init", "final")]
    return tuple(v for v in found if v is not None)
