"""Verdicts that need the model's structure: functional activations, any weight-layer type, chains between
normalizations, the residual stream, sub-geometric decay judged against theory, intentional zeros and constant
inputs. Each case's answer is fixed by theory (He et al. 2015; Schoenholz et al. 2017; Brock et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from zoo_models import FunctionalReluMLP, ResidualMLP

import initdiag
from initdiag.recording import Recorder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _verdict(result: initdiag.AuditResult, check_family: str, signal: str | None = None) -> list[initdiag.Verdict]:
    return [v for v in result.runs[0].verdicts if v.family == check_family and (signal is None or v.signal == signal)]


def _mlp(depth: int, width: int, act: type[nn.Module], std: float | None, head_zero: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, 10))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                if std is not None:
                    m.weight.normal_(0, std / math.sqrt(m.in_features))
                m.bias.zero_()
        if head_zero:
            model[-1].weight.zero_()
    return model


def test_functional_relu_is_read_as_relu_with_its_theory() -> None:
    """A model calling F.relu in forward: the activation after each layer is ReLU (not linear), so theory expects
    gain 1 under He (it would say 2 for a linear chain) and the advice is He."""
    torch.manual_seed(0)
    model = FunctionalReluMLP(depth=12, width=256)
    initdiag.apply_initializer(model, initdiag.InitSpec("he"), seed=0)
    result = initdiag.audit(model, input_shape=(64,), batches=2, batch_size=64)
    run = result.runs[0]
    assert [la.activation for la in run.layers if la.role == "weight"][:-1] == ["relu"] * 11
    (forward,) = [t for t in run.theory if t.signal == "forward"]
    assert forward.expected_gain == pytest.approx(1.0, rel=0.05)
    assert run.structure is not None and run.structure.weight_layers[0].activation.source == "function"
    assert result.passed


def test_gpt2_conv1d_projections_are_recorded_forward_and_backward() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=ids).logits.transpose(1, 2)

    result = initdiag.audit(Logits(), input_shape=(8,), input_dtype="long", vocab=100, loss="ce", batches=1,
                            batch_size=4)
    run = result.runs[0]
    conv1d = [la for la in run.layers if la.module == "Conv1D"]
    assert len(conv1d) == 2 * 4  # c_attn, c_proj (attention), c_fc, c_proj (MLP) per block
    frame = run.frame
    for la in conv1d:
        for kind in ("forward", "backward"):
            assert len(frame[(frame.layer == la.name) & (frame.kind == kind) & (frame.stat == "var")]) == 1, la.name
        assert la.fan_in == model.transformer.get_submodule(la.module_name.removeprefix("model.transformer.")
                                                            ).weight.shape[0]
    assert any(la.role == "block" for la in run.layers)


class _TwoEmbeddings(nn.Module):
    """Token embeddings plus a type embedding fed one type id for every token, then a head; or, with ``dead``, a
    zero layer after the sum whose gradient is zero too (a zero layer follows it): a layer that silences a varying
    input."""

    def __init__(self, dead: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Embedding(50, 32)
        self.types = nn.Embedding(2, 32)
        self.hidden = nn.Linear(32, 32)
        self.head = nn.Linear(32, 5)
        if dead:
            with torch.no_grad():
                for layer in (self.hidden, self.head):
                    layer.weight.zero_()
                    layer.bias.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.types(torch.zeros_like(ids))
        return self.head(torch.relu(self.hidden(x))).mean(1)


def test_a_constant_input_is_not_a_missing_signal_but_a_silencing_layer_is() -> None:
    torch.manual_seed(0)
    result = initdiag.audit(_TwoEmbeddings(), input_shape=(6,), input_dtype="long", vocab=50, batches=2)
    assert "no_signal" not in result.runs[0].failed, result.runs[0].failed
    types = next(la for la in result.runs[0].layers if la.name == "types")
    assert types.constant_input
    assert any("same input for every sample" in v.message for v in result.verdicts)
    dead = initdiag.audit(_TwoEmbeddings(dead=True), input_shape=(6,), input_dtype="long", vocab=50, batches=2)
    assert "no_signal" in dead.runs[0].failed
    # 'head' sees a constant input too (decided from the values), but the layer that silenced it fails
    silent = [v for v in dead.runs[0].verdicts if v.outcome == "no_signal" and v.status == "fail"]
    assert any("hidden" in v.layers for v in silent), [(v.layers, v.message) for v in silent]


class _Branch(nn.Module):
    """``x + fc2(relu(fc1(norm(x))))`` with He-initialized layers; ``norm`` a LayerNorm or nothing."""

    def __init__(self, width: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


def _stream(blocks: int, norm: bool) -> initdiag.Verdict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), *[_Branch(128, norm) for _ in range(blocks)], nn.Linear(128, 10))
    result = initdiag.audit(model, input_shape=(128,), batches=2, batch_size=32)
    (stream,) = [v for v in result.runs[0].verdicts if v.signal == "forward" and "residual stream" in v.message]
    return stream


def test_the_stream_grows_geometrically_without_normalization_and_boundedly_with_it() -> None:
    """Unnormalized He branches add twice the stream per block (Var(f(x)) = 2 x 1/2 x 2 Var(x)), so it triples:
    exploding, as theory predicts (3^12). With a LayerNorm at
    the start of each branch every block adds about the same variance: linear growth, healthy although the
    stream grows ~50x over 48 blocks (a straight line through its log would call that exploding)."""
    plain = _stream(12, norm=False)
    assert (plain.outcome, plain.status) == ("exploding", "fail")
    assert plain.effect["late_gain"] == pytest.approx(3.0, rel=0.15)
    assert plain.effect["expected_change"] == pytest.approx(3.0 ** 12, rel=0.05)
    normed = _stream(48, norm=True)
    assert normed.outcome == "healthy" and normed.effect["change_raw"] > 20  # type: ignore[operator]
    assert "bounded" in normed.message


def test_residual_adds_written_in_forward_are_judged_as_one_chain() -> None:
    """No block modules and no normalization (the adds happen in the root's forward): the whole network is a
    chain too, so geometric growth is still caught (and the logits it ends in are far too large); Fixup's zero
    last layers keep it healthy."""
    for init, expected in (("he", {"signal", "exploding", "output_scale"}), ("fixup", set())):
        torch.manual_seed(0)
        result = initdiag.audit(ResidualMLP(blocks=16, width=128, init=init), input_shape=(64,), batches=2)
        assert set(result.runs[0].failed) == expected, (init, result.runs[0].failed)


@pytest.mark.parametrize(("sigma_w2", "expected"), [(1.0, "healthy"), (0.5, "vanishing")])
def test_deep_tanh_is_judged_against_its_predicted_curve(sigma_w2: float, expected: str) -> None:
    """At sigma_w^2 = 1 tanh's variance decays like 1/(2l): over 500 layers a straight line through the log sees a
    change beyond 100x (vanishing), but theory predicts exactly that sub-geometric decay (Schoenholz et al. 2017).
    At sigma_w^2 = 0.5 the decay is geometric: vanishing."""
    model = _mlp(500, 128, nn.Tanh, std=math.sqrt(sigma_w2))
    result = initdiag.audit(model, input_shape=(128,), batches=2, batch_size=64)
    (forward,) = [v for v in result.runs[0].verdicts if v.family == "signal" and v.signal == "forward"]
    assert forward.outcome == expected, forward.message
    if expected == "healthy":
        assert "sub-geometric" in forward.message and forward.effect["change"] < 1 / 100  # type: ignore[operator]


def test_a_zero_head_breaks_symmetry_and_passes_but_all_zeros_fail() -> None:
    head = initdiag.audit(_mlp(6, 64, nn.ReLU, std=math.sqrt(2), head_zero=True), input_shape=(64,), batches=2)
    assert head.passed, [v.message for v in head.verdicts if v.status == "fail"]
    (symmetry,) = _verdict(head, "symmetry")
    assert symmetry.status == "pass" and "broken by design" in symmetry.message
    assert any("zero-initialized on purpose" in v.message for v in head.verdicts)
    zeros = _mlp(6, 64, nn.ReLU, std=None)
    with torch.no_grad():
        for p in zeros.parameters():
            p.zero_()
    failed = initdiag.audit(zeros, input_shape=(64,), batches=2).runs[0].failed
    assert {"no_signal", "symmetry"} <= set(failed)


def test_the_recorder_discovers_the_structure_at_its_first_forward() -> None:
    """Without a structure given, the recorder sees it during its first forward and records the blocks from the
    next step; every hook is gone afterwards."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    modes = torch._C._len_torch_function_stack()
    with Recorder(model) as rec:
        for step in range(2):
            out = model(x)
            # the probe's function mode and its hooks on every module are gone as soon as the first forward ends
            assert torch._C._len_torch_function_stack() == modes
            assert step > 0 or not model.layer1[0].conv2._forward_pre_hooks
            F.cross_entropy(out, torch.arange(4)).backward()
            model.zero_grad()
    assert rec.structure is not None and len(rec.structure.blocks) == 8
    frame = rec.frame()
    blocks = frame[frame.layer.astype(str).str.startswith("layer")]
    assert set(frame.step) == {0, 1}
    assert blocks[blocks.kind == "forward"].layer.astype(str).isin([b.name for b in rec.structure.blocks]).any()
    assert set(frame[frame.layer == "layer1.0"].step) == {1}
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
