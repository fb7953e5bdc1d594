"""LSUV repair (``initdiag.repair.lsuv``) against independent computations: each layer's output variance measured
by this file's own hooks, a plain full-forward LSUV loop, orthogonality by ``W W^T``, the model's state compared
bitwise before and after."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initdiag.audit.inputs import Inputs
from initdiag.errors import UsageError
from initdiag.repair.lsuv import LsuvOutcome, lsuv_repair
from initdiag.structure import discover

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relu_mlp(depth: int = 20, width: int = 64, d_in: int = 32) -> nn.Sequential:
    """``depth`` Linear layers with ReLU between, PyTorch's default init (variance 1/(3 fan_in): vanishing)."""
    layers: list[nn.Module] = [nn.Linear(d_in, width)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    return nn.Sequential(*layers)


def repair(model: nn.Module, x: torch.Tensor, **kwargs: object) -> LsuvOutcome:
    return lsuv_repair(model, Inputs((x,)), discover(model, x), **kwargs)  # type: ignore[arg-type]


def output_variances(model: nn.Module, x: torch.Tensor, modules: Sequence[nn.Module]) -> list[float]:
    """Population variance of each module's (first) output on one full forward in train mode: this file's own
    hooks, not the repair's."""
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, _a, out: seen.setdefault(id(mod), out)) for m in modules]
    was = model.training
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return [float(seen[id(m)].double().var(correction=0)) for m in modules]


def reference_lsuv(model: nn.Module, x: torch.Tensor, modules: Sequence[nn.Linear], target: float = 1.0,
                   tol: float = 0.1, max_iter: int = 10) -> None:
    """Mishkin & Matas' Algorithm 1 as written: full forwards, modules in the order given."""
    for m in modules:
        def var(m: nn.Linear = m) -> float:
            return output_variances(model, x, [m])[0]

        v, i = var(), 0
        while abs(v / target - 1) > tol and i < max_iter:
            with torch.no_grad():
                m.weight.mul_(math.sqrt(target / v))
            v, i = var(), i + 1


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.fixture
def x() -> Iterator[torch.Tensor]:
    yield torch.randn(64, 32, generator=torch.Generator().manual_seed(1))


def test_deep_relu_mlp_every_layer_reaches_unit_variance(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = relu_mlp()
    before = output_variances(model, x, linears(model))
    assert before[-1] < 0.01  # vanishing at PyTorch's default init (the biases keep a little): what LSUV repairs
    out = repair(model, x)
    after = output_variances(model, x, linears(model))
    assert all(abs(v - 1) <= 0.1 for v in after), after
    assert out.unconverged == ()
    assert [c.param for c in out.changes] == [f"{i}.weight" for i in range(0, 39, 2)]
    assert all(c.new_std > c.old_std for c in out.changes)


def test_matches_the_algorithm_run_with_full_forwards(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = relu_mlp(8)
    ref = relu_mlp(8)
    ref.load_state_dict(model.state_dict())
    repair(model, x, tol=0.01)
    reference_lsuv(ref, x, linears(ref), tol=0.01)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


class Reversed(nn.Module):
    """Modules registered in the reverse of the order they run: c, b, a registered; a -> b -> c executed."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Linear(48, 8)
        self.b = nn.Linear(48, 48)
        self.a = nn.Linear(32, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.relu(self.a(x)))))


def test_layers_are_fitted_in_execution_order_not_registration_order(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = Reversed()
    assert [n for n, _ in model.named_children()] == ["c", "b", "a"]
    out = repair(model, x, tol=0.05)
    assert [c.layer for c in out.changes] == ["a", "b", "c"]
    # fitted in registration order, c and b would be fitted on inputs that a's rescaling changes afterwards
    after = output_variances(model, x, [model.a, model.b, model.c])
    assert all(abs(v - 1) <= 0.05 for v in after), after


def test_zero_weights_biases_and_norm_parameters_are_untouched_bitwise(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    norm, head = nn.LayerNorm(64), nn.Linear(64, 10)
    model = nn.Sequential(nn.Linear(32, 64), norm, nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), head)
    with torch.no_grad():
        head.weight.zero_()  # a zero head: a deliberate zero that learns
        norm.weight.uniform_(0.5, 1.5)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = repair(model, x)
    changed = {c.param for c in out.changes}
    assert changed == {"0.weight", "3.weight"}
    assert out.unconverged == ()
    for n, p in model.named_parameters():
        if n not in changed:
            assert torch.equal(p, saved[n]), n


class StateNet(nn.Module):
    """Conv-BN-ReLU with dropout, a frozen layer, one submodule in eval mode: state the repair must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8, momentum=None)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(self.drop(h.mean((2, 3))))


def test_buffers_modes_requires_grad_grads_rng_and_hooks_are_restored() -> None:
    torch.manual_seed(0)
    model = StateNet()
    model.eval()
    model.bn2.train()
    model.conv2.weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    images = torch.randn(16, 3, 8, 8)
    structure = discover(model, images)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    grad = model.head.weight.grad
    rng = torch.get_rng_state()
    out = lsuv_repair(model, Inputs((images,)), structure)
    assert {c.param for c in out.changes} == {"conv1.weight", "conv2.weight", "head.weight"}
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    assert model.head.weight.grad is grad and bool((grad == 1).all())
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # measured in train mode with the same dropout masks in every forward: converged despite dropout
    assert out.unconverged == ()


def test_forwards_are_counted_and_stop_at_the_measured_layer(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = relu_mlp(6)
    calls = {"root": 0, "first": 0, "last": 0}

    def count(key: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            calls[key] += 1
        return hook

    structure = discover(model, x)
    model.register_forward_pre_hook(count("root"))
    linears(model)[0].register_forward_pre_hook(count("first"))
    linears(model)[-1].register_forward_pre_hook(count("last"))
    out = lsuv_repair(model, Inputs((x,)), structure)
    assert out.forwards == calls["root"] == calls["first"]
    assert out.forwards >= 6
    assert 1 <= calls["last"] < out.forwards  # earlier layers' measurements never reach the last one


def test_a_layer_whose_input_is_dead_is_named_and_left_alone(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(32, 64), nn.Linear(64, 64, bias=False)
    model = nn.Sequential(first, nn.ReLU(), second)
    with torch.no_grad():
        first.bias.fill_(-100.0)  # every pre-activation negative: the second layer sees zeros
    saved = second.weight.detach().clone()
    out = repair(model, x)
    assert out.unconverged == ("2",)
    assert [c.layer for c in out.changes] == ["0"]
    assert torch.equal(second.weight, saved)


class StandardizedLinear(nn.Linear):
    """A weight-standardized linear layer: its output does not depend on the weight's scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(1, keepdim=True)) / w.std(1, keepdim=True)
        return F.linear(x, w, self.bias)


def test_a_layer_whose_variance_ignores_the_scale_is_named_and_kept(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    layer = StandardizedLinear(32, 64, bias=False)
    model = nn.Sequential(layer)
    saved = layer.weight.detach().clone()
    out = repair(model, x, target_var=4.0, max_iter=3)
    assert out.unconverged == ("0",)
    assert out.changes == ()
    assert torch.equal(layer.weight, saved)
    assert out.forwards == 4


def test_too_few_iterations_are_reported_not_hidden(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = relu_mlp(6)
    out = repair(model, x, tol=1e-9, max_iter=1)
    assert out.unconverged  # biases keep one rescaling from landing exactly on the target
    not_reached = {c.layer for c in out.changes if "not reached in 1 iteration" in c.rule}
    assert not_reached == set(out.unconverged)
    untouched = relu_mlp(6)
    assert repair(untouched, x, max_iter=0).changes == ()


def test_orthogonal_gives_orthogonal_rows_before_the_scale(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    out = repair(model, x, orthogonal=True, seed=3)
    assert len(out.changes) == 3 and "orthogonal first" in out.changes[0].rule
    for m in linears(model):
        w = m.weight.detach().double()
        gram = w @ w.T
        torch.testing.assert_close(gram / gram.diagonal().mean(), torch.eye(len(w), dtype=torch.float64),
                                   atol=1e-5, rtol=0)
    assert all(abs(v - 1) <= 0.1 for v in output_variances(model, x, linears(model)))
    torch.manual_seed(0)
    again = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    repair(again, x, orthogonal=True, seed=3)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(linears(model), linears(again), strict=True))
    other = nn.Linear(32, 32)
    repair(nn.Sequential(other), x, orthogonal=True, seed=4)
    assert not torch.allclose(other.weight, linears(model)[0].weight)


def test_orthogonal_conv_rows_flattened() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    model = nn.Sequential(conv)
    images = torch.randn(8, 3, 8, 8)
    lsuv_repair(model, Inputs((images,)), discover(model, images), orthogonal=True)
    w = conv.weight.detach().double().reshape(16, 27)
    gram = w @ w.T
    torch.testing.assert_close(gram / gram.diagonal().mean(), torch.eye(16, dtype=torch.float64), atol=1e-5, rtol=0)


class FunctionalFirst(nn.Module):
    """A weight used with ``F.linear`` in the root's forward: the root's output is not that map's output."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(48, 32) * 0.01)
        self.head = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(F.linear(x, self.w)))


def test_a_functional_weight_is_measured_at_its_own_map(x: torch.Tensor) -> None:
    model = FunctionalFirst()
    out = repair(model, x, tol=0.02)
    assert [c.param for c in out.changes] == ["w", "head.weight"]
    assert abs(float((x @ model.w.detach().T).double().var(correction=0)) - 1) <= 0.02


def test_changes_carry_the_answers_and_the_rule(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = repair(relu_mlp(3), x, answers=("vanishing",), target_var=2.0)
    assert all(c.answers == ("vanishing",) for c in out.changes)
    assert "Var(output) = 2 ± 0.2" in out.changes[0].rule and "iteration" in out.changes[0].rule


@pytest.mark.parametrize("kwargs", [{"target_var": 0.0}, {"target_var": math.nan}, {"tol": -1.0},
                                    {"max_iter": -1}])
def test_bad_settings_are_usage_errors(x: torch.Tensor, kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        repair(relu_mlp(2), x, **kwargs)


class Raises(nn.Module):
    """Linear -> (raises) -> Linear, the forward wrapped in ``try/except Exception`` as some models do."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 8)
        self.bn = nn.BatchNorm1d(32)
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            h = self.bn(self.a(x))
        except Exception:  # must not swallow the repair's early stop
            return torch.zeros(len(x), 8)
        if self.armed:
            raise ValueError("boom")
        return self.b(h)


def test_a_forward_that_raises_leaves_hooks_buffers_modes_and_that_layer_as_they_were(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = Raises()
    structure = discover(model, x)
    model.armed = True
    model.eval()
    saved_b = model.b.weight.detach().clone()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with pytest.raises(ValueError, match="boom"):
        lsuv_repair(model, Inputs((x,)), structure)
    assert torch.equal(model.b.weight, saved_b)
    assert abs(output_variances(model.a, x, [model.a])[0] - 1) <= 0.1  # measured through the except Exception
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert not any(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())
