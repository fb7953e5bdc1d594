"""Structure discovery on real models built from their libraries' code, each with a known answer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from initdiag.structure.discover import StructureProbe, discover
from initdiag.structure.model import Structure

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _roundtrip(s: Structure) -> None:
    back = Structure.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s and hash(back) == hash(s) and pickle.loads(pickle.dumps(s)) == s
    for w in s.weight_layers:
        assert s.layer(w.name) == w and (w.block is None or s.block_of(w.name) == s.block(w.block))
        assert w.activation.name == "linear" or w.activation.site in {a.site for a in s.activations}


# -- MLPs: module and functional activations ------------------------------------------------------------------
def _seq_mlp(act: type[nn.Module] | None) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)]
    if act is not None:
        mods = [mods[0], act(), mods[1], act(), mods[2]]
    return nn.Sequential(*mods)


class FunctionalMLP(nn.Module):
    """The same MLP with the activation called in forward; layers named "0", "2", "4" as in the Sequential."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        for i, (a, b) in zip((0, 2, 4), ((8, 16), (16, 16), (16, 4)), strict=True):
            self.add_module(str(i), nn.Linear(a, b))
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.f(getattr(self, "0")(x))
        x = self.f(getattr(self, "2")(x))
        return getattr(self, "4")(x)


def _shape_facts(s: Structure) -> list[tuple[Any, ...]]:
    return [(w.name, w.op, w.param, w.param_shape, w.fan_in, w.fan_out, w.in_shape, w.out_shape, w.activation.name,
             w.activation.params, w.norm_after, w.block, w.index, w.bias) for w in s.weight_layers]


def test_mlp_module_and_functional_relu_agree() -> None:
    x = torch.randn(4, 8)
    sm, sf = discover(_seq_mlp(nn.ReLU), x), discover(FunctionalMLP(F.relu), x)
    assert _shape_facts(sm) == _shape_facts(sf)
    assert [w.activation.name for w in sm.weight_layers] == ["relu", "relu", "linear"]
    assert [(a.source, a.site, a.module_name) for a in sm.activations] == [("module", "1", "1"), ("module", "3", "3")]
    assert [(a.source, a.site, a.module_name) for a in sf.activations] == [
        ("function", "FunctionalMLP:relu", None), ("function", "FunctionalMLP:relu@2", None)]
    assert sm.weight_layers[0].fan_in == 8 and sm.weight_layers[0].fan_out == 16
    assert sm.segments() == (("0", "2", "4"),)
    _roundtrip(sm)
    _roundtrip(sf)


@pytest.mark.parametrize(("f", "name", "params"), [
    (torch.tanh, "tanh", ()),
    (lambda x: F.gelu(x, approximate="tanh"), "gelu", (("approximate", "tanh"),)),
    (lambda x: F.leaky_relu(x, 0.2), "leaky_relu", (("negative_slope", 0.2),)),
    (lambda x: x.relu_(), "relu", ()),
])
def test_functional_activation_families(f: Any, name: str, params: tuple[Any, ...]) -> None:
    s = discover(FunctionalMLP(f), torch.randn(4, 8))
    acts = [w.activation for w in s.weight_layers]
    assert [(a.name, a.params, a.source) for a in acts[:2]] == [(name, params, "function")] * 2
    assert acts[2].name == "linear"
    assert acts[1].site == f"FunctionalMLP:{name}@2"


def test_mlp_without_activation_is_linear() -> None:
    s = discover(_seq_mlp(None), torch.randn(4, 8))
    assert [w.activation.name for w in s.weight_layers] == ["linear"] * 3
    assert s.activations == () and s.blocks == ()


def test_module_activation_params_and_unknown_elementwise_module() -> None:
    class Squareplus(nn.Module):  # parameter-free and elementwise, but no known family
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + torch.sqrt(x * x + 4)) / 2

    class RowSoftmax(nn.Module):  # parameter-free, same shape, not elementwise
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)

    m = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 8), Squareplus(), nn.Linear(8, 8),
                      RowSoftmax(), nn.Linear(8, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 2))
    s = discover(m, torch.randn(6, 8))
    acts = [w.activation for w in s.weight_layers]
    assert (acts[0].name, acts[0].params) == ("leaky_relu", (("negative_slope", 0.1),))
    assert (acts[1].name, acts[1].source, acts[1].module_name) == ("module", "module", "3")
    assert acts[2].name != "module"  # the softmax-like module is not elementwise
    assert (acts[3].name, acts[3].params) == ("gelu", (("approximate", "tanh"),))



def test_drop_path_is_never_an_activation_whatever_the_draw() -> None:
    # a random per-sample mask scaled by 1/p: when no row is dropped it passes the elementwise test, so a
    # reading by the numbers would depend on the draw and the batch size; drop path is dropout-like.
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), torchvision.ops.StochasticDepth(0.5, "row"), nn.Linear(8, 2)).train()
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        for batch in (2, 16):
            s = discover(m, torch.randn(batch, 8))
            assert s.weight_layers[0].activation.name == "relu"
            assert all(a.module_name != "2" for a in s.activations)
            # a draw that drops every row gives the next layer a constant input for that batch, which is true
            # of that batch and not part of how the model is read
            seen.add(dataclasses.replace(s, weight_layers=tuple(
                dataclasses.replace(w, constant_input=False) for w in s.weight_layers)))
    assert len(seen) == 1  # one structure for every draw and batch size
# -- torchvision ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18() -> Structure:
    torch.manual_seed(0)
    return discover(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64))


def test_resnet18_blocks(resnet18: Structure) -> None:
    s = resnet18
    assert [b.name for b in s.blocks] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert {b.module_type for b in s.blocks} == {"BasicBlock"}
    assert all(b.residual_adds == 1 and b.branch_normalized and not b.post_norm for b in s.blocks)
    assert [b.index for b in s.blocks] == list(range(8))
    assert s.block("layer1.0").shortcut == "identity"
    assert s.block("layer2.0").shortcut == ("layer2.0.downsample.0",)
    assert s.block("layer1.0").last_branch_layers == ("layer1.0.bn2",)
    assert s.stream_input == "maxpool"
    assert s.block_of("layer3.1.conv2") == s.block("layer3.1") and s.block_of("fc") is None
    _roundtrip(s)


def test_resnet18_layers(resnet18: Structure) -> None:
    s = resnet18
    conv1 = s.layer("conv1")
    assert (conv1.activation.name, conv1.activation.source, conv1.norm_after) == ("relu", "module", "bn1")
    assert s.layer("layer1.0.conv1").fan_in == 64 * 3 * 3
    assert s.layer("layer1.0.conv2").activation.name == "linear"  # bn2 -> residual add
    down = s.layer("layer2.0.conv1")  # stride 2, 64 -> 128 channels
    in_numel, out_numel = 64 * 16 * 16, 128 * 8 * 8
    assert (down.in_shape, down.out_shape) == ((64, 16, 16), (128, 8, 8))
    assert down.fan_out == down.fan_in * out_numel / in_numel
    assert s.weight_layers[-1].name == "fc" and s.weight_layers[-1].in_shape == (512,)
    assert [w.index for w in s.weight_layers] == list(range(21))
    assert all(len(seg) == 1 for seg in s.segments())


def test_resnet_variants() -> None:
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    base = discover(torchvision.models.resnet18(), x)
    torch.manual_seed(0)
    zero = discover(torchvision.models.resnet18(zero_init_residual=True), x)
    assert zero == base
    plain = discover(torchvision.models.resnet18(norm_layer=lambda c: nn.Identity()), x)
    assert len(plain.blocks) == 8 and not any(b.branch_normalized for b in plain.blocks)
    assert plain.norms == () and plain.layer("conv1").norm_after is None
    assert plain.layer("conv1").activation.name == "relu"
    r50 = discover(torchvision.models.resnet50(), x)
    assert len(r50.blocks) == 16 and {b.module_type for b in r50.blocks} == {"Bottleneck"}
    assert all(b.residual_adds == 1 and b.branch_normalized for b in r50.blocks)
    assert r50.blocks[0].shortcut == ("layer1.0.downsample.0",) and r50.blocks[1].shortcut == "identity"
    assert r50.blocks[0].last_branch_layers == ("layer1.0.bn3",)


def test_vgg11_bn() -> None:
    s = discover(torchvision.models.vgg11_bn().eval(), torch.randn(2, 3, 64, 64))
    assert s.blocks == ()
    convs = [w for w in s.weight_layers if w.op == "conv2d"]
    assert len(convs) == 8
    norms = {n.name: n for n in s.norms}
    assert all(norms[w.norm_after].kind == "batch" and w.activation.name == "relu" for w in convs if w.norm_after)
    assert all(w.norm_after is not None for w in convs)
    assert s.segments() == (*((w.name,) for w in convs), ("classifier.0", "classifier.3", "classifier.6"))


def test_vit_b_16() -> None:
    torch.manual_seed(0)
    m = torchvision.models.vit_b_16(image_size=64).eval()
    s = discover(m, torch.randn(2, 3, 64, 64))
    assert len(s.blocks) == 12 and {b.module_type for b in s.blocks} == {"EncoderBlock"}
    assert all(b.residual_adds == 2 and b.branch_normalized and not b.post_norm and b.shortcut == "identity"
               for b in s.blocks)
    att = s.layer("encoder.layers.encoder_layer_0.self_attention")
    assert (att.module_type, att.op, att.param, att.fan_in, att.fan_out) == (
        "MultiheadAttention", "multi_head_attention_forward", "in_proj_weight", 768, 3 * 768)
    assert att.in_shape == (17, 768) and att.block == "encoder.layers.encoder_layer_0"
    assert s.layer("encoder.layers.encoder_layer_0.mlp.0").activation.name == "gelu"
    assert s.weight_layers[-1].name == "heads.head"
    assert s.blocks[0].last_branch_layers == ("encoder.layers.encoder_layer_0.self_attention",
                                              "encoder.layers.encoder_layer_0.mlp.3")
    _roundtrip(s)


# -- transformers ---------------------------------------------------------------------------------------------
def test_bert() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=6, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    m = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 12))
    with torch.no_grad():
        ref = m(input_ids=ids).logits
        with StructureProbe(m) as probe:
            out = m(input_ids=ids).logits
    assert torch.equal(out, ref)
    s = probe.structure()
    assert s == discover(m, input_ids=ids)
    emb = "bert.embeddings."
    assert s.layer(emb + "token_type_embeddings").constant_input
    assert s.layer(emb + "position_embeddings").constant_input
    assert not s.layer(emb + "word_embeddings").constant_input
    word = s.layer(emb + "word_embeddings")
    assert (word.op, word.fan_in, word.fan_out, word.in_shape) == ("embedding", 1, 256, (12,))
    assert len(s.blocks) == 6 and {b.module_type for b in s.blocks} == {"BertLayer"}
    assert all(b.post_norm and not b.branch_normalized and b.residual_adds == 2 for b in s.blocks)
    inter = s.layer("bert.encoder.layer.0.intermediate.dense")
    assert inter.activation.name == "gelu" and inter.activation.source in ("module", "function")
    assert inter.activation.module_name == "bert.encoder.layer.0.intermediate.intermediate_act_fn"
    assert s.layer("bert.pooler.dense").activation.name == "tanh"
    assert all(n.kind == "layer" for n in s.norms) and len(s.norms) == 13
    _roundtrip(s)


def test_gpt2() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=6, n_embd=256, n_head=4)).eval()
    s = discover(m, input_ids=torch.randint(0, 1000, (2, 10)))
    conv1d = {n: mod for n, mod in m.named_modules() if type(mod).__name__ == "Conv1D"}
    assert len(conv1d) == 24
    for name, mod in conv1d.items():
        w = s.layer(name)
        assert (w.op, w.param, w.fan_in, w.fan_out) == ("addmm", "weight", mod.weight.shape[0], mod.weight.shape[1])
    assert len(s.blocks) == 6 and {b.module_type for b in s.blocks} == {"GPT2Block"}
    assert all(b.branch_normalized and not b.post_norm and b.residual_adds == 2 for b in s.blocks)
    act = s.layer("transformer.h.0.mlp.c_fc").activation
    assert (act.name, act.params, act.source, act.module_name) == (
        "gelu", (("approximate", "tanh"),), "module", "transformer.h.0.mlp.act")
    assert s.layer("transformer.wpe").constant_input and not s.layer("transformer.wte").constant_input
    assert s.weight_layers[-1].name == "lm_head"  # tied to wte, applied by lm_head
    _roundtrip(s)


def test_llama_rms_norm_and_silu() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100)
    s = discover(transformers.LlamaForCausalLM(cfg).eval(), input_ids=torch.randint(0, 100, (2, 8)))
    assert [(n.module_type, n.kind, n.affine, n.shape) for n in s.norms] == [("LlamaRMSNorm", "rms", True, (64,))] * 5
    gate = s.layer("model.layers.0.mlp.gate_proj")
    assert gate.activation.name == "silu" and gate.norm_after is None
    assert s.layer("model.layers.0.self_attn.q_proj").block == "model.layers.0"
    assert len(s.blocks) == 2 and all(b.branch_normalized and b.residual_adds == 2 for b in s.blocks)


def test_t5_blocks_are_layers_of_residual_sublayers() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                                vocab_size=50)
    ids = torch.randint(0, 50, (2, 6))
    s = discover(transformers.T5ForConditionalGeneration(cfg).eval(), input_ids=ids, decoder_input_ids=ids)
    assert [b.module_type for b in s.blocks] == ["T5Block"] * 4  # not T5LayerSelfAttention / T5LayerFF
    assert [b.residual_adds for b in s.blocks] == [2, 2, 3, 3]  # decoder blocks: self-, cross-attention, FF
    assert [b.restarts for b in s.blocks] == [False, False, True, False]  # the decoder reads its own embeddings
    assert {n.kind for n in s.norms} == {"rms"} and all(b.branch_normalized for b in s.blocks)
    assert s.layer("encoder.block.0.layer.1.DenseReluDense.wi").activation.name == "relu"


# -- timm -----------------------------------------------------------------------------------------------------
def test_norm_modules_by_pattern_and_functional_norms() -> None:
    class HandLayerNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.g = nn.Parameter(torch.ones(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mu = x.mean(-1, keepdim=True)
            return self.g * (x - mu) / torch.sqrt((x - mu).pow(2).mean(-1, keepdim=True) + 1e-5)

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.gelu(F.layer_norm(self.a(x), (8,))))

    m = nn.Sequential(nn.Linear(8, 8), HandLayerNorm(8), nn.ReLU(), Functional())
    s = discover(m, torch.randn(3, 8))
    assert [(n.name, n.kind, n.affine, n.source) for n in s.norms] == [
        ("1", "layer", True, "module"), ("3:layer_norm", "layer", False, "function")]
    assert [(w.name, w.norm_after, w.activation.site) for w in s.weight_layers] == [
        ("0", "1", "2"), ("3.a", "3:layer_norm", "3:gelu"), ("3.b", None, "")]


def test_timm_scaled_std_conv() -> None:
    timm = pytest.importorskip("timm")
    m = timm.create_model("nf_resnet26", pretrained=False, num_classes=10).eval()
    s = discover(m, torch.randn(2, 3, 64, 64))
    std = {n for n, mod in m.named_modules() if "StdConv" in type(mod).__name__}
    assert std and std <= {w.name for w in s.weight_layers}
    assert all(s.layer(n).op == "conv2d" and s.layer(n).param == "weight" for n in std)
    assert s.norms == ()  # the weight standardization is not a normalization of data
    assert len(s.blocks) == 8 and not any(b.branch_normalized for b in s.blocks)
    assert s.layer("stages.0.0.conv1").activation.name == "relu"


# -- the probe only observes ------------------------------------------------------------------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks")


def _hooks(model: nn.Module) -> list[tuple[str, str, tuple[Any, ...]]]:
    return [(name, d, tuple(getattr(m, d).keys())) for name, m in model.named_modules() for d in _HOOK_DICTS]


def _global_hooks() -> tuple[Any, ...]:
    mod = torch.nn.modules.module
    return tuple(tuple(getattr(mod, n).keys()) for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                          "_global_backward_hooks"))


def test_probe_changes_nothing_and_output_is_bit_identical() -> None:
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=5)
    seen: list[int] = []
    m.layer1.register_forward_hook(lambda mod, i, o: seen.append(1))
    x = torch.randn(3, 3, 64, 64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    hooks, glob, stack = _hooks(m), _global_hooks(), torch._C._len_torch_function_stack()
    torch.manual_seed(1)
    ref = m(x)  # train mode, grad enabled: BN statistics move, as in a training step
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in m.parameters()]
    m.load_state_dict(state)
    m.zero_grad()
    torch.manual_seed(1)
    with StructureProbe(m) as probe:
        out = m(x)
        out.sum().backward()
    assert torch.equal(out, ref) and all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), ref_grads,
                                                                               strict=True))
    assert _hooks(m) == hooks and _global_hooks() == glob and torch._C._len_torch_function_stack() == stack
    assert seen == [1, 1] and m.training and all(mod.training for mod in m.modules())
    assert len(probe.structure().blocks) == 8
    m.eval()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        ref = m(x)
        s = discover(m, x)
        assert torch.equal(m(x), ref)
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert not m.training and s.blocks == probe.structure().blocks


def test_discover_restores_buffers_in_train_mode() -> None:
    m = torchvision.models.resnet18()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    discover(m, torch.randn(2, 3, 64, 64))
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items()) and m.training


def test_probe_cleans_up_when_the_forward_raises() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))  # shape mismatch in b

    m = Broken()
    hooks, stack = _hooks(m), torch._C._len_torch_function_stack()
    probe = StructureProbe(m)
    with pytest.raises(RuntimeError, match="shapes"), probe:
        m(torch.randn(2, 4))
    assert _hooks(m) == hooks and torch._C._len_torch_function_stack() == stack
    with pytest.raises(RuntimeError, match="no complete forward"):
        probe.structure()


def test_first_forward_only_kwargs_tuple_outputs_and_repeated_calls() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 6)

        def forward(self, *, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            y = self.lin(input=x)
            return y, {"y": y}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.act, self.out = Inner(), nn.ReLU(), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> dict[str, Any]:
            y, d = self.inner(x=x)
            y = self.act(y)
            y, _ = self.inner(x=y)  # the same module called twice
            y = self.act(d["y"] + y)
            return {"logits": self.out(y), "aux": (y,)}

    m = Net()
    with StructureProbe(m) as probe:
        m(torch.randn(4, 6))
        m(torch.randn(7, 2, 6))  # later forwards are not analysed
    s = probe.structure()
    assert [w.name for w in s.weight_layers] == ["inner.lin", "inner.lin@2", "out"]
    assert [w.in_shape for w in s.weight_layers] == [(6,), (6,), (6,)]
    assert s.layer("inner.lin").activation.site == "act"
    assert s.layer("inner.lin@2").activation.name == "linear"  # into an add of two data tensors
    assert [a.site for a in s.activations] == ["act", "act@2"]


@pytest.mark.parametrize("wrap", [
    nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.spectral_norm,  # parametrize
    nn.utils.weight_norm, nn.utils.spectral_norm,  # weight computed in a forward pre-hook
])
def test_reparametrized_weight_is_traced_to_its_module(wrap: Any) -> None:
    with pytest.warns(FutureWarning) if wrap is nn.utils.weight_norm else contextlib.nullcontext():
        lin = wrap(nn.Linear(5, 7))
    m = nn.Sequential(lin, nn.Tanh(), nn.Linear(7, 2))  # train mode: spectral norm runs its power iteration
    s = discover(m, torch.randn(3, 5))
    assert [(w.name, w.op, w.param, w.fan_in, w.activation.name) for w in s.weight_layers] == [
        ("0", "linear", "weight", 5, "tanh"), ("2", "linear", "weight", 7, "linear")]


def test_matmul_einsum_and_transposed_conv_layers() -> None:
    class MatLin(nn.Module):  # x @ W + b with the module's own parameters
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(8, 6)), nn.Parameter(torch.zeros(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w + self.b

    class Ein(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bi,oi->bo", x, self.w)

    s = discover(nn.Sequential(MatLin(), nn.SiLU(), Ein()), torch.randn(3, 8))
    assert [(w.op, w.param, w.fan_in, w.fan_out, w.bias, w.activation.name) for w in s.weight_layers] == [
        ("matmul", "w", 8, 6, True, "silu"), ("einsum", "w", 6, 5, False, "linear")]
    up = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.ConvTranspose2d(8, 4, 4, stride=2,
                                                                                            padding=1))
    s = discover(up, torch.randn(2, 4, 8, 8))
    grouped, transposed = s.weight_layers
    assert (grouped.fan_in, grouped.fan_out) == (2 * 9, 2 * 9 * 8 / 4)
    assert (transposed.op, transposed.fan_out) == ("conv_transpose2d", 4 * 16)
    assert transposed.fan_in == 64 * (8 * 8 * 8) / (4 * 16 * 16)  # = 8 channels x (4 / 2) ** 2 taps
    assert s.segments() == (("0", "2"),)


def test_other_hooks_are_not_part_of_the_structure() -> None:
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    stats: list[float] = []
    m[0].register_forward_hook(lambda mod, i, o: stats.append(float(torch.sign(o).mean())))  # ops on the output
    m[2].register_forward_pre_hook(lambda mod, i: (i[0] * 1.0,))  # replaces the input
    m[2].register_forward_hook(lambda mod, i, o: torch.tanh(o) * 0 + o)  # replaces the output
    s = discover(m, torch.randn(4, 8))
    assert [(w.name, w.activation.name) for w in s.weight_layers] == [("0", "relu"), ("2", "linear"), ("3", "linear")]
    assert s.links == (("0", "2"), ("2", "3")) and stats
    assert [a.site for a in s.activations] == ["1"]


def test_no_tensor_is_kept_alive() -> None:
    import weakref

    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    refs: list[weakref.ref[torch.Tensor]] = []
    for mod in m:
        mod.register_forward_hook(lambda mod, i, o: refs.append(weakref.ref(o)))
    with torch.no_grad(), StructureProbe(m) as probe:
        out = m(torch.randn(4, 8))
    del out
    assert refs and all(r() is None for r in refs)
    assert probe.structure().weight_layers[0].activation.name == "relu"
