"""The checks against independent computations (numpy, scipy) on made-up series and weights."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from initdiag.checks import (
    CHECKS,
    CheckName,
    RunEvidence,
    Thresholds,
    Verdict,
    accuracy_summary,
    analyze,
    compare_accuracies,
    failed_checks,
    holm,
    max_cosine_pvalue,
    mcnemar_exact,
    methods,
    signal_fit,
    symmetry_groups,
)
from initdiag.checks.cosine import finite_rows, live_rows, max_cos, projections
from initdiag.experiment import theory_variances
from initdiag.initializers import InitSpec, apply_initializer
from initdiag.series import FRAME_COLUMNS
from initdiag.structure import LayerInfo, weight_layers
from initdiag.vocab import Outcome

Pair = tuple[np.ndarray, np.ndarray | None]
Weights = dict[str, Pair]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- made-up series ---------------------------------------------------------------------------------
def series(var: Sequence[float] | np.ndarray, kind: str = "forward", mean_sq: Sequence[float] | None = None,
           step: int = 0, phase: str = "train") -> pd.DataFrame:
    """A frame with one Linear layer per variance (names 'fc0', 'fc1', ...; depth = index)."""
    msq = [0.0] * len(var) if mean_sq is None else list(mean_sq)
    rows = []
    for d, (v, m) in enumerate(zip(var, msq, strict=True)):
        for stat, value in (("var", v), ("mean_sq", m)):
            rows.append({"run": "r", "initializer": "x", "seed": 0, "epoch": 0, "step": step, "phase": phase,
                         "layer": f"fc{d}", "depth": d, "module": "Linear", "kind": kind, "stat": stat,
                         "value": float(value)})
    return pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))


def layer_infos(n: int, width: int = 8, activation: str = "relu") -> tuple[LayerInfo, ...]:
    return tuple(LayerInfo(f"fc{d}", f"fc{d}", "Linear", "weight", d, activation if d < n - 1 else "linear",
                           (width, width)) for d in range(n))


def evidence(frame: pd.DataFrame | None = None, weights: Mapping[str, Pair] | None = None,
             final: Weights | None = None,
             losses: Sequence[float] = (1.0,), n_layers: int = 0, init: str = "he") -> RunEvidence:
    frame = frame if frame is not None else pd.DataFrame(columns=list(FRAME_COLUMNS))
    spec, infos = InitSpec.parse(init), layer_infos(n_layers)
    variances = {la.module_name: spec.initializer.variance(la.weight_shape, spec.resolved) for la in infos
                 if la.weight_shape is not None}
    return RunEvidence("r", spec.label, frame, infos, weights or {}, final or {},
                       np.asarray(losses, dtype=np.float64), weight_vars=variances,
                       default_init=spec.name == "pytorch-default")


def signal_verdicts(var: Sequence[float] | np.ndarray, kind: str = "forward", **kw: object) -> Verdict:
    ev = evidence(series(var, kind, **kw), n_layers=len(var))  # type: ignore[arg-type]
    (v,) = [v for v in analyze(ev).verdicts if v.family == "signal"]
    return v


def snapshot(model: nn.Module) -> Weights:
    """numpy copies of every Conv/Linear (weight, bias)."""
    out: Weights = {}
    for name, module in weight_layers(model):
        weight, bias = cast(torch.Tensor, module.weight), cast(torch.Tensor | None, module.bias)
        out[name] = (weight.detach().numpy().copy(), None if bias is None else bias.detach().numpy().copy())
    return out


def small_weights(init: str, seed: int) -> Weights:
    model = nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    apply_initializer(model, InitSpec.parse(init), seed)
    return snapshot(model)


# -- signal fit ---------------------------------------------------------------------------------------
def test_signal_fit_equals_polyfit_and_a_hand_made_t_interval() -> None:
    rng = np.random.default_rng(0)
    var = np.exp(-0.3 * np.arange(12) + rng.normal(0, 0.2, 12))
    fit = signal_fit(series(var))
    x, y = np.arange(12.0), np.log(var)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    se = math.sqrt(resid @ resid / (12 - 2) / ((x - x.mean()) @ (x - x.mean())))
    half = stats.t.ppf(0.975, 10) * se
    assert fit.slope == pytest.approx(slope, rel=1e-10)
    assert fit.intercept == pytest.approx(intercept, rel=1e-10)
    assert (fit.slope_low, fit.slope_high) == pytest.approx((slope - half, slope + half), rel=1e-10)
    assert fit.gain == pytest.approx(math.exp(slope))
    assert fit.change_fitted == pytest.approx(math.exp(slope) ** 11)
    assert fit.change_raw == pytest.approx(var[-1] / var[0])
    assert fit.layers == tuple(f"fc{i}" for i in range(12)) and fit.n_layers == 12


def test_signal_rows_give_every_chain_the_fit_of_its_own_layers() -> None:
    # rows filtered once (SignalRows) and fitted per chain: each fit equals a fit of a frame holding only
    # that chain's layers, in whatever order the chain names them
    from initdiag.checks.signal import SignalRows

    rng = np.random.default_rng(1)
    var = np.exp(-0.2 * np.arange(10) + rng.normal(0, 0.1, 10))
    frame = series(var)
    rows = SignalRows.of(frame, "forward", "train")
    for chain in ([f"fc{i}" for i in (7, 2, 5, 3)], [f"fc{i}" for i in range(10)], ["fc4", "fc9"]):
        alone = frame[frame["layer"].astype(str).isin(chain)].copy()
        alone["layer"] = alone["layer"].astype(str)
        a, b = signal_fit(rows, layers=chain), signal_fit(alone)
        assert a.layers == b.layers == tuple(sorted(chain, key=lambda n: int(n[2:])))
        assert (a.slope, a.gain_low, a.change_raw) == pytest.approx((b.slope, b.gain_low, b.change_raw), nan_ok=True)
    with pytest.raises(ValueError, match="given for a fit"):
        signal_fit(rows, "backward")


def test_backward_gain_is_measured_from_the_output_toward_the_input() -> None:
    var = 4.0 ** -np.arange(6.0)  # dL/dy shrinks with depth: grows 4x per layer toward the input
    fit = signal_fit(series(var, "backward"), "backward")
    assert fit.gain == pytest.approx(4.0)
    assert fit.change_raw == pytest.approx(4.0**5)
    v = signal_verdicts(var, "backward")
    assert (v.outcome, v.status, v.signal) == ("exploding", "fail", "backward")


def test_one_odd_layer_does_not_decide_and_the_raw_change_is_reported() -> None:
    var = np.ones(30)
    var[-1] = 1e-4  # a 10-way head 10^4 lower
    v = signal_verdicts(var)
    assert (v.outcome, v.status) == ("healthy", "pass")
    assert v.effect["change_raw"] == pytest.approx(1e-4)


def test_no_signal_zero_and_float_rounding_level() -> None:
    assert signal_verdicts([1.0, 0.0, 0.0, 0.0]).outcome == "no_signal"
    rounding = signal_verdicts([1.0, 1.0, 1e-12, 1e-12], mean_sq=[1.0, 1.0, 1.0, 1.0])
    assert (rounding.outcome, rounding.layers) == ("no_signal", ("fc2", "fc3"))
    assert signal_verdicts([1.0, 1.0, 1e-3, 1e-3], mean_sq=[1.0] * 4).outcome != "no_signal"
    lost_after_decay = signal_verdicts([1.0, 1e-2, 1e-4, 1e-6, 0.0, 0.0])
    assert (lost_after_decay.outcome, lost_after_decay.status) == ("vanishing", "fail")


def test_overflow_at_init_is_exploding() -> None:
    v = signal_verdicts([1.0, 1e10, 1e20, 1e30, math.inf])
    assert (v.outcome, v.status, v.layers) == ("exploding", "fail", ("fc4",))


def test_fewer_than_three_layers_fall_back_to_the_raw_change() -> None:
    assert signal_verdicts([1.0, 50.0]).status == "pass"
    assert (signal_verdicts([1.0, 500.0]).outcome, signal_verdicts([1.0, 500.0]).status) == ("exploding", "warn")
    assert (signal_verdicts([1.0, 1e-5]).outcome, signal_verdicts([1.0, 1e-5]).status) == ("vanishing", "warn")
    assert (signal_verdicts([1.0, 1e-9]).outcome, signal_verdicts([1.0, 1e-9]).status) == ("vanishing", "fail")
    assert signal_verdicts([1.0]).status == "pass"


def test_a_fall_fails_only_as_deep_as_he_et_al_found_untrainable() -> None:
    # He et al. (2015, Fig. 3): a ReLU net at Xavier (x1/2 per layer) trained at 22 layers (~5e-7 across), not
    # at 30 (~2e-9). AlexNet at PyTorch's default init falls ~1e-4 over 8 layers and trains.
    alexnet_like = signal_verdicts(list(0.27 ** np.arange(8)))
    assert (alexnet_like.outcome, alexnet_like.status) == ("vanishing", "warn")
    assert "warns, not fails" in alexnet_like.message
    assert signal_verdicts(list(0.5 ** np.arange(22))).status == "warn"
    assert (signal_verdicts(list(0.5 ** np.arange(30))).outcome, signal_verdicts(list(0.5 ** np.arange(30))).status) \
        == ("vanishing", "fail")
    rise = signal_verdicts(list(3.7 ** np.arange(8)))  # the mirror image of the AlexNet fall still fails
    assert (rise.outcome, rise.status) == ("exploding", "fail")


def test_noisy_trend_whose_interval_includes_zero_only_warns() -> None:
    var = np.exp(np.array([0.0, 8.0, -6.0, 6.0, -3.0, 9.0, -4.0, 10.0]))
    fit = signal_fit(series(var))
    assert fit.slope_low < 0 < fit.slope_high
    v = signal_verdicts(var)
    if v.outcome != "healthy":
        assert v.status == "warn"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5.0, 5.0), min_size=3, max_size=12), st.floats(-30.0, 30.0))
def test_scaling_all_variances_keeps_the_verdict(logs: list[float], log_scale: float) -> None:
    var = np.exp(np.cumsum(logs))
    a, b = signal_verdicts(var), signal_verdicts(var * math.exp(log_scale))
    assert (a.outcome, a.status) == (b.outcome, b.status)
    assert a.effect["gain"] == pytest.approx(b.effect["gain"], rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 40), st.floats(1e-20, 1e20), st.sampled_from(["forward", "backward"]))
def test_a_constant_series_is_never_vanishing(n: int, value: float, kind: str) -> None:
    v = signal_verdicts([value] * n, kind)
    assert (v.outcome, v.status) == ("healthy", "pass")


# -- symmetry -------------------------------------------------------------------------------------------
def test_two_identical_rows_are_exactly_the_pair_reported() -> None:
    weights = small_weights("he", 0)
    w, b = weights["2"]
    assert b is not None
    w[7] = w[3]
    b[7] = b[3]
    assert symmetry_groups(w, b, atol=1e-7) == [[3, 7]]
    verdicts = analyze(evidence(weights=weights)).verdicts
    (sym,) = [v for v in verdicts if v.check == "symmetry"]
    assert (sym.status, sym.layers) == ("fail", ("2",))
    layer = {d["layer"]: d for d in sym.details["layers"]}["2"]
    assert layer["groups"] == [[3, 7]] and layer["distinct"] == 63
    assert all(not d["groups"] for d in sym.details["layers"] if d["layer"] != "2")
    assert "neurons 3, 7" in sym.message


def test_a_constant_init_and_conv_filters_are_fully_symmetric() -> None:
    conv = nn.Conv2d(3, 16, 3)
    apply_initializer(conv, InitSpec.parse("constant"), 0)
    ((w, b),) = snapshot(conv).values()
    assert symmetry_groups(w, b, 1e-7) == [list(range(16))]


def test_tolerance_is_relative_to_the_weight_scale() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1e6, (6, 5))
    w[4] = w[1] * (1 + 1e-9)
    assert symmetry_groups(w, None, atol=1e-7, rtol=1e-5) == [[1, 4]]
    assert symmetry_groups(w, None, atol=1e-7, rtol=0.0) == []


def test_weights_and_bias_each_have_their_own_scale() -> None:
    # A gate that starts open (gMLP's spatial gate: W ~ N(0, 1e-6), b = 1): the bias of 1 must not widen the
    # weights' tolerance to 1e-5, which would call 16 distinct rows of 1e-6 "identical".
    rng = np.random.default_rng(2)
    w, b = rng.normal(0, 1e-6, (16, 16)), np.ones(16)
    assert symmetry_groups(w, b, atol=1e-9, rtol=1e-5) == []
    w[5] = w[2]
    assert symmetry_groups(w, b, atol=1e-9, rtol=1e-5) == [[2, 5]]
    b[5] = 2.0  # same weights, different bias: different neurons
    assert symmetry_groups(w, b, atol=1e-9, rtol=1e-5) == []


def test_rows_with_nan_join_no_group() -> None:
    w = np.zeros((4, 3))
    w[2, 1] = np.nan
    assert symmetry_groups(w, None, 1e-7) == [[0, 1, 3]]



def test_rows_are_filtered_from_their_projections_exactly() -> None:
    # the one pass the groups and the cosine test share: NaN/inf rows are not finite, a huge finite float64
    # row whose projections overflow is, a zero row is not live, a row of nonzero values is
    w = np.random.default_rng(8).normal(size=(8, 5))
    w[1, 2], w[2, 0], w[3] = np.nan, -np.inf, 0.0
    w[4] = 1e308
    proj = projections(w)
    assert not np.isfinite(proj[4]).all()
    assert finite_rows(w, proj).tolist() == np.isfinite(w).all(axis=1).tolist()
    assert live_rows(w, proj).tolist() == (np.isfinite(w).all(axis=1) & w.any(axis=1)).tolist()
    w[5] = 1e308  # identical huge rows are still found identical
    assert symmetry_groups(w, None, 1e-9) == [[4, 5]]


def test_the_cosine_test_drops_columns_zero_in_every_row_tested() -> None:
    # a column that only untested rows use is not a dimension of the rows tested: with 40 of 400 rows tested
    # and column 0 used by one untested row, the statistic and its null are those of the 10 other columns
    w = np.random.default_rng(9).normal(size=(400, 11))
    w[:, 0] = 0.0
    rng = np.random.default_rng(0)
    tested = np.sort(rng.choice(400, size=40, replace=False))
    w[np.setdiff1d(np.arange(400), tested)[0], 0] = 5.0
    c, p = max_cos(w, 0, np.random.default_rng(0), 40)
    rows = w[tested][:, 1:]
    u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    gram = np.abs(u @ u.T)
    np.fill_diagonal(gram, 0.0)
    assert c == pytest.approx(gram.max(), abs=1e-6)
    assert p == pytest.approx(min(1.0, 40 * 39 / 2 * stats.beta.sf(c * c, 0.5, 9 / 2)), rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.integers(0, 5), min_size=2, max_size=30))
def test_permuting_neurons_keeps_the_group_sizes(seed: int, pattern: list[int]) -> None:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(6, 9))
    w = base[pattern]
    perm = rng.permutation(len(pattern))
    sizes = sorted(len(g) for g in symmetry_groups(w, None, 1e-9))
    assert sorted(len(g) for g in symmetry_groups(w[perm], None, 1e-9)) == sizes
    expected = sorted(c for c in np.bincount(pattern) if c >= 2)
    assert sizes == expected


def _pairwise_groups(w: np.ndarray, atol: float, rtol: float) -> list[list[int]]:
    """Reference: connected components of "every entry within atol + rtol * max|w|" over all pairs (the
    groups of well separated clusters, where the leader scan and the components agree)."""
    tol = atol + rtol * float(np.abs(w).max())
    close = (np.abs(w[:, None, :] - w[None, :, :]) <= tol).all(-1)
    seen: set[int] = set()
    groups = []
    for i in range(len(w)):
        if i not in seen:
            members = sorted(int(j) for j in np.flatnonzero(close[i]))
            seen.update(members)
            if len(members) >= 2:
                groups.append(members)
    return sorted(groups)


@pytest.mark.parametrize("rows, crowded", [(400, False), (3000, True), (600, None)])
def test_symmetry_groups_match_the_pairwise_reference(rows: int, crowded: bool | None) -> None:
    # crowded: rows so many and so narrow that every projection has neighbours within the window (an
    # embedding of 50k tokens), the candidate pairs come from both projections; None: most rows identical
    # (the leader scan over dense runs)
    rng = np.random.default_rng(rows)
    w = rng.normal(0, 0.02, (rows, 24 if crowded else 16)).astype(np.float32)
    if crowded is None:
        w[: rows - 50] = w[0]
    planted = rng.choice(rows, size=12, replace=False)
    w[planted[1:4]] = w[planted[0]]  # a group of four
    w[planted[5]] = w[planted[4]] * np.float32(1 + 1e-7)  # within the relative tolerance
    w[planted[7]] = w[planted[6]] + np.float32(1e-3)  # outside it
    atol, rtol = 1e-7, 1e-5 if not crowded else 1e-3
    assert symmetry_groups(w, None, atol, rtol) == _pairwise_groups(w, atol, rtol)


def test_symmetry_persisting_through_training_is_reported() -> None:
    init = small_weights("constant", 0)
    still = {k: (w.copy(), b.copy() if b is not None else None) for k, (w, b) in init.items()}
    broken = {k: (w + np.random.default_rng(0).normal(0, 0.01, w.shape), b) for k, (w, b) in init.items()}
    for final, persisted in ((still, 3.0), (broken, 0.0)):
        verdicts = analyze(evidence(weights=init, final=final)).verdicts
        (end,) = [v for v in verdicts if v.check == "symmetry" and v.phase == "final"]
        assert end.effect["persisted_layers"] == persisted
        assert all(d["persisted"] == bool(persisted) for d in end.details["layers"])


def test_near_duplicate_neurons_get_a_small_p_value() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 100))
    w[5] = w[9] + rng.normal(0, 0.2, 100)  # cos ~ 0.98
    cos, p = max_cosine_pvalue(w, None)
    assert cos > 0.9 and p < 1e-20
    weights = small_weights("he", 1)
    weights["2"][0][5] = weights["2"][0][9] + rng.normal(0, 0.05, 64)
    (sym,) = [v for v in analyze(evidence(weights=weights)).verdicts if v.check == "symmetry"]
    assert (sym.status, sym.layers) == ("warn", ("2",))


def test_analytic_p_value_agrees_with_monte_carlo() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        w = rng.normal(size=(12, 6))
        cos, p_an = max_cosine_pvalue(w, None)
        cos2, p_mc = max_cosine_pvalue(w, None, n_samples=2000, rng=rng)
        assert cos == cos2
        # the union bound is valid (>= the exact p, up to MC error) and tight when p is small
        assert p_an >= p_mc - 0.03
        if p_mc < 0.2:
            assert p_an <= 2 * p_mc + 0.03


def test_p_value_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(4)
    p = np.array([max_cosine_pvalue(rng.normal(size=(20, 10)), None)[1] for _ in range(300)])
    assert np.mean(p < 0.05) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 300)
    assert np.mean(p < 0.5) > 0.3  # not absurdly conservative


def test_large_layers_are_subsampled_and_say_so() -> None:
    w = np.random.default_rng(5).normal(size=(600, 20))
    weights = {"big": (w, None)}
    (sym,) = [v for v in analyze(evidence(weights=weights), Thresholds(cosine_max_rows=100)).verdicts
              if v.check == "symmetry"]
    assert sym.details["layers"][0]["rows_tested"] == 100
    assert "random 100 neurons" in sym.message


@pytest.mark.parametrize("init", ["he", "xavier", "random", "he-uniform", "pytorch-default", "orthogonal"])
def test_healthy_random_inits_are_flagged_at_most_5_percent_of_seeds(init: str) -> None:
    flags = 0
    seeds = range(100)
    for seed in seeds:
        verdicts = analyze(evidence(weights=small_weights(init, seed)), seed=seed).verdicts
        flags += any(v.status != "pass" for v in verdicts if v.check == "symmetry")
    assert flags / len(seeds) <= 0.05


# -- dead, saturation, divergence ------------------------------------------------------------------------
def unit_rows(stat: str, values: Sequence[float], phase: str, module: str) -> pd.DataFrame:
    rows = [{"run": "r", "initializer": "x", "seed": 0, "epoch": 0, "step": 0, "phase": phase,
             "layer": f"act{d}", "depth": d, "module": module, "kind": "forward", "stat": stat, "value": v}
            for d, v in enumerate(values)]
    return pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))


@pytest.mark.parametrize(("values", "status"), [([0.0, 0.2], "pass"), ([0.1, 0.6], "warn"), ([0.95, 0.1], "fail")])
def test_dead_units_thresholds(values: list[float], status: str) -> None:
    frame = pd.concat([unit_rows("dead_frac", values, "init", "ReLU"),
                       unit_rows("dead_frac", [0.0, 0.0], "final", "ReLU")])
    verdicts = {v.phase: v for v in analyze(evidence(frame)).verdicts if v.check == "dead"}
    assert verdicts["init"].status == status
    assert verdicts["init"].effect["max_dead_frac"] == max(values)
    assert verdicts["final"].status == "pass"


def test_saturation_falls_back_to_the_training_batch_without_probe() -> None:
    frame = unit_rows("sat_frac", [0.7, 0.8], "train", "Tanh")
    (v,) = [v for v in analyze(evidence(frame)).verdicts if v.check == "saturation"]
    assert (v.status, v.layers) == ("fail", ("act0", "act1"))
    assert "first training batch" in v.message


def test_diverged_names_the_first_step_and_layer() -> None:
    frame = pd.concat([series([1.0, 2.0, 3.0], step=s) for s in range(4)], ignore_index=True)
    bad = (frame["step"] == 2) & (frame["layer"].isin(["fc1", "fc2"])) & (frame["stat"] == "var")
    frame.loc[bad, "value"] = np.nan
    losses = [2.3, 2.2, 2.1, np.inf, np.nan]
    (v,) = [v for v in analyze(evidence(frame, losses=losses, n_layers=3)).verdicts if v.check == "diverged"]
    assert (v.status, v.layers, v.effect["step"]) == ("fail", ("fc1",), 2.0)
    assert json.dumps(v.to_json(), allow_nan=False)
    loss_only = next(v for v in analyze(evidence(losses=[1.0, np.nan])).verdicts if v.check == "diverged")
    assert (loss_only.status, loss_only.effect["step"]) == ("fail", 1.0)
    ok = next(v for v in analyze(evidence(losses=[1.0, 0.5])).verdicts if v.check == "diverged")
    assert ok.status == "pass"


# -- comparisons ---------------------------------------------------------------------------------------------
def test_mcnemar_identical_predictions_give_p_one() -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.9, labels, (labels + 1) % 10)
    assert mcnemar_exact(pred, pred.copy(), labels) == (1.0, 0, 0)


def test_mcnemar_equals_a_hand_computed_binomial_tail() -> None:
    labels = np.zeros(40, dtype=int)
    a = np.zeros(40, dtype=int)
    b = np.zeros(40, dtype=int)
    a[:3] = 1      # 3 only b right
    b[3:15] = 1    # 12 only a right
    a[15:18] = b[15:18] = 1  # both wrong
    p, b01, b10 = mcnemar_exact(a, b, labels)
    assert (b01, b10) == (12, 3)
    assert p == pytest.approx(2 * stats.binom.cdf(3, 15, 0.5))


def test_mcnemar_separates_clearly_different_classifiers() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 1000)
    good = np.where(rng.random(1000) < 0.98, labels, (labels + 1) % 10)
    bad = np.where(rng.random(1000) < 0.6, labels, (labels + 1) % 10)
    assert mcnemar_exact(good, bad, labels)[0] < 0.01


def test_holm_equals_a_hand_computation() -> None:
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    expected = [0.03, 0.06, 0.06, 0.02]
    assert holm(p)[:4] == pytest.approx(expected)
    assert math.isnan(holm(p)[4])
    assert holm([0.9, 0.8])[0] == 1.0


def test_compare_accuracies_mcnemar_welch_and_holm() -> None:
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 10, 2000)

    def preds(acc: float) -> np.ndarray:
        return np.where(rng.random(2000) < acc, labels, (labels + 1) % 10)

    predictions = {"he": [preds(0.98), preds(0.98)], "xavier": [preds(0.975), preds(0.975)],
                   "zeros": [preds(0.11), preds(0.11)]}
    accuracies = {"he": [0.981, 0.979, 0.980], "xavier": [0.975, 0.976, 0.974], "zeros": [0.1135] * 3}
    rows = compare_accuracies(predictions, labels, accuracies)
    mc = [r for r in rows if r.test == "mcnemar-exact"]
    welch = [r for r in rows if r.test == "welch-t"]
    assert [(r.a, r.b) for r in mc] == [("he", "xavier"), ("he", "zeros"), ("xavier", "zeros")]
    assert len(welch) == 3
    assert [r.p_adjusted for r in mc] == pytest.approx(list(holm([r.p_value for r in mc])))
    ref = stats.ttest_ind(accuracies["he"], accuracies["xavier"], equal_var=False)
    assert welch[0].p_value == pytest.approx(ref.pvalue) and welch[0].statistic == pytest.approx(ref.statistic)
    assert {(r.a, r.b) for r in mc if r.significant} >= {("he", "zeros"), ("xavier", "zeros")}
    assert all(json.dumps(r.to_json(), allow_nan=False) for r in rows)
    single = compare_accuracies({"a": [preds(0.9)], "b": [preds(0.9)]}, labels, {"a": [0.9], "b": [0.9]})
    assert [r.test for r in single] == ["mcnemar-exact"]


def test_accuracy_summary_t_interval() -> None:
    s = accuracy_summary({"he": [0.97, 0.98, 0.99], "one": [0.5]})
    half = stats.t.ppf(0.975, 2) * np.std([0.97, 0.98, 0.99], ddof=1) / math.sqrt(3)
    assert s["he"]["mean"] == pytest.approx(0.98)
    assert (s["he"]["ci_low"], s["he"]["ci_high"]) == pytest.approx((0.98 - half, 0.98 + half))
    assert s["one"] == {"mean": 0.5, "sd": None, "ci_low": None, "ci_high": None, "n": 1}


# -- records --------------------------------------------------------------------------------------------------
def test_verdict_json_and_fail_on_names() -> None:
    v = Verdict("signal", "forward", "fail", ("a",), None, {"gain": math.nan, "change": math.inf}, "m", None,
                outcome="vanishing")
    data = v.to_json()
    assert data["effect"] == {"gain": None, "change": None}
    assert (data["check"], data["outcome"], data["family"]) == ("signal", "vanishing", "signal")
    back = Verdict.from_json(json.loads(json.dumps(data, allow_nan=False)))
    assert (back.check, back.outcome, back.family, back.layers) == (v.check, v.outcome, v.family, v.layers)
    warn = Verdict("symmetry", "weights", "warn", (), 0.001, {}, "m", None)
    healthy = Verdict("signal", "forward", "pass", (), None, {}, "m", None)
    assert (warn.outcome, healthy.outcome) == ("symmetry", "healthy")
    assert failed_checks([v, warn, healthy]) == {"signal", "vanishing"}
    assert failed_checks([v, warn, healthy], ["vanishing", "symmetry"]) == {"vanishing"}
    assert set(CHECKS.fail_on_names()) == {c.value for c in CheckName} | {o.value for o in Outcome} - {"healthy"}


def test_a_verdict_written_before_outcomes_reads_as_the_signal_check() -> None:
    old = {"check": "exploding", "family": "signal", "signal": "forward", "status": "fail", "phase": "init",
           "layers": ["a"], "p_value": None, "effect": {}, "message": "m", "advice": None, "details": {}}
    v = Verdict.from_json(old)
    assert (v.check, v.outcome, v.family) == ("signal", "exploding", "signal")
    stream = Verdict.from_json({**old, "details": {"sites": ["b:in", "b"]}})
    assert (stream.check, stream.outcome) == ("stream", "exploding")


def test_methods_cover_every_check_with_its_threshold() -> None:
    notes = methods()
    for check in CHECKS:
        own = check.methods(Thresholds())
        assert own and all(n in notes for n in own), check.name
    assert all(m.description and m.null_hypothesis and m.threshold for m in notes)
    assert any("100" in m.threshold for m in notes)


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        Thresholds(change_factor=0.5)
    with pytest.raises(ValueError):
        Thresholds(dead_warn=0.9, dead_fail=0.5)


def test_recorded_cnn_backward_uses_per_sample_energy_when_sizes_are_known() -> None:
    from initdiag.models import seed_cnn
    from initdiag.recording import Recorder

    model = seed_cnn()
    apply_initializer(model, InitSpec.parse("he"), 0)
    x = torch.rand(32, 1, 28, 28)
    sizes: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: sizes.__setitem__(n, out[0].numel()))
               for n, m in weight_layers(model)]
    model(x[:1])
    for h in handles:
        h.remove()
    assert sizes == {"0": 32 * 26 * 26, "3": 64 * 11 * 11, "6": 64 * 3 * 3, "9": 64, "11": 10}
    with Recorder(model) as rec:
        torch.nn.functional.cross_entropy(model(x), torch.arange(32) % 10).backward()
    weights = snapshot(model)
    base = RunEvidence("he/seed0", "he", rec.frame(), tuple(rec.layers()), weights, weights, np.array([2.3]),
                       weight_vars=theory_variances(model, InitSpec("he")))
    unsized = analyze(base).verdicts
    assert {v.family for v in unsized} == {"diverged", "signal", "symmetry", "dead"}
    assert all(json.dumps(v.to_json(), allow_nan=False) for v in unsized)
    # per element, dL/dy falls ~1e-4 from the head to conv 0 under He (widths, pooling): only a warning
    (back,) = [v for v in unsized if v.signal == "backward"]
    assert back.status != "fail"
    sized = RunEvidence(base.run, base.initializer, base.frame, base.layers, weights, weights, base.losses, sizes,
                        weight_vars=base.weight_vars)
    (back,) = [v for v in analyze(sized).verdicts if v.signal == "backward"]
    assert (back.outcome, back.status) == ("healthy", "pass")
    assert 0.5 < back.effect["gain"] < 2  # type: ignore[operator]
