"""Models that crashed the audit: transposed convolutions (weights stored (in, out / groups, *k)) and a forward
that sets ``requires_grad`` on a view of its input (as Wav2Vec2's feature encoder does in train mode); and the
inputs people have: nested (an LSTM's hidden state), several (siamese networks, graphs), keyword, float64 and
saved with torch.save."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import initdiag
from initdiag.recording import output_rows


class Decoder(nn.Module):
    """Conv -> ReLU -> ConvTranspose (grouped) -> ReLU -> Conv, as in U-Net and GAN decoders."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, groups=groups)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.up(torch.relu(self.a(x)))))


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_convolution_rows_are_the_output_units_incoming_weights(groups: int) -> None:
    """Row j of output_rows is what output channel j reads: its response at one output pixel to a unit
    impulse at each input channel and kernel tap is exactly those weights (reference: the layer itself)."""
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(4, 6, 3, groups=groups, bias=False)
    rows = output_rows(up, up.weight.detach())
    assert rows.shape == (6, 4 // groups * 9)
    per_group = 4 // groups
    for j in range(6):
        g = j // (6 // groups)
        reference = []
        for i in range(g * per_group, (g + 1) * per_group):
            for ky in range(3):
                for kx in range(3):
                    x = torch.zeros(1, 4, 3, 3)
                    x[0, i, 2 - ky, 2 - kx] = 1.0  # the input pixel that reaches output (2, 2) through tap (ky, kx)
                    reference.append(up(x)[0, j, 2, 2].item())
        assert rows[j].tolist() == pytest.approx(reference)


def test_a_decoder_with_transposed_convolutions_audits_and_finds_identical_output_units() -> None:
    torch.manual_seed(0)
    model = Decoder()
    healthy = initdiag.audit(model, input_shape=(3, 8, 8))
    assert not any(v.check == "symmetry" and v.status == "fail" for v in healthy.verdicts)
    with torch.no_grad():  # output channels 0 and 1 of the first group read, and are read by, identical weights:
        model.up.weight[:, 1] = model.up.weight[:, 0]  # they get identical gradients, so they stay identical
        model.up.bias[1] = model.up.bias[0]
        model.b.weight[:, 1] = model.b.weight[:, 0]
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status == "fail" and "up" in sym.layers


class SetsRequiresGrad(nn.Module):
    """A forward that marks a view of its input as requiring grad in train mode (torch allows it on leaves)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, None]
        if self.training:
            h.requires_grad = True
        return self.head(torch.relu(self.conv(h)).mean(-1))


def test_the_audit_input_is_a_leaf_as_data_is() -> None:
    torch.manual_seed(0)
    example = torch.randn(8, 64)
    result = initdiag.audit(SetsRequiresGrad(), example)
    assert result.passed
    assert not example.requires_grad  # the caller's tensor is untouched


class DepthwiseScale(nn.Module):
    """A 1x1 depthwise convolution with one weight per neuron (a per-channel scale, as FastViT's and
    MobileOne's ``conv_scale``) between two dense convolutions."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, channels, 3, padding=1)
        self.scale = nn.Conv2d(channels, channels, 1, groups=channels)
        self.b = nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.scale(torch.relu(self.a(x))))).mean((2, 3))


def test_neurons_that_read_different_inputs_are_never_symmetric() -> None:
    """Depthwise: every neuron reads its own channel, so single weights that collide (512 neurons drawing from
    ~40 distinct values) are neither identical neurons nor near-duplicates: they get different gradients.
    Compared across channels, their |cos| is 1 (a warning before neurons were compared within groups)."""
    torch.manual_seed(0)
    model = DepthwiseScale(512)
    with torch.no_grad():
        model.scale.weight.copy_(torch.randn_like(model.scale.weight).round(decimals=1))
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status == "pass", sym.message


def test_identical_neurons_within_a_group_of_a_grouped_convolution_fail() -> None:
    """Grouped convolution: two neurons of one group with identical incoming and outgoing weights are
    symmetric; the same rows in different groups read different inputs and are not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    grouped, after = model[2], model[4]
    with torch.no_grad():  # neuron 4 (group 1) copies neuron 0 (group 0): different inputs, not symmetric
        grouped.weight[4] = grouped.weight[0]
        grouped.bias[4] = grouped.bias[0]
        after.weight[:, 4] = after.weight[:, 0]
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status != "fail", sym.message
    with torch.no_grad():  # neuron 1 copies neuron 0 in group 0: symmetric
        grouped.weight[1] = grouped.weight[0]
        grouped.bias[1] = grouped.bias[0]
        after.weight[:, 1] = after.weight[:, 0]
    (sym,) = [v for v in initdiag.audit(model, input_shape=(3, 8, 8)).verdicts if v.check == "symmetry"]
    assert sym.status == "fail" and "2" in sym.layers, sym.message


# -- inputs people have: nested, several, keyword, float64, saved -------------------------------------------
class _WordModel(nn.Module):
    """Embedding -> LSTM(hidden given) -> Linear, the shape of a word language model's forward(tokens, hidden)."""

    def __init__(self, vocab: int = 30, width: int = 16) -> None:
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(vocab, width), nn.LSTM(width, width, batch_first=True), \
            nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        out, _ = self.rnn(self.emb(tokens), hidden)
        return self.out(out)


class _Siamese(nn.Module):
    """One tower applied to two images; the head reads both embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16))
        self.head = nn.Linear(32, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.tower(a), self.tower(b)], dim=1))


class _Graph(nn.Module):
    """Two graph convolutions ``adj @ x @ W`` with their own weight parameters (used through torch.mm)."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(features, hidden) / features**0.5)
        self.w2 = nn.Parameter(torch.randn(hidden, classes) / hidden**0.5)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        h = torch.relu(torch.mm(adj, torch.mm(x, self.w1)))
        return scale * torch.mm(adj, torch.mm(h, self.w2))


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 24), nn.Linear(24, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.fc2(h if mask is None else h * mask)


def _audited(result: initdiag.AuditResult) -> None:
    run = result.runs[0]
    assert len(run.frame) and run.layers
    assert not [v for v in run.verdicts if v.check == "diverged" and v.status != "pass"]


def test_nested_several_and_keyword_inputs_audit_through_the_api() -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 30, (8, 5))
    hidden = (torch.zeros(1, 8, 16), torch.zeros(1, 8, 16))
    result = initdiag.audit(_WordModel(), (tokens, hidden))
    _audited(result)
    assert "rnn" in {la.module_name for la in result.runs[0].layers}
    _audited(initdiag.audit(_Siamese(), input_shape=[(1, 8, 8), (1, 8, 8)]))
    _audited(initdiag.audit(_Graph(), input_shape=[(8,), (16,)], batch_size=16))
    x = torch.randn(16, 8)
    adj = torch.eye(16) + torch.rand(16, 16).lt(0.2).float()
    _audited(initdiag.audit(_Graph(), (x, adj), example_kwargs={"scale": 2.0}))
    masked = initdiag.audit(_Masked(), {"x": torch.randn(8, 12), "mask": torch.ones(8, 24)})
    _audited(masked)
    assert masked.inputs.batch_shape == (8, 12)
    with pytest.raises(initdiag.UsageError, match="holds no tensor"):
        initdiag.audit(_Masked(), ())
    with pytest.raises(initdiag.UsageError, match="one per input_shape"):
        initdiag.audit(_Siamese(), input_shape=[(1, 8, 8), (1, 8, 8)], input_dtype=["float"] * 3)


def test_a_float64_model_gets_float64_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    result = initdiag.audit(model, input_shape=(10,))
    assert result.inputs.dtype == "float64"
    _audited(result)


_MODELS = '''
import torch
from torch import nn


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16))
        self.head = nn.Linear(32, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.tower(a), self.tower(b)], dim=1))


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(30, 16), nn.Linear(16 + 4, 5)

    def forward(self, tokens, extra):
        return self.fc(torch.cat([self.emb(tokens), extra], dim=-1))


class Word(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(30, 16), nn.LSTM(16, 16, batch_first=True), nn.Linear(16, 30)

    def forward(self, tokens, hidden, mask=None):
        out, _ = self.rnn(self.emb(tokens), hidden)
        return self.out(out if mask is None else out * mask)


def double():
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4)).double()
'''


def test_several_saved_and_float64_inputs_audit_through_the_cli(tmp_path: Path) -> None:
    from initdiag.cli import main

    models = tmp_path / "models.py"
    models.write_text(_MODELS)
    common = ["--batches", "1", "--batch-size", "8", "--format", "json"]

    def audit(*argv: str) -> dict[str, Any]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main(["audit", *argv, *common, "--out", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())

    assert audit(f"{models}:Siamese", "--input-shape", "1,8,8", "--input-shape", "1,8,8")["runs"]
    mixed = audit(f"{models}:Tagger", "--input-shape", "6", "--input-shape", "6,4", "--input-dtype", "long",
                  "--input-dtype", "float")
    assert mixed["dataset"]["kind"] == "tokens"
    saved = tmp_path / "batch.pt"
    tokens = torch.randint(0, 30, (8, 5))
    hidden = (torch.zeros(1, 8, 16), torch.zeros(1, 8, 16))
    torch.save({"args": (tokens, hidden), "kwargs": {"mask": torch.ones(8, 5, 16)}}, saved)
    from_file = audit(f"{models}:Word", "--inputs", str(saved))
    assert from_file["dataset"]["kind"] == "file" and from_file["dataset"]["batch_shape"] == [8, 5]
    assert audit(f"{models}:double", "--input-shape", "10")["dataset"]["dtype"] == "float64"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    assert main(["audit", f"{models}:Word", "--inputs", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert main(["audit", f"{models}:Siamese", "--input-shape", "1,8,8", "--input-dtype", "long",
                 "--input-dtype", "float", "--input-dtype", "float", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


class _ClosureBlock(nn.Module):
    """A block that keeps its MLP as a lambda over its own modules (minGPT's ``self.mlpf``): ``copy.deepcopy``
    copies the lambda by reference, so a copy's forward would run the original's layers."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.ModuleDict({"fc": nn.Linear(width, 4 * width), "proj": nn.Linear(4 * width, width)})
        m = self.mlp
        self.mlpf = lambda x: m["proj"](torch.relu(m["fc"](x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlpf(self.norm(x))


def test_a_model_whose_copy_would_run_the_original_is_audited_in_place_and_left_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), _ClosureBlock(), _ClosureBlock(), nn.Linear(16, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = initdiag.audit(model, input_shape=(8,), inits=("keep", "he"))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    recorded = {la.module_name for la in result.runs[0].layers}
    assert {"1.mlp.fc", "1.mlp.proj", "2.mlp.fc", "2.mlp.proj"} <= recorded
    assert model.training
