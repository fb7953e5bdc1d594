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
