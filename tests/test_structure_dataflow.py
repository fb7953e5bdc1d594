"""Data written into a new buffer stays data: a model that copies its input into a zero-filled batch (as
torchvision's detection models do) keeps its structure (norms, residual blocks) and its verdicts."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import initdiag
from initdiag.structure import discover


class CopyIntoBuffer(nn.Module):
    """Each image copied into a fresh zero buffer (``buffer[i, ...].copy_(x[i])``), then the wrapped model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffer = x.new_zeros((x.shape[0], x.shape[1], x.shape[2] + 8, x.shape[3] + 8))
        for i in range(x.shape[0]):
            buffer[i, :, : x.shape[2], : x.shape[3]].copy_(x[i])
        return self.inner(buffer)


class AssignIntoBuffer(CopyIntoBuffer):
    """The same by item assignment (``buffer[..] = x``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros(x.shape[0], x.shape[1], x.shape[2] + 8, x.shape[3] + 8)
        buffer[:, :, : x.shape[2], : x.shape[3]] = x
        return self.inner(buffer)


@pytest.mark.parametrize("wrapper", [CopyIntoBuffer, AssignIntoBuffer])
def test_structure_survives_copying_the_input_into_a_buffer(wrapper: type[CopyIntoBuffer]) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    x = torch.randn(2, 3, 32, 32)
    plain, wrapped = discover(resnet, x), discover(wrapper(resnet), x)
    assert (len(plain.norms), len(plain.blocks)) == (20, 8)
    assert (len(wrapped.norms), len(wrapped.blocks)) == (20, 8)
    assert [w.fan_in for w in wrapped.weight_layers] == [w.fan_in for w in plain.weight_layers]


def test_verdicts_survive_copying_the_input_into_a_buffer() -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    plain = initdiag.audit(resnet, input_shape=(3, 32, 32), batches=2)
    wrapped = initdiag.audit(CopyIntoBuffer(resnet), input_shape=(3, 32, 32), batches=2)
    assert plain.passed and wrapped.passed
    assert [(v.check, v.outcome, v.signal, v.status) for v in wrapped.verdicts] == \
        [(v.check, v.outcome, v.signal, v.status) for v in plain.verdicts]


class VAE(nn.Module):
    """pytorch/examples' VAE shape: two parallel heads (mean, log-variance) of one hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(64, 32), nn.Linear(32, 8), nn.Linear(32, 8)
        self.fc3, self.fc4 = nn.Linear(8, 32), nn.Linear(32, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(logvar) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))), mu, logvar


def test_parallel_heads_are_never_one_chain() -> None:
    """The layers judged as one chain follow the data: fc21 and fc22 read the same input side by side, so
    no chain holds both, and the longest path through the reparametrization is fc1, fc21, fc3, fc4."""
    torch.manual_seed(0)
    structure = discover(VAE(), torch.randn(4, 64))
    assert structure.longest_path() == ("fc1", "fc21", "fc3", "fc4")
    result = initdiag.audit(VAE(), input_shape=(64,))
    for v in result.verdicts:
        for chain in v.details.get("chains", []):
            assert chain["n_layers"] <= 4
    assert not any({"fc21", "fc22"} <= set(seg) for seg in structure.segments())
