"""The checks on recorded deep nets whose answer theory fixes (He et al. 2015; Glorot & Bengio 2010).

Each case records one forward + backward pass of 256 MNIST-like inputs (``torch.rand``) and random
labels through ``initdiag.Recorder``, then checks the verdict and the estimated effect.
"""

from __future__ import annotations

import functools
from typing import cast

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initdiag.checks import RunEvidence, Verdict, analyze, failed_checks
from initdiag.experiment import theory_variances
from initdiag.initializers import InitSpec, apply_initializer
from initdiag.jsonable import run_name
from initdiag.models import deep_mlp
from initdiag.recording import Recorder
from initdiag.structure import weight_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, module in weight_layers(model):
        weight, bias = cast(torch.Tensor, module.weight), cast(torch.Tensor | None, module.bias)
        out[name] = (weight.detach().numpy().copy(), None if bias is None else bias.detach().numpy().copy())
    return out


@functools.cache
def record(init: str, depth: int = 30, width: int = 512, activation: str = "relu", seed: int = 0,
           bias: float | None = None, batch: int = 256) -> RunEvidence:
    """Init a deep MLP, run one probe + one training forward/backward under the recorder."""
    model = deep_mlp(depth, width, activation)
    spec = InitSpec.parse(init)
    apply_initializer(model, spec, seed)
    if bias is not None:
        with torch.no_grad():
            for _, module in weight_layers(model):
                cast(torch.Tensor, module.bias).fill_(bias)
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    weights = _snapshot(model)
    with Recorder(model, run=run_name(spec.label, seed), initializer=spec.label, seed=seed) as rec:
        with rec.probe("init"), torch.no_grad():
            model(x)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    return RunEvidence(run_name(spec.label, seed), spec.label, rec.frame(), tuple(rec.layers()), weights, {},
                       np.array([loss.item()]), weight_vars=theory_variances(model, spec),
                       default_init=spec.name == "pytorch-default")


@functools.cache
def verdicts(init: str, depth: int = 30, width: int = 512, activation: str = "relu",
             bias: float | None = None) -> tuple[Verdict, ...]:
    return analyze(record(init, depth, width, activation, bias=bias)).verdicts


def signal(vs: tuple[Verdict, ...], kind: str) -> Verdict:
    (v,) = [v for v in vs if v.family == "signal" and v.signal == kind]
    return v


def family(vs: tuple[Verdict, ...], name: str, phase: str = "init") -> Verdict:
    (v,) = [v for v in vs if v.family == name and v.phase == phase]
    return v


def test_xavier_relu_vanishes_forward_with_gain_one_half() -> None:
    vs = verdicts("xavier")
    fwd = signal(vs, "forward")
    assert (fwd.outcome, fwd.status) == ("vanishing", "fail")
    assert 0.40 <= fwd.effect["gain"] <= 0.55  # type: ignore[operator]
    assert fwd.effect["gain_high"] < 1  # type: ignore[operator]
    assert fwd.p_value is not None and fwd.p_value < 1e-6
    assert "use `he`" in (fwd.advice or "")
    bwd = signal(vs, "backward")
    assert bwd.outcome == "vanishing" and 0.40 <= bwd.effect["gain"] <= 0.55  # type: ignore[operator]
    rows = {r.signal: r for r in analyze(record("xavier")).theory}
    assert rows["forward"].expected_gain == pytest.approx(0.5, abs=0.01)
    assert rows["forward"].activation == "ReLU"


def test_he_relu_is_healthy_with_gain_one() -> None:
    vs = verdicts("he")
    for kind in ("forward", "backward"):
        v = signal(vs, kind)
        assert (v.outcome, v.status) == ("healthy", "pass"), v.message
        assert 0.85 <= v.effect["gain"] <= 1.1  # type: ignore[operator]
    fwd = signal(vs, "forward")
    # inputs grow correlated with depth: the channel variance falls ~10x over 30 layers, below the threshold
    assert 0.01 < fwd.effect["change"] < 1  # type: ignore[operator]
    expected = {r.signal: r.expected_gain for r in analyze(record("he")).theory}
    assert expected == pytest.approx({"forward": 1.0, "backward": 1.0})  # backward: per-sample energy
    assert failed_checks(vs) == set()


def test_random_std_01_explodes_forward_and_backward() -> None:
    vs = verdicts("random")
    fwd, bwd = signal(vs, "forward"), signal(vs, "backward")
    assert (fwd.outcome, fwd.status) == ("exploding", "fail")
    assert (bwd.outcome, bwd.status) == ("exploding", "fail")
    assert 2.0 <= fwd.effect["gain"] <= 2.8  # type: ignore[operator]
    assert fwd.effect["expected_gain"] == pytest.approx(512 * 0.1**2 / 2)
    assert {"exploding"} <= failed_checks(vs)


def test_std_given_on_the_command_line_is_honoured() -> None:
    ev = record("random:std=0.05")
    assert ev.initializer == "random:std=0.05"
    assert float(np.std(ev.weights_init["3"][0])) == pytest.approx(0.05, rel=0.02)
    fwd = signal(verdicts("random:std=0.05"), "forward")
    expected = 512 * 0.05**2 / 2  # 0.64
    assert fwd.effect["expected_gain"] == pytest.approx(expected)
    assert 0.5 <= fwd.effect["gain"] <= 0.75  # type: ignore[operator]
    assert fwd.outcome == "vanishing"


def test_zeros_is_no_signal_and_fully_symmetric_with_a_plain_explanation() -> None:
    vs = verdicts("zeros")
    for kind in ("forward", "backward"):
        assert (signal(vs, kind).outcome, signal(vs, kind).status) == ("no_signal", "fail")
    sym = family(vs, "symmetry")
    assert sym.status == "fail"
    for layer in sym.details["layers"]:
        assert layer["groups"] == [list(range(layer["neurons"]))]
        assert layer["distinct"] == 1
    assert len(sym.layers) == 30
    text = signal(vs, "forward").message
    for phrase in ("Zero init is not appropriate with ReLU", "no signal", "symmetric neurons",
                   "only the output bias learns", "0 in 30 of 30 layers"):
        assert phrase in text
    # said once: the symmetry verdict points to the forward signal verdict's explanation
    assert "not appropriate with ReLU" not in sym.message and "under the forward signal verdict" in sym.message
    assert {"no_signal", "symmetry"} <= failed_checks(vs)


def test_constant_init_is_fully_symmetric() -> None:
    sym = family(verdicts("constant", depth=4, width=64), "symmetry")
    assert sym.status == "fail"
    assert all(layer["groups"] == [list(range(layer["neurons"]))] for layer in sym.details["layers"])


def test_deep_tanh_with_std_one_is_saturated_and_xavier_is_not() -> None:
    sat = family(verdicts("random:std=1", depth=10, width=256, activation="tanh"), "saturation")
    assert sat.status == "fail"
    assert sat.effect["max_sat_frac"] > 0.5  # type: ignore[operator]
    ok = family(verdicts("xavier", depth=10, width=256, activation="tanh"), "saturation")
    assert ok.status == "pass" and ok.effect["max_sat_frac"] < 0.05  # type: ignore[operator]


def test_relu_with_large_negative_bias_has_dead_units() -> None:
    dead = family(verdicts("he", depth=4, width=64, bias=-10.0), "dead")
    assert dead.status == "fail"
    assert dead.effect["max_dead_frac"] == 1.0
    assert "dead" in failed_checks(verdicts("he", depth=4, width=64, bias=-10.0))
    assert family(verdicts("he", depth=4, width=64), "dead").status == "pass"


def test_pytorch_default_relu_theory_is_one_sixth() -> None:
    rows = {r.signal: r for r in analyze(record("pytorch-default", depth=10, width=256)).theory}
    assert rows["forward"].expected_gain == pytest.approx(1 / 6, rel=0.02)
    assert 0.1 <= rows["forward"].measured_gain <= 0.3  # type: ignore[operator]  # biases add variance


@pytest.mark.parametrize(("init", "activation"), [("he", "relu"), ("xavier", "tanh"), ("lecun", "linear")])
def test_healthy_inits_over_many_seeds_are_rarely_flagged(init: str, activation: str) -> None:
    seeds = range(20)
    flags = 0
    for seed in seeds:
        vs = analyze(record(init, depth=8, width=64, activation=activation, seed=seed, batch=128), seed=seed).verdicts
        flags += any(v.status != "pass" for v in vs if v.family in ("signal", "symmetry"))
    assert flags / len(seeds) <= 0.05
