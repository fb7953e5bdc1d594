"""Statistical checks: the recorded series of one run -> verdicts a reviewer can act on.

Each :class:`Verdict` says what is wrong, where (layers), how sure we are (p-value, interval) and what
to do (advice naming an initializer by its CLI name). The checks, their null hypotheses and thresholds
(all in :class:`Thresholds`) are listed in :data:`METHODS` for the report's methods section:

* signal, forward and backward: log-variance of the Conv/Linear outputs (or dL/dy) fitted against
  depth -> ``vanishing`` / ``exploding`` / ``no_signal`` / ``healthy`` (:func:`signal_fit`);
* ``symmetry``: identical neurons (:func:`symmetry_groups`) and near-duplicates (:func:`max_cosine_pvalue`);
* ``dead`` ReLU units and ``saturation`` of tanh/sigmoid, from the evaluation-batch probes;
* ``diverged``: NaN/Inf in the loss, the gradient norm or the statistics;
* accuracy comparisons between initializers (:func:`compare_accuracies`) and the theory overlay
  (:func:`theory_rows`).

This package part is the only one that imports ``scipy.stats`` (with its private helpers
``_checks_*.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ._checks_base import (
    DEFAULT_THRESHOLDS,
    FAMILIES,
    HEALTHY,
    CheckName,
    RunEvidence,
    Status,
    Thresholds,
    Verdict,
    holm,
    recommended_initializer,
    worst_status,
)
from ._checks_compare import Comparison, accuracy_summary, compare_accuracies, mcnemar_exact, welch_t
from ._checks_signal import (
    SignalFit,
    TheoryRow,
    diverged_verdict,
    earliest_step,
    signal_fit,
    signal_verdict,
    theory_rows,
    zero_init_note,
)
from ._checks_units import (
    dead_verdict,
    max_cosine_pvalue,
    neuron_rows,
    saturation_verdict,
    symmetry_groups,
    symmetry_verdict,
)

__all__ = [
    "FAIL_ON_CHOICES",
    "FAMILIES",
    "HEALTHY",
    "METHODS",
    "CheckName",
    "Comparison",
    "MethodNote",
    "RunEvidence",
    "SignalFit",
    "Status",
    "TheoryRow",
    "Thresholds",
    "Verdict",
    "accuracy_summary",
    "check_run",
    "compare_accuracies",
    "failed_checks",
    "holm",
    "max_cosine_pvalue",
    "mcnemar_exact",
    "methods",
    "neuron_rows",
    "recommended_initializer",
    "run_fits",
    "signal_fit",
    "symmetry_groups",
    "theory_rows",
    "welch_t",
    "worst_status",
]

FAIL_ON_CHOICES: tuple[str, ...] = tuple(c.value for c in CheckName)
"""Names accepted by ``--fail-on``: a run fails one when a verdict with that ``check`` has status ``fail``."""


def failed_checks(verdicts: Iterable[Verdict]) -> set[str]:
    """The ``--fail-on`` names of the verdicts whose status is ``fail``."""
    return {v.check for v in verdicts if v.status == Status.FAIL and v.check in FAIL_ON_CHOICES}


def run_fits(ev: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, SignalFit]:
    """Forward and backward :class:`SignalFit` at initialization: the earliest training step.

    Forward: per-element variance of the outputs (what He/Xavier preserve). Backward: per-sample energy of
    dL/dy (variance x elements per output, :meth:`RunEvidence.output_sizes`), which He preserves across
    width changes and max-pooling; per-element variance when the sizes are unknown. Without training
    rows, the forward fit falls back to the ``init`` probe (there is no backward).
    """
    names = [la.name for la in ev.weight_layers] or None
    fits: dict[str, SignalFit] = {}
    for kind in ("forward", "backward"):
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


@dataclass(frozen=True)
class MethodNote:
    """One entry of the report's methods section."""

    check: str
    title: str
    description: str
    null_hypothesis: str
    threshold: str


def methods(th: Thresholds = DEFAULT_THRESHOLDS) -> tuple[MethodNote, ...]:
    """The methods section, with the thresholds of ``th`` written in."""
    level = f"{1 - th.alpha:.0%}"
    return (
        MethodNote(
            "vanishing/exploding", "Signal propagation (forward and backward)",
            "At the first training batch, the variance over the batch of each Conv/Linear output (forward, per "
            "element, averaged over channels) and the per-sample energy of the gradient dL/dy of that output "
            "(backward: its variance times the elements per sample, which He init preserves across width changes "
            "and max-pooling; per element, and then only a warning, when the layer sizes are unknown) are "
            "log-transformed and regressed on the layer's position in execution order (least squares, "
            "scipy.stats.linregress). "
            "The per-layer gain is exp(slope) forward and exp(-slope) backward (the gradient flows from the "
            f"loss), with a t-based {level} interval; the change across the L layers is gain^(L-1), so one odd "
            "layer (e.g. a 10-way classifier head) does not decide the verdict. The raw first-to-last change is "
            "reported too.",
            "the variance is preserved from layer to layer (slope 0, gain 1).",
            f"fail when gain^(L-1) >= {th.change_factor:g} (exploding) or <= 1/{th.change_factor:g} (vanishing) "
            f"and the {level} interval of the gain excludes 1; warn when the factor is passed but the interval "
            f"includes 1. With 2 layers (no interval) the raw change decides: >= {th.few_layers_factor:g}x fails, "
            f">= {th.change_factor:g}x warns.",
        ),
        MethodNote(
            "no_signal", "No signal",
            "A layer carries no signal when its output (or dL/dy) does not vary over the batch. Variances come "
            "from float32 sums, so a constant output shows var ~ 1e-7 mean_sq rather than 0. When the signal is "
            "lost after layers that already fit a vanishing trend, the verdict is 'vanishing' instead.",
            "not a statistical test (a measurement at float precision).",
            f"var <= {th.no_signal_rel:g} x max(mean_sq, {th.no_signal_floor:g}) in any layer.",
        ),
        MethodNote(
            "symmetry", "Identical neurons",
            "Each neuron is a row of the Conv/Linear weight reshaped to (out, -1) with its bias appended. Neurons "
            "are grouped when every entry agrees within the tolerance, at initialization and after training; "
            "the report gives the number of distinct neurons, the groups, and whether each group persisted "
            "through training. Identical neurons get identical gradients, so they stay identical.",
            "not a statistical test (exact comparison within a float tolerance).",
            f"|difference| <= {th.symmetry_atol:g} + {th.symmetry_rtol:g} x max|entry| in every entry; any group "
            "fails.",
        ),
        MethodNote(
            "symmetry", "Near-duplicate neurons",
            "The largest |cosine| between two distinct neurons of a layer (rows with all-zero columns such as "
            f"zero biases dropped; at most {th.cosine_max_rows} random rows) is compared with its distribution for "
            "independent random rows of the same shape: p = min(1, n(n-1)/2 x P(|cos| >= c)) with "
            "cos^2 ~ Beta(1/2, (d-1)/2) for one pair (a union bound over the pairs)"
            + (f", or Monte Carlo with {th.mc_samples} draws" if th.mc_samples > 0 else "")
            + ". p-values are Holm-adjusted across the run's layers. Tested at initialization only: trained "
            "neurons are correlated by learning, so the null does not describe them.",
            "the neurons are independent, isotropic random vectors (as drawn by a healthy random init).",
            f"warn when a Holm-adjusted p < {th.near_duplicate_alpha:g} (family-wise level per run).",
        ),
        MethodNote(
            "dead", "Dead ReLU units",
            "Fraction of the channels of each ReLU-family layer that output exactly 0 for every input of the "
            "evaluation batch (probes before and after training; the training batch when no probe was recorded).",
            "not a statistical test (a fraction of units).",
            f"warn when a layer has >= {th.dead_warn:.0%} dead units, fail at >= {th.dead_fail:.0%}.",
        ),
        MethodNote(
            "saturation", "Saturated tanh/sigmoid units",
            f"Fraction of the outputs of each tanh/sigmoid layer within {th.saturation_tol:g} of a bound "
            "(tanh: -1, 1; sigmoid: 0, 1) on the evaluation batch, before and after training.",
            "not a statistical test (a fraction of outputs).",
            f"warn when a layer has >= {th.saturation_warn:.0%} saturated outputs, fail at "
            f">= {th.saturation_fail:.0%}.",
        ),
        MethodNote(
            "diverged", "Divergence",
            "The first step at which the training loss, the gradient norm (L2 over all parameters, in float32, so "
            "infinite beyond ~1.8e19) or any recorded statistic is NaN or infinite, with the first layer affected "
            "(lowest forward depth, else the first layer of the backward pass). Training stops at the first step "
            "whose loss or gradient norm is not finite; the run's status is then 'diverged', as it is whenever "
            "this check fails.",
            "not a statistical test.",
            "any non-finite value fails.",
        ),
        MethodNote(
            "comparison", "Accuracy comparisons: McNemar's exact test",
            "For every pair of initializers trained on the same data, the test-set predictions of the first seed "
            "are paired: b01 examples only the first got right, b10 only the second. Valid with one run each. "
            "p-values are Holm-adjusted across pairs.",
            "both have the same error rate: b01 ~ Binomial(b01 + b10, 1/2).",
            f"significant when the Holm-adjusted p < {th.alpha:g}.",
        ),
        MethodNote(
            "comparison", "Accuracy comparisons: Welch's t-test",
            f"With 2 or more seeds, each initializer's mean test accuracy with a t-based {level} confidence "
            "interval, and Welch's unequal-variance t-test for every pair, Holm-adjusted across pairs.",
            "equal mean accuracy.",
            f"significant when the Holm-adjusted p < {th.alpha:g}.",
        ),
        MethodNote(
            "theory", "Theory overlay",
            "Expected per-layer variance gain fan x Var(W) x c (fan_in forward, fan_out backward; c = 1/2 for "
            "ReLU, 1 for linear; tanh: 1, an upper bound) from He et al. (2015) and Glorot & Bengio (2010), "
            "accumulated over the layers and fitted like the measurement, next to the measured gain.",
            "descriptive.",
            "none (for reading the measured gain).",
        ),
    )


METHODS: tuple[MethodNote, ...] = methods()
"""The methods section with the default thresholds."""
