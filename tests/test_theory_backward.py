"""Backward theory through pooling, strides and the loss: the gain the report predicts for dL/dy.

The references are independent: Monte Carlo maxima of normals for the max-pool's factor, and the
measured per-sample gradient energy of small conv nets whose gain theory fixes (He et al. 2015).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import initdiag
from initdiag.checks import TheoryRow
from initdiag.models import seed_cnn
from initdiag.theory import Transition, backward_gain, max_slope_second, slope_bound

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("name", "m"), [("relu", 4), ("tanh", 4), ("gelu", 9), ("tanh", 2.0)])
def test_max_pool_factor_matches_monte_carlo(name: str, m: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400_000, int(m), generator=gen, dtype=torch.float64).amax(1).requires_grad_(True)
    phi = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu}[name]
    (slope,) = torch.autograd.grad(phi(z).sum(), z)
    reference = float((slope**2).mean())
    assert max_slope_second(name, 1.0, m) == pytest.approx(reference, rel=0.01)


def test_relu_max_pool_factor_is_one_minus_two_to_the_minus_m() -> None:
    for m in (1, 2, 4, 9):
        assert max_slope_second("relu", 1.0, m) == pytest.approx(1 - 2.0**-m, rel=1e-9)


def test_routes_spread_the_gradient_as_their_backward_does() -> None:
    base = dict(activation="relu", weight_var=2 / 288, fan_in=288, fan_out=576)
    plain = backward_gain(Transition(**base), 1.0)  # type: ignore[arg-type]
    assert plain == pytest.approx(576 * 2 / 288 * 0.5)
    pooled = backward_gain(Transition(**base, route="max", spread=4.0), 1.0)  # type: ignore[arg-type]
    assert pooled == pytest.approx(576 * 2 / 288 * (15 / 16) / 4)
    assert backward_gain(Transition(**base, route="max", spread=4.0), 1.0, "low") == pytest.approx(plain / 4)
    assert backward_gain(Transition(**base, route="avg", spread=4.0), 1.0) == pytest.approx(plain / 16)
    assert backward_gain(Transition(**base, route="cat", spread=0.5), 1.0) == pytest.approx(plain)
    assert backward_gain(Transition(**base, route="", spread=2.0), 1.0) == pytest.approx(plain / 2)
    assert backward_gain(Transition(**base, route="mixed", spread=2.0), 1.0) is None
    assert slope_bound("relu") == 1.0 and slope_bound("tanh") == pytest.approx(1.0)


def _energy_ratios(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Measured per-sample gradient energy of each weight layer's output over the next one's."""
    outs: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        outs.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    nn.functional.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    energy = [float((o.grad**2).sum()) / len(x) for o in outs]  # type: ignore[operator]
    return [a / b for a, b in itertools.pairwise(energy)]


def _theory(model: nn.Module, init: str) -> TheoryRow:
    result = initdiag.audit(model, inits=(init,), inputs="mnist", batch_size=256)
    (run,) = result.analysis.values()
    return next(t for t in run.theory if t.signal == "backward")


def test_he_backward_through_max_pools_lies_in_the_theory_range() -> None:
    """Seed CNN (conv-ReLU-maxpool twice, conv, two Linear): He fan-in keeps the gradient's per-sample energy
    where ReLU halves it (gain 1), but a max-pool sends the gradient to each window's maximum, which ReLU
    passes with probability up to 1 - 2^-4, and the loss's gradient aligns with the active units at the head.
    The old prediction, fan_out x Var(W) x c x (pre-pool size ratio), said 2.12; the data said ~1.1-1.3."""
    row = _theory(seed_cnn(), "he")
    assert row.expected_low is not None and row.expected_high is not None
    assert row.expected_low == pytest.approx(1.0, rel=0.02)
    assert row.expected_low < row.expected_gain < row.expected_high < 2.0
    assert row.gain_low is not None and row.gain_high is not None
    assert row.gain_low <= row.expected_high and row.gain_high >= row.expected_low
    assert "excludes" not in row.note


def test_strided_convs_keep_the_energy_at_fan_in_init() -> None:
    """Stride-2 convs without pooling: the per-sample energy backward is fan_in Var(W) c = 1 per layer under He
    whatever the stride (the old size-ratio formula said 4 per stride-2 layer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64 * 16, 10))
    row = _theory(model, "he")
    assert row.expected_low == pytest.approx(1.0, rel=0.02) and row.expected_gain == pytest.approx(1.0, rel=0.02)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(512, 1, 28, 28, generator=gen), torch.randint(0, 10, (512,), generator=gen)
    ratios = _energy_ratios(model, x, y)
    inner = ratios[:-1]  # the head's transition is where the loss aligns the gradient (the range's high end)
    assert math.exp(sum(map(math.log, inner)) / len(inner)) == pytest.approx(1.0, abs=0.25)


class _PostActivation(nn.Module):
    """``relu(x + conv(relu(conv(x))))``, the original ResNet's block, without normalization."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


def test_an_activation_after_the_residual_sum_enters_the_stream_theory() -> None:
    """He-initialized ReLU branches add twice the stream's second moment; ResNet's ReLU after the sum keeps the
    positive part of a sum whose mean the earlier ReLUs made positive, so the stream's variance grows ~2.3x per
    block (a zero-mean sum would say 1.5x, no activation 3x); the measured growth agrees."""
    from initdiag.structure import discover
    from initdiag.theory.stream import stream_theory

    torch.manual_seed(0)
    width, depth = 64, 6
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), *(_PostActivation(width) for _ in range(depth)))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)  # type: ignore[arg-type]
    x = torch.randn(64, 3, 16, 16)
    structure = discover(model, x)
    assert [b.activation_after for b in structure.blocks] == ["relu"] * depth
    weight_var = {la.module_name: 2.0 / la.fan_in for la in structure.weight_layers}
    with torch.no_grad():
        outs = [model[:2](x)]
        for block in model[2:]:
            outs.append(block(outs[-1]))
    channels = [o.transpose(0, 1).flatten(1) for o in outs]
    measured = [float(c.var(1).mean()) for c in channels]  # per-channel variance, as the stream is recorded
    theory = stream_theory(structure, measured[0], weight_var, {}, {}, float(channels[0].mean(1).pow(2).mean()))
    predicted = [v for v in theory.values if v is not None]
    assert len(predicted) == depth + 1
    growth = (predicted[-1] / predicted[0]) ** (1 / depth)
    assert 2.0 < growth < 2.5
    assert (measured[-1] / measured[0]) ** (1 / depth) == pytest.approx(growth, rel=0.15)
