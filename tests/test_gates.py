"""Gates of recurrent layers: the replay against torch's own modules, the saturation theory against sampling,
and the audit's verdict on LSTMs and GRUs at torch's default init and at N(0, 1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initdiag
from initdiag.checks.gates import expected_saturation
from initdiag.recording.gates import gate_stats, replay

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("module", "shape", "state"), [
    (lambda: nn.LSTM(6, 12, num_layers=2, batch_first=True, bidirectional=True), (4, 7, 6), False),
    (lambda: nn.GRU(6, 12, num_layers=2), (7, 4, 6), True),
    (lambda: nn.RNN(6, 12, nonlinearity="relu", bias=False), (7, 4, 6), False),
    (lambda: nn.LSTM(6, 12), (7, 6), True),  # unbatched
])
def test_the_replay_reproduces_torch_recurrent_modules(module: object, shape: tuple[int, ...], state: bool) -> None:
    torch.manual_seed(0)
    m = module()  # type: ignore[operator]
    x = torch.randn(*shape)
    args: tuple[object, ...] = (x,)
    if state:
        layers = m.num_layers * (2 if m.bidirectional else 1)
        h = torch.randn(layers, *((shape[1],) if len(shape) == 3 else ()), 12)
        args = (x, (h, torch.randn_like(h)) if isinstance(m, nn.LSTM) else h)
    with torch.no_grad():
        reference = m(*args)[0]
    out, found = replay(m, args)
    assert out.shape == reference.shape
    assert torch.allclose(out.float(), reference, atol=1e-5)
    assert len(found) == m.num_layers * (2 if m.bidirectional else 1)


@pytest.mark.parametrize(("activation", "var", "mean"), [("sigmoid", 30.0, 0.0), ("tanh", 4.0, 0.5), ("tanh", 0.2, 0)])
def test_expected_saturation_matches_sampling(activation: str, var: float, mean: float) -> None:
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.sqrt(var) + mean
    y = torch.sigmoid(z) if activation == "sigmoid" else torch.tanh(z)
    lo = 0.0 if activation == "sigmoid" else -1.0
    sampled = float(((y - lo <= 0.01) | (1 - y <= 0.01)).double().mean())
    assert expected_saturation(activation, var, mean) == pytest.approx(sampled, abs=2e-3)


def test_gate_variance_follows_the_length_map_at_default_init() -> None:
    torch.manual_seed(0)
    m = nn.GRU(16, 64, num_layers=2)
    stats = gate_stats("gru", m, (torch.randn(20, 32, 16),))
    assert [s.gate for s in stats[:3]] == ["reset", "update", "new"]
    for s in stats:
        assert s.saturated == 0.0
        assert s.var == pytest.approx(s.expected_var, rel=0.25), s.name  # the new gate's r * (W_hn h) is ~r^2 x


class _Tagger(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(64, 128, batch_first=True)
        self.head = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_default_recurrent_layers_pass_and_standard_normal_weights_saturate_their_gates(cell: type[nn.RNNBase]) -> None:
    """torch's default U(-1/sqrt(h), 1/sqrt(h)) gives each gate a pre-activation variance of about (fan_in + h) /
    (3 h) E[.^2], well inside the linear range; N(0, 1) weights give ~fan_in + h, which pins most gates."""
    torch.manual_seed(0)
    healthy = initdiag.audit(_Tagger(cell), input_shape=(12, 64), batch_size=16).runs[0]
    verdict = next(v for v in healthy.verdicts if v.check == "gates")
    assert verdict.status == "pass", verdict.message
    broken = _Tagger(cell)
    with torch.no_grad():
        for name, p in broken.rnn.named_parameters():
            if name.startswith("weight"):
                p.normal_(0.0, 1.0)
    run = initdiag.audit(broken, input_shape=(12, 64), batch_size=16).runs[0]
    verdict = next(v for v in run.verdicts if v.check == "gates")
    assert verdict.status == "fail", verdict.message
    assert "theory" in verdict.message and verdict.effect["max_sat_frac"] >= 0.5
