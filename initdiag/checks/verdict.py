"""A verdict: one finding about one run, and every threshold the checks decide by."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..jsonable import json_safe
from ..vocab import HEALTHY, Outcome, Status

__all__ = ["DEFAULT_THRESHOLDS", "Thresholds", "Verdict", "failed_checks", "worst_status"]


@dataclass(frozen=True)
class Verdict:
    """One finding about one run, one row of ``summary.json``'s ``verdicts``.

    ``check``: the registered check that made it (``signal``, ``stream``, ``symmetry``, ``dead``, ...);
    ``outcome``: what it found: for ``signal`` and ``stream`` one of ``vanishing``, ``exploding``,
    ``no_signal`` or ``healthy``; for the others the check's name when it warns or fails, else ``healthy``
    (the default). ``family``: the verdict grid's column group (the check's registered family; the check's
    name by default). A ``--fail-on`` name matches a failing verdict whose ``check`` or ``outcome`` is that
    name. ``effect`` holds the estimated effect sizes (NaN/None when undefined), ``details`` per-layer
    evidence (e.g. the neuron groups), ``phase`` when the evidence was taken.
    """

    check: str
    signal: str | None
    status: str
    layers: tuple[str, ...]
    p_value: float | None
    effect: Mapping[str, float | None]
    message: str
    advice: str | None
    phase: str = "init"
    details: Mapping[str, Any] = field(default_factory=dict)
    outcome: str = ""
    family: str = ""

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", HEALTHY if self.status == Status.PASS else str(self.check))
        if not self.family:
            object.__setattr__(self, "family", str(self.check))

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/Inf -> None) with the ``summary.json`` keys."""
        return json_safe({
            "check": self.check, "outcome": self.outcome, "family": self.family, "signal": self.signal,
            "status": self.status, "phase": self.phase, "layers": list(self.layers), "p_value": self.p_value,
            "effect": dict(self.effect), "message": self.message, "advice": self.advice,
            "details": dict(self.details),
        })

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        """The verdict :meth:`to_json` wrote (undefined numbers come back as None). A verdict written before
        checks and outcomes were separate fields (``"check": "vanishing"``, no ``outcome``) reads as the
        ``signal`` (or, with stream sites in its details, ``stream``) check with that outcome."""
        check, outcome = str(data["check"]), str(data.get("outcome") or "")
        details = dict(data.get("details") or {})
        if "outcome" not in data and check in set(Outcome):
            check, outcome = ("stream" if "sites" in details else "signal"), check
        return cls(check, data["signal"], str(data["status"]), tuple(map(str, data["layers"])), data["p_value"],
                   dict(data["effect"]), str(data["message"]), data["advice"], str(data.get("phase", "init")),
                   details, outcome, str(data.get("family") or ""))


_STATUS_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


def worst_status(verdicts: Any, family: str | None = None) -> str | None:
    """The worst status among ``verdicts`` (of ``family`` if given), or None when there are none."""
    ranks = [_STATUS_RANK[Status(v.status)] for v in verdicts if family is None or v.family == family]
    if not ranks:
        return None
    return next(s for s, r in _STATUS_RANK.items() if r == max(ranks)).value


@dataclass(frozen=True)
class Thresholds:
    """Every decision threshold of the checks, with its default.

    Signal (vanishing/exploding):
        change_factor: the fitted change across the network, ``gain ** (layers - 1)``, must reach this
            factor (or its inverse) for ``exploding`` (``vanishing``); the slope's confidence interval
            must also exclude 0. 100 tolerates the slow fall of deep He/ReLU nets (~10x over 30 layers,
            from inputs growing correlated with depth).
        few_layers_factor: with fewer than 3 layers there is no confidence interval: a raw
            first-to-last change beyond this factor fails, beyond ``change_factor`` warns.
        vanishing_fail_factor: a fall (``vanishing``) fails only from this factor on and warns between
            ``change_factor`` and it. A fall is a scale the optimizer can recover (a normalization or the
            loss rescales it, and in a ReLU net the forward and backward falls cancel in the weight
            gradients ``x_l g_l``), until it is too deep to learn from: He et al. (2015, Fig. 3) trained a
            22-layer ReLU net at Xavier (x1/2 per layer, ~5e-7 across) and it converged, slower, while the
            30-layer one (~2e-9) did not learn. 1e8 lies between the two. A rise keeps ``change_factor``
            (``few_layers_factor`` with 2 layers): a large output starts confident and wrong, and a large
            branch swamps the stream it joins.
        alpha: 1 - confidence level of the slope's interval (t-based), and the level of the accuracy
            comparisons.
        no_signal_rel, no_signal_floor: a layer carries no signal when ``var <= no_signal_rel *
            max(mean_sq, no_signal_floor)``. The sums are float64 of float32 values (exact squares), so an exact
            constant gives ``var ~ 1e-16 mean_sq``; a constant float32 arithmetic computed along different paths
            (GEMM blocking) varies by its rounding, ``(sqrt(K) 2^-24)^2 ~ 1e-11 mean_sq`` for sums of K = 4096
            terms. 1e-9 (a standard deviation 3e-5 of the output's scale) sits above both and below any signal
            a layer carries by design (a gate's logits scaled by 0.01 before a sigmoid: ~1e-6).
    Symmetry:
        symmetry_atol, symmetry_rtol: two neurons (weight row + bias) are identical when every entry
            differs by at most ``atol + rtol * scale``, ``scale`` the layer's largest |weight| for weights and
            its largest |bias| for the bias.
        near_duplicate_alpha: family-wise level (Holm across the run's layers) of the near-duplicate test
            (largest |cosine| between neurons vs independent random rows). 1% keeps the false-alarm rate
            of the symmetry check below 5% per run even with both the init and final phases tested.
        cosine_max_rows: layers with more neurons are subsampled to this many for the cosine test.
        mc_samples: 0: analytic p-value (union bound over pairs); > 0: Monte Carlo with this many draws.
    Dead units (ReLU family, fraction of a layer's units that are 0 for every evaluation input):
        dead_warn, dead_fail: warn / fail when any layer reaches this fraction.
    Saturation (tanh/sigmoid, fraction of a layer's outputs within ``saturation_tol`` of a bound):
        saturation_tol: the tolerance the recorder used (``Recorder(saturation_tol=...)``), for the text.
        saturation_warn, saturation_fail: warn / fail when any layer reaches this fraction.
    Scale, attention, correlation, precision (:mod:`~initdiag.checks.scale`, :mod:`~initdiag.checks.attention`,
    :mod:`~initdiag.checks.correlation`, :mod:`~initdiag.checks.precision`):
        logit_warn: warn when the logits' spread over the classes (their standard deviation within a row) exceeds
            this: for i.i.d. logits of std s the expected cross-entropy is about ``log C + s^2 / 2``, so at 1 the
            model starts 0.5 nats above chance (the "verify the loss at init" rule of Karpathy's recipe).
            output_entropy_fail: fail when the entropy of i.i.d. logits of the measured spread is below this
            fraction of ``log C`` and the predictions' measured entropy below twice it: near one-hot softmax outputs
            because of the head's scale, the model confidently wrong from the first step: i.i.d. logits reach 0.1 at
            a spread of ~10 whatever the number of classes (a first loss ~50 nats above chance), and torchvision's
            fan-out head init over 10 classes (MNASNet: spread 6.5, entropy 0.14 of log C), which trains, stays
            above it. Tied embeddings that make a model predict its input token (XLM, Flaubert: spread 1.1, entropy
            0.02 of log C) are a structured preference, not a scale: they warn. A spread of 3-4 that libraries'
            fan-out initializations of a head give (timm's DLA) warns: it costs the first steps, not training.
        branch_warn, branch_fail: warn / fail when a residual branch adds this many times the variance of the
            stream it joins: the identity then carries ``1 / (1 + r)`` of the block's output variance (at 100,
            a tenth of its amplitude), and a block is no longer near the identity its skip connection gives
            (Brock et al. 2021; De & Smith 2020).
        attention_warn, attention_fail: warn / fail when an attention layer's entropy, averaged over its heads,
            falls below this fraction of the uniform attention's ``log n``: near one-hot weights, whose softmax
            Jacobian ``diag(p) - p p^T`` vanishes (entropy collapse, Zhai et al. 2023).
        correlation_warn, correlation_fail: warn / fail when the deepest representation's mean cosine between
            different inputs (or tokens) is within this distance of 1, and depth shrank that distance at least
            ``correlation_shrink`` times from the first layer's. At 1e-2 the inputs differ by ~14% of their
            amplitude (``sqrt(2 (1 - c))``); at 1e-4 by ~1.4%: every input gets nearly the same output and
            gradient (Schoenholz et al. 2017; Dong et al. 2021: attention without skips reaches ~1e-6 in 12
            layers). torchvision's MViT-v1 at its own init, which trains, has tokens at 1 - c = 9e-4: a warning.
        fp16_warn_headroom: warn when the largest activation is within this factor of float16's maximum 65504
            (fail above it: it overflows to inf); underflow_warn: warn when this fraction of a layer's nonzero
            gradients lies below float16's smallest subnormal 2^-24 even with GradScaler's initial loss scale 2^16
            (they round to 0, Micikevicius et al. 2018).
    Training (:mod:`~initdiag.checks.dynamics`):
        loss_window: steps per window of the loss checks: the running median of ``unstable`` and the two
            windows ``stalled`` compares (shrunk to half the run when it is shorter; 10 finite steps at
            least). 20 steps damp the batch-to-batch noise of a loss (the median of 20 batch losses spreads
            ~3.5x less than one, 1.25 / sqrt(20)) and still see a blow-up that takes tens of steps.
        unstable_factor: fail ``unstable`` when the running median of the loss reaches this multiple of the
            starting loss. 2: a cross-entropy starts at ~ln(classes) (2.3 for 10); twice that is worse than
            the uniform guess by ln(classes) again, far beyond batch noise, while the loss spikes of healthy
            runs are relative to a loss already below the start.
        stalled_min_drop: fail ``stalled`` when the median loss of the first epoch's last window is less
            than this fraction below the first window's (a fall must also be significant at ``alpha``,
            one-sided Mann-Whitney U, else warn). 5%: a network that learns anything beyond the label
            frequencies cuts a cross-entropy by far more within an epoch (He init, 5 ReLU layers: ~30% in
            300 SGD steps), while learning the class prior of nearly balanced labels gives ~1%.
        update_warn_low, update_warn_high: warn when a layer's median step update ratio ||W_{t+1} - W_t|| /
            ||W_t|| is outside this range. 1e-3 is the usual size (Karpathy's rule of thumb); below 1e-5 a
            layer moves less than 1% in 1000 steps even if every step pointed the same way; above 1e-1 it
            is rewritten every ~10 steps.
        update_fail_low, update_fail_high: fail outside this range. Below 1e-7 the update is at float32's
            rounding (2**-24 ~ 6e-8 relative): most of it is lost when added to the weight; at 1 or more each
            step replaces the weight, which then holds nothing it learned.
        dead_growth_warn, dead_growth_fail: warn / fail when, in any ReLU-family layer, the fraction of dead
            units after training exceeds the fraction at initialization by this much (absolute). A quarter
            of a layer lost to training is a capacity loss a reviewer should see; half is a failure (the
            ``dead`` check's warn level, reached from nothing).
    """

    change_factor: float = 100.0
    few_layers_factor: float = 1e4
    vanishing_fail_factor: float = 1e8
    alpha: float = 0.05
    no_signal_rel: float = 1e-9
    no_signal_floor: float = 1e-30
    symmetry_atol: float = 1e-7
    symmetry_rtol: float = 1e-5
    near_duplicate_alpha: float = 0.01
    cosine_max_rows: int = 512
    mc_samples: int = 0
    dead_warn: float = 0.5
    dead_fail: float = 0.9
    saturation_tol: float = 0.01
    saturation_warn: float = 0.1
    saturation_fail: float = 0.5
    loss_window: int = 20
    unstable_factor: float = 2.0
    stalled_min_drop: float = 0.05
    update_warn_low: float = 1e-5
    update_warn_high: float = 1e-1
    update_fail_low: float = 1e-7
    update_fail_high: float = 1.0
    dead_growth_warn: float = 0.25
    dead_growth_fail: float = 0.5
    logit_warn: float = 1.0
    output_entropy_fail: float = 0.1
    branch_warn: float = 10.0
    branch_fail: float = 100.0
    attention_warn: float = 0.5
    attention_fail: float = 0.2
    correlation_warn: float = 1e-2
    correlation_fail: float = 1e-4
    correlation_shrink: float = 10.0
    fp16_warn_headroom: float = 16.0
    underflow_warn: float = 0.5

    def __post_init__(self) -> None:
        if self.change_factor <= 1 or self.few_layers_factor < self.change_factor:
            raise ValueError("need 1 < change_factor <= few_layers_factor")
        if self.vanishing_fail_factor < self.change_factor:
            raise ValueError("need change_factor <= vanishing_fail_factor")
        for name in ("alpha", "near_duplicate_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1)")
        if not (0 <= self.dead_warn <= self.dead_fail <= 1 and 0 <= self.saturation_warn
                <= self.saturation_fail <= 1):
            raise ValueError("need 0 <= warn <= fail <= 1 for dead and saturation fractions")
        if self.loss_window < 5:
            raise ValueError("loss_window must be at least 5 steps")
        if self.unstable_factor <= 1 or not 0 < self.stalled_min_drop < 1:
            raise ValueError("need unstable_factor > 1 and 0 < stalled_min_drop < 1")
        if not 0 < self.update_fail_low <= self.update_warn_low < self.update_warn_high <= self.update_fail_high:
            raise ValueError("need 0 < update_fail_low <= update_warn_low < update_warn_high <= update_fail_high")
        if not 0 < self.dead_growth_warn <= self.dead_growth_fail <= 1:
            raise ValueError("need 0 < dead_growth_warn <= dead_growth_fail <= 1")


DEFAULT_THRESHOLDS: Thresholds = Thresholds()
"""The defaults, as one shared instance (for function defaults)."""


def failed_checks(verdicts: Iterable[Verdict], names: Iterable[str] | None = None) -> set[str]:
    """The ``--fail-on`` names that the failing ``verdicts`` match (a verdict matches its ``check`` and its
    ``outcome``), among ``names`` when given."""
    found = {str(n) for v in verdicts if v.status == Status.FAIL for n in (v.check, v.outcome)}
    return found if names is None else found & set(names)
