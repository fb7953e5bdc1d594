"""Models that crashed the audit: transposed convolutions (weights stored (in, out / groups, *k)) and a forward
that sets ``requires_grad`` on a view of its input (as Wav2Vec2's feature encoder does in train mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import initdiag
from initdiag.recording import output_rows


class Decoder(nn.Module):
    """Conv -> ReLU -> ConvTranspose (grouped) -> ReLU -> Conv, as in U-Net and GAN decoders."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, groups=groups)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.up(torch.relu(self.a(x)))))


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_convolution_rows_are_the_output_units_incoming_weights(groups: int) -> None:
    """Row j of output_rows is what output channel j reads: its response at one output pixel to a unit
    impulse at each input channel and kernel tap is exactly those weights (reference: the layer itself)."""
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(4, 6, 3, groups=groups, bias=False)
    rows = output_rows(up, up.weight.detach())
    assert rows.shape == (6, 4 // groups * 9)
    per_group = 4 // groups
    for j in range(6):
        g = j // (6 // groups)
        reference = []
        for i in range(g * per_group, (g + 1) * per_group):
            for ky in range(3):
                for kx in range(3):
                    x = torch.zeros(1, 4, 3, 3)
                    x[0, i, 2 - ky, 2 - kx] = 1.0  # the input pixel that reaches output (2, 2) through tap (ky, kx)
                    reference.append(up(x)[0, j, 2, 2].item())
        assert rows[j].tolist() == pytest.approx(reference)


def test_a_decoder_with_transposed_convolutions_audits_and_finds_identical_output_units() -> None:
    torch.manual_seed(0)
    model = Decoder()
    healthy = initdiag.audit(model, input_shape=(3, 8, 8))
    assert not any(v.check == "symmetry" and v.status == "fail" for v in healthy.verdicts)
    with torch.no_grad():  # output channels 0 and 1 of the first group read, and are read by, identical weights:
        model.up.weight[:, 1] = model.up.weight[:, 0]  # they get identical gradients, so they stay identical
        model.up.bias[1] = model.up.bias[0]
        model.b.weight[:, 1] = model.b.weight[:, 0]
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status == "fail" and "up" in sym.layers


class SetsRequiresGrad(nn.Module):
    """A forward that marks a view of its input as requiring grad in train mode (torch allows it on leaves)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, None]
        if self.training:
            h.requires_grad = True
        return self.head(torch.relu(self.conv(h)).mean(-1))


def test_the_audit_input_is_a_leaf_as_data_is() -> None:
    torch.manual_seed(0)
    example = torch.randn(8, 64)
    result = initdiag.audit(SetsRequiresGrad(), example)
    assert result.passed
    assert not example.requires_grad  # the caller's tensor is untouched


class DepthwiseScale(nn.Module):
    """A 1x1 depthwise convolution with one weight per neuron (a per-channel scale, as FastViT's and
    MobileOne's ``conv_scale``) between two dense convolutions."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, channels, 3, padding=1)
        self.scale = nn.Conv2d(channels, channels, 1, groups=channels)
        self.b = nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.scale(torch.relu(self.a(x))))).mean((2, 3))


def test_neurons_that_read_different_inputs_are_never_symmetric() -> None:
    """Depthwise: every neuron reads its own channel, so single weights that collide (512 neurons drawing from
    ~40 distinct values) are neither identical neurons nor near-duplicates: they get different gradients.
    Compared across channels, their |cos| is 1 (a warning before neurons were compared within groups)."""
    torch.manual_seed(0)
    model = DepthwiseScale(512)
    with torch.no_grad():
        model.scale.weight.copy_(torch.randn_like(model.scale.weight).round(decimals=1))
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status == "pass", sym.message


def test_identical_neurons_within_a_group_of_a_grouped_convolution_fail() -> None:
    """Grouped convolution: two neurons of one group with identical incoming and outgoing weights are
    symmetric; the same rows in different groups read different inputs and are not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    grouped, after = model[2], model[4]
    with torch.no_grad():  # neuron 4 (group 1) copies neuron 0 (group 0): different inputs, not symmetric
        grouped.weight[4] = grouped.weight[0]
        grouped.bias[4] = grouped.bias[0]
        after.weight[:, 4] = after.weight[:, 0]
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status != "fail", sym.message
    with torch.no_grad():  # neuron 1 copies neuron 0 in group 0: symmetric
        grouped.weight[1] = grouped.weight[0]
        grouped.bias[1] = grouped.bias[0]
        after.weight[:, 1] = after.weight[:, 0]
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status == "fail" and "2" in sym.layers, sym.message
