"""The recorder against direct per-channel computations on the same tensors."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initdiag.initializers import InitSpec, apply_initializer
from initdiag.models import seed_cnn
from initdiag.recording import Recorder
from initdiag.recording import moments as _moments
from initdiag.recording.moments import UNIT_ROUNDOFF, channel_moments, sum_error_bound, variance_error_bound

F32_U = 2.0**-24
"""Unit roundoff of float32, the dtype of the tensors the recorder reads."""


def _capture(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and output gradients of every Conv/Linear/ReLU module, captured independently."""
    outs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.ReLU, nn.Tanh)):
            def hook(m: nn.Module, a: object, o: torch.Tensor, name: str = name) -> None:
                outs[name] = o.detach().clone()
                if o.requires_grad:
                    o.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().clone()))
            handles.append(mod.register_forward_hook(hook))
    loss = F.cross_entropy(model(x), torch.arange(len(x)) % 10)
    loss.backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    return outs, grads


def _direct(t: torch.Tensor, cdim: int) -> dict[str, float]:
    y = t.double().movedim(cdim, 0).reshape(t.shape[cdim], -1)
    var = y.var(dim=1, unbiased=False)
    mean = y.mean(dim=1)
    return {"var": var.mean().item(), "mean_sq": (mean**2).mean().item(),
            "zero_frac": (t == 0).double().mean().item(),
            "dead_frac": (y.abs().amax(dim=1) == 0).double().mean().item()}


def _assert_matches_direct(got: dict[str, float], t: torch.Tensor, cdim: int, where: object) -> None:
    """The recorder's ``var``, ``mean_sq`` and ``zero_frac`` of the float32 tensor ``t`` against
    :func:`_direct`, within what float32's rounding of the reference values allows.

    Both sides read the same float32 values and compute in float64. The allowance is one float32 rounding
    of each value, ``y -> y (1 + e)`` with ``|e| <= u = 2^-24`` (what the same layer recomputed in another
    order could change): it moves ``E[y^2]`` by ``<= (2u + u^2) E[y^2]`` and ``mean^2`` by ``<= (2u + u^2)
    E[y^2]`` (``|mean| E|y| <= E[y^2]``), so ``mean_sq`` by ``(2u + u^2) E[y^2]`` and ``var`` by ``(4u +
    2u^2) E[y^2]``, with ``E[y^2] = var + mean_sq``; plus each side's float64 rounding
    (:func:`variance_error_bound`). Rounding keeps zeros zero: ``zero_frac`` differs by float64 division
    rounding only."""
    want = _direct(t, cdim)
    channels = t.shape[cdim]
    n = t.numel() // channels
    second = want["var"] + want["mean_sq"]
    float64 = 2 * variance_error_bound(n, channels, second)
    assert abs(got["var"] - want["var"]) <= (4 * F32_U + 2 * F32_U**2) * second + float64, (where, "var")
    assert abs(got["mean_sq"] - want["mean_sq"]) <= (2 * F32_U + F32_U**2) * second + float64, (where, "mean_sq")
    assert got["zero_frac"] == pytest.approx(want["zero_frac"], rel=0, abs=4 * UNIT_ROUNDOFF), (where, "zero_frac")


def _values(frame: pd.DataFrame, layer: str, kind: str, step: int = 0) -> dict[str, float]:
    rows = frame[(frame.layer == layer) & (frame.kind == kind) & (frame.step == step) & (frame.phase == "train")]
    return dict(zip(rows.stat.astype(str), rows.value, strict=True))


def _seed_cnn(inplace: bool, seed: int) -> nn.Sequential:
    """The seed CNN, He-initialized from ``seed``, with in-place or ordinary ReLUs."""
    model = seed_cnn()
    for i, m in enumerate(model):
        if isinstance(m, nn.ReLU):
            model[i] = nn.ReLU(inplace=inplace)
    apply_initializer(model, InitSpec("he"), seed=seed)
    return model


@pytest.mark.parametrize("inplace", [False, True])
def test_cnn_statistics_equal_direct_per_channel_computation(inplace: bool) -> None:
    torch.manual_seed(0)
    model = _seed_cnn(inplace, seed=1)
    x = torch.rand(16, 1, 28, 28)
    ref_out, ref_grad = _capture(model, x)
    with Recorder(model, max_per_channel=None) as rec:
        F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
    frame = rec.frame()
    assert set(frame.columns) >= {"run", "initializer", "seed", "epoch", "step", "layer", "depth", "kind",
                                  "stat", "value"}
    for name, out in ref_out.items():
        got = _values(frame, name, "forward")
        _assert_matches_direct(got, out, 1, name)
        if isinstance(model.get_submodule(name), nn.ReLU):
            assert got["dead_frac"] == pytest.approx(_direct(out, 1)["dead_frac"])
        if name in ref_grad:
            _assert_matches_direct(_values(frame, name, "backward"), ref_grad[name], 1, (name, "backward"))
    # every Conv/Linear and ReLU has backward statistics (in-place ReLU included)
    layers = {lay.name for lay in rec.layers()}
    assert layers == set(ref_out)
    assert set(frame[frame.kind == "backward"].layer.astype(str)) == layers


def test_weight_and_weight_grad_variance() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(8, 20)
    with Recorder(model) as rec:
        model(x).square().mean().backward()
    frame = rec.frame()
    for name in ("0", "2"):
        lin = model.get_submodule(name)
        assert _values(frame, name, "weight")["var"] == pytest.approx(lin.weight.detach().var(unbiased=False).item(),
                                                                        rel=1e-6)
        assert _values(frame, name, "weight_grad")["var"] == pytest.approx(
            lin.weight.grad.var(unbiased=False).item(), rel=1e-6)


def test_linear_on_sequences_uses_last_dim_as_channel() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.GELU())
    x = torch.randn(3, 7, 6)
    with Recorder(model) as rec:
        y = model(x)
        y.sum().backward()
    frame = rec.frame()
    got = _values(frame, "0", "forward")
    want = _direct(model[0](x).detach(), cdim=2)
    assert got["var"] == pytest.approx(want["var"], rel=1e-5)
    assert got["mean_sq"] == pytest.approx(want["mean_sq"], rel=1e-5)


def _sums_bound(y: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the allowed |difference| of ``sum y`` and ``sum y^2`` between two float64 sums of the
    same float32 values (each within ``sum_error_bound`` of the exact sum)."""
    abs1, sq = y.double().abs().sum(dims), y.double().square().sum(dims)
    n = y.numel() // abs1.numel()
    return (torch.tensor([2 * sum_error_bound(n, m) for m in abs1.tolist()], dtype=torch.float64),
            torch.tensor([2 * sum_error_bound(n, m) for m in sq.tolist()], dtype=torch.float64))


@pytest.mark.parametrize("fast", [True, False], ids=["c-kernel", "torch"])
def test_channels_last_layout_gives_same_statistics(fast: bool) -> None:
    if fast and not _moments.kernel_in_use():
        pytest.skip(_moments.kernel_status())
    torch.manual_seed(0)
    y = torch.randn(4, 5, 6, 7)
    y[0, 1] = 0.0
    bound1, bound2 = _sums_bound(y, (0, 2, 3))
    with contextlib.nullcontext() if fast else _moments.kernel_disabled():
        for layout in (y, y.contiguous(memory_format=torch.channels_last), y.transpose(2, 3)):
            s1, s2, nonzero, count = channel_moments(layout, 1)
            assert torch.all((s1 - y.double().sum((0, 2, 3))).abs() <= bound1)
            assert torch.all((s2 - y.double().square().sum((0, 2, 3))).abs() <= bound2)
            assert nonzero == int(torch.count_nonzero(y))
            assert count == 4 * 6 * 7
        s1, s2, nonzero, count = channel_moments(y.permute(0, 2, 3, 1), 3)  # (batch, H, W, C): C last
        assert torch.all((s1 - y.double().sum((0, 2, 3))).abs() <= bound1)


def test_c_kernel_and_torch_ops_record_the_same_frame() -> None:
    """Every recorded tensor here has at most ``n_max`` values; each path's var and mean_sq are within
    ``variance_error_bound`` of the exact statistics, so of each other within twice that; the fractions
    come from exact counts."""
    if not _moments.kernel_in_use():
        pytest.skip(_moments.kernel_status())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.ReLU())
    model.to(memory_format=torch.channels_last)
    x = torch.randn(6, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    n_max, c_max = 6 * 4 * 6 * 6, 4  # no recorded tensor has more elements (the conv output), nor channels
    frames = []
    for fast in (True, False):
        with contextlib.nullcontext() if fast else _moments.kernel_disabled():
            with Recorder(model) as rec:
                model(x).sum().backward()
                with rec.probe("init"), torch.no_grad():
                    model(x)
        frames.append(rec.frame())
        model.zero_grad(set_to_none=True)
    fast_frame, torch_frame = frames
    assert len(fast_frame) == len(torch_frame) > 0
    key = ["phase", "layer", "kind", "stat"]
    merged = fast_frame.merge(torch_frame, on=[*key, "step"], suffixes=("_c", "_torch"))
    assert len(merged) == len(fast_frame)
    moments_of = merged.pivot_table(index=["phase", "layer", "kind", "step"], columns="stat", values="value_torch",
                                    observed=True)
    second = (moments_of["var"] + moments_of["mean_sq"]).rename("second")
    merged = merged.join(second, on=["phase", "layer", "kind", "step"])
    is_moment = merged.stat.astype(str).isin(["var", "mean_sq"])
    bound = 2 * variance_error_bound(n_max, c_max, 1.0) * merged.second
    assert np.all(np.abs(merged.value_c - merged.value_torch)[is_moment] <= bound[is_moment])
    assert np.array_equal(merged.value_c[~is_moment], merged.value_torch[~is_moment])


def test_every_k_steps_and_epoch_labels() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with Recorder(model, every=3) as rec:
        for epoch in (1, 2):
            rec.epoch = epoch
            for _ in range(4):
                model(torch.randn(5, 4)).sum().backward()
        with torch.no_grad():
            model(torch.randn(5, 4))  # evaluation forwards are not steps and are not recorded
    frame = rec.frame()
    assert sorted(frame.step.unique()) == [0, 3, 6]
    assert dict(frame.groupby("step").epoch.first()) == {0: 1, 3: 1, 6: 2}
    assert set(frame.kind) == {"forward", "backward", "weight", "weight_grad", "update"}


def test_update_rows_are_the_optimizers_change_of_each_recorded_step() -> None:
    """``update`` at step t: var and mean_sq of W_{t+1} - W_t, read at the next forward whatever ran in between
    (here SGD with momentum); the update of the last step has no next forward and is not recorded; a step without an
    optimizer step (gradient accumulation) records a zero update; ``updates=False`` records none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    before: list[torch.Tensor] = []
    with Recorder(model, every=2) as rec:
        for step in range(7):
            before.append(model[2].weight.detach().clone())
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step != 2:
                opt.step()
        before.append(model[2].weight.detach().clone())
    frame = rec.frame()
    rows = frame[(frame.kind == "update") & (frame.layer == "2")]
    assert sorted(rows.step.unique()) == [0, 2, 4]  # step 6's update would be read at an 8th forward
    for step in (0, 2, 4):
        change = (before[step + 1] - before[step]).double()
        got = rows[rows.step == step].set_index("stat").value
        assert got["var"] == pytest.approx(change.var(unbiased=False).item(), rel=1e-5, abs=1e-30)
        assert got["mean_sq"] == pytest.approx(change.mean().item() ** 2, rel=1e-4, abs=1e-30)
    assert rows[rows.step == 2].value.max() == 0.0  # no optimizer step at step 2
    with Recorder(model, updates=False) as quiet:
        for _ in range(2):
            model(x).sum().backward()
    assert "update" not in set(quiet.frame().kind)


def test_probe_phase_records_forward_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with Recorder(model) as rec:
        with rec.probe("init"), torch.no_grad():
            model(torch.randn(10, 4))
    frame = rec.frame()
    assert set(frame.phase) == {"init"}
    assert set(frame.kind) == {"forward"}


def test_module_called_twice_is_recorded_per_call() -> None:
    shared = nn.Linear(5, 5)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = shared
            self.act = nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(self.fc(x)))

    model = Twice()
    x = torch.randn(8, 5)
    with Recorder(model) as rec:
        model(x).sum().backward()
    frame = rec.frame()
    names = [lay.name for lay in rec.layers()]
    assert names == ["fc", "act", "fc@2"]
    assert [lay.depth for lay in rec.layers()] == [0, 0, 1]
    second = shared(torch.tanh(shared(x))).detach()
    assert _values(frame, "fc@2", "forward")["var"] == pytest.approx(_direct(second, 1)["var"], rel=1e-5)
    assert not frame[(frame.layer == "fc@2") & (frame.kind == "backward")].empty


def test_tuple_and_dict_outputs_are_walked() -> None:
    class TupleAct(nn.ReLU):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[override]
            r = super().forward(x)
            return r, {"neg": -r}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.act = TupleAct()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, d = self.act(self.fc(x))
            return a + d["neg"] * 0.5

    model = Net()
    with Recorder(model) as rec:
        model(torch.randn(6, 3)).sum().backward()
    names = {lay.name for lay in rec.layers()}
    assert names == {"fc", "act.0", "act.1.neg"}


def test_hooks_removed_and_model_untouched_even_when_training_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    calls: list[int] = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(1))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), Recorder(model) as rec:
        with torch.enable_grad():
            model(torch.randn(2, 4)).sum().backward()
        raise RuntimeError("boom")
    assert not rec.active
    assert len(model[0]._forward_hooks) == 1  # only the user's own hook
    assert all(not m._forward_hooks for m in list(model)[1:])
    assert not model._forward_pre_hooks
    assert all(not p._backward_hooks for p in model.parameters() if p._backward_hooks is not None)
    assert model.training is False
    model(torch.randn(2, 4))
    assert len(calls) == 2  # the user's hook fired inside and after the recorder
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_zero_init_gives_exact_zero_activations_and_hidden_gradients() -> None:
    model = seed_cnn()
    apply_initializer(model, InitSpec("zeros"), seed=0)
    x = torch.rand(8, 1, 28, 28)
    with Recorder(model) as rec:
        F.cross_entropy(model(x), torch.arange(8) % 10).backward()
    frame = rec.frame()
    fwd = frame[(frame.kind == "forward") & (frame.stat == "var")]
    assert (fwd.value == 0).all()
    fz = frame[(frame.kind == "forward") & (frame.stat == "zero_frac")]
    assert (fz.value == 1).all()
    last = rec.layers()[-1].name
    hidden_grads = frame[(frame.kind == "backward") & (frame.layer != last) & (frame.stat.isin(["var", "mean_sq"]))]
    assert (hidden_grads.value == 0).all()
    assert _values(frame, last, "backward")["var"] > 0  # only the output layer gets a gradient
    assert np.isfinite(frame.value).all()


def test_training_steps_use_the_last_samples_up_to_the_cap_and_probes_use_all() -> None:
    torch.manual_seed(0)
    model = seed_cnn()
    apply_initializer(model, InitSpec("he"), seed=2)
    x = torch.rand(32, 1, 28, 28)
    ref_out, ref_grad = _capture(model, x)
    with Recorder(model, max_per_channel=1000) as rec:
        F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
        with rec.probe("init"), torch.no_grad():
            model(x)
    frame = rec.frame()
    for name, per_sample in (("0", 26 * 26), ("3", 11 * 11), ("6", 3 * 3)):
        keep = min(32, -(-1000 // per_sample))  # 2, 9 and all 32 samples
        got = _values(frame, name, "forward")
        assert got["var"] == pytest.approx(_direct(ref_out[name][-keep:], 1)["var"], rel=1e-5)
        gotg = _values(frame, name, "backward")
        assert gotg["var"] == pytest.approx(_direct(ref_grad[name][-keep:], 1)["var"], rel=1e-5)
        probe = frame[(frame.layer == name) & (frame.phase == "init") & (frame.stat == "var")].value.item()
        assert probe == pytest.approx(_direct(ref_out[name], 1)["var"], rel=1e-5)


def test_saturation_fraction_for_tanh_and_sigmoid() -> None:
    model = nn.Sequential(nn.Linear(10, 50), nn.Tanh(), nn.Linear(50, 50), nn.Sigmoid())
    nn.init.normal_(model[0].weight, std=3.0)
    nn.init.normal_(model[2].weight, std=3.0)
    x = torch.randn(40, 10)
    with Recorder(model, saturation_tol=0.01) as rec:
        model(x).sum().backward()
    frame = rec.frame()
    h = torch.tanh(model[0](x)).detach()
    s = torch.sigmoid(model[2](h)).detach()
    assert _values(frame, "1", "forward")["sat_frac"] == pytest.approx((h.abs() >= 0.99).double().mean().item())
    want = ((s <= 0.01) | (s >= 0.99)).double().mean().item()
    assert _values(frame, "3", "forward")["sat_frac"] == pytest.approx(want)


def test_recurrent_attention_and_embedding_layers_are_weight_layers() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 6)
            self.lstm = nn.LSTM(6, 8, batch_first=True)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq, _ = self.lstm(self.emb(x))
            att, _ = self.attn(seq, seq, seq)  # need_weights: a second, unused output
            return self.head(att.mean(1))

    torch.manual_seed(0)
    model = Net()
    x = torch.randint(0, 20, (5, 7))
    ref_out: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: ref_out.__setitem__(n, o[0] if isinstance(o, tuple) else o))
               for n, m in model.named_children()]
    model(x)
    for h in handles:
        h.remove()
    model.zero_grad()
    with Recorder(model) as rec:
        model(x).square().sum().backward()
    frame = rec.frame()
    layers = rec.layers()
    # the first floating-point output of each (the LSTM's sequence, the attended values), in execution order
    assert [(la.name, la.role, la.depth) for la in layers] == [("emb", "weight", 0), ("lstm", "weight", 1),
                                                             ("attn", "weight", 2), ("head", "weight", 3)]
    assert [la.weight_shape for la in layers] == [None, None, None, (3, 8)]  # theory covers Conv/Linear only
    for la, name in zip(layers, ("emb", "lstm", "attn", "head"), strict=True):
        want = _direct(ref_out[name].detach(), ref_out[name].dim() - 1)["var"]
        assert _values(frame, la.name, "forward")["var"] == pytest.approx(want, rel=1e-5), la.name
        assert _values(frame, la.name, "backward")["var"] > 0, la.name
    weights = {"emb": model.emb.weight, "lstm": model.lstm.weight_ih_l0, "attn": model.attn.in_proj_weight}
    for name, weight in weights.items():
        want = torch.var(weight.detach(), unbiased=False).item()
        assert _values(frame, name, "weight")["var"] == pytest.approx(want, rel=1e-6), name
        assert "var" in _values(frame, name, "weight_grad"), name


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu-inplace"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cap", [None, 1000], ids=["all", "cap"])
def test_every_layer_of_the_seed_cnn_equals_direct_computation_at_every_step(inplace: bool, channels_last: bool,
                                                                             cap: int | None) -> None:
    """Each Conv/Linear layer and ReLU of the seed CNN, forward and backward, at every step, in either memory
    format and with or without the sample cap: the numbers of the tensors themselves."""
    torch.manual_seed(0)
    model = _seed_cnn(inplace, seed=3)
    x = torch.rand(32, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ref_out, ref_grad = _capture(model, x)  # its own hooks, removed before the recorder attaches
    with Recorder(model, max_per_channel=cap) as rec:
        for _ in range(3):  # no optimizer step: every step sees the same tensors
            F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
            model.zero_grad(set_to_none=True)
    frame = rec.frame()
    for name in ref_out:
        per_sample = ref_out[name][0].numel() // ref_out[name].shape[1]
        keep = len(x) if cap is None else min(len(x), -(-cap // per_sample))
        for step in (0, 1, 2):
            got = _values(frame, name, "forward", step)
            _assert_matches_direct(got, ref_out[name][-keep:], 1, (name, step))
            _assert_matches_direct(_values(frame, name, "backward", step), ref_grad[name][-keep:], 1,
                                   (name, step, "backward"))
            if isinstance(model.get_submodule(name), nn.ReLU):
                assert got["dead_frac"] == pytest.approx(_direct(ref_out[name][-keep:], 1)["dead_frac"])


def test_a_layer_whose_output_another_hook_reads_gets_its_whole_gradient() -> None:
    """An activation penalty taken in a user's forward hook adds to dL/dy of the layer: its whole gradient is
    recorded, not only what flows back through the ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    taken: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda m, a, o: taken.append(o))
    x = torch.randn(20, 12)
    grads: list[torch.Tensor] = []
    with Recorder(model) as rec:
        for _ in range(3):
            taken.clear()
            out = model(x)
            taken[0].register_hook(lambda g: grads.append(g.detach().clone()))
            (out.square().mean() + taken[0].square().mean()).backward()
            model.zero_grad(set_to_none=True)
    for step in (0, 1, 2):
        got = _values(rec.frame(), "0", "backward", step)
        assert got["var"] == pytest.approx(_direct(grads[step], 1)["var"], rel=1e-5)


def test_a_relu_that_shares_its_input_with_other_ops_leaves_the_layer_its_whole_gradient() -> None:
    """A custom forward, and a Sequential whose modules another forward calls one by one, both adding the layer's
    output to the ReLU's."""

    class Skip(nn.Module):
        def __init__(self, fc: nn.Module, act: nn.Module) -> None:
            super().__init__()
            self.fc, self.act = fc, act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return self.act(h) + h

    class ByHand(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.seq[0](x)
            return self.seq[1](h) + h

    torch.manual_seed(0)
    x = torch.randn(10, 8)
    for model in (Skip(nn.Linear(8, 8), nn.ReLU()), ByHand()):
        fc, act = (model.fc, model.act) if isinstance(model, Skip) else (model.seq[0], model.seq[1])
        h = fc(x).detach().requires_grad_()
        (act(h) + h).square().mean().backward()
        want = _direct(h.grad, 1)["var"]
        model.zero_grad(set_to_none=True)
        with Recorder(model) as rec:
            for _ in range(3):
                model(x).square().mean().backward()
                model.zero_grad(set_to_none=True)
        name = "fc" if isinstance(model, Skip) else "seq.0"
        assert _values(rec.frame(), name, "backward", 2)["var"] == pytest.approx(want, rel=1e-5)


def test_activations_are_freed_with_the_graph() -> None:
    """Hooks hold nothing that keeps a step's activations alive after its backward pass: a hook that held
    an output would make a cycle through autograd's C++ graph (node -> hook -> output -> node), which
    not even the garbage collector frees (it once cost 15% per step in page faults)."""
    import gc
    import weakref

    torch.manual_seed(0)
    model = seed_cnn()
    x = torch.rand(16, 1, 28, 28)
    opt = torch.optim.Adam(model.parameters())
    relu_outputs: list[weakref.ref[torch.Tensor]] = []
    for i, module in enumerate(model):  # the ReLU outputs as the next module (MaxPool, Flatten, Linear) sees them
        if i > 0 and isinstance(model[i - 1], nn.ReLU):
            module.register_forward_hook(lambda m, a, o: relu_outputs.append(weakref.ref(a[0])))
    gc.disable()
    try:
        with Recorder(model) as rec:
            for _ in range(4):
                F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        assert len(relu_outputs) == 4 * 4
        assert [r() is None for r in relu_outputs] == [True] * len(relu_outputs)
    finally:
        gc.enable()
    assert len(rec.frame()) > 0


def test_passes_while_paused_are_no_steps_and_record_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    with Recorder(model, every=1) as rec:
        model(x).sum().backward()
        with rec.paused():
            for _ in range(3):
                model(x).sum().backward()
        model(x).sum().backward()
    frame = rec.frame()
    assert rec.step == 1 and sorted(frame["step"].unique()) == [0, 1]
    alone = Recorder(model, every=1)
    with alone:
        for _ in range(2):
            model(x).sum().backward()
    assert len(frame) == len(alone.frame())  # the same rows as two passes with no pause between them
