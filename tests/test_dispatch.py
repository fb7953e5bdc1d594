"""Direct hook dispatch in nn.Sequential (initdiag._dispatch) and the C hot path: same numbers as torch's own
hook dispatch, the model given back as it was, the user's hooks, tracing and pickling unaffected."""

from __future__ import annotations

import copy
import io

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initdiag import _dispatch, _moments
from initdiag._dispatch import RecordingSequential
from initdiag.initializers import InitSpec, apply_initializer
from initdiag.recorded import Kind
from initdiag.recorder import Recorder


class _Sub(nn.Sequential):
    """A Sequential subclass: the recorder leaves it alone, so torch dispatches every hook itself."""


def _cnn(cls: type[nn.Sequential] = nn.Sequential, inplace: bool = True) -> nn.Sequential:
    model = cls(
        nn.Conv2d(1, 8, 3), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(inplace=inplace), nn.Flatten(),
        nn.Linear(16 * 11 * 11, 32), nn.ReLU(inplace=inplace), nn.Linear(32, 10),
    )
    apply_initializer(model, InitSpec("he"), seed=0)
    return model


def _train(model: nn.Module, batches: list[int], **kwargs: object) -> tuple[Recorder, pd.DataFrame]:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, **kwargs) as rec:  # type: ignore[arg-type]
        for n in batches:
            x = torch.rand(n, 1, 28, 28)
            F.cross_entropy(model(x), torch.arange(n) % 10).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return rec, rec.frame()


def _assert_same_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    keys = ["step", "phase", "layer", "kind", "stat"]
    a = a.astype({"layer": str, "kind": str, "stat": str, "phase": str}).sort_values(keys).reset_index(drop=True)
    b = b.astype({"layer": str, "kind": str, "stat": str, "phase": str}).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    assert a.value.to_numpy() == pytest.approx(b.value.to_numpy(), rel=1e-6, abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("inplace", [True, False], ids=["relu-inplace", "relu"])
def test_direct_dispatch_and_pairs_record_what_torch_hooks_record(inplace: bool) -> None:
    """Batches of 24, 24, 24 and a last one of 10 (a new layout: the general path again), with and without
    the recorder's own dispatch: the same rows, the same numbers."""
    batches = [24, 24, 24, 10, 24]
    rec, direct = _train(_cnn(nn.Sequential, inplace), batches)
    ref_rec, by_torch = _train(_cnn(_Sub, inplace), batches)
    if _moments.FAST_KERNEL is not None:
        assert rec.fused_calls == 2 * 3  # steps 1 and 2; 3 and 4 each see a layout other than the last one
    assert ref_rec.fused_calls == 0
    _assert_same_frames(direct, by_torch)


def test_a_backward_the_c_path_cannot_read_falls_back_to_the_general_one() -> None:
    """A pair's backward hook (``_fastmoments.pair_grads``) hands a gradient without a known layout to
    ``Recorder._push``: here the layouts are forgotten between the forward and the backward pass."""
    if _moments.FAST_KERNEL is None:
        pytest.skip("the C kernel is not built")
    model, reference = _cnn(), _cnn(_Sub)
    torch.manual_seed(1)
    x = torch.rand(16, 1, 28, 28)
    with Recorder(model) as rec, Recorder(reference) as ref:
        for _ in range(3):
            outs = model(x), reference(x)
            if rec.step == 2:
                for layer in rec._layers:
                    layer.sites.pop(Kind.BACKWARD, None)
            for out in outs:
                F.cross_entropy(out, torch.arange(16) % 10).backward()
            model.zero_grad(set_to_none=True)
            reference.zero_grad(set_to_none=True)
    assert rec.fused_calls == 2 * 3
    _assert_same_frames(rec.frame(), ref.frame())


def test_the_model_is_a_plain_sequential_again_after_recording_even_when_training_raises() -> None:
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = inner
            self.head = nn.Sequential(nn.Linear(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    model = Net()
    text = repr(model)
    with pytest.raises(RuntimeError, match="boom"), Recorder(model):
        assert type(model.body) is RecordingSequential and isinstance(model.body, nn.Sequential)
        assert repr(model) == text
        model(torch.randn(3, 4)).sum().backward()
        raise RuntimeError("boom")
    assert type(model.body) is nn.Sequential and type(model.head) is nn.Sequential


def test_pickling_or_copying_during_recording_gives_a_plain_sequential() -> None:
    """(A module with the recorder's hooks cannot be pickled, as with any hook made by a closure; a
    Sequential without recorded layers can, and a copy of anything can.)"""
    tail = nn.Sequential(nn.Flatten(), nn.Dropout(0.0))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), tail)
    x = torch.rand(2, 1, 8, 8)
    with Recorder(model):
        assert type(tail) is RecordingSequential
        buffer = io.BytesIO()
        torch.save(tail, buffer)
        twin = copy.deepcopy(model)
    assert b"initdiag" not in buffer.getvalue()  # loads where initdiag is not installed
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False)) is nn.Sequential
    assert type(twin) is nn.Sequential and type(twin[2]) is nn.Sequential
    assert torch.equal(twin(x), model(x))


def test_the_users_hooks_run_as_torch_runs_them() -> None:
    """A pre-hook that changes the input, a hook that replaces an output, a global hook and a backward hook:
    each module with one of them is called as usual, and the outputs are those without the recorder."""
    model = _cnn()
    seen: list[str] = []
    model[0].register_forward_pre_hook(lambda m, a: (a[0] * 2,))
    model[3].register_forward_hook(lambda m, a, o: o * 0.5)
    model[8].register_full_backward_hook(lambda m, gi, go: seen.append("backward"))
    x = torch.rand(4, 1, 28, 28)
    want = model(x)
    with Recorder(model) as rec:
        got = model(x)
        got.sum().backward()
    assert torch.allclose(got, want) and seen == ["backward"]
    global_handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: seen.append("global"))
    try:
        with Recorder(model) as with_global:
            assert torch.allclose(model(x), want)
    finally:
        global_handle.remove()
    assert seen.count("global") == len(list(model.modules()))
    assert with_global.step == 0 and (with_global.frame().kind == "forward").sum() > 0  # a step, recorded
    frame = rec.frame()
    conv1 = frame[(frame.layer == "3") & (frame.kind == "forward") & (frame.stat == "mean_sq")].value.item()
    with torch.no_grad():
        y = model[3](model[2](model[1](model[0](x))))
    assert conv1 == pytest.approx(y.mean(dim=(0, 2, 3)).square().mean().item(), rel=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_tracing_during_recording_sees_every_module_call() -> None:
    model = _cnn()
    x = torch.rand(2, 1, 28, 28)
    with Recorder(model) as rec:
        model(x).sum().backward()  # a recorded step before the traces: tracing must not be recorded
        graph = torch.fx.symbolic_trace(model)
        traced = torch.jit.trace(model, x)
        assert rec.step == 0  # tracing is not a training step
        model(x).sum().backward()
    assert [n.target for n in graph.graph.nodes if n.op == "call_module"] == [str(i) for i in range(9)]
    assert torch.allclose(traced(x), model(x))
    assert set(rec.frame().step) == {0, 1}


def test_steps_are_counted_once_per_forward_with_grad_whatever_the_root() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.seq(x)

    for model in (nn.Sequential(nn.Linear(3, 3), nn.ReLU()), Net()):
        with Recorder(model) as rec:
            for _ in range(3):
                model(torch.randn(2, 3)).sum().backward()
            with torch.no_grad():
                model(torch.randn(2, 3))
        assert rec.step == 2, type(model).__name__


def test_two_recorders_on_one_model_record_the_same() -> None:
    model = _cnn()
    x = torch.rand(8, 1, 28, 28)
    with Recorder(model) as a, Recorder(model) as b:
        for _ in range(3):
            F.cross_entropy(model(x), torch.arange(8) % 10).backward()
            model.zero_grad(set_to_none=True)
    assert type(model) is nn.Sequential
    _assert_same_frames(a.frame(), b.frame())


@pytest.mark.skipif(_moments.FAST_KERNEL is None, reason="the C kernel is not built")
def test_tap_writes_what_moments_writes_and_refuses_another_layout() -> None:
    kernel = _moments.FAST_KERNEL
    y = torch.randn(6, 5, 4, 3).relu()
    g, c, p, sg, sc, sp, count, offset = _moments.kernel_geometry(tuple(y.shape), y.stride(), 1, None)
    stream, relu_stream = (_moments.Stream(2 * c + 2, torch.device("cpu"), 4) for _ in range(2))
    site = (y.shape, y.stride(), stream, g, c, p, sg, sc, sp, count, 4 * offset, 0.0, -1.0)
    relu_site = (y.shape, y.stride(), relu_stream, *site[3:])
    assert kernel.tap(y - 0.5, site, 7, 2, relu_site) is True
    want = torch.zeros(1, 2 * c + 2, dtype=torch.float64)
    _moments.moments_into(_moments.channel_view(y - 0.5, 1), want, 0)
    assert torch.equal(stream.buffer[0], want[0])
    _moments.moments_into(_moments.channel_view((y - 0.5).relu(), 1), want, 0)
    assert torch.allclose(relu_stream.buffer[0], want[0])
    assert stream.meta == relu_stream.meta == [(7, 2, "train", count)]
    for refused in (y.contiguous(memory_format=torch.channels_last), y.double(), y[:, :, :2]):
        assert kernel.tap(refused, site, 8, 2) is False
    assert kernel.tap(y, None, 8, 2) is False
    assert stream.n == 1
    while not stream.full:
        assert kernel.tap(y, site, 9, 2) is True
    assert kernel.tap(y, site, 10, 2) is False
    assert stream.n == stream.capacity and [m[0] for m in stream.meta][-1] == 9


@pytest.mark.skipif(_moments.FAST_KERNEL is None, reason="the C kernel is not built")
def test_weights_reads_weights_and_gradients_or_nothing() -> None:
    kernel = _moments.FAST_KERNEL
    layers = [nn.Linear(5, 4), nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)]
    for layer in layers:
        layer.weight.grad = torch.randn_like(layer.weight)
    weights = [layer.weight for layer in layers]
    sizes = tuple(w.numel() for w in weights)
    ws, gs = (_moments.Stream(8, torch.device("cpu"), 4) for _ in range(2))
    assert kernel.weights(ws, gs, 3, 1, weights, sizes) is True
    for j, w in enumerate(weights):
        for stream, t in ((ws, w.detach()), (gs, w.grad)):
            row = stream.buffer[0].view(2, 4)[j]
            assert row[0].item() == pytest.approx(t.double().sum().item(), rel=1e-6, abs=1e-9)
            assert row[1].item() == pytest.approx(t.double().square().sum().item(), rel=1e-6)
            assert row[2].item() == t.count_nonzero().item()
    assert ws.meta == gs.meta == [(3, 1, "train", 0)]
    layers[1].weight.grad = None
    assert kernel.weights(ws, gs, 4, 1, weights, sizes) is False
    layers[1].weight.grad = torch.randn_like(layers[1].weight)
    assert kernel.weights(ws, gs, 4, 1, weights, (sizes[0], sizes[1] + 1)) is False
    assert ws.n == gs.n == 1


def test_dispatch_switched_off_leaves_every_hook_to_torch() -> None:
    """benchmarks/overhead.py --compare-dispatch measures the short path against this."""
    was = _dispatch.use_dispatch(False)
    try:
        model = _cnn()
        rec, by_torch = _train(model, [12, 12, 12])
    finally:
        _dispatch.use_dispatch(was)
    assert rec.fused_calls == 0 and type(model) is nn.Sequential
    _assert_same_frames(by_torch, _train(_cnn(), [12, 12, 12])[1])
