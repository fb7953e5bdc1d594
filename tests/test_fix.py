"""``initdiag.fix`` and ``initdiag fix``: each broken variant theory says must fail is repaired so its audit
passes and it trains better than before; a model that passes is left bitwise unchanged; the user's model is
never touched unless ``inplace``; bad input ends with one line and exit code 2.

The repaired scales are compared with what theory fixes independently: He's 2 / fan_in for ReLU, 1 / fan_in
for tanh (chi_1 = 1 at q* = 0), unit logit spread for a head, and the residual branch at 1/L of the stream.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import initdiag
from initdiag.cli import main
from initdiag.repair.theory import critical_sigma2
from initdiag.structure.model import Activation


def _mlp(depth: int, width: int = 64, act: type[nn.Module] = nn.ReLU, std: float | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    if std is not None:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, std)
    return net


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_critical_scales_are_the_ones_theory_fixes() -> None:
    assert critical_sigma2(Activation("relu"))[0] == pytest.approx(2.0, rel=1e-6)  # type: ignore[index]
    assert critical_sigma2(Activation("tanh"))[0] == pytest.approx(1.0, rel=1e-3)  # type: ignore[index]
    assert critical_sigma2(Activation("linear"))[0] == 1.0  # type: ignore[index]
    gelu = critical_sigma2(Activation("gelu"))
    assert gelu is not None and 2.0 < gelu[0] < 2.6


def test_a_default_relu_mlp_is_repaired_to_he_and_trains_better() -> None:
    model = _mlp(30)
    given = _state(model)
    result = initdiag.fix(model, input_shape=(32,), verify_steps=15)
    assert not result.before.passed and result.after.passed and result.passed
    assert _equal(_state(model), given)  # the user's model is untouched
    assert result.model is not model
    for layer in result.model[:-1:2]:  # every hidden layer at He: Var(W) = 2 / fan_in
        assert float(layer.weight.detach().square().mean()) == pytest.approx(2.0 / layer.in_features, rel=1e-4)
    assert {c.answers for c in result.changes} == {("signal",)}
    assert all(torch.equal(m.bias, model[i].bias) for i, m in enumerate(result.model) if isinstance(m, nn.Linear))
    assert result.verification is not None and result.verification.improved
    assert len(result.verification.original) == len(result.verification.repaired) == 15


def test_a_tanh_mlp_at_unit_normal_gets_the_edge_of_chaos_scale() -> None:
    model = _mlp(10, act=nn.Tanh, std=1.0)
    result = initdiag.fix(model, input_shape=(32,), verify_steps=10)
    assert not result.before.passed and result.after.passed
    hidden = result.model[2]
    assert float(hidden.weight.detach().square().mean()) * hidden.in_features == pytest.approx(1.0, rel=1e-3)
    assert result.verification is not None and result.verification.improved


@pytest.mark.parametrize(("act", "depth", "width"), [(nn.SiLU, 20, 48), (nn.GELU, 40, 48), (nn.SiLU, 10, 64)])
def test_silu_and_gelu_chains_at_pytorch_default_pass_after_fix(act: type[nn.Module], depth: int,
                                                                 width: int) -> None:
    """SiLU and GELU are not homogeneous: a scale set at q = 1 drifts with the pre-activation scale a deep chain
    reaches (theory's length map), so a 20-layer SiLU MLP at the critical scale of q = 1 still failed. The chain's
    depth is now in the repair; the scale stays between tanh's 1 and the activation's q = 1 value."""
    model = _mlp(depth, width, act=act)
    result = initdiag.fix(model, input_shape=(32,), verify_steps=0)
    assert not result.before.passed and result.after.passed
    unit = critical_sigma2(Activation(act.__name__.lower()))
    assert unit is not None
    hidden = result.model[2]
    sigma2 = float(hidden.weight.detach().square().mean()) * hidden.in_features
    assert 1.5 < sigma2 < unit[0] * 1.05


def test_a_narrow_deep_chain_still_failing_at_theorys_scale_gets_the_measured_correction() -> None:
    """30 SiLU layers of 24 units: at the depth-corrected mean-field scale the gradient still grows ~1.26 per
    layer (finite width); the next round scales the chain by (g_f g_b)^(-1/2) from the measured gains, and the
    signal check no longer fails. (Its correlation still fails: named, exit 3, not hidden.)"""
    model = _mlp(30, 24, act=nn.SiLU)
    result = initdiag.fix(model, input_shape=(32,), verify_steps=0)
    assert result.rounds >= 2
    assert any("measured: per-layer gains" in c.rule for c in result.changes)
    assert not [v for v in result.after.runs[0].verdicts if v.check == "signal" and v.status == "fail"]


def test_the_depth_factor_is_one_for_relu_and_matches_the_length_map_for_silu() -> None:
    """ReLU is homogeneous: every per-layer gain is sigma_w^2 / 2 whatever q, so the depth factor is exactly 1.
    For SiLU the factor makes the predicted per-layer forward x backward gains multiply to 1 over the chain,
    checked against an independent iteration of q' = sigma_w^2 E[silu(sqrt(q) z)^2] by numpy's Gauss-Hermite
    rule (a Monte Carlo reference is too noisy: the map's fixed point is unstable and amplifies its error)."""
    import numpy as np
    from numpy.polynomial.hermite_e import hermegauss

    from initdiag.repair.theory import _depth_factor
    from initdiag.structure.model import WeightLayer

    def layer(name: str, act: str) -> WeightLayer:
        return WeightLayer(name, name, "Linear", "weight", (64, 64), "linear", 64.0, 64.0, (64,), (64,), False,
                           Activation(act), None, None, 0, False)

    relu = [layer(str(i), "relu") for i in range(20)]
    assert _depth_factor(relu, [2.0] * 20, [True] * 20, 0.3) == pytest.approx(1.0, abs=1e-9)
    silu = [layer(str(i), "silu") for i in range(20)]
    unit = critical_sigma2(Activation("silu"))
    assert unit is not None
    c = _depth_factor(silu, [unit[0]] * 20, [True] * 20, 1.0)
    assert 0.8 < c < 1.0
    nodes, weights = hermegauss(120)
    weights = weights / weights.sum()
    s2 = unit[0] * c
    q, log_gain = s2 * 1.0, 0.0
    for _ in range(19):
        x = math.sqrt(q) * nodes
        sig = 1.0 / (1.0 + np.exp(-x))
        q_next = s2 * float(weights @ (x * sig) ** 2)
        log_gain += math.log(q_next / q) + math.log(s2 * float(weights @ (sig * (1 + x * (1 - sig))) ** 2))
        q = q_next
    assert abs(log_gain) < 0.01


class _Residual(nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_a_residual_stream_without_normalization_gets_its_branches_at_one_over_l() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), *(_Residual() for _ in range(16)), nn.Linear(64, 10))
    result = initdiag.fix(model, input_shape=(32,), verify_steps=10)
    assert not result.before.passed and result.after.passed, [
        v.message for v in result.after.runs[0].verdicts if v.status == "fail"]
    ends = [c for c in result.changes if "stream" in c.answers]
    assert len(ends) == 16 and all(c.layer.endswith("fc2") for c in ends)
    ratios = [r for b in result.after.runs[0].structure.blocks for r in b.branch_ratios]  # type: ignore[union-attr]
    assert max(ratios) < 4.0 / 16, ratios  # ~1/L where the stream starts, falling as it sums


def test_transformers_at_unit_normal_are_repaired_and_train_better() -> None:
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            num_classes=10)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=192, n_head=4, vocab_size=500,
                                                               bos_token_id=0, eos_token_id=0))
    for model, kw in ((vit, {"input_shape": (3, 32, 32)}), (gpt, {"input_shape": (16,), "input_dtype": "long"})):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 1.0)
        result = initdiag.fix(model, batch_size=8, batches=2, verify_steps=10, **kw)  # type: ignore[arg-type]
        failed = {str(v.check) for v in result.before.runs[0].verdicts if v.status == "fail"}
        assert "attention_entropy" in failed, failed
        assert result.after.passed, [v.message for v in result.after.runs[0].verdicts if v.status == "fail"]
        assert failed <= {a for c in result.changes for a in c.answers}  # every failing check answered
        after = {v.check: v for v in result.after.runs[0].verdicts}
        assert after["output_scale"].effect["logit_std"] < 3.0
        assert min(r["ratio"] for r in after["attention_entropy"].details["sites"]) > 0.5
        assert result.verification is not None and result.verification.improved


def test_a_model_that_passes_is_left_bitwise_unchanged_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _mlp(4)
    with torch.no_grad():
        for m in model[:-1:2]:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        model[-1].weight.zero_()  # a deliberate zero head
    given = _state(model)
    result = initdiag.fix(model, input_shape=(32,), inplace=True)
    assert result.before.passed and result.changes == () and result.verification is None
    assert result.model is model and _equal(_state(model), given)
    assert result.before.runs[0].digest == result.after.runs[0].digest
    paths = result.write(tmp_path, formats=("html", "json"))
    assert "nothing to repair" in paths["html"].read_text().lower()


def test_inplace_repairs_the_model_itself() -> None:
    model = _mlp(20)
    result = initdiag.fix(model, input_shape=(32,), inplace=True, verify_steps=0)
    assert result.model is model and result.changes and result.verification is None
    assert float(model[2].weight.detach().square().mean()) == pytest.approx(2.0 / 64, rel=1e-4)


def test_lsuv_brings_each_layer_to_unit_variance_in_execution_order() -> None:
    model = _mlp(20)
    result = initdiag.fix(model, input_shape=(32,), method="lsuv", verify_steps=5)
    assert result.method == "lsuv" and result.changes and not result.unconverged
    assert [c.layer for c in result.changes] == [str(i) for i in range(0, 40, 2)][: len(result.changes)]
    assert result.after.passed


MODELS = '''
import torch
from torch import nn


def deep():
    torch.manual_seed(0)
    layers = []
    for _ in range(29):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, 10))


def crashes():
    class Bad(nn.Module):
        def forward(self, x):
            raise RuntimeError("no forward today")
    return Bad()
'''


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


def test_the_cli_writes_the_report_and_the_state_dict(models: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out, saved = tmp_path / "report", tmp_path / "fixed.pt"
    code = main(["fix", f"{models}:deep", "--input-shape", "32", "--verify-steps", "5", "--out", str(out),
                 "--format", "html,json", "--save", str(saved)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "parameters changed" in text and "trains better" in text
    state = torch.load(saved, weights_only=True)
    assert set(state) == {f"{i}.{p}" for i in range(0, 60, 2) for p in ("weight", "bias")}
    assert float(state["2.weight"].square().mean()) == pytest.approx(2.0 / 32, rel=1e-4)
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "fix" and summary["passed"] and not summary["passed_before"]


@pytest.mark.parametrize("args, says", [
    (["--method", "magic"], "unknown --method 'magic'"),
    (["--verify-steps", "-1"], "--verify-steps must be at least 0"),
])
def test_bad_options_end_with_one_line_and_exit_2(models: Path, tmp_path: Path, args: list[str], says: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fix", f"{models}:deep", "--input-shape", "32", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_bad_inputs_end_with_one_line_and_exit_2(models: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    nan = tmp_path / "nan.pt"
    torch.save(torch.full((4, 32), math.nan), nan)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder that is a file: no user, root included, can write under it
    readonly = tmp_path / "readonly.pt"
    readonly.write_bytes(b"")
    readonly.chmod(0o400)
    cases = [
        ([f"{models}:crashes", "--input-shape", "32"], "no forward today"),
        ([f"{models}:deep", "--inputs", str(nan)], "NaN or inf"),
        ([f"{models}:deep", "--input-shape", "32", "--save", str(blocked / "fixed.pt")], "--save"),
        ([f"{models}:deep", "--input-shape", "32", "--save", str(tmp_path)], "--save"),
    ]
    if os.geteuid() != 0:  # root writes a read-only file regardless
        cases.append(([f"{models}:deep", "--input-shape", "32", "--save", str(readonly)], "--save"))
    for args, says in cases:
        code = main(["fix", *args, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "r").exists()


def test_the_api_refuses_a_non_finite_batch_and_leaves_the_model_alone() -> None:
    model = _mlp(4)
    given = _state(model)
    with pytest.raises(initdiag.UsageError, match="NaN or inf"):
        initdiag.fix(model, torch.full((4, 32), math.inf))
    with pytest.raises(initdiag.UsageError, match="unknown method"):
        initdiag.fix(model, input_shape=(32,), method="magic")
    assert _equal(_state(model), given)


def test_the_fan_in_is_the_one_the_forward_shows_grouped_and_transposed_convs() -> None:
    """He for the fans the forward shows: a grouped conv sums in_channels / groups x k x k inputs per output, a
    stride-2 transposed conv (k = 4) in_channels x k x k / stride^2 (each output sees a quarter of the taps)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU()]
    layers += [nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.mul_(0.3)  # every layer too small: the chain vanishes
    result = initdiag.fix(model, input_shape=(3, 8, 8), verify_steps=0, loss="mse")
    assert not result.before.passed and result.after.passed
    fans = {la.name: la.fan_in for la in result.before.runs[0].structure.weight_layers}  # type: ignore[union-attr]
    assert fans["2"] == 32 / 4 * 9 and fans["14"] == pytest.approx(32 * 16 / 4)
    for name in ("2", "14"):
        weight = result.model.get_submodule(name).weight.detach()
        assert float(weight.square().mean()) == pytest.approx(2.0 / fans[name], rel=1e-4)
