"""The activation registry: structure discovery, the recorder, theory and the advice read one entry per activation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initdiag.checks import pretty_activation, recommended_initializer
from initdiag.initializers import INITIALIZERS
from initdiag.structure import ACTIVATIONS, activation_name, discover
from initdiag.theory import activation_factors, as_activation, gaussian_moments, phi_spec
from initdiag.vocab import ActivationFamily, ActivationName

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _discovered(act: nn.Module) -> tuple[str, tuple[tuple[str, object], ...]]:
    s = discover(nn.Sequential(nn.Linear(8, 8), act, nn.Linear(8, 2)), torch.randn(6, 8))
    a = s.weight_layers[0].activation
    return a.name, a.params


def test_one_entry_per_name_with_an_advice_the_cli_knows() -> None:
    assert set(ACTIVATIONS) == set(ActivationName)
    for info in ACTIVATIONS.values():
        assert info.initializer in INITIALIZERS and info.gain > 0
        assert pretty_activation(info.name) == info.display
        assert recommended_initializer(info.name) == info.initializer
    assert [recommended_initializer(a) for a in ("relu", "gelu", "prelu", "selu", "tanh", "linear", "zzz")] == [
        "he", "he", "he", "lecun", "xavier", "xavier", "xavier"]


@pytest.mark.parametrize("name", [n for n, i in ACTIVATIONS.items() if i.phi is not None and i.modules
                                  and i.family != ActivationFamily.LINEAR])
def test_every_module_type_is_one_activation_to_structure_recorder_and_theory(name: str) -> None:
    for cls in ACTIVATIONS[name].modules:
        module = cls()
        assert activation_name(module) == name
        found, params = _discovered(module)
        assert found == name
        spec = as_activation(module)
        assert spec is not None and spec == phi_spec(found, params)  # theory evaluates what discovery saw


def test_prelu_is_its_own_activation_with_its_slope() -> None:
    prelu = nn.PReLU()
    assert activation_name(prelu) == "prelu" and _discovered(prelu) == ("prelu", (("negative_slope", 0.25),))
    assert _discovered(nn.PReLU(8, init=0.1))[1] == (("negative_slope", pytest.approx(0.1)),)
    forward, _ = activation_factors("prelu", 1.0, (("negative_slope", 0.25),)) or (0.0, 0.0)
    assert forward == pytest.approx((1 + 0.25**2) / 2, rel=1e-12)  # a leaky ReLU of slope 0.25


class FunctionalNet(nn.Module):
    def __init__(self, f: object) -> None:
        super().__init__()
        self.a, self.b, self.f = nn.Linear(8, 8), nn.Linear(8, 2), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.f(self.a(x)))  # type: ignore[operator]


@pytest.mark.parametrize(("f", "name", "params"), [
    (torch.special.expit, "sigmoid", ()),
    (lambda x: F.prelu(x, torch.tensor([0.3])), "prelu", (("negative_slope", pytest.approx(0.3)),)),
    (lambda x: F.rrelu(x, 0.1, 0.3, training=False), "leaky_relu", (("negative_slope", pytest.approx(0.2)),)),
    (lambda x: F.softplus(x, 2.0), "softplus", (("beta", 2.0), ("threshold", 20.0))),
])
def test_functional_calls_read_their_parameters(f: object, name: str, params: tuple[object, ...]) -> None:
    a = discover(FunctionalNet(f), torch.randn(6, 8)).weight_layers[0].activation
    assert (a.name, a.params) == (name, params)
    assert phi_spec(a.name, a.params) is not None


def test_library_classes_by_name_and_quick_gelu() -> None:
    class QuickGELUActivation(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    name, params = _discovered(QuickGELUActivation())
    assert (name, params) == ("gelu", (("approximate", "sigmoid"),))
    spec = phi_spec(name, params)
    assert spec is not None
    for q in (0.3, 2.0):
        assert gaussian_moments(spec, q).second == pytest.approx(
            gaussian_moments(QuickGELUActivation(), q).second, rel=1e-8)
    assert math.isclose(ACTIVATIONS["relu"].gain, math.sqrt(2.0))
