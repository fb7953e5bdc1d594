"""``initdiag.audit`` on small versions of real architectures: it runs, records backward statistics for
every layer, and leaves the model exactly as it was; the 30-layer ReLU MLP case that theory fixes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import initdiag
from initdiag.audit import AuditResult, looks_pytorch_default, pool_batches
from initdiag.errors import ModelLoadError, UsageError
from initdiag.initializers import InitSpec, apply_initializer

README = Path(__file__).resolve().parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- models ---------------------------------------------------------------------------------------------------
def mlp(depth: int = 30, width: int = 64) -> nn.Sequential:
    """``depth`` Linear layers, ReLU between, PyTorch's default init."""
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class TokenEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(x)).mean(1))


class Recurrent(nn.Module):
    def __init__(self, cls: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.rnn = cls(6, 10, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # tuple output: (sequence, final state(s))
        return self.head(out[:, -1])


class Shared(nn.Module):
    """One Linear called twice per forward (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.Tanh()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(self.act(self.fc(x)))))


class DictBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": torch.relu(self.a(x)), "b": self.b(x)}


class ListBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, d: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [self.fc(d["a"]), d["b"]]


class DictsAndLists(nn.Module):
    """Submodules return a dict and a list; the model itself returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.lists, self.head = DictBlock(), ListBlock(), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first, second = self.lists(self.block(x))
        return {"out": self.head(first + second), "aux": second}


def bn_dropout() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(24, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 5))


def frozen() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    for p in model[0].parameters():  # the first layer frozen: dL/dy must still reach it
        p.requires_grad_(False)
    return model


def no_weights() -> nn.Sequential:
    """Layers without weights (Flatten, Identity, pooling, activations) around a few with weights."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Identity(), nn.Flatten(),
                         nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3))


def in_eval_mode() -> nn.Module:
    model = bn_dropout()
    model.eval()
    return model


def resnet() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=10)


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "resnet18": (resnet, {"input_shape": (3, 32, 32), "batch_size": 4, "batches": 1}),
    "batchnorm+dropout": (bn_dropout, {"input_shape": (1, 6, 6)}),
    "transformer-encoder": (TokenEncoder, {"input_shape": (7,), "input_dtype": "long"}),
    "transformer-encoder-bare": (
        lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False),
        {"input_shape": (5, 16)}),
    "lstm": (lambda: Recurrent(nn.LSTM), {"input_shape": (5, 6)}),
    "gru-bare": (lambda: nn.GRU(6, 10, num_layers=2), {"input_shape": (5, 6)}),
    "shared-weights": (Shared, {"input_shape": (8,)}),
    "dicts-and-lists": (DictsAndLists, {"input_shape": (8,)}),
    "frozen": (frozen, {"input_shape": (12,)}),
    "no-weights": (no_weights, {"input_shape": (1, 8, 8)}),
    "eval-mode": (in_eval_mode, {"input_shape": (1, 6, 6)}),
}


# -- the model left untouched -------------------------------------------------------------------------------
def _hooks(model: nn.Module) -> dict[str, tuple[int, ...]]:
    counts: dict[str, tuple[int, ...]] = {
        f"module {name}": (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                           len(m._backward_pre_hooks)) for name, m in model.named_modules()}
    counts.update({f"param {name}": (len(p._backward_hooks or {}),) for name, p in model.named_parameters()})
    return counts


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "hooks": _hooks(model),
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _state(model)
    assert after["ids"] == before["ids"]
    for key, value in before["tensors"].items():
        now = after["tensors"][key]
        assert now.dtype == value.dtype and now.shape == value.shape, key
        if value.is_floating_point():  # bit-identical: compare the raw bits, NaN included
            assert torch.equal(now.view(torch.uint8), value.view(torch.uint8)), key
        else:
            assert torch.equal(now, value), key
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(after["grads"][k] is g for k, g in before["grads"].items())
    assert after["hooks"] == before["hooks"]
    assert torch.equal(after["rng"], before["rng"])


def _backward_layers(result: AuditResult) -> None:
    for run in result.runs:
        recorded = {la.name for la in run.layers}
        assert recorded
        series = run.series
        with_backward = set(series.loc[(series["kind"] == "backward") & (series["stat"] == "var"), "layer"].astype(str))
        # every site but the stream entering the first block straight from the data, which, as data, has no
        # gradient (the audit's inputs are leaves that do not require grad), and the functional activations,
        # computed from their weight layer's output for the forward statistics only
        functional = {la.name for la in run.layers if la.role == "activation" and ":" in la.name}
        assert all(name.endswith(":in") for name in recorded - with_backward - functional), recorded - with_backward
        assert set(series["step"]) == set(range(len(run.losses)))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_is_audited_and_left_unchanged(name: str) -> None:
    build, kwargs = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build()
    before = _state(model)
    inits = ("keep",) if name == "resnet18" else ("keep", "he")
    result = initdiag.audit(model, inits=inits, **{"batches": 2, "batch_size": 4, **kwargs})
    assert_unchanged(model, before)
    assert [r.label for r in result.runs] == list(inits)
    _backward_layers(result)
    assert result.verdicts and all(v.status in ("pass", "warn", "fail") for v in result.verdicts)
    assert result.recommendation.initializer in (*inits, "he", "xavier", "lecun")
    assert not result.frame.empty and set(result.frame["run"]) == set(inits)


def test_architecture_specifics() -> None:
    torch.manual_seed(0)
    runs = {name: initdiag.audit(build(), batches=1, batch_size=4, **kw).runs[0]
            for name, (build, kw) in ARCHITECTURES.items() if name != "resnet18"}
    layers = {name: [la.name for la in run.layers if la.role != "block"] for name, run in runs.items()}
    assert layers["shared-weights"] == ["fc", "act", "fc@2", "act@2", "head"]  # each call recorded
    assert layers["lstm"] == ["rnn", "head"]  # the output sequence, not the final states
    assert layers["gru-bare"] == ["GRU"]
    assert layers["transformer-encoder"][:2] == ["emb", "encoder.layers.0.self_attn"]
    blocks = [la.name for la in runs["transformer-encoder"].layers if la.role == "block"]
    assert blocks[0] == "encoder.layers.0:in" and "encoder.layers.1" in blocks  # the residual stream too
    assert {"block.a", "block.b", "lists.fc", "head"} <= set(layers["dicts-and-lists"])
    assert layers["no-weights"] == ["0", "1", "5", "6", "7"]


def test_user_hooks_still_fire_and_no_hook_is_left() -> None:
    model = bn_dropout()
    calls: list[str] = []
    model[1].register_forward_hook(lambda m, i, o: calls.append("forward"))
    model[1].register_forward_pre_hook(lambda m, i: calls.append("pre"))
    model[1].weight.register_hook(lambda g: calls.append("param") or None)
    before = _state(model)
    initdiag.audit(model, input_shape=(1, 6, 6), inits=("keep", "pytorch-default"), batches=2, batch_size=4)
    assert_unchanged(model, before)
    calls.clear()
    model(torch.randn(4, 1, 6, 6)).sum().backward()
    assert calls == ["pre", "forward", "param"]


class NoCopy(nn.Module):
    """A model that cannot be deep-copied: audited in place and restored."""

    def __init__(self) -> None:
        super().__init__()
        self.net = bn_dropout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def __deepcopy__(self, memo: dict[int, Any]) -> NoCopy:
        raise TypeError("cannot copy this model")


def test_model_that_cannot_be_copied_is_restored_bit_for_bit() -> None:
    model = NoCopy()
    model.net[1].weight.requires_grad_(False)
    model.net[5].weight.grad = torch.ones_like(model.net[5].weight)
    model.net[2].eval()
    before = _state(model)
    result = initdiag.audit(model, input_shape=(1, 6, 6), inits=("keep", "he", "zeros"), batches=2, batch_size=4)
    assert_unchanged(model, before)  # BatchNorm running stats, modes, requires_grad, .grad objects, RNG
    _backward_layers(result)
    zeros = result.runs[2]
    assert "symmetry" in zeros.failed  # the re-initialization did happen, on the model itself


class _Fails(nn.Module):
    """BatchNorm and dropout, then a forward that raises on its ``fail_at``-th call."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.net, self.calls, self.fail_at = bn_dropout(), 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the forward failed")
        return self.net(x)


def test_keep_audits_the_model_itself_without_copying_it_and_restores_it_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep`` takes no copy: copy.deepcopy is never called; the BatchNorm running statistics the train-mode
    forward moved, the ``.grad`` objects, ``requires_grad``, the modes and the global RNG come back exactly."""
    import copy

    model = bn_dropout()
    model[1].weight.requires_grad_(False)
    model[5].weight.grad = torch.ones_like(model[5].weight)
    model[2].eval()
    before = _state(model)

    real = copy.deepcopy

    def no_model_copy(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, nn.Module):
            raise AssertionError("keep must not copy the model")
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_model_copy)
    result = initdiag.audit(model, input_shape=(1, 6, 6), inits=("keep",), batches=2, batch_size=4)
    assert_unchanged(model, before)
    _backward_layers(result)


@pytest.mark.parametrize("fail_at", [2, 3])  # during structure discovery, during the recorded batches
def test_a_forward_that_raises_leaves_the_model_bitwise_as_it_was(fail_at: int) -> None:
    model = _Fails(fail_at)
    model.net[5].weight.grad = torch.ones_like(model.net[5].weight)
    model.net[2].eval()
    before = _state(model)
    with pytest.raises(Exception, match="the forward failed"):
        initdiag.audit(model, input_shape=(1, 6, 6), inits=("keep",), batches=2, batch_size=4)
    assert_unchanged(model, before)


class _WritesItsWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.fc.weight.mul_(1.5)  # an in-place write: nothing to restore from without a copy
        return self.fc(x)


class _WritesThroughData(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc.weight.data[0, 0] += 1.0  # through .data: the parameter's version counter does not move
        return self.fc(x)


@pytest.mark.parametrize("model", [_WritesItsWeights, _WritesThroughData])
def test_a_model_that_writes_its_own_weights_during_a_keep_audit_is_named(model: type[nn.Module]) -> None:
    with pytest.raises(RuntimeError, match="changed its own parameters"):
        initdiag.audit(model(), input_shape=(4,), inits=("keep",), batches=1, batch_size=4)


def test_reinitialization_happens_on_a_copy_and_differs_per_initializer() -> None:
    model = mlp(depth=4, width=16)
    before = _state(model)
    result = initdiag.audit(model, input_shape=(16,), inits=("keep", "he", "xavier"), batches=1, batch_size=8)
    assert_unchanged(model, before)
    weight_var = {r.label: r.weights[1].variance for r in result.runs}
    assert weight_var["keep"] == pytest.approx(model[2].weight.detach().double().var(unbiased=False).item())
    assert weight_var["he"] == pytest.approx(2 / 16, rel=0.35)
    assert weight_var["xavier"] == pytest.approx(2 / 32, rel=0.35)
    assert [w.reinitialized for w in result.runs[1].weights] == [True] * 4


def test_seeded_and_reproducible() -> None:
    model = bn_dropout()
    a = initdiag.audit(model, input_shape=(1, 6, 6), batches=2, batch_size=4, seed=3)
    b = initdiag.audit(model, input_shape=(1, 6, 6), batches=2, batch_size=4, seed=3)
    pd.testing.assert_frame_equal(a.frame, b.frame)


# -- the case theory fixes: 30 ReLU layers at PyTorch's default init ---------------------------------------
@pytest.fixture(scope="module")
def deep() -> AuditResult:
    torch.manual_seed(0)
    return initdiag.audit(mlp(), input_shape=(64,), inits=("keep", "he", "xavier"))


def test_deep_relu_mlp_at_default_init_vanishes_with_gain_one_sixth(deep: AuditResult) -> None:
    keep = deep.runs[0]
    forward = next(v for v in keep.verdicts if v.signal == "forward")
    assert (forward.outcome, forward.status) == ("vanishing", "fail")
    gain = forward.effect["gain"]
    assert gain is not None and forward.effect["gain_low"] is not None and forward.effect["gain_high"] is not None
    assert 0.1 < gain < 0.25  # theory: fan_in x 1/(3 fan_in) x 1/2 = 1/6
    theory = next(t for t in keep.theory if t.signal == "forward")
    assert theory.expected_gain == pytest.approx(1 / 6, rel=0.03)
    assert all(w.default_init for w in keep.weights)
    hidden = [w.ratio for w in keep.weights if w.activation == "relu" and w.ratio is not None]
    assert len(hidden) == 29 and np.allclose(hidden, 1 / 6, rtol=0.1)
    assert "vanishing" in keep.failed and not deep.passed


def test_deep_relu_mlp_recommends_he(deep: AuditResult) -> None:
    assert deep.recommendation.initializer == "he" and deep.recommendation.compared
    he = deep.runs[1]
    assert not he.failed
    assert deep.recommendation.evidence.startswith("use `he`: it is the only one that fails no check.")
    assert not deep.recommendation.equal
    alone = initdiag.audit(mlp(), input_shape=(64,), batches=2)
    assert alone.recommendation.initializer == "he" and not alone.recommendation.compared
    assert "vanishing (forward)" in alone.recommendation.evidence and "ReLU" in alone.recommendation.evidence
    assert "30 of 30 weight layers are at PyTorch's default init" in alone.recommendation.evidence


def test_write_report(deep: AuditResult, tmp_path: Path) -> None:
    paths = deep.write(tmp_path / "out", formats=("html", "json", "csv"))
    assert set(paths) == {"html", "json", "csv"}

    def strict(token: str) -> None:
        raise ValueError(token)

    summary = json.loads(paths["json"].read_text(), parse_constant=strict)
    assert summary["kind"] == "audit" and summary["schema_version"] == 3 and summary["passed"] is False
    assert [r["initializer"] for r in summary["runs"]] == ["keep", "he", "xavier"]
    assert summary["recommendation"]["initializer"] == "he"
    keep = summary["runs"][0]
    assert keep["history"] == [] and keep["test_accuracy"] is None and "vanishing" in keep["failed"]
    assert {v["outcome"] for v in keep["verdicts"]} >= {"vanishing"}
    assert {v["check"] for v in keep["verdicts"]} >= {"signal", "symmetry", "diverged"}
    assert keep["weights"][0]["default_init"] is True and keep["weights"][0]["ratio"] == pytest.approx(1 / 6, rel=0.1)
    assert len(keep["layers"]) == len(deep.runs[0].layers)
    series = pd.read_csv(paths["csv"])
    assert set(series["step"]) == set(range(4)) and len(series) == len(deep.frame)
    html = paths["html"].read_text()
    assert '<section id="accuracy">' not in html and '<section id="layers">' in html
    assert "Recommendation:" in html and "PyTorch default" in html and "0.167x he" in html
    assert not re.search(r"""(?:src|href)=["'](?:https?:)?//""", html)


# -- pieces ---------------------------------------------------------------------------------------------
def test_pool_batches_averages_and_takes_the_minimum_dead_fraction() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    result = initdiag.audit(model, input_shape=(5,), batches=3, batch_size=4)
    series, pooled = result.runs[0].series, result.runs[0].frame
    assert pooled.equals(pool_batches(series)) and set(pooled["step"]) == {0}
    for (layer, kind, stat), rows in series.groupby(["layer", "kind", "stat"], observed=True):
        got = pooled.loc[(pooled.layer == layer) & (pooled.kind == kind) & (pooled.stat == stat), "value"]
        want = rows["value"].min() if stat == "dead_frac" else rows["value"].mean()
        assert got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("build", "expected"), [
    (lambda: nn.Linear(50, 40), True),
    (lambda: nn.Conv2d(3, 8, 3), True),
    (lambda: nn.LSTM(6, 20), True),
    (lambda: nn.Embedding(100, 16), True),
    (lambda: nn.MultiheadAttention(16, 2), True),
])
def test_pytorch_default_is_recognized(build: Callable[[], nn.Module], expected: bool) -> None:
    torch.manual_seed(1)
    module = build()
    assert looks_pytorch_default(module) is expected
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)  # the same shape, half the scale
    assert looks_pytorch_default(module) is False


@pytest.mark.parametrize("init", ["he", "he-uniform", "xavier", "xavier-uniform", "orthogonal", "random"])
def test_other_initializers_are_not_taken_for_the_default(init: str) -> None:
    layer = nn.Sequential(nn.Linear(64, 64))
    apply_initializer(layer, InitSpec.parse(init), seed=0)
    assert not looks_pytorch_default(layer[0])
    apply_initializer(layer, InitSpec("pytorch-default"), seed=0)
    assert looks_pytorch_default(layer[0])


class InPlaceOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)  # modifies its input in place
        return self.fc(x)


def test_example_input_and_dict_output() -> None:
    model = DictsAndLists()
    result = initdiag.audit(model, torch.randn(6, 8))
    assert result.inputs.kind == "example" and result.inputs.batch_shape == (6, 8)
    assert len(result.runs[0].losses) == 1 and math.isfinite(result.runs[0].losses[0])


def test_the_callers_input_is_not_touched() -> None:
    example = torch.randn(6, 8)
    kept = example.clone()
    model = InPlaceOnInput()
    first = initdiag.audit(model, example)
    assert torch.equal(example, kept) and not example.requires_grad
    second = initdiag.audit(model, example)  # the same input again, not a doubled one
    pd.testing.assert_frame_equal(first.frame, second.frame)


def test_token_inputs_take_the_vocabulary_from_the_embedding() -> None:
    result = initdiag.audit(TokenEncoder(), input_shape=(5,), input_dtype="long", batches=1, batch_size=3)
    assert result.inputs.description.startswith("token ids uniform in [0, 40)")


def test_bad_arguments_raise_one_line_errors() -> None:
    with pytest.raises(UsageError, match=r"needs an nn\.Module, not int"):
        initdiag.audit(3)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="give the input shape"):
        initdiag.audit(nn.Linear(3, 2))
    with pytest.raises(UsageError, match="did you mean 'he'"):
        initdiag.audit(nn.Linear(3, 2), input_shape=(3,), inits=("keep", "hee"))
    with pytest.raises(ModelLoadError, match=r"input of shape \(16, 4\) \(batch 16 x input shape 4\): RuntimeError"):
        initdiag.audit(nn.Linear(3, 2), input_shape=(4,))
    with pytest.raises(ModelLoadError, match=r"nn\.Embedding: for token ids use --input-dtype long"):
        initdiag.audit(TokenEncoder(), input_shape=(5,))


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Auditing your own model"):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block under '### Auditing your own model'"
    return match.group(1)


def test_readme_audit_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, AuditResult)
    assert result.recommendation.initializer == "he"
    assert (tmp_path / "reports" / "my-net" / "summary.json").is_file()
    assert "he" in capsys.readouterr().out


def test_structure_found_on_two_rows_is_that_of_the_whole_batch() -> None:
    # the audit discovers the structure on the first rows of a generated batch (DISCOVERY_ROWS): it must be
    # the structure the whole batch gives, also with batch norm and drop path (a random per-row mask) in train mode
    import copy

    import torchvision

    from initdiag.audit import make_inputs
    from initdiag.config import AuditConfig
    from initdiag.structure import discover

    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(weights=None)
    result = initdiag.audit(model, input_shape=(3, 32, 32), batches=1, batch_size=8)
    batches, _ = make_inputs(model, AuditConfig(input_shape=(3, 32, 32), batches=1, batch_size=8))
    torch.manual_seed(0)
    whole = discover(copy.deepcopy(model).train(), *batches[0].args)
    assert result.runs[0].structure == whole
    assert whole.blocks and whole.norms


@pytest.mark.parametrize("vocab", [1, 1000])
def test_token_ids_are_discovered_on_two_rows_unless_they_are_equal(monkeypatch: pytest.MonkeyPatch,
                                                                    vocab: int) -> None:
    # generated token ids go through discovery on DISCOVERY_ROWS rows, with the structure of the whole batch;
    # rows that are equal (a vocabulary of one token) would make the input look constant: the whole batch then
    import copy

    from initdiag.audit import make_inputs, run
    from initdiag.config import AuditConfig
    from initdiag.structure import discover

    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    seen: list[int] = []
    monkeypatch.setattr(run, "discover", lambda m, *a, **k: (seen.append(len(a[0])), discover(m, *a, **k))[1])
    kw: dict[str, Any] = {"input_shape": (12,), "input_dtype": "long", "batches": 1, "batch_size": 6}
    result = initdiag.audit(model, **kw)
    assert seen == [run.DISCOVERY_ROWS if vocab > 1 else 6]
    batches, _ = make_inputs(model, AuditConfig(**kw))
    torch.manual_seed(0)
    assert result.runs[0].structure == discover(copy.deepcopy(model).train(), *batches[0].args)


class DrawsFromGlobalRngs(nn.Module):
    """A forward that draws from NumPy's legacy global generator and Python's ``random`` (as wav2vec2's time
    masks draw from NumPy's)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import random

        keep = torch.from_numpy(np.random.rand(*x.shape[:1], 16) > 0.3).float() * (0.5 + random.random())
        return self.fc2(torch.relu(self.fc1(x)) * keep)


def test_audits_are_reproducible_when_the_forward_draws_from_global_rngs() -> None:
    import random

    model = DrawsFromGlobalRngs()
    np.random.seed(123)
    random.seed(123)
    before = (np.random.get_state()[1].copy(), random.getstate())
    first = initdiag.audit(model, input_shape=(8,), batches=2, batch_size=8)
    second = initdiag.audit(model, input_shape=(8,), batches=2, batch_size=8)
    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert first.runs[0].losses.tolist() == second.runs[0].losses.tolist()
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]  # untouched


def test_a_weight_norm_layer_is_audited_and_recorded_without_touching_a_non_leaf_grad() -> None:
    import warnings

    from torch.nn.utils.parametrizations import weight_norm

    model = nn.Sequential(weight_norm(nn.Conv1d(2, 8, 3)), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14, 3))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not a leaf Tensor.*")
        result = initdiag.audit(model, input_shape=(2, 16), batches=1, batch_size=8)
        with initdiag.Recorder(model, every=1) as rec:  # a user's loop records it every step, silently too
            for _ in range(2):
                model(torch.randn(8, 2, 16)).square().mean().backward()
    assert result.runs and not rec.frame().empty
