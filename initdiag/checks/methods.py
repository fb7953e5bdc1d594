"""The report's methods section: what each check computes, its null hypothesis and its threshold."""

from __future__ import annotations

from dataclasses import dataclass

from .verdict import DEFAULT_THRESHOLDS, Thresholds

__all__ = ["METHODS", "MethodNote", "methods"]


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
            "unstable", "Unstable training loss",
            f"On the finite steps of the training loss (what follows a NaN/Inf is the divergence check's): the start "
            f"L0 is the smaller of the first step's loss (at initialization, before any update) and the median of "
            f"the first {th.loss_window} steps; the loss is smoothed by a running median over windows of "
            f"{th.loss_window} steps (at most half the run; at least 10 finite steps needed). The verdict reports "
            "the first step of the rise, the peak of the running median and whether the loss came back down.",
            "not a statistical test (a ratio of robust levels).",
            f"fail when the running median exceeds {th.unstable_factor:g} x L0.",
        ),
        MethodNote(
            "stalled", "Stalled first epoch",
            f"The losses of the first {th.loss_window} steps are compared with those of the first epoch's last "
            f"{th.loss_window} (every step when the epoch length is unknown): relative drop of the medians, "
            "(median first - median last) / |median first|, and a one-sided Mann-Whitney U test "
            "(scipy.stats.mannwhitneyu). He et al. 2015 (Fig. 3): a 30-layer ReLU network under Xavier init "
            "does not learn.",
            "the late losses are not smaller than the early ones.",
            f"fail when the drop is below {th.stalled_min_drop:.0%}; warn when it is larger but p >= {th.alpha:g}.",
        ),
        MethodNote(
            "update_ratio", "Update-to-weight ratio",
            "For every weight layer and optimizer step t, r_t = ||W_t+1 - W_t|| / ||W_t|| = sqrt(E[dW^2] / "
            "E[W^2]) with E[X^2] = var + mean_sq of the recorded tensor; per layer the median over steps. Steps "
            "where no layer moved (no optimizer step, e.g. gradient accumulation) are ignored, steps where the "
            "weight is all zero (zero-initialized) skipped. The usual size is ~1e-3 (Karpathy's rule of thumb; "
            "LARS, You et al. 2017, scales each layer's step by the trust ratio ||W|| / ||grad||).",
            "not a statistical test (a measured ratio against a rule of thumb).",
            f"warn when a layer's median is outside [{th.update_warn_low:g}, {th.update_warn_high:g}] or it never "
            f"moved; fail below {th.update_fail_low:g} (float32 rounding, 2^-24 ~ 6e-8) or above "
            f"{th.update_fail_high:g}.",
        ),
        MethodNote(
            "dead_growth", "Dead units appearing during training",
            "Per ReLU-family layer, the fraction of dead units (0 for every input of the batch) after training "
            "minus the fraction at initialization, both on the evaluation batch (or both on the first and the "
            "last training batch when the probes were not both recorded).",
            "not a statistical test (a change of a fraction of units).",
            f"warn when a layer's dead fraction grows by >= {th.dead_growth_warn:.0%} of its units, fail at "
            f">= {th.dead_growth_fail:.0%}.",
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
            "vanishing/exploding", "Chains and the residual stream",
            "The model's structure is seen at its first forward (weight layers of any type with the fans seen, the "
            "activation each output reaches, whether a module or a function, normalizations, residual blocks). The "
            "fit above is made for each chain of weight layers on its own (layers joined without a normalization, "
            "a residual add or a block boundary), and the run's verdict is the worst chain's. With residual blocks, "
            "the stream (the blocks' outputs) is judged across blocks: the geometric mean of the per-block variance "
            "ratios within stages (identity shortcuts; over the later half of them where theory predicts linear "
            "growth) is raised to the number of blocks. Theory: Var(x + f(x)) = Var(x) + Var(f(x)) at init, so "
            "unnormalized branches grow the stream geometrically and normalized or zero ones at most linearly "
            "(Brock et al. 2021; De & Smith 2020). A chain whose variance changes sub-geometrically, as the length "
            "map predicts for a non-homogeneous activation (tanh at sigma_w^2 = 1: q_l ~ 1/(2l), Schoenholz et al. "
            "2017), is judged against that curve: healthy.",
            "the stream's variance changes at most linearly across blocks.",
            f"stream: fail when the change reaches {th.change_factor:g}x for a design theory says grows "
            f"geometrically, {th.change_factor ** 2:g}x (warn at {th.change_factor:g}x) for a bounded one, whose "
            "gradient on the stream is reported, not judged (normalized branches are scale-invariant).",
        ),
        MethodNote(
            "no_signal", "Intentional zeros and constant inputs",
            "A parameter that is all zero at initialization but gets a non-zero gradient (a zero-initialized output "
            "head; the last layer or scale of a residual branch under zero_init_residual, SkipInit, Fixup) leaves "
            "zero at the first step: the missing signal it causes (forward at and after it in its chain, backward "
            "before it) is by design and passes with a note, and so do identical neurons whose gradients differ. A "
            "layer whose input is the same for every sample (an embedding of one token type id) has a constant "
            "output because its input is. Every weight zero, with zero gradients, still fails.",
            "not a statistical test (exact zeros and equal inputs).",
            "a one-step look-ahead: the gradient of the first batch.",
        ),
        MethodNote(
            "theory", "Theory overlay",
            "The length map q' = sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2 with sigma_w^2 = fan_in Var(W), and "
            "backward sigma_w^2 = fan_out Var(W) times E_z[phi'(sqrt(q) z)^2] (Poole et al. 2016; Schoenholz et al. "
            "2017), for any elementwise activation by Gauss-Hermite or composite Gauss-Legendre quadrature with phi' "
            "from autograd (closed forms for the ReLU family and linear: c = 1/2 for ReLU, 1 linear; He et al. 2015, "
            "Glorot & Bengio 2010). Each chain's profile starts from its measured first (forward) or last "
            "(backward) layer; the expected per-layer gain is fitted over the chain like the measurement.",
            "descriptive.",
            "none (for reading the measured gain).",
        ),
    )


METHODS: tuple[MethodNote, ...] = methods()
"""The methods section with the default thresholds."""
