"""Each initializer's realised weight variance against its formula; seeding; parsing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initdiag.errors import UsageError
from initdiag.initializers import INITIALIZERS, InitSpec, apply_initializer, parse_init_list
from initdiag.theory import expected_gain

SHAPES = [(400, 300), (128, 64, 3, 3)]


def _layer(shape: tuple[int, ...]) -> nn.Module:
    if len(shape) == 2:
        return nn.Sequential(nn.Linear(shape[1], shape[0]))
    return nn.Sequential(nn.Conv2d(shape[1], shape[0], shape[2:]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["random", "xavier", "xavier-uniform", "he", "he-uniform", "lecun",
                                  "orthogonal", "pytorch-default"])
def test_weight_variance_matches_formula(name: str, shape: tuple[int, ...]) -> None:
    model = _layer(shape)
    apply_initializer(model, InitSpec(name), seed=3)
    w = model[0].weight.detach().double()
    fan_in = shape[1] * math.prod(shape[2:])
    fan_out = shape[0] * math.prod(shape[2:])
    expected = {
        "random": 0.01,
        "xavier": 2 / (fan_in + fan_out),
        "xavier-uniform": 2 / (fan_in + fan_out),
        "he": 2 / fan_in,
        "he-uniform": 2 / fan_in,
        "lecun": 1 / fan_in,
        "orthogonal": 1 / max(shape[0], fan_in),
        "pytorch-default": 1 / (3 * fan_in),
    }[name]
    assert INITIALIZERS[name].variance(shape, InitSpec(name).resolved) == pytest.approx(expected)
    # n >= 120k draws: the sample variance is within a few percent of the true one
    assert w.var(unbiased=False).item() == pytest.approx(expected, rel=0.03)
    assert abs(w.mean().item()) < 4 * math.sqrt(expected / w.numel()) + 1e-12
    bias = model[0].bias.detach()
    if name == "pytorch-default":
        assert bias.abs().max() > 0
        assert bias.abs().max() <= 1 / math.sqrt(fan_in)
    else:
        assert torch.count_nonzero(bias) == 0


def test_zeros_and_constant() -> None:
    model = _layer((5, 4))
    apply_initializer(model, InitSpec("zeros"), seed=0)
    assert torch.count_nonzero(model[0].weight) == 0
    apply_initializer(model, InitSpec.parse("constant:value=0.3"), seed=0)
    assert torch.all(model[0].weight == 0.3)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, b, c = _layer((8, 6)), _layer((8, 6)), _layer((8, 6))
    for m, seed in ((a, 1), (b, 1), (c, 2)):
        apply_initializer(m, InitSpec("he"), seed=seed)
    assert torch.equal(a[0].weight, b[0].weight)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_pytorch_default_is_seeded_and_restores_global_rng() -> None:
    a, b = _layer((8, 6)), _layer((8, 6))
    state = torch.random.get_rng_state()
    apply_initializer(a, InitSpec("pytorch-default"), seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    apply_initializer(b, InitSpec("pytorch-default"), seed=5)
    assert torch.equal(a[0].weight, b[0].weight)


def test_parse_init_list_with_parameters() -> None:
    specs = parse_init_list("zeros,random:std=0.05,mean=0.1,he")
    assert [s.name for s in specs] == ["zeros", "random", "he"]
    assert specs[1].resolved == {"std": 0.05, "mean": 0.1}
    assert specs[1].label == "random:mean=0.1,std=0.05"
    assert InitSpec.parse("random:std=0.1").label == "random"
    model = _layer((300, 400))
    apply_initializer(model, specs[1], seed=0)
    assert model[0].weight.std().item() == pytest.approx(0.05, rel=0.02)


@pytest.mark.parametrize("text,match", [
    ("hee", "did you mean 'he'"),
    ("random:sd=1", "no parameter"),
    ("random:std=abc", "not a number"),
    ("random:std=-1", "out of range"),
    ("he,he", "given twice"),
    ("", "no initializer"),
])
def test_bad_initializer_lists(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_init_list(text)


@pytest.mark.parametrize("name,activation,gain", [
    ("xavier", "relu", 0.5), ("he", "relu", 1.0), ("lecun", "linear", 1.0), ("pytorch-default", "relu", 1 / 6),
    ("random", "relu", 512 * 0.01 / 2),
])
def test_expected_gain_for_square_layers(name: str, activation: str, gain: float) -> None:
    spec = InitSpec(name)
    variance = spec.initializer.variance((512, 512), spec.resolved)
    assert expected_gain(activation, variance, (512, 512)) == pytest.approx(gain)
