"""Training-phase verdicts: unstable and stalled losses, the update-to-weight ratio, dead units that appear in
training. Made-up series whose answer is fixed by construction, and real training runs whose answer practice
fixes (He et al. 2015, Fig. 3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from initdiag.checks.diverged import diverged_verdict
from initdiag.checks.dynamics import (
    dead_growth_verdict,
    stalled_verdict,
    unstable_verdict,
    update_ratio_verdict,
    update_ratios,
)
from initdiag.checks.evidence import RunEvidence
from initdiag.checks.methods import methods
from initdiag.checks.verdict import Thresholds
from initdiag.series import FRAME_COLUMNS
from initdiag.structure import LayerInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Row = dict[str, object]


def evidence(losses: Sequence[float] | np.ndarray = (), rows: Sequence[Row] = (),
             layers: tuple[LayerInfo, ...] = (), frame: pd.DataFrame | None = None) -> RunEvidence:
    if frame is None:
        frame = pd.DataFrame.from_records(list(rows), columns=list(FRAME_COLUMNS))
    return RunEvidence("r", "he", frame, layers, {}, {}, np.asarray(losses, dtype=np.float64))


def row(step: int, layer: str, depth: int, kind: str, stat: str, value: float, phase: str = "train",
        module: str = "Linear") -> Row:
    return {"run": "r", "initializer": "x", "seed": 0, "epoch": 0, "step": step, "phase": phase, "layer": layer,
            "depth": depth, "module": module, "kind": kind, "stat": stat, "value": float(value)}


def moment_rows(step: int, layer: str, depth: int, kind: str, x: np.ndarray) -> list[Row]:
    """``var`` and ``mean_sq`` of a tensor taken as one channel, as the recorder defines them
    (``mean_sq`` is the squared mean, initdiag.recording.rows.moment_chunk)."""
    x = np.asarray(x, dtype=np.float64)
    return [row(step, layer, depth, kind, "var", x.var()), row(step, layer, depth, kind, "mean_sq", x.mean() ** 2)]


def noisy(curve: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``curve`` times log-normal batch noise (median 1)."""
    return curve * np.exp(np.random.default_rng(seed).normal(0.0, sigma, len(curve)))


# -- unstable ------------------------------------------------------------------------------------------
def test_a_loss_rising_from_2_3_to_16663_fails_at_the_step_it_doubles() -> None:
    t = np.arange(300)
    losses = noisy(2.3 * (16663 / 2.3) ** (t / 299), 0.1, seed=0)
    v = unstable_verdict(evidence(losses), Thresholds())
    assert v is not None and (v.check, v.status, v.phase) == ("unstable", "fail", "training")
    doubles = 299 * math.log(2) / math.log(16663 / 2.3)  # the noiseless curve reaches 2 x 2.3 here (~23.4)
    assert v.effect["step"] is not None and abs(v.effect["step"] - doubles) <= 6
    assert v.effect["ratio"] is not None and v.effect["ratio"] > 1000
    assert v.advice and "learning rate" in v.advice and "stayed above" in v.message


def test_a_falling_noisy_loss_and_isolated_spikes_pass() -> None:
    t = np.arange(500)
    falling = noisy(0.05 + 2.25 * np.exp(-t / 60), 0.2, seed=1)
    assert falling[-50:].mean() < 0.1
    spiky = noisy(np.full(500, 2.3), 0.1, seed=2)
    spiky[::37] *= 10  # one step in 37 ten times higher: the running median ignores it
    for losses in (falling, spiky):
        v = unstable_verdict(evidence(losses))
        assert v is not None and v.status == "pass" and v.advice is None
        assert "stayed below 2x" in v.message


def test_a_flat_noisy_loss_never_fails() -> None:
    for seed in range(200):
        v = unstable_verdict(evidence(noisy(np.full(300, 2.3), 0.15, seed)))
        assert v is not None and v.status == "pass", (seed, v and v.message)


def test_a_blow_up_inside_the_first_window_is_measured_from_the_first_step() -> None:
    losses = np.concatenate([[2.3, 2.2], noisy(np.full(98, 100.0), 0.1, seed=3)])
    v = unstable_verdict(evidence(losses))
    assert v is not None and v.status == "fail"
    assert (v.effect["start"], v.effect["step"]) == (2.3, 2.0)  # the first loss: the window's median is ~100
    high_first = np.concatenate([[5.6], noisy(np.full(99, 2.3), 0.05, seed=4)])  # a high first batch
    v = unstable_verdict(evidence(high_first))
    assert v is not None and v.status == "pass" and v.effect["start"] == pytest.approx(2.3, rel=0.05)


def test_a_rise_that_comes_back_still_fails_and_says_so() -> None:
    t = np.arange(200)
    losses = 2.3 + 20 * np.exp(-((t - 60) / 15.0) ** 2)
    v = unstable_verdict(evidence(losses))
    assert v is not None and v.status == "fail" and "came back below" in v.message
    assert v.effect["end_ratio"] is not None and v.effect["end_ratio"] < 1.01


def test_only_the_finite_prefix_of_a_diverged_run_is_judged() -> None:
    falling = np.concatenate([np.linspace(2.3, 1.0, 50), [np.inf, np.nan, np.nan]])
    v = unstable_verdict(evidence(falling))
    assert v is not None and v.status == "pass" and "before step 50" in v.message
    rising = np.concatenate([np.geomspace(2.3, 1e6, 50), [np.nan]])
    v = unstable_verdict(evidence(rising))
    assert v is not None and v.status == "fail" and v.effect["peak"] is not None and np.isfinite(v.effect["peak"])


@pytest.mark.parametrize("losses", [[], [2.3] * 9, [2.3] * 3 + [np.nan] * 20, [-1.0] * 40])
def test_no_unstable_verdict_without_enough_finite_positive_steps(losses: list[float]) -> None:
    assert unstable_verdict(evidence(losses)) is None


# -- stalled -------------------------------------------------------------------------------------------
def test_a_flat_loss_is_stalled_and_a_falling_one_passes() -> None:
    flat = stalled_verdict(evidence(noisy(np.full(200, 2.3), 0.05, seed=5)))
    assert flat is not None and (flat.check, flat.status) == ("stalled", "fail") and flat.advice
    assert flat.effect["drop"] is not None and abs(flat.effect["drop"]) < 0.05
    constant = stalled_verdict(evidence(np.full(40, math.log(10))))  # a network whose output never changes
    assert constant is not None and (constant.status, constant.p_value) == ("fail", 1.0)
    falling = noisy(2.3 * np.exp(-np.arange(200) / 100), 0.05, seed=6)
    v = stalled_verdict(evidence(falling))
    assert v is not None and v.status == "pass" and v.p_value is not None and v.p_value < 1e-6


def test_stalled_p_value_is_scipys_mann_whitney_on_the_two_windows() -> None:
    losses = noisy(np.linspace(2.3, 1.8, 120), 0.3, seed=7)
    v = stalled_verdict(evidence(losses), Thresholds(loss_window=15), steps_per_epoch=100)
    expected = stats.mannwhitneyu(losses[:15], losses[85:100], alternative="greater").pvalue
    assert v is not None and v.p_value == pytest.approx(expected)
    assert v.effect["drop"] == pytest.approx(1 - np.median(losses[85:100]) / np.median(losses[:15]))


def test_a_large_but_noisy_fall_only_warns() -> None:
    early, late = np.array([1.0, 3.0, 1.5, 2.9, 1.1]), np.array([1.05, 2.5, 1.15, 2.8, 0.9])
    losses = np.concatenate([early, late])
    assert np.median(late) < 0.9 * np.median(early)
    v = stalled_verdict(evidence(losses))
    assert v is not None and v.status == "warn" and v.p_value is not None and v.p_value >= 0.05


def test_stalled_judges_the_first_epoch_only() -> None:
    losses = np.concatenate([noisy(np.full(100, 2.3), 0.05, seed=8), np.geomspace(2.3, 0.1, 100)])
    whole = stalled_verdict(evidence(losses))
    first = stalled_verdict(evidence(losses), steps_per_epoch=100)
    assert whole is not None and first is not None and (whole.status, first.status) == ("pass", "fail")
    assert "100 steps" in first.message
    partial = stalled_verdict(evidence(losses[:60]), steps_per_epoch=100)
    assert partial is not None and "first 60 of 100 steps" in partial.message


def test_no_stalled_verdict_for_short_runs_and_epoch_length_is_validated() -> None:
    assert stalled_verdict(evidence([2.3] * 9)) is None
    assert stalled_verdict(evidence([2.3] * 100), steps_per_epoch=9) is None
    with pytest.raises(ValueError):
        stalled_verdict(evidence([2.3] * 100), steps_per_epoch=0)


# -- update ratio ----------------------------------------------------------------------------------------
def ratio_run(sizes: Sequence[float], steps: int = 12, seed: int = 0, mean: float = 0.05,
              zero_first: Sequence[str] = (), idle: Sequence[int] = ()) -> tuple[list[Row], dict[str, float]]:
    """Rows for one layer per relative update size, and the median ||dW|| / ||W|| computed from the tensors.

    Weights have a non-zero mean (so ``var`` alone would be wrong); layers in ``zero_first`` start all zero;
    at the steps in ``idle`` no layer moves."""
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    ratios: dict[str, list[float]] = {}
    for depth, size in enumerate(sizes):
        name = f"fc{depth}"
        w = np.zeros((16, 8)) if name in zero_first else rng.normal(mean, 0.1, (16, 8))
        for t in range(steps):
            d = np.zeros_like(w) if t in idle else \
                rng.normal(0.0, 1.0, w.shape) * size * (np.sqrt(np.mean(w ** 2)) or 0.01)
            rows += moment_rows(t, name, depth, "weight", w) + moment_rows(t, name, depth, "update", d)
            if t not in idle and w.any():
                ratios.setdefault(name, []).append(float(np.linalg.norm(d) / np.linalg.norm(w)))
            w = w + d
    return rows, {k: float(np.median(v)) for k, v in ratios.items()}


def test_update_ratio_equals_the_norm_ratio_of_the_tensors() -> None:
    rows, expected = ratio_run([1e-3, 3e-2, 2e-4])
    v = update_ratio_verdict(evidence(rows=rows), Thresholds())
    assert v is not None and (v.check, v.status, v.phase, v.layers) == ("update_ratio", "pass", "training", ())
    assert v.details["per_layer"] == pytest.approx(expected, rel=1e-9)
    assert v.details["steps"] == {"fc0": 12, "fc1": 12, "fc2": 12}


@pytest.mark.parametrize(("size", "status"), [(1e-3, "pass"), (0.3, "warn"), (3.0, "fail"), (2e-6, "warn"),
                                              (2e-8, "fail")])
def test_update_ratio_thresholds(size: float, status: str) -> None:
    rows, expected = ratio_run([1e-3, size])
    v = update_ratio_verdict(evidence(rows=rows))
    assert v is not None and v.status == status
    assert v.layers == (() if status == "pass" else ("fc1",))
    assert (v.effect["min_ratio"], v.effect["max_ratio"]) == pytest.approx(
        (min(expected.values()), max(expected.values())), rel=1e-9)
    assert (v.advice is None) == (status == "pass")


def test_zero_initialized_weights_and_idle_steps_are_skipped_and_said() -> None:
    rows, expected = ratio_run([1e-3, 1e-3], zero_first=["fc1"], idle=[3, 4, 5, 6, 7, 8, 9])
    v = update_ratio_verdict(evidence(rows=rows))
    assert v is not None and v.status == "pass"  # with the 7 idle steps counted as 0, the median would be 0
    assert v.details["zero_weight_steps"] == {"fc1": 1}
    assert v.details["per_layer"] == pytest.approx(expected, rel=1e-9)
    assert v.effect["idle_steps"] == 7.0
    assert "zero-initialized" in v.message and "7 steps without any update" in v.message
    assert all(np.isfinite(x) for x in v.details["per_layer"].values())


def test_a_layer_that_never_moves_warns_and_bad_rows_are_dropped() -> None:
    rows, _ = ratio_run([1e-3, 0.0])
    rows.append(row(99, "fc0", 0, "update", "var", np.nan))
    v = update_ratio_verdict(evidence(rows=rows))
    assert v is not None and (v.status, v.layers) == ("warn", ("fc1",)) and "'fc1' never moved" in v.message
    assert v.details["steps"]["fc0"] == 12


def test_update_ratio_without_mean_sq_uses_var_and_says_so() -> None:
    rows, _ = ratio_run([1e-3], mean=0.0)
    var_only = [r for r in rows if r["stat"] == "var"]
    table, source, _ = update_ratios(pd.DataFrame.from_records(var_only, columns=list(FRAME_COLUMNS)))
    assert source is not None and source.startswith("var (") and len(table) == 12
    v = update_ratio_verdict(evidence(rows=var_only))
    assert v is not None and "from var" in v.message


def test_no_update_ratio_verdict_without_update_rows() -> None:
    rows, _ = ratio_run([1e-3])
    assert update_ratio_verdict(evidence(rows=[r for r in rows if r["kind"] == "weight"])) is None
    assert update_ratio_verdict(evidence()) is None


# -- dead growth ------------------------------------------------------------------------------------------
def dead_rows(values: Sequence[float], phase: str, step: int = 0) -> list[Row]:
    return [row(step, f"act{d}", d, "forward", "dead_frac", v, phase, "ReLU") for d, v in enumerate(values)]


@pytest.mark.parametrize(("final", "status"), [([0.1, 0.2], "pass"), ([0.3, 0.1], "warn"), ([0.0, 0.7], "fail")])
def test_dead_growth_thresholds(final: list[float], status: str) -> None:
    v = dead_growth_verdict(evidence(rows=dead_rows([0.0, 0.1], "init") + dead_rows(final, "final")))
    assert v is not None and (v.check, v.status, v.phase) == ("dead_growth", status, "training")
    growth = np.subtract(final, [0.0, 0.1])
    assert v.effect["max_growth"] == pytest.approx(growth.max())
    assert v.details["per_layer"] == pytest.approx({"act0": growth[0], "act1": growth[1]})
    assert v.layers == tuple(f"act{i}" for i in np.flatnonzero(growth >= 0.25))


def test_units_dead_from_the_start_are_not_growth() -> None:
    v = dead_growth_verdict(evidence(rows=dead_rows([0.9], "init") + dead_rows([0.95], "final")))
    assert v is not None and v.status == "pass"


def test_dead_growth_compares_like_batches_only() -> None:
    # an init probe, no final probe: the first and last training batches are compared, not the probe
    rows = dead_rows([0.0], "init") + dead_rows([0.2], "train", step=0) + dead_rows([0.3], "train", step=50)
    v = dead_growth_verdict(evidence(rows=rows))
    assert v is not None and v.status == "pass" and v.effect["max_growth"] == pytest.approx(0.1)
    assert "training batch" in v.message


def test_no_dead_growth_verdict_without_relu_or_a_later_state() -> None:
    assert dead_growth_verdict(evidence()) is None
    assert dead_growth_verdict(evidence(rows=dead_rows([0.0], "init") + dead_rows([0.5], "train"))) is None


def test_thresholds_and_methods_for_training_checks() -> None:
    for bad in ({"unstable_factor": 1.0}, {"stalled_min_drop": 0.0}, {"loss_window": 4},
                {"update_warn_low": 1e-1, "update_warn_high": 1e-2}, {"update_fail_high": 0.01},
                {"dead_growth_warn": 0.6, "dead_growth_fail": 0.5}):
        with pytest.raises(ValueError):
            Thresholds(**bad)
    checks = " ".join(m.check for m in methods())
    for name in ("unstable", "stalled", "update_ratio", "dead_growth"):
        assert name in checks


# -- real training runs ------------------------------------------------------------------------------------
def mlp(depth: int, activation: type[nn.Module] | None, std: Callable[[int, int], float], seed: int) -> nn.Sequential:
    """``depth`` Linear layers 32 -> 64 -> ... -> 10, weights N(0, std(fan_in, fan_out)^2), zero biases."""
    gen = torch.Generator().manual_seed(seed)
    dims = [32] + [64] * (depth - 1) + [10]
    layers: list[nn.Module] = []
    for i in range(depth):
        linear = nn.Linear(dims[i], dims[i + 1])
        with torch.no_grad():
            linear.weight.normal_(0.0, std(dims[i], dims[i + 1]), generator=gen)
            linear.bias.zero_()
        layers.append(linear)
        if activation is not None and i < depth - 1:
            layers.append(activation())
    return nn.Sequential(*layers)


def train(model: nn.Sequential, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0, batch: int = 64
          ) -> tuple[RunEvidence, dict[str, float]]:
    """Train on a fresh synthetic task (one epoch: every batch new): 10 classes from a random linear teacher.

    Returns the evidence (losses; ``weight`` and ``update`` rows as the recorder defines them, ``var`` and
    ``mean_sq`` = squared mean of W_t and of W_t+1 - W_t, from weight snapshots around each optimizer step)
    and each layer's median ||dW|| / ||W||, taken directly with torch norms."""
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(steps * batch, 32, generator=gen)
    y = (x @ torch.randn(32, 10, generator=gen)).argmax(1)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    names = [f"fc{d}" for d in range(len(linears))]
    losses, moments, norms = [], [], []
    for t in range(steps):
        loss = nn.functional.cross_entropy(model(x[t * batch:(t + 1) * batch]), y[t * batch:(t + 1) * batch])
        optimizer.zero_grad()
        loss.backward()
        before = [m.weight.detach().double() for m in linears]
        optimizer.step()
        losses.append(loss.item())
        step_moments, step_norms = [], []
        for m, w in zip(linears, before, strict=True):
            d = m.weight.detach().double() - w
            step_moments += [w.var(unbiased=False), w.mean() ** 2, d.var(unbiased=False), d.mean() ** 2]
            step_norms.append(torch.linalg.vector_norm(d) / torch.linalg.vector_norm(w))
        moments.append(torch.stack(step_moments))
        norms.append(torch.stack(step_norms))
    values = torch.stack(moments).numpy().reshape(-1)  # (step, layer, [weight var, msq, update var, msq])
    step, depth, which = np.indices((steps, len(linears), 4)).reshape(3, -1)
    frame = pd.DataFrame({"run": "r", "initializer": "x", "seed": 0, "epoch": 0, "step": step, "phase": "train",
                          "layer": np.asarray(names)[depth], "depth": depth, "module": "Linear",
                          "kind": np.where(which < 2, "weight", "update"),
                          "stat": np.where(which % 2 == 0, "var", "mean_sq"), "value": values},
                         columns=list(FRAME_COLUMNS))
    layers = tuple(LayerInfo(name, name, "Linear", "weight", d, "linear", tuple(m.weight.shape))
                   for d, (name, m) in enumerate(zip(names, linears, strict=True)))
    median = np.median(torch.stack(norms).numpy(), axis=0)
    return evidence(losses, layers=layers, frame=frame), dict(zip(names, map(float, median), strict=True))


def test_a_deep_linear_net_under_adam_blows_up_while_finite() -> None:
    # 30 linear layers at LeCun init (std 1/sqrt(fan_in)). Adam's first steps move every layer by ~lr per
    # entry and the changes compound over the 30 layers; at 3e-2 the loss rises within a few steps and
    # keeps rising (at 1e-3 this synthetic task needs far more steps than a test can take).
    model = mlp(30, None, lambda fan_in, _: 1 / math.sqrt(fan_in), seed=0)
    ev, ratios = train(model, torch.optim.Adam(model.parameters(), lr=3e-2), steps=100)
    assert np.isfinite(ev.losses).all() and np.median(ev.losses[-20:]) > 1e3 * ev.losses[0]
    assert diverged_verdict(ev).status == "pass"
    v = unstable_verdict(ev)
    assert v is not None and v.status == "fail" and v.effect["step"] is not None and v.effect["step"] < 20
    assert v.effect["start"] == pytest.approx(ev.losses[0]) and "stayed above" in v.message
    ratio = update_ratio_verdict(ev)
    assert ratio is not None and ratio.details["per_layer"] == pytest.approx(ratios, rel=1e-6)


def test_thirty_relu_layers_under_xavier_stall_and_five_under_he_learn() -> None:
    # He et al. 2015, Fig. 3: Xavier halves the variance per ReLU layer (2^-30 over the net): nothing reaches
    # the output and no gradient reaches the first layers; plain SGD then leaves the loss at ln(10).
    deep = mlp(30, nn.ReLU, lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)), seed=0)
    ev, ratios = train(deep, torch.optim.SGD(deep.parameters(), lr=0.01), steps=300)
    v = stalled_verdict(ev, steps_per_epoch=300)
    assert v is not None and v.status == "fail" and v.effect["drop"] is not None and v.effect["drop"] < 0.05
    assert abs(np.median(ev.losses[-20:]) - math.log(10)) < 0.05
    unstable = unstable_verdict(ev)
    assert unstable is not None and unstable.status == "pass"
    ratio = update_ratio_verdict(ev)
    assert ratio is not None and ratio.status != "pass" and "fc0" in ratio.layers
    assert ratio.details["per_layer"] == pytest.approx(ratios, rel=1e-6) and ratios["fc0"] < 1e-5

    shallow = mlp(5, nn.ReLU, lambda fan_in, _: math.sqrt(2 / fan_in), seed=0)
    ev, ratios = train(shallow, torch.optim.SGD(shallow.parameters(), lr=0.01), steps=300)
    v = stalled_verdict(ev, steps_per_epoch=300)
    assert v is not None and v.status == "pass" and v.effect["drop"] is not None and v.effect["drop"] > 0.15
    for verdict in (unstable_verdict(ev), update_ratio_verdict(ev)):
        assert verdict is not None and verdict.status == "pass", verdict and verdict.message
