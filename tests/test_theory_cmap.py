"""The C-map and the softmax/attention statistics (``initdiag.theory.cmap``) against independent references.

References: closed forms (ReLU's arc-cosine kernel, Cho & Saul 2009; erf's arcsine kernel, Williams 1997, and
its derivative), the project's 1-D ``chi``, central differences of the C-map, fixed-seed Monte Carlo with
tolerances of five standard errors, and the small-s expansions of the softmax statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch import nn
from torch.nn import functional as F

from initdiag.theory.cmap import (
    attention_logit_var,
    chi_c,
    correlation_map,
    correlation_profile,
    expected_ce_loss,
    output_var_prediction,
    relu_arccos,
    softmax_entropy_gaussian,
    uniform_attention_entropy,
)
from initdiag.theory.gauss import Phi, chi, gaussian_moments, length_map

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CS = (-1.0, -0.999999, -0.9, -0.5, 0.0, 0.3, 0.7, 0.99, 0.9999, 1.0 - 1e-8, 1.0)


def _normals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)


def _arcsine(q1: float, q2: float, q12: float) -> float:
    """E[erf(u1) erf(u2)] (Williams 1997)."""
    return 2.0 / math.pi * math.asin(2.0 * q12 / math.sqrt((1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)))


# --- the C-map --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("q1", "q2"), [(0.01, 0.01), (1.0, 1.0), (0.37, 25.0), (100.0, 100.0)])
def test_relu_cmap_at_he_is_the_arccos_kernel(q1: float, q2: float) -> None:
    for c in CS:
        assert correlation_map("relu", q1, q2, c, 2.0) == pytest.approx(relu_arccos(c), abs=1e-8)
    assert correlation_map(nn.ReLU(), q1, q2, 0.4, 2.0) == pytest.approx(relu_arccos(0.4), abs=1e-8)


@pytest.mark.parametrize(("q1", "q2"), [(0.01, 0.01), (0.5, 2.0), (10.0, 0.3), (100.0, 100.0)])
def test_erf_cmap_is_the_arcsine_kernel(q1: float, q2: float) -> None:
    for c in CS:
        q12 = c * math.sqrt(q1 * q2)
        expected = _arcsine(q1, q2, q12) / math.sqrt(_arcsine(q1, q1, q1) * _arcsine(q2, q2, q2))
        assert correlation_map(torch.erf, q1, q2, c, 1.0) == pytest.approx(expected, abs=1e-12)
        slope = 4.0 / math.pi / math.sqrt((1.0 + 2.0 * q1) * (1.0 + 2.0 * q2) - 4.0 * q12 * q12)
        if q1 == q2:  # d/dq12 of the arcsine kernel, = E[erf'(u1) erf'(u2)]
            assert chi_c(torch.erf, q1, c, 1.0) == pytest.approx(slope, rel=1e-12)


@pytest.mark.parametrize(("phi", "q1", "q2"), [
    ("tanh", 0.5, 1.0),  # Gauss-Hermite
    ("tanh", 4.0, 9.0),  # split rules (q > scale^2)
    ("gelu", 1.0, 0.3),
    ("silu", 2.0, 2.0),
    ("hardswish", 5.0, 5.0),  # kinked at +-3
])
def test_cmap_matches_monte_carlo(phi: str, q1: float, q2: float) -> None:
    z1, z2 = _normals(1_000_000, seed=7)
    sw2, sb2 = 1.5, 0.1
    norm = math.sqrt(length_map(phi, q1, sw2, sb2) * length_map(phi, q2, sw2, sb2))
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu, "hardswish": F.hardswish}
    fn = fns[phi]
    for c in (-0.7, 0.2, 0.9):
        prod = fn(math.sqrt(q1) * z1) * fn(math.sqrt(q2) * (c * z1 + math.sqrt(1 - c * c) * z2))
        mc = (sw2 * prod.mean().item() + sb2) / norm
        err = sw2 * prod.std().item() / math.sqrt(len(prod)) / norm
        assert correlation_map(phi, q1, q2, c, sw2, sb2) == pytest.approx(mc, abs=5 * err)


def test_linear_zero_q_and_c_one_are_exact() -> None:
    q1, q2, c, sw2, sb2 = 0.5, 3.0, -0.4, 1.3, 0.2
    expected = (sw2 * math.sqrt(q1 * q2) * c + sb2) / math.sqrt((sw2 * q1 + sb2) * (sw2 * q2 + sb2))
    assert correlation_map("linear", q1, q2, c, sw2, sb2) == pytest.approx(expected, rel=1e-15)
    assert correlation_map("gelu", 0.7, 0.7, 1.0, 2.0, 0.3) == 1.0
    assert correlation_map("tanh", 0.0, 1.0, 0.5, 1.0, 0.1) == pytest.approx(
        0.1 / math.sqrt(0.1 * length_map("tanh", 1.0, 1.0, 0.1)), rel=1e-12)  # tanh(0) = 0: only the bias
    assert math.isnan(correlation_map("relu", 0.0, 0.0, 0.3, 2.0))  # both outputs zero


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="correlation"):
        correlation_map("tanh", 1.0, 1.0, 1.5, 1.0)
    with pytest.raises(ValueError, match="second moments"):
        chi_c("tanh", -1.0, 0.0, 1.0)
    with pytest.raises(TypeError):
        correlation_map(3, 1.0, 1.0, 0.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        correlation_map("nope", 1.0, 1.0, 0.0, 1.0)


# --- chi_c -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phi", ["tanh", "relu", "gelu", "hardtanh", torch.erf, lambda x: torch.sin(x) + x])
def test_chi_c_at_c_one_is_chi(phi: Phi) -> None:
    for q in (0.05, 1.0, 30.0):
        assert chi_c(phi, q, 1.0, 1.7) == pytest.approx(chi(phi, q, 1.7), rel=1e-12)


@pytest.mark.parametrize("phi", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize(("q", "c"), [(0.8, 0.3), (3.0, -0.6), (1.0, 0.95)])
def test_chi_c_is_the_slope_of_the_cmap(phi: str, q: float, c: float) -> None:
    sw2, sb2, h = 1.5, 0.2, 1e-5
    slope = (correlation_map(phi, q, q, c + h, sw2, sb2) - correlation_map(phi, q, q, c - h, sw2, sb2)) / (2 * h)
    assert chi_c(phi, q, c, sw2) * q / length_map(phi, q, sw2, sb2) == pytest.approx(slope, rel=1e-8)


def test_relu_chi_c_closed_form_also_at_q_zero() -> None:
    for c in np.linspace(-1.0, 1.0, 9):
        expected = (math.pi - math.acos(c)) / math.pi  # 2 P(u1 > 0, u2 > 0)
        assert chi_c("relu", 1.3, c, 2.0) == pytest.approx(expected, abs=1e-12)
        assert chi_c("relu", 0.0, c, 2.0) == pytest.approx(expected, abs=1e-15)
    assert chi_c("tanh", 0.0, 0.3, 1.0) == pytest.approx(1.0)


# --- depth --------------------------------------------------------------------------------------------------

def test_relu_he_correlations_approach_one_polynomially() -> None:
    profile = correlation_profile("relu", 100, 0.0, 1.0, 2.0)
    c = 0.0
    for got in profile:
        c = relu_arccos(c)
        assert got == pytest.approx(c, abs=1e-12)
    assert profile[-1] == pytest.approx(0.99642, abs=1e-5)
    # 1 - c' = e - (2 sqrt(2) / (3 pi)) e^(3/2) + ...  =>  l^2 (1 - c_l) -> 9 pi^2 / 2 (0.4% short at l = 1e4)
    for _ in range(100, 10_000):
        c = relu_arccos(c)
    assert 10_000**2 * (1.0 - c) == pytest.approx(9 * math.pi**2 / 2, rel=1e-2)


def test_tanh_profile_tracks_the_length_map() -> None:
    sw2, sb2, q0 = 1.8, 0.05, 0.5
    profile = correlation_profile("tanh", 3, 0.2, q0, sw2, sb2)
    q1 = length_map("tanh", q0, sw2, sb2)
    assert profile[1] == pytest.approx(correlation_map("tanh", q1, q1, profile[0], sw2, sb2), rel=1e-14)
    assert correlation_profile("tanh", 0, 0.2, q0, sw2) == ()


# --- softmax and attention statistics --------------------------------------------------------------------

def _logsumexp_and_entropy(s: float, n: int, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = s * torch.randn(rows, n, generator=gen, dtype=torch.float64)
    lse = torch.logsumexp(logits, dim=1)
    p = torch.softmax(logits, dim=1)
    return lse, -(p * torch.log_softmax(logits, dim=1)).sum(dim=1)


@pytest.mark.parametrize(("s", "n"), [(0.5, 10), (3.0, 100), (10.0, 1000), (30.0, 2), (1.0, 2)])
def test_softmax_statistics_match_monte_carlo(s: float, n: int) -> None:
    lse, entropy = _logsumexp_and_entropy(s, n, max(2000, 2_000_000 // n), seed=3)
    for value, sample in ((expected_ce_loss(s, n), lse), (softmax_entropy_gaussian(s, n), entropy)):
        err = sample.std().item() / math.sqrt(len(sample))
        assert value == pytest.approx(sample.mean().item(), abs=5 * err)


@pytest.mark.parametrize("s", [0.3, 1.0, 5.0, 30.0])
def test_two_classes_match_a_one_dimensional_integral(s: float) -> None:
    """n = 2: with d = l1 - l2 ~ N(0, 2 s^2), H = E[h(sigmoid(d))] and E[logsumexp] = E[max] + E[log(1 + e^-|d|)],
    E[max(l1, l2)] = s / sqrt(pi); by scipy's adaptive quadrature."""
    sd = math.sqrt(2.0) * s

    def expect(f: Callable[[float], float]) -> float:
        dens = 2.0 / (sd * math.sqrt(2.0 * math.pi))  # twice the half-line density
        return integrate.quad(lambda d: f(d) * dens * math.exp(-d * d / (2 * sd * sd)), 0.0, 40.0 * sd,
                              points=[1.0, 5.0, 20.0], limit=500, epsabs=1e-15, epsrel=1e-13)[0]

    def binary_entropy(d: float) -> float:
        p, r = special.expit(d), special.expit(-d)
        return -(p * math.log(p) if p > 0 else 0.0) - (r * math.log(r) if r > 0 else 0.0)

    assert softmax_entropy_gaussian(s, 2) == pytest.approx(expect(binary_entropy), rel=1e-12)
    lse = s / math.sqrt(math.pi) + expect(lambda d: math.log1p(math.exp(-d)))
    assert expected_ce_loss(s, 2) == pytest.approx(lse, rel=1e-12)


def test_softmax_statistics_limits() -> None:
    for n in (2, 7, 100_000):
        assert expected_ce_loss(0.0, n) == math.log(n)
        assert softmax_entropy_gaussian(0.0, n) == uniform_attention_entropy(n) == math.log(n)
        assert expected_ce_loss(1e-3, n) == pytest.approx(math.log(n), abs=1e-6)  # the quadrature at s -> 0
    s, n = 0.3, 100_000  # n >> e^{s^2}: log n +- s^2 / 2, corrections ~ s^2 / (2 n)
    assert expected_ce_loss(s, n) == pytest.approx(math.log(n) + s * s / 2, abs=1e-6)
    assert softmax_entropy_gaussian(s, n) == pytest.approx(math.log(n) - s * s / 2, abs=1e-6)
    assert expected_ce_loss(2.0, 1) == softmax_entropy_gaussian(2.0, 1) == 0.0
    assert softmax_entropy_gaussian(30.0, 2) < 0.05  # one logit takes (almost) all the mass
    with pytest.raises(ValueError):
        expected_ce_loss(-1.0, 10)


def test_attention_logit_var_matches_monte_carlo() -> None:
    gen, d, rows = torch.Generator().manual_seed(11), 16, 200_000
    q = (2 * torch.rand(rows, d, generator=gen, dtype=torch.float64) - 1) * 1.5  # E[q^2] = 1.5^2 / 3
    k = math.sqrt(2.0) * torch.randn(rows, d, generator=gen, dtype=torch.float64)  # E[k^2] = 2
    for scale in (None, 0.1):
        logits = (q * k).sum(dim=1) * (1 / math.sqrt(d) if scale is None else scale)
        err = (logits**2).std().item() / math.sqrt(rows)
        assert attention_logit_var(0.75, 2.0, d, scale) == pytest.approx((logits**2).mean().item(), abs=5 * err)
    assert attention_logit_var(1.0, 1.0, 64) == 1.0


def test_output_var_prediction_matches_a_linear_layer() -> None:
    gen, fan_in, var_w, var_b = torch.Generator().manual_seed(5), 256, 2.0 / 256, 0.3
    layer = nn.Linear(fan_in, 4096, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(var_w), generator=gen)
        layer.bias.normal_(0.0, math.sqrt(var_b), generator=gen)
        x = 1.0 + torch.randn(64, fan_in, generator=gen, dtype=torch.float64)  # E[x^2] = 2
        measured = (layer(x) ** 2).mean().item()
    assert output_var_prediction(fan_in, var_w, 2.0, var_b) == pytest.approx(measured, rel=0.03)
    assert gaussian_moments("linear", 2.0).second == 2.0
