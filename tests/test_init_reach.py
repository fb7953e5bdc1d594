"""Initializers reach every linear map the structure sees (transposed and grouped convolutions, ``(in, out)``
weights, raw parameters used through ``torch.mm`` / ``F.linear``) with the fans the forward showed; what they
cannot reach is named; runs that do not differ are called equal; the recommendation follows the verdicts and
what each layer's activation needs."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import initdiag
from initdiag.audit.advice import conformance
from initdiag.audit.weights import init_targets
from initdiag.cli import main
from initdiag.initializers import InitSpec, initialize
from initdiag.structure import discover

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = '''
import torch
from torch import nn


class Dense(nn.Module):
    """A weight of its own, applied as x @ W (what pytorch/examples' GCN does)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(n_in, n_out) * 0.01)

    def forward(self, x):
        return torch.mm(x, self.kernel)


class Generator(nn.Module):
    """DCGAN-style: transposed convolutions (one grouped), then a raw-parameter map."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(16, 32, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(32, 8, 4, stride=2, padding=1, groups=2)
        self.dense = Dense(8 * 16 * 16, 10)

    def forward(self, x):
        h = torch.relu(self.up2(torch.relu(self.up1(x))))
        return self.dense(h.flatten(1))


class Recurrent(nn.Module):
    """Only an LSTM: no linear map the structure sees, so no initializer changes anything."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 12, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]
'''

# fan_in as the forward sees it: a transposed convolution (stride s, kernel k) sums in/groups x (k/s)^2 inputs
# into each output; x @ W sums over W's rows
FAN_IN = {"up1": 16 * (4 // 2) ** 2, "up2": 32 // 2 * (4 // 2) ** 2, "dense": 8 * 16 * 16}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "user_models.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


@pytest.fixture(scope="module")
def namespace(models: Path) -> dict[str, type[nn.Module]]:
    scope: dict[str, type[nn.Module]] = {}
    exec(compile(models.read_text(), str(models), "exec"), scope)
    return scope


def _near(variance: float, expected: float, n: int) -> bool:
    """The sample variance of ``n`` draws within 5 standard errors (relative sd sqrt(2/n) for a normal)."""
    return abs(variance / expected - 1) <= 5 * math.sqrt(2 / n)


def test_he_reaches_transposed_convolutions_and_raw_parameters(namespace: dict[str, type[nn.Module]]) -> None:
    torch.manual_seed(0)
    model = namespace["Generator"]()
    result = initdiag.audit(model, input_shape=(16, 4, 4), inits=("keep", "he"), batches=1, batch_size=4)
    keep, he = result.runs
    rows = {w.layer: w for w in he.weights}
    assert set(rows) == set(FAN_IN)
    for name, fan_in in FAN_IN.items():
        row = rows[name]
        assert row.reinitialized and _near(row.variance, 2 / fan_in, math.prod(row.shape)), (name, row)
    own = {w.layer: w.variance for w in keep.weights}
    assert own["dense"] == pytest.approx(model.dense.kernel.detach().double().var(unbiased=False).item())
    assert not any(w.reinitialized for w in keep.weights)
    assert he.kept == () and keep.kept == ()
    # the theory got what was drawn (2/fan_in, ReLU before each layer): every layer's predicted gain is exactly 1
    forward = next(p for p in he.profiles if p.signal == "forward")
    values = [v for v in forward.values if v is not None]
    assert len(values) == 3 and np.allclose(values, values[0], rtol=1e-9, atol=0)


class InOut(nn.Module):
    """A weight stored (in, out) and applied with ``torch.addmm``: transformers' ``Conv1D``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n_in, n_out)), nn.Parameter(torch.ones(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class Raw(nn.Module):
    """A weight of its own applied with ``F.linear``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(n_out, n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)


class Maps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1)
        self.in_out, self.raw = InOut(6 * 16 * 16, 40), Raw(40, 20)
        self.gate = nn.Parameter(torch.ones(1, 20))  # 2 dims, but multiplied in: no linear map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw(self.in_out(self.up(self.conv(x)).flatten(1))) * self.gate


# in/groups x kernel area; a transposed convolution (stride 2, kernel 4): in x (4/2)^2; (in, out): its rows
MAPS_FAN_IN = {"conv": 8 // 4 * 9, "up": 16 * 2 * 2, "in_out": 6 * 16 * 16, "raw": 40}
MAPS_PARAM = {"conv": "conv.weight", "up": "up.weight", "in_out": "in_out.weight", "raw": "raw.w"}


@pytest.mark.parametrize("init", ["he", "he-uniform", "xavier", "orthogonal", "pytorch-default"])
def test_initialize_uses_the_fans_the_forward_showed(init: str) -> None:
    model = Maps()
    targets = init_targets(model, discover(model, torch.randn(2, 8, 8, 8)))
    assert {t.module: t.fan_in for t in targets} == MAPS_FAN_IN
    done = initialize(model, InitSpec(init), seed=0, targets=targets)
    weights = {name: model.get_parameter(MAPS_PARAM[name]).detach().double() for name in MAPS_FAN_IN}
    if init == "pytorch-default":  # reset_parameters where a module has one; named where it has none
        assert set(done.variances) == {"conv", "up"}
        assert {(k.name, k.reason) for k in done.kept} == {
            ("in_out.weight", "its module has no reset_parameters()"),
            ("raw.w", "its module has no reset_parameters()"), ("gate", "not seen as a linear map in the forward")}
        for name in ("conv", "up"):  # the second moment drawn is what the theory gets
            assert done.variances[name] == pytest.approx(weights[name].square().mean().item())
        return
    assert [k.name for k in done.kept] == ["gate"]
    assert torch.count_nonzero(model.in_out.bias) == 0 and torch.count_nonzero(model.up.bias) == 0
    for name, fan_in in MAPS_FAN_IN.items():
        w = weights[name]
        fan_out = {"conv": 16 // 4 * 9, "up": 6 * 16, "in_out": 40, "raw": 20}[name]
        expected = {"he": 2 / fan_in, "he-uniform": 2 / fan_in, "xavier": 2 / (fan_in + fan_out),
                    "orthogonal": 1 / max(w.shape[0], w[0].numel())}[init]
        assert done.variances[name] == pytest.approx(expected, rel=1e-12)
        assert _near(w.var(unbiased=False).item(), done.variances[name], w.numel()), name
        if init == "he-uniform":
            assert w.abs().max() <= math.sqrt(6 / fan_in) + 1e-6
        if init == "orthogonal":
            rows = w.reshape(w.shape[0], -1)
            small = rows @ rows.T if rows.shape[0] <= rows.shape[1] else rows.T @ rows
            assert torch.allclose(small, torch.eye(len(small), dtype=torch.float64), atol=1e-5)


def test_cli_he_reaches_them_too_and_names_what_it_keeps(models: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    code = main(["audit", f"{models}:Generator", "--input-shape", "16,4,4", "--init", "keep,he", "--batches", "1",
                 "--batch-size", "4", "--out", str(out), "--format", "json,html"])
    stdout = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    he = summary["runs"][1]
    assert he["initializer"] == "he" and he["kept"] == []
    for row in he["weights"]:
        assert row["reinitialized"] and _near(row["variance"], 2 / FAN_IN[row["layer"]], math.prod(row["shape"]))
    assert "Not re-initialized" not in stdout

    out = tmp_path / "lstm"
    code = main(["audit", f"{models}:Recurrent", "--input-shape", "5,6", "--init", "keep,he", "--batches", "1",
                 "--batch-size", "4", "--out", str(out), "--format", "json,html"])
    stdout = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommendation"]["equal"] == ["keep", "he"]
    assert "`keep` and `he` are equal (identical weights)" in summary["recommendation"]["evidence"]
    assert [k["name"] for k in summary["runs"][1]["kept"]] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    assert summary["runs"][0]["digest"] == summary["runs"][1]["digest"]
    table = stdout[:stdout.index("Recommendation:")]
    assert "<- recommended" not in table and table.count("<- equal") == 2
    assert "Not re-initialized (kept as they were):\n  he: rnn.weight_ih_l0, rnn.weight_hh_l0 (a recurrent layer's " \
           "gate weights" in stdout
    html = (out / "report.html").read_text()
    page_one = html[:html.index('<section id="structure">')]
    assert "Not re-initialized" in page_one and "rnn.weight_hh_l0" in page_one


def relu_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_identical_draws_are_equal_and_neither_is_best() -> None:
    result = initdiag.audit(relu_mlp(), input_shape=(12,), inits=("zeros", "constant:value=0"), batches=1,
                            batch_size=8)
    a, b = result.runs
    assert a.digest == b.digest and a.failed  # all-zero weights fail, identically
    advice = result.recommendation
    assert advice.equal == ("zeros", "constant:value=0")
    assert advice.evidence.startswith("the 2 audited initializations do not differ: `zeros` and `constant:value=0` "
                                      "are equal (identical weights)")
    assert "use `zeros`" not in advice.evidence


def relu_cnn(depth: int) -> nn.Sequential:
    """``depth`` 3x3 convolutions with ReLU, no normalization, PyTorch's default init, then a linear head."""
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_relu_cnn_gets_he_conformant_advice() -> None:
    torch.manual_seed(0)
    result = initdiag.audit(relu_cnn(12), input_shape=(3, 8, 8), inits=("keep", "xavier", "he"), batches=2,
                            batch_size=16)
    keep, xavier, he = result.runs
    assert keep.failed and not he.failed
    assert result.recommendation.initializer == "he" and not result.recommendation.equal
    assert result.recommendation.evidence.startswith("use `he`: ")
    relu = [w for w in he.weights if w.activation == "relu"]
    assert len(relu) == 12 and all(w.recommended == "he" for w in relu)
    for w in relu:  # He's Var(W) is what a ReLU layer needs: 2 / fan_in
        assert _near(w.variance, w.recommended_variance or 0.0, math.prod(w.shape))
    assert conformance(he.weights) < conformance(xavier.weights) < conformance(keep.weights)


def test_between_passing_runs_conformance_decides() -> None:
    torch.manual_seed(0)
    result = initdiag.audit(relu_cnn(3), input_shape=(3, 8, 8), inits=("xavier", "he"), batches=2, batch_size=16)
    assert not any(run.failed for run in result.runs)
    assert result.recommendation.initializer == "he"
    assert "its Var(W) is closest to what each layer's activation needs" in result.recommendation.evidence


def test_layers_followed_by_a_normalization_are_scale_free() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    result = initdiag.audit(model, input_shape=(3, 8, 8), inits=("he", "xavier"), batches=1, batch_size=8)
    for run in result.runs:
        assert [w.normalized for w in run.weights] == [True, True, False]
        head = run.weights[-1]  # the only layer whose scale counts
        assert conformance(run.weights) == pytest.approx(abs(math.log(head.variance / head.recommended_variance)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention and a GELU MLP, each added to the stream."""

    def __init__(self, d: int, heads: int = 2) -> None:
        super().__init__()
        self.ln1, self.ln2, self.heads = nn.LayerNorm(d), nn.LayerNorm(d), heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(d, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token and position embeddings, two pre-LN blocks, a final LayerNorm and a head; GPT-2's N(0, 0.02)."""

    def __init__(self, vocab: int = 50, d: int = 32, length: int = 8) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, length, d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(2))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def test_own_init_that_passes_needs_no_change() -> None:
    torch.manual_seed(0)
    result = initdiag.audit(TinyGPT(), input_shape=(8,), input_dtype="long", inits=("keep", "he"), batches=2,
                            batch_size=8)
    keep, he = result.runs
    assert not keep.failed
    advice = result.recommendation
    assert advice.initializer == "keep" and not advice.equal
    assert advice.evidence.startswith("no change needed: the model's own initialization (`keep`) fails no check")
    assert "keep `keep`" not in advice.evidence
    assert {k.name for k in he.kept} == {"tok.weight", "pos"}  # a lookup and a parameter used by addition
    assert all(w.reinitialized for w in he.weights if w.layer != "tok")
