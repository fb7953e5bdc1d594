"""Mechanisms that keep verdicts right on designs nobody tuned the audit for, each on a small hand-built model
that reproduces the pattern: inputs that do not depend on the data, gradients that the structure (not the
initialization) zeroes, a zero normalization scale's shadow, homogeneous chains whose forward scale is a
constant factor, branches that start small, and streams judged on what was measured. Each answer is the one
theory gives (He et al. 2015; De & Smith 2020; Zhang et al. 2019)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import initdiag
from initdiag.results import AuditRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(model: nn.Module, **kw: object) -> AuditRun:
    torch.manual_seed(0)
    options = {"batches": 1, "batch_size": 8, **kw}
    return initdiag.audit(model, **options).runs[0]  # type: ignore[arg-type]


def _signal(run: AuditRun, kind: str) -> initdiag.Verdict:
    return next(v for v in run.verdicts if v.check == "signal" and v.signal == kind)


class _ClassToken(nn.Module):
    """Patch features plus a learned class token, normalized together; a query projection reads the class token
    only (its input is the same for every sample), a key projection reads every token."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(16, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1)
        tokens = self.norm(tokens)
        q = self.q(tokens[:, :1])
        k = self.k(tokens)
        attn = (q @ k.transpose(1, 2) / k.shape[-1] ** 0.5).softmax(-1)
        return self.head((attn @ tokens).squeeze(1))


def test_a_layer_reading_a_learned_token_has_a_constant_input_by_design() -> None:
    run = _run(_ClassToken(), input_shape=(6, 16))
    q = next(la for la in run.layers if la.name == "q")
    assert q.constant_input  # decided from the values: the class token row is equal over the batch
    assert "no_signal" not in run.failed, [v.message for v in run.verdicts if v.status == "fail"]


class _TupleEmbedding(nn.Module):
    """An embedding module that returns ``(values, scale)``, as quantized embeddings do."""

    def __init__(self, n: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, width))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nn.functional.embedding(ids, self.weight), self.weight.abs().max()


class _TypedTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(50, 32)
        self.types = _TupleEmbedding(2, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        types, _ = self.types(torch.zeros_like(ids))
        return self.head(self.tokens(ids) + types).mean(1)


def test_a_weight_layer_with_a_tuple_output_is_recorded_under_its_own_name() -> None:
    run = _run(_TypedTokens(), input_shape=(6,), input_dtype="long", vocab=50)
    names = [la.name for la in run.layers]
    assert "types" in names and not any(n.startswith("types.") for n in names)
    assert next(la for la in run.layers if la.name == "types").constant_input
    assert "no_signal" not in run.failed


class _OneKeyAttention(nn.Module):
    """Attention whose keys are pooled to a single token: the softmax over one element is 1 whatever the query,
    so the query projection gets no gradient from any loss, by the model's structure."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(16, width)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        pooled = h.mean(1, keepdim=True)
        attn = (self.q(h) @ self.k(pooled).transpose(1, 2)).softmax(-1)
        return self.head((attn @ self.v(pooled)).mean(1))


class _DiscardedCall(nn.Module):
    """One shared projection applied to two inputs, a top-1 selection keeping one of them per sample: the call
    whose output is never selected gets no gradient, the shared weight gets one through the other call."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(16, 32)
        self.proj = nn.Linear(32, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.proj(torch.relu(self.trunk(x)))
        b = self.proj(torch.relu(self.trunk(-x)) * 0.0 - 100.0)  # always scores lower
        both = torch.stack([a, b], 1)
        pick = both.sum(-1).argmax(1)
        return self.head(both[torch.arange(x.shape[0]), pick])


def test_a_gradient_the_structure_zeroes_is_not_an_initialization_failure() -> None:
    run = _run(_OneKeyAttention(), input_shape=(6, 16))
    assert "no_signal" not in run.failed
    back = _signal(run, "backward")
    assert back.status == "warn" and "q" in back.layers and "structure" in back.message
    shared = _run(_DiscardedCall(), input_shape=(16,))
    assert shared.failed == () or "no_signal" not in shared.failed, shared.failed
    # a zero weight downstream zeroes the gradient and silences the forward too: that still fails
    model = _OneKeyAttention()
    with torch.no_grad():  # two zero layers in a row: neither gets a gradient, neither learns
        for layer in (model.v, model.head):
            layer.weight.zero_()
            layer.bias.zero_()
    assert "no_signal" in _run(model, input_shape=(6, 16)).failed


class _SilentSideHead(nn.Module):
    """A side head run first whose output is its bias up to float rounding (RetinaNet's prior-bias logits at its
    coarsest level), then the one-key attention: the side head's silence cannot reach the query's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Sequential(*(m for _ in range(3) for m in (nn.Linear(16, 16), nn.ReLU())), nn.Linear(16, 5))
        with torch.no_grad():
            for layer in self.side[::2]:
                nn.init.normal_(layer.weight, std=0.01)  # Detectron's RetinaNet head: std 0.01, a prior bias
                layer.bias.zero_()
            self.side[-1].bias.fill_(-4.6)
        self.main = _OneKeyAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.side(x.mean(1))
        return self.main(x) + side


def test_a_forward_silence_that_ran_before_a_zero_gradient_does_not_explain_it() -> None:
    run = _run(_SilentSideHead(), input_shape=(6, 16))
    forward = _signal(run, "forward")
    assert forward.status == "fail" and "no signal" in forward.message and "side.6" in forward.message
    (query,) = [c for c in _signal(run, "backward").details["chains"] if c["layers"][-1] == "main.q"]
    assert query["outcome"] == "no_signal" and query["status"] == "warn", query


class _ZeroScaleBlock(nn.Module):
    """``x + se(bn(conv(x)))`` with the BatchNorm's scale zero (zero_init_last): the squeeze-excite after it sees
    a zero input and learns from step 2 on."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn.weight)
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return torch.relu(x + y * gate)


def test_layers_after_a_zero_normalization_scale_inherit_its_explanation() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _ZeroScaleBlock(), _ZeroScaleBlock(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    run = _run(model, input_shape=(3, 8, 8))
    assert "no_signal" not in run.failed, [v.message for v in run.verdicts if v.status == "fail"]


def _widening(std: float | None) -> nn.Sequential:
    """A plain ReLU conv net that widens 8 -> 128 with zero biases and a Linear head; ``std=None``: as torchvision's
    and timm's VGG, He fan-out convolutions (each widening 2x halves the forward variance, the backward per
    element is preserved) and a head at N(0, 0.01) (x0.006 forward); else every weight N(0, std^2)."""
    torch.manual_seed(0)
    widths = [3, 8, 16, 32, 64, 128, 128, 128]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        conv = nn.Conv2d(a, b, 3, padding=1)
        if std is None:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        else:
            nn.init.normal_(conv.weight, std=std)
        nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        layers += [conv, nn.ReLU()]
    head = nn.Linear(128, 10)
    nn.init.normal_(head.weight, std=0.01 if std is None else std)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_a_homogeneous_chain_with_a_preserved_gradient_is_not_vanishing() -> None:
    run = _run(_widening(None), input_shape=(3, 8, 8))
    forward = _signal(run, "forward")
    assert forward.status == "pass" and "homogeneous" in forward.message, forward.message
    assert _signal(run, "backward").status == "pass"
    # the classic small init shrinks both directions: still vanishing
    small = _run(_widening(0.01), input_shape=(3, 8, 8))
    assert {"vanishing", "no_signal"} & set(small.failed), small.failed


class _Branchy(nn.Module):
    """A pre-norm residual MLP of ``blocks`` blocks, each branch ``depth`` Linear layers of ``width`` at
    ``std`` (Hugging Face's 0.02: a per-layer gain of ~width * 0.02^2 / 2)."""

    def __init__(self, std: float, width: int = 64, depth: int = 3, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.blocks = nn.ModuleList(_Block(width, depth, std) for _ in range(blocks))
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


class _Block(nn.Module):
    def __init__(self, width: int, depth: int, std: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fcs = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for fc in self.fcs:
            nn.init.normal_(fc.weight, std=std)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        for i, fc in enumerate(self.fcs):
            y = fc(y) if i == len(self.fcs) - 1 else torch.relu(fc(y))
        return x + y


def test_a_branch_that_starts_small_passes_and_one_that_explodes_fails_at_any_length() -> None:
    torch.manual_seed(0)
    small = _run(_Branchy(0.02), input_shape=(16,))
    assert not {"vanishing", "no_signal"} & set(small.failed), [v.message for v in small.verdicts]
    torch.manual_seed(0)
    big = _run(_Branchy(1.0, width=512, depth=2), input_shape=(16,))  # ~256x per layer: it swamps the stream
    forward = _signal(big, "forward")
    assert forward.status == "fail" and forward.outcome == "exploding", forward.message


class _SmallEmbeddingStack(nn.Module):
    """Two pre-norm blocks on an embedding at std 0.001, the first branch small (std 0.02), the second at He:
    the second block adds a branch ~1e6x the stream's variance (``1 + b / v``: additive, a normalized branch's
    output does not depend on the stream's scale), which one or two ratios cannot tell from geometric growth."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, width)
        nn.init.normal_(self.emb.weight, std=0.001)
        self.blocks = nn.ModuleList([_Block(width, 2, 0.02), _Block(width, 2, (2 / width) ** 0.5)])
        self.head = nn.Linear(width, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for b in self.blocks:
            h = b(h)
        return self.head(h).mean(1)


def test_a_stream_of_two_blocks_on_a_small_embedding_is_not_judged_geometric() -> None:
    run = _run(_SmallEmbeddingStack(), input_shape=(6,), input_dtype="long", vocab=50)
    stream = next(v for v in run.verdicts if v.check == "stream" and v.signal == "forward")
    assert stream.effect["late_gain"] > 1e4  # type: ignore[operator]  # the ratio alone would fail it
    assert stream.status == "warn" and "within-stage step" in stream.message, stream.message


class _Pyramid(nn.Module):
    """Two feature-pyramid levels: the top lateral conv feeds its level's output conv and, upsampled, the level
    below; the loss weighs the top level's output by 1e-4. The top lateral's gradient is the sum of both
    consumers', so (lateral, output conv) is no chain backward."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Conv2d(3, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.inner2, self.inner3 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.out2, self.out3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f2 = torch.relu(self.c2(x))
        f3 = torch.relu(self.c3(f2))
        l3 = self.inner3(f3)
        l2 = self.inner2(f2) + nn.functional.interpolate(l3, size=f2.shape[-2:])
        return self.out2(l2).mean((2, 3)) + 1e-4 * self.out3(l3).mean((2, 3))


def test_a_layer_whose_output_feeds_two_paths_ends_its_chain_backward() -> None:
    run = _run(_Pyramid(), input_shape=(3, 8, 8))
    backward = _signal(run, "backward")
    assert backward.status == "pass", backward.message
    chains = {tuple(c["layers"]) for c in backward.details["chains"]}
    assert ("inner3", "out3") not in chains


def _bn_net(conv_std: float | None) -> nn.Sequential:
    """Conv-BatchNorm-ReLU x4, a Linear head at PyTorch's default; convs He (None) or N(0, conv_std^2)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in ((3, 16), (16, 16), (16, 32), (32, 32)):
        conv = nn.Conv2d(a, b, 3, padding=1, bias=False)
        if conv_std is None:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        else:
            nn.init.normal_(conv.weight, std=conv_std)
        layers += [conv, nn.BatchNorm2d(b), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_n01_convs_in_a_batch_normalized_net_are_absorbed_by_the_batchnorm() -> None:
    """BN(a x) = BN(x) for a > 0 (Ioffe & Szegedy 2015): N(0, 1) convs (x ~fan_in in variance) reach the next
    layer exactly as He's do, so the verdicts are the same; what is left is the head's scale, which no conv sets."""
    runs = {std: _run(_bn_net(std), input_shape=(3, 8, 8)) for std in (None, 1.0)}
    verdicts = {std: {(v.check, v.signal): (v.outcome, v.status) for v in run.verdicts if v.check == "signal"}
                for std, run in runs.items()}
    assert verdicts[None] == verdicts[1.0] and all(s == "pass" for _, s in verdicts[1.0].values()), verdicts
    frames = {std: run.frame for std, run in runs.items()}
    bn_out = {std: f[(f.layer == "2") & (f.kind == "forward") & (f.stat == "var") & (f.phase == "train")]["value"]
              .iloc[0] for std, f in frames.items()}
    conv_out = {std: f[(f.layer == "0") & (f.kind == "forward") & (f.stat == "var") & (f.phase == "train")]["value"]
                .iloc[0] for std, f in frames.items()}
    assert conv_out[1.0] / conv_out[None] > 5  # N(0, 1) vs He 2/27: ~13x larger conv output
    assert bn_out[1.0] == pytest.approx(bn_out[None], rel=1e-3)  # and the same after BatchNorm and ReLU


class _Fixup(nn.Module):
    """Fixup (Zhang et al. 2019): residual MLP blocks ``x + fc2(relu(fc1(x)))`` with fc1 He scaled by
    ``blocks ** -0.5`` and fc2 zero, and a zero classifier: at step 1 only the classifier gets a gradient, the
    branches' last layers from step 2."""

    def __init__(self, width: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.fc1 = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        for a, b in zip(self.fc1, self.fc2, strict=True):
            nn.init.kaiming_normal_(a.weight, nonlinearity="relu")
            a.weight.data.mul_(blocks ** -0.5)
            nn.init.zeros_(b.weight)
            nn.init.zeros_(b.bias)
        self.head = nn.Linear(width, 10)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for a, b in zip(self.fc1, self.fc2, strict=True):
            h = h + b(torch.relu(a(h)))
        return self.head(h)


class _Adapter(nn.Module):
    """A trunk with an adapter: a zero convolution in, a trainable block, a zero convolution out (as ControlNet
    attaches its copy). The out conv learns from step 1, the in conv from step 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.zero_in = nn.Conv2d(3, 8, 1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.zero_out = nn.Conv2d(8, 8, 1)
        for z in (self.zero_in, self.zero_out):
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)  # type: ignore[arg-type]
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        y = torch.relu(self.block(h + self.zero_in(x)))
        return self.head((h + self.zero_out(y)).mean((2, 3)))


@pytest.mark.parametrize(("build", "shape"), [(_Fixup, (16,)), (_Adapter, (3, 8, 8))], ids=["fixup", "adapter"])
def test_zeros_that_learn_a_step_after_another_zero_are_by_design(build: type[nn.Module],
                                                                  shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    run = _run(build(), input_shape=shape)
    assert not {"no_signal", "symmetry"} & set(run.failed), [v.message for v in run.verdicts if v.status == "fail"]
    assert any("step 2" in v.message for v in run.verdicts), [v.message for v in run.verdicts]
    # the same zeros with nothing upstream that ever moves them stay zero: every weight zero still fails
    dead = build()
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
    assert {"no_signal", "symmetry"} & set(_run(dead, input_shape=shape).failed)


class _Recurrent(nn.Module):
    """A hand-written RNN: one input and one recurrent Linear applied at each of ``steps`` time steps."""

    def __init__(self, scale: float | None = None, width: int = 32, steps: int = 20) -> None:
        super().__init__()
        self.steps, self.width = steps, width
        self.inp, self.rec, self.out = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 5)
        self.act: nn.Module = nn.Tanh() if scale is None else nn.Identity()
        if scale is not None:  # a linear recurrence whose Jacobian has every singular value = scale
            nn.init.orthogonal_(self.rec.weight, gain=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.width)
        for t in range(self.steps):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
        return self.out(h)


def test_a_vanishing_recurrence_warns_with_its_memory_and_an_exploding_one_fails() -> None:
    """torch's default Linear init (Var = 1/(3 fan_in)) makes a tanh recurrence contract by ~1/3 per step: the
    gradient of the last step reaches only a few steps back, a short memory the shared weights still learn
    from (Pascanu et al. 2013), so it warns; an orthogonal recurrence of gain 1.5 grows 2.25x per step and
    fails."""
    short = _run(_Recurrent(), input_shape=(20, 8), batch_size=16)
    back = _signal(short, "backward")
    assert back.status == "warn" and back.outcome == "vanishing", back.message
    assert "recurrence: module 'rec'" in back.message and 0 < back.effect["memory_steps"] < 10
    assert all(v.status != "fail" for v in short.verdicts if v.check == "signal")
    blowing = _run(_Recurrent(scale=1.5), input_shape=(20, 8), batch_size=16)
    forward = _signal(blowing, "forward")
    assert forward.status == "fail" and forward.outcome == "exploding", forward.message


class _FunctionalMLP(nn.Module):
    """An MLP whose nonlinearity is a function called in ``forward`` (no activation module to hook)."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 5)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu if self.act == "relu" else torch.sigmoid
        return self.c(f(self.b(nn.functional.relu(self.a(x)) if self.act == "relu" else f(self.a(x)))))


def test_dead_and_saturated_units_are_counted_after_functional_activations() -> None:
    """A bias of -10 under weights of std 0.01 leaves every pre-activation near -10: ReLU units are dead and
    sigmoid outputs sit at 0 (within 0.01 of the bound), whichever way the function is called."""
    for act, check in (("relu", "dead"), ("sigmoid", "saturation")):
        healthy = _run(_FunctionalMLP(act), input_shape=(20,), batch_size=32)
        verdict = next(v for v in healthy.verdicts if v.check == check and v.phase == "init")
        assert verdict.status == "pass" and f"':{act}'" not in verdict.message.split("(")[0], verdict.message
        broken = _FunctionalMLP(act)
        with torch.no_grad():
            for layer in (broken.a, broken.b):
                layer.weight.normal_(0, 0.01)
                layer.bias.fill_(-10.0)
        run = _run(broken, input_shape=(20,), batch_size=32)
        verdict = next(v for v in run.verdicts if v.check == check and v.phase == "init")
        assert verdict.status == "fail" and verdict.layers[0] == "a:" + act, verdict.message


class _ResidualBlock(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.na, self.nb = nn.BatchNorm2d(width), nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.nb(self.b(torch.relu(self.na(self.a(x))))))


class _Siamese(nn.Module):
    """One backbone of 6 residual blocks applied to an image and to its mirror image; the head compares them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResidualBlock() for _ in range(6)))
        self.head = nn.Linear(16, 4)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.embed(x) - self.embed(torch.flip(x, [3]))).abs())


def test_a_backbone_called_on_two_inputs_is_one_stream_of_its_own_blocks() -> None:
    """The second call's first block reads the stem's output again, not the first call's last block: its
    blocks start another stream (of the same weights), so the stream is 6 blocks long, not 12."""
    run = _run(_Siamese(), input_shape=(1, 12, 12))
    assert run.structure is not None
    assert [b.name for b in run.structure.blocks] == [f"blocks.{i}" for i in range(6)]
    stream = next(v for v in run.verdicts if v.check == "stream" and v.signal == "forward")
    assert "6 blocks" in stream.message and stream.status == "pass", stream.message


class _PriorHead(nn.Module):
    """A detector-style head: hidden ReLU layer, logits with the focal loss's prior bias -log(99), sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.logits = nn.Linear(20, 64), nn.Linear(64, 8)
        nn.init.normal_(self.logits.weight, std=0.01)
        nn.init.constant_(self.logits.bias, -4.595)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(torch.relu(self.hidden(x))))


def test_a_sigmoid_on_the_output_is_the_losss_link_not_a_saturated_unit() -> None:
    """Every output sits at the prior 0.01, within 0.01 of the bound 0, by design (Lin et al. 2017): only
    hidden functional activations are counted, so the saturation check has no layer to judge here."""
    run = _run(_PriorHead(), input_shape=(20,), batch_size=32)
    assert not any(la.name.endswith(":sigmoid") for la in run.layers)
    assert any(la.name == "hidden:relu" for la in run.layers)
    assert all(v.status != "fail" for v in run.verdicts if v.check == "saturation")


class _OpenGate(nn.Module):
    """``u * gate(v)`` with the gate's weights ~ N(0, 1e-6) and bias 1, so the gate starts open and the unit as
    ``u`` (gMLP's spatial gating, Liu et al. 2021); ``tiny_everywhere``: every weight at that scale instead."""

    def __init__(self, tiny_everywhere: bool = False, width: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2 * width)
        self.gate = nn.Linear(width, width)
        self.head = nn.Linear(width, 5)
        with torch.no_grad():
            for layer in (self.fc, self.gate, self.head) if tiny_everywhere else (self.gate,):
                layer.weight.normal_(0.0, 1e-6)
            self.gate.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = torch.relu(self.fc(x)).chunk(2, dim=-1)
        return self.head(u * self.gate(v))


def test_a_gate_that_starts_open_is_by_design_and_an_all_tiny_net_is_not() -> None:
    run = _run(_OpenGate(), input_shape=(12,))
    assert not run.failed, [v.message for v in run.verdicts if v.status == "fail"]  # neither symmetric nor silent
    assert "no_signal" in _run(_OpenGate(tiny_everywhere=True), input_shape=(12,)).failed


class _ClassAttention(nn.Module):
    """A learned class token that sees the data only through ``scale * attention`` (CaiT's class attention,
    layer scale 1e-6 as in its deeper variants), then a norm and an MLP; ``learned=False``: the same 1e-6 as a
    fixed buffer, which no step changes."""

    def __init__(self, learned: bool = True, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(12, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.v = nn.Linear(width, width)
        scale = torch.full((width,), 1e-6)
        if learned:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        cls = self.cls.expand(x.shape[0], -1, -1) + self.scale * self.v(tokens).mean(1, keepdim=True)
        return self.fc2(torch.relu(self.fc1(self.norm(cls)))).squeeze(1)


def test_layers_that_see_the_data_only_through_a_near_zero_layer_scale_inherit_its_explanation() -> None:
    run = _run(_ClassAttention(), input_shape=(6, 12))
    assert "no_signal" not in run.failed, [v.message for v in run.verdicts if v.status == "fail"]
    assert any("near-zero" in note for v in run.verdicts for note in [v.message])
    assert "no_signal" in _run(_ClassAttention(learned=False), input_shape=(6, 12)).failed


class _PyramidHead(nn.Module):
    """One head of 14 padded 3x3 convs (He init) applied to a 8x8 map and to its 1x1 average: on the 1x1 map each
    kernel sees only its centre, 1/9 of its fan-in, so that call falls by (2/9)^13 ~ 3e-9 while the 8x8 call keeps
    its variance (a detection head shared across pyramid levels at a small input). ``shared=False``: the 1x1 map
    gets a head of its own, which learns from nothing else."""

    def __init__(self, shared: bool = True, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)

        def head() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(14):
                conv = nn.Conv2d(width, width, 3, padding=1)
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU()]
            return nn.Sequential(*layers)

        self.head = head()
        self.small_head = self.head if shared else head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        return self.head(f).mean((2, 3)) + self.small_head(f.mean((2, 3), keepdim=True)).mean((2, 3))


def test_a_call_of_shared_weights_that_falls_warns_when_another_call_carries_the_signal() -> None:
    shared = _run(_PyramidHead(), input_shape=(3, 8, 8))
    assert "vanishing" not in shared.failed, [v.message for v in shared.verdicts if v.status == "fail"]
    assert any("applied side by side" in v.message for v in shared.verdicts if v.status == "warn")
    assert "vanishing" in _run(_PyramidHead(shared=False), input_shape=(3, 8, 8)).failed


class _MultiBranch(nn.Module):
    """``relu(sum of parallel convs)`` with no identity path (RepVGG's and MobileOne's training-time blocks), He
    init: with ``norm``, each branch ends in a BatchNorm; without, Var(sum) = the branches' variances added, so
    each block multiplies the signal by about the number of branches."""

    def __init__(self, branches: int, norm: bool, c: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3 if i % 2 == 0 else 1, padding=1 if i % 2 == 0 else 0, bias=False)
                                   for i in range(branches))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) if norm else nn.Identity() for _ in range(branches))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norms[0](self.convs[0](x))
        for conv, norm in zip(self.convs[1:], self.norms[1:], strict=True):
            out = out + norm(conv(x))
        return torch.relu(out)


def _multi_branch_net(branches: int, norm: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), *(_MultiBranch(branches, norm) for _ in range(8)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def test_sums_of_parallel_branches_without_normalization_are_judged_along_the_longest_path() -> None:
    assert "exploding" in _run(_multi_branch_net(4, norm=False), input_shape=(3, 8, 8)).failed
    for branches, norm in ((1, False), (4, True)):
        run = _run(_multi_branch_net(branches, norm), input_shape=(3, 8, 8))
        assert not run.failed, (branches, norm, [v.message for v in run.verdicts if v.status == "fail"])


class _NoNormBlock(nn.Module):
    """``x + fc2(relu(fc1(x)))`` without a normalization: the branch scales with the stream, Var(f(x)) = G Var(x)."""

    def __init__(self, width: int, std: float | None, bias: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width, bias=bias), nn.Linear(width, width, bias=bias)
        if std is not None:
            for fc in (self.fc1, self.fc2):
                nn.init.normal_(fc.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class _TwoBlocks(nn.Module):
    """Two unnormalized blocks on an embedding at std 0.02 (a small transformer config without its norms)."""

    def __init__(self, std: float | None, bias: bool = False, width: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, width)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.Sequential(_NoNormBlock(width, std, bias), _NoNormBlock(width, std, bias))
        self.head = nn.Linear(width, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.emb(ids))).mean(1)


def test_two_unnormalized_blocks_fail_when_their_second_step_rules_out_linear_growth() -> None:
    from initdiag.checks.stream import beyond_linear

    within = [True, True]
    assert not beyond_linear(np.array([1e-6, 1.0, 2.0]), within, 100.0)  # linear: v_0 + k b, however small v_0
    assert beyond_linear(np.array([1.0, 300.0, 9e4]), within, 100.0)  # 300x at each step
    assert not beyond_linear(np.array([1e-6, 1.0, 3.5]), within, 100.0)  # beyond linear, but 3.5^2 < 100
    ids = {"input_shape": (6,), "input_dtype": "long", "vocab": 50}
    assert "exploding" in _run(_TwoBlocks(std=1.0), **ids).failed  # G ~ width^2 / 2 per block
    for healthy in (_TwoBlocks(std=(2 / 64) ** 0.5), _TwoBlocks(std=None, bias=True)):  # x2 per block; default
        run = _run(healthy, **ids)
        assert "exploding" not in run.failed, [v.message for v in run.verdicts if v.status == "fail"]


class _MixtureBlock(nn.Module):
    """``x + shared(x) + router(x) * expert(x)``-style blocks without a stream normalization: ``kind`` "mixture"
    sums a shared and a routed path inside the branch (a mixture of experts), "expert norm" also normalizes the
    routed expert's output, "gated" multiplies the whole branch by a data gate before the add (the branch end
    is a product, as in hyper-connections)."""

    def __init__(self, width: int, std: float | None, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.shared = _NoNormBlock(width, std, bias=False)
        self.expert = _NoNormBlock(width, std, bias=False)
        self.router = nn.Linear(width, 1, bias=False)
        self.expert_norm = nn.LayerNorm(width) if kind == "expert norm" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.router(x))
        if self.kind == "gated":
            return x + gate * self.expert.fc2(torch.relu(self.expert.fc1(x)))
        routed = gate * self.expert_norm(self.expert(x) - x)
        return x + ((self.shared(x) - x) + routed)


class _TwoMixtures(nn.Module):
    def __init__(self, std: float | None, kind: str, width: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, width)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.Sequential(_MixtureBlock(width, std, kind), _MixtureBlock(width, std, kind))
        self.head = nn.Linear(width, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.emb(ids))).mean(1)


@pytest.mark.parametrize("kind", ["mixture", "expert norm", "gated"])
def test_a_branch_made_of_parallel_or_gated_paths_is_still_an_unnormalized_branch(kind: str) -> None:
    """A sum inside a branch (shared + routed experts) is no projection shortcut, a branch whose end is a product
    is no zero branch, and a norm inside one expert normalizes no stream: each block still adds a multiple of the
    stream, and with N(0, 1) weights two blocks explode."""
    from initdiag.structure import discover

    torch.manual_seed(0)
    s = discover(_TwoMixtures(None, kind), torch.randint(0, 50, (4, 6)))
    assert [b.shortcut for b in s.blocks] == ["identity", "identity"]
    assert not any(b.branch_normalized or b.post_norm for b in s.blocks)
    ids = {"input_shape": (6,), "input_dtype": "long", "vocab": 50}
    run = _run(_TwoMixtures(1.0, kind), **ids)
    assert "exploding" in run.failed, [v.message for v in run.verdicts if v.check == "stream"]
    assert run.analysis.stream is not None and not run.analysis.stream.bounded
    assert "zero branch" not in run.analysis.stream.rules
    healthy = _run(_TwoMixtures(None, kind), **ids)  # PyTorch's default: each path shrinks
    assert "exploding" not in healthy.failed, [v.message for v in healthy.verdicts if v.status == "fail"]


class _PreNorm(nn.Module):
    """``x + fc2(gelu(fc1(norm(x))))``: a normalized branch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class _TokenMixer(nn.Module):
    """A class-attention-style block: the first token is updated from the normalized tokens, the others are
    concatenated back; then the first token alone is normalized (``renorm``: every token, the stream renormalized
    inside the block) and a second add sums the stream with a concatenation that holds the stream itself."""

    def __init__(self, width: int, renorm: bool) -> None:
        super().__init__()
        self.renorm = renorm
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.fc = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm1(x)
        x = x + torch.cat([self.q(n[:, :1]), n[:, 1:]], dim=1)
        x = self.norm2(x) if self.renorm else torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        return x + torch.cat([self.fc(x[:, :1]), x[:, 1:]], dim=1)


class _Tokens(nn.Module):
    def __init__(self, renorm: bool, width: int = 32) -> None:
        super().__init__()
        self.emb = nn.Linear(8, width)
        self.blocks = nn.Sequential(*(_PreNorm(width) for _ in range(6)))
        self.mixers = nn.Sequential(_TokenMixer(width, renorm), _TokenMixer(width, renorm))
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixers(self.blocks(self.emb(x)))[:, 0])


@pytest.mark.parametrize("renorm", [False, True])
def test_blocks_theory_cannot_read_leave_a_normalized_design_bounded(renorm: bool) -> None:
    """A block whose branch ends in a concatenation adds what theory cannot say: in a design whose other blocks
    normalize their branches it does not make the stream's theory geometric; a block that renormalizes the
    stream inside itself (``x = norm(x); x = x + f(x)``) is read as such."""
    from initdiag.structure import discover

    torch.manual_seed(0)
    s = discover(_Tokens(renorm), torch.randn(4, 6, 8))
    assert len(s.blocks) == 8
    assert [b.shortcut_normalized for b in s.blocks] == [False] * 6 + [renorm] * 2
    run = _run(_Tokens(renorm), input_shape=(6, 8))
    assert run.analysis.stream is not None and run.analysis.stream.bounded
    assert run.analysis.stream.rules[6:] == (("normalized shortcut",) * 2 if renorm else ("unknown",) * 2)
    assert "exploding" not in run.failed, [v.message for v in run.verdicts if v.status == "fail"]
