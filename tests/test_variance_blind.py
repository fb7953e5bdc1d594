"""The failures variance cannot see: output scale, attention entropy, branch scale, correlation, precision.

Each case is one that theory fixes (a head of N(0, 1) weights, attention without skip connections, a ReLU chain
at He, an activation beyond float16's range) or a published architecture with its own init (timm's ViT, Hugging
Face's GPT-2) and the same re-initialized with N(0, 1) weights. Measurements are compared with theory's
predictions and with independent references.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initdiag
from initdiag.checks import CHECKS
from initdiag.recording.extras import mean_cosine
from initdiag.structure import discover
from initdiag.theory.cmap import relu_arccos

NEW = ("output_scale", "branch_scale", "attention_entropy", "correlation", "precision")


def _verdicts(model: nn.Module, **kw: object) -> dict[str, initdiag.checks.Verdict]:
    result = initdiag.audit(model, **kw)  # type: ignore[arg-type]
    return {v.check: v for v in result.runs[0].analysis.verdicts}


def _mlp(depth: int, width: int, head_std: float | None = None, fan_in: int = 784) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = fan_in
    for _ in range(depth - 1):
        lin = nn.Linear(d, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        d = width
    head = nn.Linear(d, 10)
    if head_std is not None:
        nn.init.normal_(head.weight, std=head_std)
    return nn.Sequential(*layers, head)


def test_new_checks_are_registered_with_methods_and_fail_on_names() -> None:
    names = [c.name for c in CHECKS]
    for name in NEW:
        assert name in names and name in CHECKS.fail_on_names()
        check = CHECKS.get(name)
        assert check is not None
        note = check.methods(initdiag.checks.DEFAULT_THRESHOLDS)[0]
        assert note.threshold and note.null_hypothesis and "Source" in note.description


def test_mean_cosine_matches_pairwise_reference() -> None:
    torch.manual_seed(1)
    x = torch.randn(7, 5, dtype=torch.float64) + 0.5
    u = x / x.norm(dim=1, keepdim=True)
    gram = u @ u.T
    reference = (gram.sum() - gram.diagonal().sum()) / (7 * 6)
    assert mean_cosine(x.unsqueeze(0)) == pytest.approx(float(reference), abs=1e-12)


def test_head_of_unit_normal_weights_fails_output_scale_with_theory_beside() -> None:
    v = _verdicts(_mlp(3, 512, head_std=1.0), input_shape=(784,))["output_scale"]
    assert v.status == "fail"
    s, predicted = v.effect["logit_std"], v.effect["predicted_logit_std"]
    assert s is not None and predicted is not None and s > 3 and abs(s / predicted - 1) < 0.25
    assert v.effect["loss"] is not None and v.effect["loss"] > 3 * math.log(10)  # far above chance
    assert "head" in (v.advice or "")
    good = _verdicts(_mlp(3, 512), input_shape=(784,))["output_scale"]
    assert good.status == "pass" and good.effect["loss"] == pytest.approx(math.log(10), abs=0.5)


def test_hundred_layer_relu_at_he_follows_the_correlation_map() -> None:
    """The variance is kept (He), but the cosine between inputs climbs toward 1 as the arc-cosine kernel says:
    polynomially (chi_c(1) = 1 at criticality), ~0.996 at 100 layers. Theory supports a warning, not a
    failure: the inputs still differ by ~9% of their amplitude, and He et al. trained such depths."""
    v = _verdicts(_mlp(100, 256), input_shape=(784,), batch_size=32)
    corr = v["correlation"]
    assert corr.status == "warn"
    last = corr.details["points"][-1]
    assert last["predicted"] is not None and last["samples"] == pytest.approx(last["predicted"], abs=0.004)
    assert 0.99 < last["samples"] < 0.999
    assert v["signal"].status != "fail"
    c = 0.0
    for _ in range(100):
        c = relu_arccos(c)
    assert c == pytest.approx(0.9964, abs=5e-4)


class _Attention(nn.Module):
    def __init__(self, d: int, skip: bool) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.skip, self.d = skip, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(self.d), dim=-1)
        y = self.o(a @ self.v(x))
        return x + y if self.skip else y


def test_attention_without_skip_connections_collapses_the_tokens() -> None:
    """Dong et al. (2021): pure self-attention maps the tokens to one, doubly exponentially; skip connections
    keep them apart."""
    torch.manual_seed(0)
    plain = nn.Sequential(*(_Attention(32, skip=False) for _ in range(12)))
    torch.manual_seed(0)
    residual = nn.Sequential(*(_Attention(32, skip=True) for _ in range(12)))
    bad = _verdicts(plain, input_shape=(16, 32))["correlation"]
    good = _verdicts(residual, input_shape=(16, 32))["correlation"]
    assert bad.status == "fail" and bad.details["kind"] == "tokens" and bad.effect["gap"] < 1e-4
    assert good.status == "pass"


def test_attention_entropy_and_logit_spread_match_theory() -> None:
    torch.manual_seed(0)
    layer = _Attention(64, skip=True)
    s = discover(layer, torch.randn(4, 24, 64))
    (site,) = s.attention
    assert site.op == "softmax" and site.keys == 24 and site.heads == 1
    assert site.predicted_logit_std is not None
    assert site.logit_std[0] == pytest.approx(site.predicted_logit_std, rel=0.2)
    assert site.entropy[0] / site.max_entropy[0] > 0.95
    with torch.no_grad():
        for lin in (layer.q, layer.k):
            lin.weight.normal_(0.0, 1.0)
    s = discover(layer, torch.randn(4, 24, 64))
    assert s.attention[0].entropy[0] / s.attention[0].max_entropy[0] < 0.2


def test_torch_multihead_attention_is_measured_per_head() -> None:
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
    s = discover(enc, torch.randn(2, 10, 32))
    assert [a.heads for a in s.attention] == [4, 4]
    assert all(e > 0.8 * m for a in s.attention for e, m in zip(a.entropy, a.max_entropy, strict=True))


def test_post_norm_branches_of_unit_normal_weights_overwrite_the_stream() -> None:
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0), 3,
                                enable_nested_tensor=False)
    good = _verdicts(enc, input_shape=(10, 32))["branch_scale"]
    assert good.status == "pass"
    bad = _verdicts(enc, input_shape=(10, 32), inits=("random:std=1",))["branch_scale"]
    assert bad.status == "fail" and bad.effect["max_ratio"] is not None and bad.effect["max_ratio"] > 100


class _Scaled(nn.Module):
    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.norm, self.fc, self.gamma = nn.LayerNorm(16), nn.Linear(16, 16), nn.Parameter(torch.full((16,), gamma))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.fc(self.norm(x))


def test_branch_designs_are_named_by_the_rule_they_satisfy() -> None:
    for gamma, design in ((1e-6, "zero"), (0.05, "small"), (1.0, "unit")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), *(_Scaled(gamma) for _ in range(3)))
        v = _verdicts(model, input_shape=(16,))["branch_scale"]
        judged = [b for b in v.details["blocks"] if b["judged"]]
        assert judged and all(b["design"] == design for b in judged), (gamma, v.details)
        assert v.status == "pass"


def test_float16_overflow_is_a_verdict_only_for_float16() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.mul_(1e5)
    info = _verdicts(model, input_shape=(64,))["precision"]
    assert info.status == "pass" and info.effect["max_abs"] is not None and info.effect["max_abs"] > 65504
    assert "Information only" in info.message
    fp16 = _verdicts(model, input_shape=(64,), dtype="float16")["precision"]
    assert fp16.status == "fail" and "0" in fp16.layers
    assert _verdicts(model, input_shape=(64,), dtype="bfloat16")["precision"].status == "pass"


def test_vit_and_gpt2_pass_at_their_own_init_and_fail_at_unit_normal() -> None:
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4,
                            num_classes=10)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=192, n_head=4, vocab_size=500, bos_token_id=0, eos_token_id=0)
    gpt = transformers.GPT2LMHeadModel(cfg)
    for model, kw in ((vit, {"input_shape": (3, 32, 32)}), (gpt, {"input_shape": (24,), "input_dtype": "long"})):
        result = initdiag.audit(model, inits=("keep", "random:std=1"), **kw)  # type: ignore[arg-type]
        keep, normal = ({v.check: v for v in run.analysis.verdicts} for run in result.runs)
        for name in ("output_scale", "attention_entropy", "branch_scale", "correlation"):
            assert keep[name].status == "pass", (type(model).__name__, name, keep[name].message)
        assert normal["output_scale"].status == "fail" and normal["attention_entropy"].status == "fail"
        sites = normal["attention_entropy"].details["sites"]
        assert all(r["predicted_logit_std"] == pytest.approx(r["logit_std"], rel=0.3) for r in sites)


def test_a_trainers_half_precision_makes_precision_a_verdict(tmp_path: object) -> None:
    from initdiag.integrations.session import TrainingSession, trainer_dtype

    assert [trainer_dtype(p) for p in ("16-mixed", "bf16-mixed", "32-true", 16, None)] == [
        "float16", "bfloat16", None, "float16", None]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.mul_(1e5)
    session = TrainingSession(str(tmp_path), formats=("json",))
    session.begin(model, torch.randn(8, 64), dtype=trainer_dtype("16-mixed"))
    assert session.audit is not None
    verdict = next(v for v in session.audit.runs[0].verdicts if v.check == "precision")
    assert verdict.status == "fail" and "float16" in verdict.message
    session.close()


class _WindowAttention(nn.Module):
    """Swin's pattern: logits viewed per window, a mask of -100 added, folded back before the softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(16, 32)
        mask = torch.zeros(2, 8, 8)
        mask[1, :, 4:] = -100.0  # the second window's queries see only its first half of the keys
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch * 2 windows, 8 tokens, 16)
        q, k = self.qk(x).chunk(2, dim=-1)
        logits = (q @ k.transpose(1, 2) / 4.0).view(-1, 2, 8, 8) + self.mask
        return torch.softmax(logits.view(-1, 8, 8), dim=-1) @ x


def test_additive_masks_hide_keys_through_reshapes() -> None:
    torch.manual_seed(0)
    (site,) = discover(_WindowAttention(), torch.randn(8, 8, 16)).attention
    # uniform-ish over 8 keys in one window, over 4 in the other: log n averages log 8 and log 4
    assert site.max_entropy[0] == pytest.approx((math.log(8) + math.log(4)) / 2, rel=1e-6)
    assert site.entropy[0] / site.max_entropy[0] > 0.95 and site.logit_std[0] < 1.0


class _Parallel(nn.Module):
    """GPT-J / Cohere's parallel block: ``x + attn(ln(x)) + mlp(ln(x))``, the attention side with more weight
    layers than the MLP side; the second add joins the MLP to a sum that holds the identity."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        with torch.no_grad():
            self.down.weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(32), dim=-1) @ self.v(h)
        return x + self.o(a) + self.down(torch.relu(self.up(h)))


def test_the_branch_of_a_parallel_block_is_the_side_without_the_identity() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*(_Parallel() for _ in range(3)))
    x = torch.randn(4, 8, 32)
    s = discover(model, x)
    assert len(s.blocks) == 3 and all(b.shortcut == "identity" and b.residual_adds == 2 for b in s.blocks)
    with torch.no_grad():
        block = model[1]
        stream = model[0](x)
        h = block.ln(stream)
        a = torch.softmax(block.q(h) @ block.k(h).transpose(1, 2) / math.sqrt(32), dim=-1) @ block.v(h)
        summed = stream + block.o(a)
        mlp = block.down(torch.relu(block.up(h)))
    expected = float(mlp.double().var(unbiased=False) / summed.double().var(unbiased=False))
    assert s.blocks[1].branch_ratios[1] == pytest.approx(expected, rel=1e-4)
    assert s.blocks[1].branch_ratios[1] < 0.01


class _BiasOut(nn.Module):
    """GPT-NeoX-Japanese's pattern: a sub-module returns its output and its bias parameter, which the block
    expands to the stream's shape and adds before the residual add."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d, bias=False)
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), self.bias


class _BiasBlock(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.norm, self.inner = nn.LayerNorm(d), _BiasOut(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, b = self.inner(self.norm(x))
        return x + (y + b.expand_as(x))


def test_a_returned_bias_expanded_to_the_streams_shape_is_no_data() -> None:
    torch.manual_seed(0)
    s = discover(nn.Sequential(nn.Linear(16, 16), *(_BiasBlock() for _ in range(3))), torch.randn(4, 16))
    assert [b.residual_adds for b in s.blocks] == [1, 1, 1]
    assert all(0 < r < 10 for b in s.blocks for r in b.branch_ratios)


def test_a_stream_below_its_norms_eps_is_reported_not_judged() -> None:
    """A pre-norm branch reading a stream of variance below its norm's eps divides by eps: ``x / sqrt(eps)`` is
    a gain, the stream grows until it reaches eps and then is normalized (HF's MobileViT). With eps far below the
    stream the same add is a normalized branch overwriting the stream, and fails."""
    for eps, judged in ((1e-5, False), (1e-14, True)):
        torch.manual_seed(0)
        tiny = nn.Linear(16, 16)
        with torch.no_grad():
            tiny.weight.mul_(1e-4)
            tiny.bias.zero_()
        blocks = [_Scaled(1.0) for _ in range(5)]
        for b in blocks:
            b.norm.eps = eps
        model = nn.Sequential(nn.Linear(16, 16), blocks[0], blocks[1], tiny, *blocks[2:])
        v = _verdicts(model, input_shape=(16,))["branch_scale"]
        first = next(b for b in v.details["blocks"] if b["block"] == "4")
        assert first["ratio"] > 100 and first["judged"] is judged, (eps, v.details)
        assert (v.status == "fail") is judged, v.message


class _MapAttention(nn.Module):
    """Position attention with unscaled logits, the softmax over each query's keys or over the whole map."""

    def __init__(self, joint: bool, d: int = 64) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))
        self.joint = joint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.q(x) @ self.k(x).transpose(1, 2)
        a = torch.softmax(z.view(z.shape[0], -1), dim=1).view_as(z) if self.joint else torch.softmax(z, dim=-1)
        return x + a @ self.v(x)


def test_a_softmax_over_the_whole_query_key_map_warns_not_fails() -> None:
    """Rows of a joint softmax sum to 1/queries on average: its collapse freezes its own queries and keys but
    carries little signal (smp's MAnet), while collapsed per-query attention fails."""
    x = torch.randn(4, 12, 64) * 4
    for joint, status in ((True, "warn"), (False, "fail")):
        torch.manual_seed(0)
        v = _verdicts(_MapAttention(joint), example_input=x)["attention_entropy"]
        (site,) = v.details["sites"]
        assert site["joint"] is joint and site["ratio"] < 0.2 and v.status == status, v.message
        assert site["keys"] == (144 if joint else 12) and site["queries"] == 12


class _PostBranchNorm(nn.Module):
    """OLMo-2's block: the branch's output is normalized before the add (its variance is the norm's gain)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(d, d), nn.RMSNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.fc(x))


def test_a_branch_ending_in_a_normalization_is_reported_not_judged() -> None:
    torch.manual_seed(0)
    embed = nn.Linear(16, 16)
    with torch.no_grad():
        embed.weight.mul_(0.01)  # a small embedding: the first normalized branches are far larger than it
    model = nn.Sequential(embed, *(_PostBranchNorm() for _ in range(4)))
    v = _verdicts(model, input_shape=(16,))["branch_scale"]
    assert v.status == "pass" and not any(b["judged"] for b in v.details["blocks"])
    assert max(b["ratio"] for b in v.details["blocks"]) > 10


class _ClassesFirst(nn.Module):
    """A token model whose logits leave the head transposed to (batch, classes, tokens), as a loss over
    ``dim=1`` wants them: still the head's output, classes on the head's channel dim."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 32), nn.Linear(32, 50)
        nn.init.normal_(self.head.weight, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids)).transpose(1, 2)


def test_a_transposed_head_output_is_still_the_heads_logits() -> None:
    torch.manual_seed(0)
    good = _verdicts(_ClassesFirst(0.02), input_shape=(12,), input_dtype="long", loss="ce")["output_scale"]
    bad = _verdicts(_ClassesFirst(3.0), input_shape=(12,), input_dtype="long", loss="ce")["output_scale"]
    assert good.status == "pass" and good.details["head"] == "head" and good.details["classes"] == 50
    assert bad.status == "fail" and bad.effect["predicted_logit_std"] is not None
    assert bad.effect["logit_std"] == pytest.approx(bad.effect["predicted_logit_std"], rel=0.2)


class _Experts(nn.Module):
    """Stacked expert weights applied with ``torch._grouped_mm`` (transformers' mixtures of experts), each
    token's expert bias picked by a data-dependent index (GPT-OSS)."""

    def __init__(self, d: int = 16, experts: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, d, d) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(experts, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        offs = torch.tensor([flat.shape[0] // 2, flat.shape[0]], dtype=torch.int32)
        expert = (flat.sum(-1).argsort() >= flat.shape[0] // 2).long()  # routing: data picks the bias row
        return (torch._grouped_mm(flat, self.weight, offs) + self.bias[expert]).reshape(x.shape)


class _MoEBlock(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.norm, self.experts = nn.LayerNorm(d), _Experts(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.experts(self.norm(x))


def test_grouped_matmul_experts_are_a_weight_layer_and_a_branch() -> None:
    torch.manual_seed(0)
    s = discover(nn.Sequential(nn.Linear(16, 16), *(_MoEBlock() for _ in range(2))), torch.randn(4, 16))
    experts = [w for w in s.weight_layers if w.module_name.endswith("experts")]
    assert len(experts) == 2 and all(w.fan_in == 16 for w in experts)
    assert [b.residual_adds for b in s.blocks] == [1, 1] and all(b.shortcut == "identity" for b in s.blocks)


class _TiedCopy(nn.Module):
    """Tied input and output embeddings with a normalized skip (XLM's pattern): the logit of the input token
    is ~sqrt(d) times the spread of the others, so the model predicts its input at initialization."""

    def __init__(self, vocab: int = 200, d: int = 64) -> None:
        super().__init__()
        self.embed, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.125)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)))


def test_a_tied_models_pull_toward_its_input_warns_but_a_large_head_fails() -> None:
    torch.manual_seed(0)
    v = _verdicts(_TiedCopy(), input_shape=(10,), input_dtype="long", loss="ce")["output_scale"]
    assert v.effect["entropy_ratio"] is not None and v.effect["entropy_ratio"] < 0.2  # near one-hot ...
    assert v.effect["iid_entropy_ratio"] is not None and v.effect["iid_entropy_ratio"] > 0.5  # ... not by scale
    assert v.status == "warn"
