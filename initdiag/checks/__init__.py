"""Statistical checks: the recorded series of one run -> verdicts a reviewer can act on.

Each :class:`Verdict` says what is wrong, where (layers), how sure we are (p-value, interval) and what to
do (advice naming an initializer by its CLI name). The checks, their null hypotheses and thresholds (all
in :class:`Thresholds`) are listed in :data:`METHODS` for the report's methods section:

* signal, forward and backward: log-variance of the Conv/Linear outputs (or dL/dy) fitted against depth
  -> ``vanishing`` / ``exploding`` / ``no_signal`` / ``healthy`` (:mod:`.signal`);
* ``symmetry``: identical neurons and near-duplicates (:mod:`.symmetry`);
* ``dead`` ReLU units and ``saturation`` of tanh/sigmoid, from the evaluation-batch probes (:mod:`.units`);
* ``diverged``: NaN/Inf in the loss, the gradient norm or the statistics (:mod:`.diverged`);
* training itself: ``unstable`` loss, ``stalled`` first epoch, ``update_ratio`` per layer, ``dead_growth``
  (:mod:`.dynamics`);
* accuracy comparisons between initializers (:mod:`.compare`) and the theory overlay (:mod:`.overlay`).

Only this package imports ``scipy.stats``.
"""

from __future__ import annotations

import numpy as np

from ..vocab import HEALTHY, CheckName, Signal, Status
from .chains import chain_fits, chain_verdicts, main_fit
from .compare import Comparison, accuracy_summary, compare_accuracies, holm, mcnemar_exact, welch_t
from .diverged import diverged_verdict
from .dynamics import dead_growth_verdict, stalled_verdict, unstable_verdict, update_ratio_verdict, update_ratios
from .evidence import (
    RunEvidence,
    Weights,
    init_advice,
    norm_gains,
    pretty_activation,
    recommended_initializer,
    snapshot_grads,
    snapshot_weights,
    transposed_weights,
    weight_moments,
    zero_parameters,
)
from .intentional import Explained, explained
from .methods import METHODS, MethodNote, methods
from .overlay import TheoryProfile, TheoryRow, chain_predictions, expected_chain_gain, theory_profiles, theory_rows
from .signal import SignalFit, signal_fit
from .stream import stream_prediction, stream_values, stream_verdicts
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
    "Explained",
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
    "diverged_verdict",
    "dynamics_verdicts",
    "explained",
    "failed_checks",
    "holm",
    "init_advice",
    "max_cosine_pvalue",
    "mcnemar_exact",
    "methods",
    "neuron_rows",
    "norm_gains",
    "pretty_activation",
    "recommended_initializer",
    "run_fits",
    "signal_fit",
    "snapshot_grads",
    "snapshot_weights",
    "stream_prediction",
    "stream_values",
    "symmetry_groups",
    "theory_profiles",
    "theory_rows",
    "transposed_weights",
    "update_ratios",
    "weight_moments",
    "welch_t",
    "worst_status",
    "zero_parameters",
]


def run_fits(ev: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, SignalFit]:
    """Forward and backward :class:`SignalFit` at initialization (the earliest training step): for each
    direction the longest chain's (:func:`~initdiag.checks.chains.main_fit`; a plain network is one chain).

    Forward: per-element variance of the outputs (what He/Xavier preserve). Backward: per-sample energy of
    dL/dy (variance x elements per output, :meth:`RunEvidence.output_sizes`), which He preserves across
    width changes and max-pooling; per-element variance when the sizes are unknown. Without training
    rows, the forward fit falls back to the ``init`` probe (there is no backward).
    """
    return {kind: main_fit(fits) for kind, fits in chain_fits(ev, thresholds, explained(ev)).items()}


def dynamics_verdicts(ev: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Verdict]:
    """The verdicts about training itself (:mod:`.dynamics`): ``unstable``, ``stalled`` (not when the loss
    rose: ``unstable`` failed), ``update_ratio``, ``dead_growth``; none without the evidence (an audit trains
    nothing)."""
    unstable = unstable_verdict(ev, thresholds)
    rose = unstable is not None and unstable.status == Status.FAIL  # then "did not fall" says nothing more
    found = [unstable, None if rose else stalled_verdict(ev, thresholds, ev.steps_per_epoch),
             update_ratio_verdict(ev, thresholds), dead_growth_verdict(ev, thresholds)]
    return [v for v in found if v is not None]


def check_run(ev: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS, rng_seed: int = 0) -> tuple[Verdict, ...]:
    """All verdicts for one run, in the order: diverged, training (unstable, stalled, update_ratio,
    dead_growth), signal forward and backward (the chains of layers,
    then the residual stream), symmetry (init, final), dead (init, final), saturation (init, final).

    A check without evidence (no backward rows, no ReLU, no final weights, ...) gives no verdict.
    ``rng_seed`` seeds the subsampling of large layers for the cosine test. A diverged run still gets
    every verdict its finite evidence allows.
    """
    th = thresholds
    rng = np.random.default_rng(rng_seed)
    why = explained(ev)
    fits = chain_fits(ev, th, why)
    main = {kind: main_fit(kind_fits) for kind, kind_fits in fits.items()}
    expected = {kind: {f.layers: expected_chain_gain(ev, f) for f in kind_fits} for kind, kind_fits in fits.items()}
    note = zero_init_note(ev, main.get(Signal.FORWARD), main.get(Signal.BACKWARD))
    design = "".join(f" {n}" for n in why.notes)
    notes: dict[str, str] = {Signal.FORWARD: note + design, Signal.BACKWARD: design}
    found: list[Verdict | None] = [diverged_verdict(ev), *dynamics_verdicts(ev, th)]
    found += chain_verdicts(ev, th, fits, expected, notes, chain_predictions(ev, fits))
    if ev.structure is not None and ev.structure.blocks:
        theory = stream_prediction(ev)
        bounded = theory.bounded if theory is not None else \
            all(b.post_norm or b.branch_normalized for b in ev.structure.blocks)
        found += stream_verdicts(ev, th, theory.values if theory else (), bounded, silent_backward=(
            f"the output head '{why.head}' is zero-initialized and learns from step 1, and the gradient flows from "
            "then on" if why.head else ""))
    sym_init, reports = symmetry_verdict(ev, "init", th, rng, extra=note + design)
    sym_final, _ = symmetry_verdict(ev, "final", th, rng, init_reports=reports)
    found += [sym_init, sym_final]
    found += [dead_verdict(ev, "init", th, why.forward), dead_verdict(ev, "final", th)]
    found += [saturation_verdict(ev, phase, th) for phase in ("init", "final")]
    return tuple(v for v in found if v is not None)

