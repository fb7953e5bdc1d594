"""What keeps an audit's memory near a plain forward and backward: no second copy of the weights or the
gradients, recorder buffers sized by the rows they receive, no output held alive, one pass per parameter."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import initdiag
from initdiag.recording import Recorder
from initdiag.recording.extras import Extras
from initdiag.recording.snapshots import snapshot_grads, snapshot_weights
from initdiag.recording.streams import BUFFER_BYTES, FIRST_ROWS
from initdiag.recording.tensor_stats import tensor_moments
from initdiag.structure import discover


def test_snapshots_without_copy_are_read_only_views_of_the_model() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model(torch.randn(4, 6)).sum().backward()
    views = snapshot_weights(model, copy=False)
    grads = snapshot_grads(model, {"0", "2"}, copy=False)
    for name, (w, b) in views.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear) and b is not None
        assert np.shares_memory(w, layer.weight.detach().numpy()) and np.array_equal(w, layer.weight.detach().numpy())
        assert np.shares_memory(grads[name][0], layer.weight.grad.numpy())  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="read-only"):
            w[0, 0] = 1.0
    copies = snapshot_weights(model)
    assert not any(np.shares_memory(copies[n][0], views[n][0]) for n in views)


def test_a_short_recording_holds_buffers_of_a_few_rows_and_a_long_one_grows_them() -> None:
    model = nn.Sequential(nn.Linear(8, 512), nn.ReLU(), nn.Linear(512, 4))
    x = torch.randn(16, 8)
    with Recorder(model, every=1) as rec:
        for _ in range(3):
            model(x).sum().backward()
    rows = [stream.buffer.shape[0] for _, _, stream in rec._collector.streams]
    assert rows and max(rows) == FIRST_ROWS  # 4 rows, not the 1 MiB cap of each stream
    with Recorder(model, every=1, flush_every=256) as rec:
        for _ in range(40):
            model(x).sum().backward()
    wide = [s for _, _, s in rec._collector.streams if s.width == 2 * 512 + 2]
    assert wide and all(s.buffer.shape[0] == 64 for s in wide)  # 40 rows: doubled 4 -> 8 -> 16 -> 32 -> 64
    assert all(s.capacity * 8 * s.width <= BUFFER_BYTES for s in wide)
    frame = rec.frame()
    assert frame.loc[frame["phase"] == "train", "step"].nunique() == 40


def test_extras_keep_no_output_alive_and_still_find_a_views_site() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(20, 8), nn.Linear(8, 20)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids)).transpose(1, 2)  # a view of the head's output, classes on dim 1

    model, ids = Head(), torch.randint(0, 20, (3, 5))
    seen: list[weakref.ref[torch.Tensor]] = []
    handle = model.embed.register_forward_hook(lambda m, a, y: seen.append(weakref.ref(y)))
    with Extras(model, discover(model, ids)) as extras:
        out = model(ids)
        gc.collect()
        assert seen[0]() is None  # the embedding's output: freed once the forward dropped it
        found = extras.site_of(out)
        assert found is not None and found[1] == "head" and found[0].shape == (3, 5, 20)
        assert torch.equal(found[0], out.transpose(1, 2))
    handle.remove()


def test_extras_read_a_sites_output_once_for_the_layers_it_feeds_and_again_once_written() -> None:
    """``in_sq`` (a weight layer's mean squared input) against the inputs each layer was called with: a site's
    output read by two layers is the site's own sum of squares (not read again), and an output scaled in
    place after its site saw it (its version counter moved) is read as it is when the next layer reads it."""
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.a2, self.d = (nn.Linear(6, 6) for _ in range(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            z = self.a2(x)
            z.mul_(3.0)  # after a2's hook: d reads the scaled values
            return self.b(y) + self.c(y) + self.d(z)

    torch.manual_seed(0)
    model, x = Fork(), torch.randn(5, 6)
    inputs: dict[str, torch.Tensor] = {}
    handles = [getattr(model, n).register_forward_pre_hook(
        lambda m, args, n=n: inputs.__setitem__(n, args[0].detach().clone())) for n in "bcd"]
    with Extras(model, discover(model, x)) as extras:
        model(x).sum().backward()
    for h in handles:
        h.remove()
    found = extras.result()
    for name in "bcd":
        want = float(inputs[name].double().square().mean())
        assert found[name].in_sq == pytest.approx(want, rel=1e-12)
    assert found["b"].in_sq == found["c"].in_sq == pytest.approx(found["a"].rms ** 2, rel=1e-12)


@pytest.mark.parametrize("make", [lambda: torch.randn(300, 70), lambda: torch.full((9, 4), -0.5),
                                  lambda: torch.randn(5, 6).t(), lambda: torch.randn(40).bfloat16()])
def test_tensor_moments_match_float64_references(make: object) -> None:
    t = make()  # type: ignore[operator]
    m, d = tensor_moments(t), t.double()
    assert m.n == t.numel() and m.nonzero == int(torch.count_nonzero(t))
    assert m.mean == pytest.approx(float(d.mean()), rel=1e-12, abs=1e-15)
    assert m.mean_sq == pytest.approx(float(d.square().mean()), rel=1e-12)
    assert m.var == pytest.approx(float(d.var(unbiased=False)), rel=1e-9, abs=1e-15)
    assert m.top == float(d.abs().max())


def test_a_keep_audit_leaves_the_models_tensors_where_they_were() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    pointers = [p.data_ptr() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    initdiag.audit(model, input_shape=(16,), inits=("keep",), batches=2, batch_size=8)
    assert [p.data_ptr() for p in model.parameters()] == pointers  # audited in place: no copy swapped in
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


class _ZeroChain(nn.Module):
    """A class token and the last layer of a residual branch that learn only once the zero head has moved
    (step 2), beside BatchNorm's running statistics and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.frozen = nn.Linear(6, 8), nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.cls = nn.Parameter(torch.zeros(8))
        self.b1, self.b2, self.norm = nn.Linear(8, 8), nn.Linear(8, 8), nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)
        for p in (self.b2.weight, self.head.weight, self.head.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.frozen(self.embed(x)) + self.cls
        return self.head(self.norm(h + self.b2(torch.relu(self.b1(h)))))


def _sgd_reference(model: nn.Module, x: torch.Tensor, waiting: set[str]) -> dict[str, int]:
    """When each waiting zero first gets a non-zero gradient under plain SGD of every parameter, on a copy."""
    import copy

    work, started = copy.deepcopy(model), {}
    params = dict(work.named_parameters())
    for step in range(1, 6):
        work.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(work(x), torch.arange(len(x)) % 3).backward()
        started.update({n: step for n in waiting - set(started) if params[n].grad is not None
                        and bool(params[n].grad.any())})
        with torch.no_grad():
            for p in params.values():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-0.01)
    return started


def test_the_look_ahead_steps_the_zeros_in_place_as_sgd_of_every_parameter_finds_and_restores_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    from initdiag.recording.lookahead import later_learners

    torch.manual_seed(0)
    model, x = _ZeroChain(), torch.randn(8, 6)
    sentinel = torch.ones(8)
    model.b1.weight.grad = sentinel.expand(8, 8).clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    zero = {"cls": False, "b2.weight": False, "head.weight": True}
    expected = _sgd_reference(model, x, {"cls", "b2.weight"})
    assert expected == {"cls": 2, "b2.weight": 2}  # the theory's chain: one step after the zero head

    def no_copy(*_: object) -> None:
        raise AssertionError("the look-ahead copied the model")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    loss_of = lambda m: nn.functional.cross_entropy(m(x), torch.arange(len(x)) % 3)  # noqa: E731
    started, grads = later_learners(model, loss_of, zero, {"b1", "b2", "head", "embed"})
    assert started == expected
    assert set(grads) == {"b2"} and np.abs(grads["b2"][0]).sum() > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # running stats included
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.b1.weight.grad is not None and torch.equal(model.b1.weight.grad, sentinel.expand(8, 8))
    assert model.head.weight.grad is None


def test_the_look_ahead_takes_its_first_step_from_the_callers_gradients() -> None:
    from initdiag.recording.lookahead import later_learners

    torch.manual_seed(0)
    model, x = _ZeroChain(), torch.randn(8, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _sgd_reference(model, x, {"cls", "b2.weight"})
    loss_of = lambda m: nn.functional.cross_entropy(m(x), torch.arange(len(x)) % 3)  # noqa: E731
    model.norm.eval()  # the caller's pass of the first batch (running statistics as the look-ahead leaves them)
    loss_of(model).backward()
    model.norm.train()
    started, _ = later_learners(model, loss_of, {"cls": False, "b2.weight": False, "head.weight": True},
                                {"b1", "b2", "head", "embed"}, first_grads=True)
    assert started == expected
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())  # consumed, not held beside the look-ahead
