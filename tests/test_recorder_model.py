"""The recorder leaves the user's model as it was (class, hooks, mode), lets the user's hooks, tracing and
pickling work as without it, counts steps once per forward, and its one reduction gives the same numbers
through the compiled kernel as through its torch twin."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initdiag.initializers import InitSpec, apply_initializer
from initdiag.recording import Recorder
from initdiag.recording import moments as _moments


def _cnn(inplace: bool = True) -> nn.Sequential:
    model = nn.Sequential(
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


CNN_SIZES = {"n_max": 32 * 16 * 11 * 11, "c_max": 32}
"""Most values per channel (the Linear weight, one channel) and most channels of :func:`_cnn`'s tensors."""


def _assert_same_frames(a: pd.DataFrame, b: pd.DataFrame, n_max: int, c_max: int) -> None:
    """Same rows; ``var`` and ``mean_sq`` within twice ``variance_error_bound`` (each path is within it of the
    exact statistics) for tensors of at most ``n_max`` values per channel and ``c_max`` channels, with
    ``E[y^2] = var + mean_sq``; the fractions, from exact counts, equal."""
    keys = ["step", "phase", "layer", "kind", "stat"]
    a = a.astype({"layer": str, "kind": str, "stat": str, "phase": str}).sort_values(keys).reset_index(drop=True)
    b = b.astype({"layer": str, "kind": str, "stat": str, "phase": str}).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    groups = keys[:-1]
    second = b[b.stat.isin(["var", "mean_sq"])].groupby(groups).value.sum().rename("second")
    bound = 2 * _moments.variance_error_bound(n_max, c_max, 1.0) * b.join(second, on=groups).second
    moment = b.stat.isin(["var", "mean_sq"]).to_numpy()
    diff = (a.value - b.value).abs().to_numpy()
    assert np.all(diff[moment] <= bound.to_numpy()[moment])
    assert np.array_equal(a.value.to_numpy()[~moment], b.value.to_numpy()[~moment], equal_nan=True)


@pytest.mark.parametrize("inplace", [True, False], ids=["relu-inplace", "relu"])
def test_the_compiled_kernel_and_its_torch_twin_record_the_same_frame(inplace: bool) -> None:
    """Batches of 24, 24, 24 and a last one of 10 (a new layout), once through the kernel, once through torch."""
    if not _moments.kernel_in_use():
        pytest.skip(_moments.kernel_status())
    batches = [24, 24, 24, 10, 24]
    _, with_kernel = _train(_cnn(inplace), batches)
    with _moments.kernel_disabled():
        _, with_torch = _train(_cnn(inplace), batches)
    _assert_same_frames(with_kernel, with_torch, **CNN_SIZES)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last", "strided", "float64", "narrowed", "1-d"])
def test_reduce_gives_the_torch_twins_sums_for_every_layout(layout: str) -> None:
    torch.manual_seed(0)
    y = torch.randn(6, 5, 4, 3)
    y = {"contiguous": y, "channels-last": y.contiguous(memory_format=torch.channels_last),
         "strided": y[:, :, ::2], "float64": y.double(), "narrowed": y[1:], "1-d": y.reshape(-1)[::3]}[layout]
    cdim = -1 if layout == "1-d" else 1
    for cap in (None, 16):
        out = torch.zeros(1, 2 * (1 if cdim < 0 else 5) + 2, dtype=torch.float64)
        count = _moments.reduce(y, cdim, cap, out, 0, mid=0.5, thr=1.0)
        v = _moments.channel_view(_moments.last_samples(y, cdim, cap), cdim)
        want = _moments.moments_torch(v, 0.5, 1.0)
        assert count == v.shape[0] * v.shape[2]
        # each path's float64 sums are within sum_error_bound of the exact ones; the counts are exact
        direct = v.double()
        magnitudes = torch.cat((direct.abs().sum((0, 2)), direct.square().sum((0, 2)))).tolist()
        bound = np.array([2 * _moments.sum_error_bound(count, m) for m in magnitudes])
        assert np.all(np.abs(out[0, :-2].numpy() - want[:-2].numpy()) <= bound)
        assert out[0, -2:].tolist() == want[-2:].tolist()
        assert want[: v.shape[1]].numpy() == pytest.approx(direct.sum((0, 2)).numpy(), rel=1e-12)
        assert want[-2].item() == (direct != 0).sum().item()
        assert want[-1].item() == ((direct - 0.5).abs() >= 1.0).sum().item()


def test_the_model_is_given_back_as_it_was_even_when_training_raises() -> None:
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = inner
            self.head = nn.Sequential(nn.Linear(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    model = Net()
    model.head.eval()
    text, state = repr(model), copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="boom"), Recorder(model):
        assert type(model.body) is nn.Sequential and repr(model) == text
        model(torch.randn(3, 4)).sum().backward()
        raise RuntimeError("boom")
    assert type(model.body) is nn.Sequential and type(model.head) is nn.Sequential
    assert model.training and not model.head.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_pickling_or_copying_during_recording_works_as_without_it() -> None:
    """(A module with the recorder's hooks cannot be pickled, as with any hook made by a closure; a
    Sequential without recorded layers can once the first forward has shown the structure (until then the
    structure probe hooks every module), and a copy of anything can.)"""
    tail = nn.Sequential(nn.Flatten(), nn.Dropout(0.0))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), tail)
    x = torch.rand(2, 1, 8, 8)
    with Recorder(model):
        model(x)
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
    _assert_same_frames(a.frame(), b.frame(), **CNN_SIZES)


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_a_recorded_training_ends_with_the_same_bits_as_an_unrecorded_one(path: str) -> None:
    """The recorder reads the model and writes only its own buffers (the kernel writes rows through raw
    addresses, the update copies go to buffers kept from step to step): Adam on the same batches, every step
    recorded with updates, on channels-last and NCHW copies, ends with every parameter and buffer bitwise
    equal to the same training without it."""
    if path == "kernel" and not _moments.kernel_in_use():
        pytest.skip(_moments.kernel_status())

    def train(model: nn.Module, recorded: bool) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with Recorder(model, every=1, max_per_channel=64) if recorded else contextlib.nullcontext():
            for _ in range(6):
                x = torch.rand(12, 1, 28, 28, generator=g)
                F.cross_entropy(model(x), torch.randint(0, 10, (12,), generator=g)).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    with _moments.kernel_disabled() if path == "torch" else contextlib.nullcontext():
        for fmt in (torch.contiguous_format, torch.channels_last):
            base = _cnn().to(memory_format=fmt)
            plain, recorded = train(copy.deepcopy(base), False), train(copy.deepcopy(base), True)
            assert plain.keys() == recorded.keys()
            assert all(torch.equal(plain[k], recorded[k]) for k in plain)
